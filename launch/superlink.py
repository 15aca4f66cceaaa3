"""The SuperLink process: `flower-superlink` started, watched and torn down with all it started.

`SuperLinkProcess` starts `flower-superlink` (simulation or deployment, insecure or TLS, with
or without SuperNode authentication) on a port of our choosing, with its state (`--database`),
its Flower home (`FLWR_HOME`: unpacked app bundles) and its log under a run directory, waits
until it answers `/health`, and on `stop()` tears down the SuperLink *and everything it
started* (SuperExec, `flwr-simulation`, `flwr-serverapp`, Ray's processes): every process it
starts carries its marker (`processes.ENV_TAG`), and its `ProcessFamily` is killed. A reaper
process does the same if this process is SIGKILLed (`processes.spawn_reaper`).

`SuperLinkConnection` is how the `flwr` CLI reaches it (`launch/flwr_cli.py`);
`flower_bin_dir` and `child_env` say where Flower's commands are and what environment every
Flower process we start gets.

One port serves the Fleet, Control and Runtime APIs (`--host`/`--port`); the old per-API
address flags are deprecated and only matter with internal switches we do not set (flwr 1.41).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from launch.processes import ENV_TAG, ProcessFamily, free_port, log_tail, spawn_reaper

__all__ = [
    "IN_MEMORY_DATABASE",
    "QUIET_ENV",
    "SuperLinkConfig",
    "SuperLinkConnection",
    "SuperLinkError",
    "SuperLinkProcess",
    "TlsFiles",
    "child_env",
    "flower_bin_dir",
]

#: Flower's name for an in-memory SuperLink state (`--database`).
IN_MEMORY_DATABASE = ":flwr-in-memory:"
#: `flower-superlink` with the object store in memory (`SuperLinkConfig.objects_in_memory`).
SUPERLINK_MAIN = Path(__file__).resolve().with_name("superlink_main.py")

#: Environment shared by every Flower process we start: no update check, no telemetry, no
#: Ray usage statistics (all of them try the network), and no `uv sync` of the app's
#: dependencies at run start (the SuperLink's default; it would download torch again).
QUIET_ENV = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class SuperLinkError(RuntimeError):
    """The SuperLink did not start, or died."""


def flower_bin_dir() -> Path:
    """The folder holding `flower-superlink`, `flwr`, ...: this interpreter's, else `PATH`'s."""
    here = Path(sys.executable).parent
    if (here / "flower-superlink").exists():
        return here
    found = shutil.which("flower-superlink")
    if found is None:
        raise SuperLinkError("flower-superlink was not found: install flwr[simulation] in this environment")
    return Path(found).parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: ours, quiet (`QUIET_ENV`), with Flower's `bin`
    folder first on `PATH` (SuperLink starts `flower-superexec`, which starts `flwr-simulation`,
    by name: without it a run would stay pending for ever), plus `extra`."""
    env = dict(os.environ)
    env.update(QUIET_ENV)
    bin_dir = str(flower_bin_dir())
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files. The certificate needs a SAN for every address clients dial
    AND for the address its own SuperExec dials (`host`, or 127.0.0.1 when `host` is 0.0.0.0)."""

    certfile: Path
    keyfile: Path
    ca_certfile: Path


@dataclass
class SuperLinkConfig:
    """How to start `flower-superlink`.

    `port=None` picks a free one. `tls=None` means `--insecure`. `database=None` keeps the state
    in `run_dir/state.db` (pass `IN_MEMORY_DATABASE` for none). `flwr_home=None` uses
    `run_dir/flwr_home`; it must not be inside an app folder unless `.gitignore`d there (the FAB
    builder walks the app folder). `env` is added to the SuperLink's environment (inherited by
    SuperExec and the apps: e.g. `RAY_ADDRESS`). `die_with_parent` (Linux) starts a small reaper
    process that kills the SuperLink and everything it started if *this process* dies without
    calling `stop()` (SIGKILL, crash); set it False for a SuperLink meant to outlive us.
    `objects_in_memory` keeps the messages' objects (the models) in memory while the link state
    stays in `database` (`launch/superlink_main.py`); it changes nothing with an in-memory database.
    """

    run_dir: Path
    host: str = "127.0.0.1"
    port: int | None = None
    simulation: bool = False
    isolation: str = "subprocess"
    tls: TlsFiles | None = None
    enable_supernode_auth: bool = False
    database: Path | str | None = None
    flwr_home: Path | None = None
    runtime_dependency_installation: bool = False
    env: dict[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    startup_timeout_s: float = 60.0
    die_with_parent: bool = True
    objects_in_memory: bool = False

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        if self.isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation={self.isolation!r}: must be 'subprocess' or 'process'")
        if self.enable_supernode_auth and self.tls is None:
            raise ValueError("enable_supernode_auth needs TLS files (Flower refuses it with --insecure)")

    @property
    def home(self) -> Path:
        return Path(self.flwr_home).resolve() if self.flwr_home else self.run_dir / "flwr_home"


@dataclass(frozen=True)
class SuperLinkConnection:
    """A connection in `$FLWR_HOME/config.toml` (`[superlink.<name>]`)."""

    name: str
    address: str
    insecure: bool = True
    root_certificates: Path | None = None
    federation: str | None = None

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.insecure:
            out["insecure"] = True
        elif self.root_certificates is not None:
            out["root-certificates"] = str(Path(self.root_certificates).resolve())
        if self.federation:
            out["federation"] = self.federation
        return out


class SuperLinkProcess:
    """A `flower-superlink` child process with its state under `config.run_dir`.

    Use as a context manager (`with SuperLinkProcess(cfg) as link: ...`) or call `start()` and
    `stop()`. Its console output goes to `run_dir/superlink.log`.
    """

    def __init__(self, config: SuperLinkConfig) -> None:
        self.config = config
        self.tag = uuid.uuid4().hex
        self.port: int | None = config.port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config.run_dir / "superlink.log"
        self._log_file: io.BufferedWriter | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self.family = ProcessFamily(self.tag)

    # -- addresses -----------------------------------------------------------------------------

    @property
    def connect_host(self) -> str:
        """The host clients on this machine dial: `host`, or loopback for a wildcard bind."""
        host = self.config.host
        if host in ("0.0.0.0", "", "::", "[::]"):
            return "127.0.0.1"
        return host

    @property
    def address(self) -> str:
        """`HOST:PORT` of the SuperLink (Fleet, Control and Runtime APIs share it)."""
        if self.port is None:
            raise SuperLinkError("the SuperLink has no port yet: call start()")
        host = self.connect_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.config.home

    def connection(self, name: str = "fedmtl") -> SuperLinkConnection:
        """A `flwr` CLI connection to this SuperLink."""
        tls = self.config.tls
        return SuperLinkConnection(
            name=name,
            address=self.address,
            insecure=tls is None,
            root_certificates=tls.ca_certfile if tls else None,
        )

    def command(self) -> list[str]:
        """The `flower-superlink` command line."""
        cfg = self.config
        database = cfg.database if cfg.database is not None else cfg.run_dir / "state.db"
        if cfg.objects_in_memory and str(database) != IN_MEMORY_DATABASE:
            python = flower_bin_dir() / "python"  # the interpreter whose flwr the SuperLink would run
            cmd = [str(python) if python.exists() else sys.executable, str(SUPERLINK_MAIN)]
        else:
            cmd = [str(flower_bin_dir() / "flower-superlink")]
        cmd += ["--host", cfg.host, "--port", str(self.port)]
        if cfg.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-certfile", str(cfg.tls.certfile), "--ssl-keyfile", str(cfg.tls.keyfile),
                    "--ssl-ca-certfile", str(cfg.tls.ca_certfile)]
        if cfg.simulation:
            cmd.append("--simulation")
        cmd += ["--isolation", cfg.isolation, "--database", str(database)]
        if cfg.enable_supernode_auth:
            cmd.append("--enable-supernode-auth")
        if not cfg.runtime_dependency_installation:
            cmd.append("--disable-runtime-dependency-installation")
        cmd += list(cfg.extra_args)
        return cmd

    def env(self) -> dict[str, str]:
        cfg = self.config
        extra = {"FLWR_HOME": str(cfg.home), ENV_TAG: self.tag, **cfg.env}
        env = child_env(extra)
        if cfg.runtime_dependency_installation:
            env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
        return env

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> SuperLinkProcess:
        """Start the SuperLink and wait until `/health` answers (retries on a taken port)."""
        if self.proc is not None:
            raise SuperLinkError("this SuperLink was already started")
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.home.mkdir(parents=True, exist_ok=True)
        attempts = 3 if cfg.port is None else 1
        for attempt in range(attempts):
            if cfg.port is None:
                self.port = free_port(self.connect_host)
            try:
                self._start_once()
                return self
            except BaseException as err:
                retry = (isinstance(err, SuperLinkError) and attempt + 1 < attempts
                         and "address already in use" in str(err).lower())
                if not retry:
                    self.stop()
                    raise
                self._kill_everything()
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        cfg = self.config
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=str(cfg.run_dir),
            start_new_session=True,  # Ctrl-C in our terminal must not hit it before we stop runs
        )
        if cfg.die_with_parent and self._reaper is None:
            self._reaper = spawn_reaper(self.tag)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        import httpx  # flwr depends on it

        assert self.proc is not None
        scheme = "http" if self.config.tls is None else "https"
        url = f"{scheme}://{self.address}/health"
        deadline = time.monotonic() + self.config.startup_timeout_s
        # The probe only checks that our own child is up; the CLI verifies the certificate.
        with httpx.Client(verify=False, timeout=1.0, trust_env=False) as client:  # noqa: S501
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    self.proc = None
                    raise SuperLinkError(
                        f"flower-superlink exited with code {code} on start; its log ({self.log_path}) ends:\n"
                        f"{log_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).is_success:
                        return
                time.sleep(0.1)
        raise SuperLinkError(
            f"flower-superlink did not answer {url} within {self.config.startup_timeout_s:.0f}s; "
            f"its log ({self.log_path}) ends:\n{log_tail(self.log_path)}"
        )

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> set[int]:
        """Live processes started by this SuperLink, itself included (see `ProcessFamily`)."""
        roots = [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
        return self.family.scan(roots)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the SuperLink and everything it started (idempotent).

        SIGTERM to the SuperLink first (it terminates its SuperExec; `flwr-simulation` notices
        its parent is gone, pushes its final status and shuts Ray down) and up to `grace_s` to
        exit; then SIGTERM, a short wait, and SIGKILL to every member of its `ProcessFamily`.
        """
        proc = self.proc
        if proc is not None:
            self.processes()  # learn the family's sessions while the process tree is intact
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
        try:
            self._kill_everything()
        finally:
            if self._reaper is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._reaper.kill()
                self._reaper.wait()
                self._reaper = None
            if self._log_file is not None:
                with contextlib.suppress(OSError):
                    self._log_file.close()
                self._log_file = None

    def _kill_everything(self) -> None:
        proc = self.proc
        roots = [proc.pid] if proc is not None and proc.poll() is None else []
        left = self.family.kill(roots)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
        self.proc = None
        if left:
            raise SuperLinkError(f"processes {sorted(left)} of SuperLink {self.tag} survived SIGKILL")

    def __enter__(self) -> SuperLinkProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
