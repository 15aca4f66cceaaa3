"""The client side of a real deployment: one `flower-supernode` that joins a coordinator.

`fedmtl client` is a thin command line over this module:

* `SuperNodeProcess` runs `flower-supernode` for one client (its node config in a TOML file:
  `data-dir`, `name`), with everything it starts in its `ProcessFamily` and a reaper that kills
  them if the client is SIGKILLed.
* Its ClientApps run either through fedmtl's fork server (`executor="fork"`, the default:
  `flower-supernode --isolation process` plus `launch/clientapp_forkserver.py`, which forks a
  pre-imported process per message) or through Flower's own SuperExec (`executor="flower"`: a
  fresh `flwr-clientapp` process, importing torch again, per message). See docs/deployment.md,
  "Round latency", for what each costs.
* Its output goes to a log file (not a pipe: see docs/security.md), read with `LogFollower`,
  and `classify_supernode_output` turns Flower's refusal messages into one clear line.

The coordinator side is `launch/service.py`. Everything here was checked with flwr 1.41
on loopback and across network namespaces (tests/test_deployment.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from client.trust import ALLOW_SUITES_KEY, encode_allowed
from launch.flwr_cli import strip_ansi
from launch.pinned_clientapp import pinned_env, write_shim
from launch.processes import ENV_TAG, ProcessFamily, free_port, spawn_reaper
from launch.superlink import child_env, flower_bin_dir
from launch.supernode_main import DEFAULT_REPLY_POLL_S, REPLY_POLL_RANGE_S

__all__ = [
    "EXECUTORS",
    "FORKSERVER",
    "LogFollower",
    "SuperNodeConfig",
    "SUPERNODE_MAIN",
    "SuperNodeProcess",
    "classify_supernode_output",
]


#: How a client runs its ClientApps: fedmtl's fork server, or Flower's SuperExec.
EXECUTORS = ("fork", "flower")
#: The fork server's script (run by path: it must not import fedmtl's packages, see its docstring).
FORKSERVER = Path(__file__).resolve().with_name("clientapp_forkserver.py")
#: `flower-supernode` with a short reply poll (run by path, like the fork server).
SUPERNODE_MAIN = Path(__file__).resolve().with_name("supernode_main.py")
#: How often a dead fork server is replaced (`SuperNodeProcess.revive_executor`) before the
#: client gives up: a fork server that keeps dying has a cause a restart does not fix.
MAX_EXECUTOR_RESTARTS = 3
#: The fork server's task poll (seconds) unless set: it is woken at once by the SuperNode's log.
FORK_TASK_POLL_S = 0.5
#: Flower's SuperExec task poll interval (seconds; Flower's default is 1.0).
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


# ---------------------------------------------------------------------------------------------
# Following a growing log file
# ---------------------------------------------------------------------------------------------


class LogFollower:
    """Complete lines appended to a file, read by a background thread into a queue.

    Flower processes leave children holding inherited pipes open after they exit, so their
    output goes to files and is followed here instead (docs/security.md, Pitfalls).
    """

    def __init__(self, path: Path, start_at_end: bool = True) -> None:
        self.path = Path(path)
        self.lines: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._offset = self.path.stat().st_size if start_at_end and self.path.exists() else 0
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except OSError:
                data = b""
            if data:
                self._offset += len(data)
                buf += data
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    self.lines.put(strip_ansi(raw.decode(errors="replace")).rstrip("\r"))
            else:
                self._stop.wait(0.1)

    def get(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[str]:
        """Whatever has been read so far (after a short pause for the last writes)."""
        time.sleep(0.2)
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------------------------------------
# flower-supernode
# ---------------------------------------------------------------------------------------------


def classify_supernode_output(text: str, coordinator: str, *, connected: bool = False,
                              key: str | None = None) -> str | None:
    """One clear sentence for a refusal or loss that `flower-supernode` printed, else None.

    The signatures are those measured in docs/security.md (flwr 1.41).
    """
    if "Failed to activate SuperNode" in text:
        name = Path(key).with_suffix(".pub").name if key else "NAME.pub"
        return (f"the coordinator at {coordinator} refused this client's key: it is not registered there "
                f"(on the coordinator host run `fedmtl keys register {name} --run-dir RUN_DIR`)")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "mismatch" in text:
            return (f"the coordinator's TLS certificate does not cover the address {coordinator}: dial a name "
                    "or IP listed in it, or recreate it with `fedmtl certs --host <that address>`")
        if "expired" in text:
            return f"the coordinator's TLS certificate at {coordinator} has expired: recreate it with `fedmtl certs`"
        return (f"could not verify the TLS certificate of {coordinator}: wrong or missing CA certificate "
                "(pass the federation's ca.crt with --ca)")
    if "Unable to parse the private key file" in text or "Exit Code: 302" in text:
        return f"the private key {key or ''} could not be read: it must be an ECDSA key made by `fedmtl keys create`"
    if "Exit Code: 303" in text:
        return "client authentication needs TLS: do not combine --insecure with --key"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or "packet length too long" in text:
        return (f"{coordinator} does not speak TLS (a coordinator started with --insecure?): "
                "ask for its ca.crt, or use --insecure on a trusted test network only")
    if "Giving up reconnection" in text or "Exit Code: 305" in text:
        if connected:
            return f"lost the coordinator at {coordinator}: no answer within --max-wait"
        if "Server disconnected without sending a response" in text:
            return (f"{coordinator} closed the connection without an answer: a coordinator with TLS contacted "
                    "with --insecure? (pass --ca ca.crt and --key instead)")
        return f"the coordinator at {coordinator} is unreachable (connection refused or no answer within --max-wait)"
    return None


@dataclass
class SuperNodeConfig:
    """How to start `flower-supernode` for one client.

    `superlink` is the coordinator's public HOST:PORT (the Fleet gateway). `work_dir` holds the
    SuperNode's Flower home (unpacked app bundles), its node config file and its log.
    `runtime_port=None` picks a free port for the SuperNode's local Runtime API (several clients
    on one host need different ones). `max_wait_s` bounds every reconnection (Flower retries
    for ever otherwise). `allow_suites` go to the ClientApp in the node config (`allow-suites`,
    see `client/trust.py`); `trusted_entities` is passed to `flower-supernode --trusted-entities`;
    with `app_hashes`, every ClientApp process first checks the bundle's SHA-256 against them.

    `executor="fork"` runs ClientApps through `launch/clientapp_forkserver.py` (modules in
    `preload` imported once; its Runtime API calls signed with a per-client secret);
    `executor="flower"` through Flower's own SuperExec. `task_poll_s` is how often either polls
    the SuperNode for a new ClientApp task; None: the executor's default (the fork server:
    `FORK_TASK_POLL_S`, as it also asks at once when the SuperNode's log shows a message received;
    Flower's SuperExec: its own 1 s). `reply_poll_s` is how often the SuperNode looks for the
    ClientApp's reply (`launch/supernode_main.py`); None: Flower's hard-coded 0.5 s, plain
    `flower-supernode`.
    """

    superlink: str
    data_dir: Path
    name: str
    work_dir: Path
    private_key: Path | None = None
    root_certificates: Path | None = None
    insecure: bool = False
    max_wait_s: float = 300.0
    runtime_port: int | None = None
    allow_suites: Sequence[str] = ()  # suite specs this client runs besides built-in/installed ones
    trusted_entities: Path | None = None  # Flower's --trusted-entities YAML (only Hub-signed app bundles run)
    app_hashes: Sequence[str] = ()  # run only app bundles with these SHA-256 (launch/pinned_clientapp.py)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    executor: str = "fork"
    preload: Sequence[str] = ("numpy", "torch", "torch.optim", "torch._dynamo")
    task_poll_s: float | None = None
    reply_poll_s: float | None = DEFAULT_REPLY_POLL_S

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.work_dir = Path(self.work_dir).resolve()
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r}: must be one of {EXECUTORS}")
        if self.executor == "fork" and not hasattr(os, "fork"):
            raise ValueError("executor='fork' needs os.fork (Linux, macOS): use executor='flower' here")
        if self.task_poll_s is not None and not 0.01 <= self.task_poll_s <= 60:
            raise ValueError(f"task_poll_s={self.task_poll_s}: must be between 0.01 and 60 seconds (Flower's range)")
        low, high = REPLY_POLL_RANGE_S
        if self.reply_poll_s is not None and not low <= self.reply_poll_s <= high:
            raise ValueError(f"reply_poll_s={self.reply_poll_s}: must be between {low:g} and {high:g} seconds "
                             "(Flower's own)")
        if self.insecure and self.private_key is not None:
            raise ValueError("client authentication needs TLS: do not combine --insecure with --key")
        if not self.insecure and self.private_key is None:
            raise ValueError("TLS and client authentication are on: a private key is required (or --insecure)")


class SuperNodeProcess:
    """One `flower-supernode` child with everything it starts (SuperExec or the fork server, and
    the ClientApp processes)."""

    def __init__(self, config: SuperNodeConfig) -> None:
        self.config = config
        self.tag = uuid.uuid4().hex
        self.family = ProcessFamily(self.tag)
        self.proc: subprocess.Popen[bytes] | None = None
        self.executor_proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = config.runtime_port
        self.log_path = config.work_dir / "supernode.log"
        self.node_config_path = config.work_dir / "node-config.toml"
        self.secret_path = config.work_dir / "superexec.secret"
        self.executor_restarts = 0
        self._log_offset = 0
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def flwr_home(self) -> Path:
        return self.config.work_dir / "flwr_home"

    def command(self) -> list[str]:
        cfg = self.config
        if cfg.reply_poll_s is None:
            cmd = [str(flower_bin_dir() / "flower-supernode")]
        else:
            cmd = [sys.executable, str(SUPERNODE_MAIN), "--reply-poll", f"{cfg.reply_poll_s:g}"]
        cmd += ["--superlink", cfg.superlink, "--port", str(self.port), "--node-config", str(self.node_config_path),
                "--max-wait-time", f"{cfg.max_wait_s:g}"]
        if cfg.trusted_entities is not None:
            cmd += ["--trusted-entities", str(Path(cfg.trusted_entities).resolve())]
        if cfg.insecure:
            cmd.append("--insecure")
        else:
            if cfg.root_certificates is not None:
                cmd += ["--root-certificates", str(Path(cfg.root_certificates).resolve())]
            cmd += ["--auth-supernode-private-key", str(Path(cfg.private_key).resolve())]  # type: ignore[arg-type]
        if cfg.executor == "fork":
            cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(self.secret_path)]
        return cmd + list(cfg.extra_args)

    def node_config(self) -> dict[str, str]:
        """What the ClientApp finds in `context.node_config`."""
        cfg = self.config
        out = {"data-dir": str(cfg.data_dir), "name": cfg.name}
        if cfg.allow_suites:
            out[ALLOW_SUITES_KEY] = encode_allowed(cfg.allow_suites)
        return out

    def executor_command(self, supernode_pid: int, log_offset: int = 0) -> list[str]:
        """The fork server's command line (executor="fork"); `log_offset`: where this SuperNode's
        output starts in its log file."""
        cfg = self.config
        cmd = [sys.executable, str(FORKSERVER), "--runtime-api-address", f"127.0.0.1:{self.port}",
               "--parent-pid", str(supernode_pid), "--preload", ",".join(cfg.preload),
               "--superexec-auth-secret-file", str(self.secret_path), "--supernode-log", str(self.log_path),
               "--supernode-log-offset", str(log_offset)]
        cmd += ["--poll-interval", f"{FORK_TASK_POLL_S if cfg.task_poll_s is None else cfg.task_poll_s:g}"]
        return cmd

    def env(self) -> dict[str, str]:
        extra = {"FLWR_HOME": str(self.flwr_home), ENV_TAG: self.tag}
        if self.config.task_poll_s is not None and self.config.executor == "flower":
            extra[TASK_POLL_ENV] = f"{self.config.task_poll_s:g}"
        env = child_env({**extra, **self.config.env})
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)  # the coordinator is dialled directly
        if self.config.app_hashes:
            env = pinned_env(env, self.config.app_hashes, self.shim_dir)
        return env

    @property
    def shim_dir(self) -> Path:
        return self.config.work_dir / "bin"

    def start(self) -> SuperNodeProcess:
        cfg = self.config
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.node_config_path.write_text(tomli_w.dumps(self.node_config()))
        if cfg.app_hashes:
            write_shim(self.shim_dir)
        if self.port is None:
            self.port = free_port("127.0.0.1")
        if cfg.executor == "fork":  # a fresh secret per start: only our fork server may take this node's tasks
            fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32).hex().encode())
        env = self.env()
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=str(cfg.work_dir),
                                         start_new_session=True)
        self._reaper = spawn_reaper(self.tag)  # kills the SuperNode if we are SIGKILLed
        if cfg.executor == "fork":
            self._start_executor(env)
        return self

    def _start_executor(self, env: dict[str, str] | None = None) -> None:
        assert self.proc is not None
        cmd = self.executor_command(self.proc.pid, self._log_offset)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            log.flush()
            self.executor_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT, env=env or self.env(),
                                                  cwd=str(self.config.work_dir), start_new_session=True)

    def revive_executor(self) -> str | None:
        """If the fork server died while its SuperNode still runs, start a new one (at most
        `MAX_EXECUTOR_RESTARTS` times per SuperNode start) and say so; else None. Tasks it was
        running fail (each child watches it and reports a failed task, so the coordinator gets
        an error reply instead of waiting); tasks not started yet wait in the SuperNode and the
        new fork server runs them."""
        ex = self.executor_proc
        if self.config.executor != "fork" or ex is None or ex.poll() is None:
            return None
        if self.proc is None or self.proc.poll() is not None:
            return None
        if self.executor_restarts >= MAX_EXECUTOR_RESTARTS:
            return None
        self.executor_restarts += 1
        status = ex.returncode
        self._start_executor()
        return (f"the ClientApp fork server exited (status {status}); started a new one "
                f"({self.executor_restarts} of at most {MAX_EXECUTOR_RESTARTS} restarts)")

    def is_running(self) -> bool:
        """The SuperNode and (executor="fork") its fork server are alive: without the fork server
        the SuperNode would wait for ever for someone to run its ClientApps."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        return self.config.executor != "fork" or (self.executor_proc is not None and self.executor_proc.poll() is None)

    def exit_description(self) -> str:
        """Which process ended, with its status (for error messages)."""
        parts = []
        if self.proc is not None and self.proc.poll() is not None:
            parts.append(f"the SuperNode exited (status {self.proc.returncode})")
        if self.executor_proc is not None and self.executor_proc.poll() is not None:
            restarts = f" after {self.executor_restarts} restart(s)" if self.executor_restarts else ""
            parts.append(f"the ClientApp fork server exited (status {self.executor_proc.returncode}){restarts}; "
                         "its last lines are in the log below (or run with --executor flower)")
        return "; ".join(parts) or "the SuperNode stopped"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM (the SuperNode leaves the federation cleanly), then kill its whole family."""
        proc = self.proc
        if proc is not None:
            self.family.scan([proc.pid] + ([self.executor_proc.pid] if self.executor_proc is not None else []))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
            self.family.kill([proc.pid] if proc.poll() is None else [], term_wait_s=2.0)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        executor, self.executor_proc = self.executor_proc, None
        if executor is not None:
            if executor.poll() is None:  # normally gone with its SuperNode; the family kill covers the rest
                self.family.kill([executor.pid], term_wait_s=2.0)
                with contextlib.suppress(ProcessLookupError):
                    executor.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                executor.wait(timeout=2)
        self.proc = None
        if self._reaper is not None:
            with contextlib.suppress(ProcessLookupError):
                self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
