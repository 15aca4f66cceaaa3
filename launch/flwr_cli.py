"""The `flwr` command line, driven from Python against one SuperLink.

`FlwrCli` writes its connection (`SuperLinkConnection`) into `$FLWR_HOME/config.toml`, submits
runs (`flwr run --format json`), streams a run's ServerApp log (`flwr log --stream`, read with
`iter_log_lines`), reads a run's status (`flwr ls --run-id --format json`), stops runs and
registers, lists and unregisters SuperNode keys.

Facts this relies on (flwr 1.41): `flwr run` exits 0 even when the submission failed (look at
`success` in its JSON) and `flwr log --stream` ends normally when the run fails: the outcome
comes from `flwr ls`.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from launch.processes import killed_with_parent_kwargs, log_tail
from launch.superlink import SuperLinkConnection, child_env, flower_bin_dir

__all__ = [
    "FlwrCli",
    "FlwrCliError",
    "SuperLinkConnection",
    "iter_log_lines",
    "strip_ansi",
]

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FlwrCliError(RuntimeError):
    """A `flwr` command failed; `output` holds what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _cli_popen_kwargs() -> dict[str, Any]:
    """`flwr` CLI children: own session (a terminal Ctrl-C reaches only us, and we decide what
    to stop) and killed with us. An orphaned `flwr log --stream` would keep the SuperLink's
    graceful shutdown waiting for ever ("Waiting for connections to close")."""
    return killed_with_parent_kwargs()


class FlwrCli:
    """The `flwr` command line with its own `FLWR_HOME` and one SuperLink connection."""

    def __init__(self, flwr_home: Path, connection: SuperLinkConnection, *,
                 env: Mapping[str, str] | None = None, command_timeout_s: float = 120.0) -> None:
        self.flwr_home = Path(flwr_home).resolve()
        self.connection = connection
        self.command_timeout_s = command_timeout_s
        self.env = child_env({"FLWR_HOME": str(self.flwr_home), **(env or {})})
        self.flwr = str(flower_bin_dir() / "flwr")

    # -- config.toml ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.flwr_home / "config.toml"

    def write_connection(self, make_default: bool = True) -> Path:
        """Add (or replace) our connection in `$FLWR_HOME/config.toml`, keeping the others."""
        import tomllib

        self.flwr_home.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {}
        if self.config_path.exists():
            data = tomllib.loads(self.config_path.read_text())
        links = data.setdefault("superlink", {})
        links[self.connection.name] = self.connection.to_toml()
        if make_default or "default" not in links:
            links["default"] = self.connection.name
        # `default` first, as Flower writes it
        data["superlink"] = {"default": links.pop("default"), **links}
        self.config_path.write_text(tomli_w.dumps(data))
        return self.config_path

    # -- commands ------------------------------------------------------------------------------

    def _run(self, args: Sequence[str], timeout: float | None = None) -> str:
        cmd = [self.flwr, *args]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL,
                                 timeout=timeout or self.command_timeout_s, check=False,
                                 **_cli_popen_kwargs())
        except subprocess.TimeoutExpired as err:
            raise FlwrCliError(f"`{' '.join(cmd)}` timed out", str(err.output or "")) from err
        out = strip_ansi(res.stdout)
        if res.returncode != 0:
            raise FlwrCliError(f"`{' '.join(cmd)}` exited with {res.returncode}: {strip_ansi(res.stderr)[-2000:]}",
                               out + strip_ansi(res.stderr))
        return out

    def _run_json(self, args: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
        out = self._run([*args, "--format", "json"], timeout)
        start = out.find("{")
        try:
            payload = json.loads(out[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise FlwrCliError(f"`flwr {' '.join(args)}` printed no JSON object", out)
        if not payload.get("success", False):
            msg = strip_ansi(str(payload.get("error-message", "unknown error")))
            raise FlwrCliError(f"`flwr {args[0]}` failed: {msg}", out)
        return payload

    def submit_run(self, app_dir: Path, run_config: Mapping[str, Any] | None = None,
                   federation_config: Mapping[str, Any] | None = None, stream: bool = True,
                   on_line: Callable[[str], None] = print, files_dir: Path | None = None) -> int:
        """`flwr run APP_DIR <connection>`; returns the run id (after streaming its log if `stream`).

        `run_config` overrides `[tool.flwr.app.config]` (unknown keys are refused by Flower);
        `federation_config` holds simulation settings with Flower's names (`num-supernodes`,
        `client-resources-num-cpus` (int), `client-resources-num-gpus`, `init-args-num-cpus`, ...).
        Both are passed as TOML files written to `files_dir` (default: `$FLWR_HOME`), so any
        string survives quoting. They are `.gitignore`-independent: keep `files_dir` outside the
        app folder or ignored there.
        """
        files_dir = Path(files_dir or self.flwr_home)
        files_dir.mkdir(parents=True, exist_ok=True)
        args = ["run", str(Path(app_dir).resolve()), self.connection.name]
        stamp = uuid.uuid4().hex[:8]
        if run_config:
            path = files_dir / f"run-config-{stamp}.toml"
            path.write_text(tomli_w.dumps(dict(run_config)))
            args += ["--run-config", str(path)]
        if federation_config:
            path = files_dir / f"federation-config-{stamp}.toml"
            path.write_text(tomli_w.dumps(dict(federation_config)))
            args += ["--federation-config", str(path)]
        payload = self._run_json(args)
        run_id = int(payload["run-id"])
        if stream:
            self.stream_logs(run_id, on_line)
        return run_id

    def run_info(self, run_id: int) -> dict[str, Any]:
        """`flwr ls --run-id ID --format json`: the run's record (status, status-details, times)."""
        payload = self._run_json(["ls", self.connection.name, "--run-id", str(run_id)])
        runs = payload.get("runs") or []
        if not runs:
            raise FlwrCliError(f"run {run_id} not found", json.dumps(payload))
        return dict(runs[0])

    def run_status(self, run_id: int) -> str:
        """The run's status: `pending`, `starting`, `running`, `finished:completed`,
        `finished:failed` or `finished:stopped`."""
        return str(self.run_info(run_id)["status"])

    def stop_run(self, run_id: int) -> None:
        """`flwr stop ID`: ask the SuperLink to stop the run."""
        self._run_json(["stop", str(run_id), self.connection.name])

    def list_runs(self) -> list[dict[str, Any]]:
        """`flwr ls --format json`: every run the SuperLink knows (`run-id`, `status`, ...)."""
        return list(self._run_json(["ls", self.connection.name]).get("runs") or [])

    def register_supernode(self, public_key: Path, name: str | None = None) -> int:
        """`flwr supernode register KEY.pub`: allow the node holding the matching private key
        to connect (SuperLink started with `--enable-supernode-auth`); returns its node id.
        Raises FlwrCliError (with "already in use" in it for a key registered before)."""
        args = ["supernode", "register", str(Path(public_key).resolve()), self.connection.name]
        if name:
            args += ["--name", name]
        return int(self._run_json(args)["node-id"])

    def list_supernodes(self) -> list[dict[str, Any]]:
        """`flwr supernode ls --format json`: one record per node (`node-id`, `status`, ...)."""
        return list(self._run_json(["supernode", "ls", self.connection.name]).get("nodes") or [])

    def unregister_supernode(self, node_id: int) -> None:
        """`flwr supernode unregister NODE_ID`: revoke a node's key."""
        self._run_json(["supernode", "unregister", str(node_id), self.connection.name])

    def log_stream_process(self, run_id: int) -> subprocess.Popen[str]:
        """Start `flwr log ID --stream` with a line-buffered text stdout; its stderr goes to
        `self.log_stderr_path(run_id)`."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        with open(self.log_stderr_path(run_id), "ab") as err:
            return subprocess.Popen(
                [self.flwr, "log", str(run_id), self.connection.name, "--stream"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                text=True, bufsize=1, env=self.env, errors="replace", **_cli_popen_kwargs(),
            )

    def log_stderr_path(self, run_id: int) -> Path:
        return self.flwr_home / f"flwr-log-{run_id}.stderr"

    def stream_logs(self, run_id: int, on_line: Callable[[str], None] = print) -> None:
        """Call `on_line` with every line of the run's log (ANSI colours removed) until it ends."""
        for line in iter_log_lines(self.log_stream_process(run_id), self.log_stderr_path(run_id)):
            on_line(line)


def iter_log_lines(proc: subprocess.Popen[str], stderr_path: Path | None = None) -> Iterator[str]:
    """The log lines printed by a `flwr log --stream` process; kills it if the caller stops early."""
    assert proc.stdout is not None
    try:
        first = True
        for raw in proc.stdout:
            line = strip_ansi(raw.rstrip("\n"))
            if first and line.startswith("Using SuperLink:"):
                first = False
                continue
            first = False
            yield line
        code = proc.wait()
        if code != 0:
            err = log_tail(stderr_path, 20) if stderr_path else ""
            raise FlwrCliError(f"`flwr log --stream` exited with {code}: {strip_ansi(err)}", err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
