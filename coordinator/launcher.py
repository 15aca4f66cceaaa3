"""Launch Flower runs on a private SuperLink: the simulation engine without `run_simulation`.

Flower 1.41 runs a simulation like this: a SuperLink started with `--simulation` hands every
submitted run to its SuperExec, which starts one `flwr-simulation` process per run; that process
unpacks the run's app bundle (FAB), starts Ray (`ray.init`), runs the ServerApp in a thread and
every ClientApp call in a Ray actor. This module drives that machinery from Python:

* `SuperLinkProcess` starts `flower-superlink` (simulation or deployment, insecure or TLS, with
  or without SuperNode authentication) on a port of our choosing, with its state (`--database`),
  its Flower home (`FLWR_HOME`: unpacked app bundles) and its log under a run directory, waits
  until it answers `/health`, and on `stop()` tears down the SuperLink *and everything it
  started* (SuperExec, `flwr-simulation`, `flwr-serverapp`, Ray's processes). SuperExec and its
  children run in sessions of their own and get re-parented to init when their parents die, so
  killing a process group or a process tree is not enough: every process started by a
  `SuperLinkProcess` carries a marker in its environment (`FEDMTL_LAUNCH_TAG`), and its
  `ProcessFamily` (marked processes, the sessions they live in, their descendants) is killed.
  A small reaper process does the same if the launcher itself is SIGKILLed.
* `FlwrCli` runs the `flwr` command line against that SuperLink: it writes the connection into
  `$FLWR_HOME/config.toml`, submits runs (`flwr run --format json`), streams the ServerApp's log
  (`flwr log --stream`), reads a run's status (`flwr ls --run-id --format json`) and stops runs.
* `run_simulation_app` puts it together for `fedmtl simulate`: private SuperLink, one run, live
  progress lines, final status, `SimulationFailed` with the ServerApp's error, full tear-down.

Facts this relies on (checked against flwr 1.41 and ray 2.55 on this machine):

* One port serves the Fleet, Control and Runtime APIs (`--host`/`--port`); the old per-API
  address flags are deprecated and only matter with internal switches we do not set.
* The simulation's federation config only carries `num-supernodes`, `client-resources-num-cpus`
  (an *integer*), `client-resources-num-gpus` (a float), `backend`, `verbose` and
  `init-args-{num-cpus,num-gpus,logging-level,log-to-driver}`. There is no `address`: Flower calls
  `ray.init(runtime_env=..., **init_args)` with no address, and Ray then reads `RAY_ADDRESS`
  from the environment. We set `RAY_ADDRESS` in the SuperLink's environment (inherited by
  SuperExec and `flwr-simulation`): `"local"` always starts a fresh private Ray instance (never
  joining a stale cluster recorded in Ray's `ray_current_cluster` file), `"HOST:PORT"` joins an
  existing cluster.
* `flwr run` exits 0 even when the submission failed (look at `success` in its JSON) and
  `flwr log --stream` ends normally when the run fails: the outcome comes from `flwr ls`.
* The ServerApp and the ClientApps import the app's packages from the unpacked FAB copy under
  `$FLWR_HOME/apps/...` (Flower puts that folder first on `sys.path`), not from the installed
  package. The FAB holds only `*.py, *.toml, *.md, *.yaml, *.yml, *.json, *.jsonl` and `/LICENSE`
  (minus `.gitignore`d paths, `.venv/`, `venv/`, `build/`, `test_*.py`, `*_test.py`, ...), at most
  10 MB: package data such as `tasks/data/*.gz` is NOT in it, so data must be found through an
  explicit path in the run config.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

__all__ = [
    "ENV_TAG",
    "FlwrCli",
    "FlwrCliError",
    "SimulationFailed",
    "SimulationResources",
    "SimulationTimeout",
    "SuperLinkConfig",
    "SuperLinkConnection",
    "SuperLinkError",
    "SuperLinkProcess",
    "TlsFiles",
    "check_fab",
    "find_tagged_processes",
    "free_port",
    "run_simulation_app",
]

#: Environment variable carrying a `SuperLinkProcess`'s marker into every process it starts.
ENV_TAG = "FEDMTL_LAUNCH_TAG"

#: Flower's name for an in-memory SuperLink state (`--database`).
IN_MEMORY_DATABASE = ":flwr-in-memory:"

#: Flower's FAB size limit (`flwr.common.constant.FAB_MAX_SIZE`).
FAB_MAX_SIZE = 10 * 1024 * 1024

#: Environment shared by every Flower process we start: no update check, no telemetry, no
#: Ray usage statistics (all of them try the network), and no `uv sync` of the app's
#: dependencies at run start (the SuperLink's default; it would download torch again).
QUIET_ENV = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FINISHED = "finished"
COMPLETED = "finished:completed"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class SuperLinkError(RuntimeError):
    """The SuperLink did not start, or died."""


class FlwrCliError(RuntimeError):
    """A `flwr` command failed; `output` holds what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class SimulationFailed(RuntimeError):
    """A simulated run did not complete.

    Attributes: `status` (Flower's run status, e.g. `finished:failed`), `details` (Flower's
    status details, e.g. `Simulation failed with exception: ...`), `error_text` (the ServerApp's
    traceback as streamed, if any), `run_id`, and `log_tail` (the last streamed lines).
    """

    def __init__(
        self,
        message: str,
        *,
        status: str = "",
        details: str = "",
        error_text: str = "",
        run_id: int | None = None,
        log_tail: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details
        self.error_text = error_text
        self.run_id = run_id
        self.log_tail = list(log_tail)


class SimulationTimeout(SimulationFailed):
    """A simulated run ran past its time limit (it was stopped)."""


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it; another process may
    still take it before we bind it, so callers retry on "address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
class _Proc:
    state: str  # one letter; "Z" = zombie (dead, waiting to be reaped: holds nothing)
    ppid: int
    sid: int
    tagged: bool


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, session id) of a process, from /proc; None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[3])


def _snapshot(tag: str | None) -> dict[int, _Proc]:
    """Every process we can see, with whether its environment holds `FEDMTL_LAUNCH_TAG=<tag>`."""
    needle = f"{ENV_TAG}={tag}".encode() if tag else None
    out: dict[int, _Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        st = _proc_stat(pid)
        if st is None:
            continue
        tagged = False
        if needle is not None:
            try:
                tagged = needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                pass
        out[pid] = _Proc(st[0], st[1], st[2], tagged)
    return out


class ProcessFamily:
    """The processes a `SuperLinkProcess` started, directly or not, found again at any time.

    Members: processes whose environment carries the marker `FEDMTL_LAUNCH_TAG=<tag>`, every
    process in a session one of them lives in (SuperExec starts `flwr-simulation` in a session
    of its own, and Ray's daemons, agents and actors stay in it; Ray renames them with
    setproctitle, which wipes /proc/PID/environ, so the marker alone misses them), and the
    descendants of all of these and of `roots`. Sessions seen once are remembered, so members
    are still found after their parents died and they were re-parented to init. Our own session
    and our own process are never members. Zombies are ignored.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sids: set[int] = set()

    def scan(self, roots: Sequence[int] = ()) -> set[int]:
        snap = _snapshot(self.tag)
        me = os.getpid()
        own_sid = os.getsid(0)
        tagged = {pid for pid, p in snap.items() if p.tagged}
        self.sids |= {snap[pid].sid for pid in tagged if snap[pid].sid not in (0, 1, own_sid)}
        members = tagged | {pid for pid, p in snap.items() if p.sid in self.sids}
        children: dict[int, list[int]] = {}
        for pid, p in snap.items():
            children.setdefault(p.ppid, []).append(pid)
        todo = [r for r in roots if r in snap] + list(members)
        members |= set(todo)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in members:
                    members.add(child)
                    todo.append(child)
        return {pid for pid in members if pid != me and snap[pid].state != "Z"}

    def kill(self, roots: Sequence[int] = (), term_wait_s: float = 3.0) -> set[int]:
        """SIGTERM every member, wait up to `term_wait_s`, then SIGKILL what is left (Ray's
        agents ignore SIGTERM). Returns the members still alive at the end (normally none)."""
        targets = self.scan(roots)
        if targets:
            _signal_all(targets, signal.SIGTERM)
            _wait_gone(targets, term_wait_s)
        left: set[int] = set()
        for _ in range(3):
            left = _alive(targets | self.scan(roots))
            if not left:
                break
            _signal_all(left, signal.SIGKILL)
            targets = left
            _wait_gone(left, 2.0)
        return _alive(left)


def find_tagged_processes(tag: str) -> set[int]:
    """Live (not zombie) processes whose environment holds `FEDMTL_LAUNCH_TAG=<tag>`."""
    me = os.getpid()
    return {pid for pid, p in _snapshot(tag).items() if p.tagged and p.state != "Z" and pid != me}


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        st = _proc_stat(pid)
        if st is not None and st[0] != "Z":
            out.add(pid)
    return out


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = _alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    return left


def _set_pdeathsig(sig: int) -> None:  # runs in the child between fork and exec
    try:
        _LIBC.prctl(1, sig)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, never fail the exec
        pass


def _killed_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it exits (CLI helpers)."""
    _set_pdeathsig(signal.SIGKILL)


def _cli_popen_kwargs() -> dict[str, Any]:
    """`flwr` CLI children: own session (a terminal Ctrl-C reaches only us, and we decide what
    to stop) and killed with us. An orphaned `flwr log --stream` would keep the SuperLink's
    graceful shutdown waiting for ever ("Waiting for connections to close")."""
    kwargs: dict[str, Any] = {"start_new_session": True}
    if _LIBC is not None:
        kwargs["preexec_fn"] = _killed_with_parent
    return kwargs


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (with the pid, it identifies the process)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()[19]


def _reap_when_parent_dies(parent: int, parent_start: str, tag: str) -> None:
    """The reaper's main: wait for `parent` to die, then kill the family of `tag`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal Ctrl-C is the parent's business
    family = ProcessFamily(tag)
    next_scan = 0.0
    while process_start_time(parent) == parent_start:
        if time.monotonic() >= next_scan:  # learn the family's sessions while it is intact
            family.scan()
            next_scan = time.monotonic() + 2.0
        time.sleep(0.5)
    family.kill(term_wait_s=5.0)


def spawn_reaper(tag: str) -> subprocess.Popen[bytes] | None:
    """Start a reaper: a small process in its own session that outlives us if we are
    SIGKILLed (or crash) and then kills our processes' family (SIGTERM, 5 s, SIGKILL). Without
    it an orphaned `flwr-simulation` lingers ~45 s and leaves Ray's agents running for ever.
    None where /proc is not available."""
    me = os.getpid()
    start = process_start_time(me)
    if start is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != ENV_TAG}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--reap", str(me), start, tag],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env, close_fds=True)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# SuperLink
# ---------------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        if self.isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation={self.isolation!r}: must be 'subprocess' or 'process'")
        if self.enable_supernode_auth and self.tls is None:
            raise ValueError("enable_supernode_auth needs TLS files (Flower refuses it with --insecure)")

    @property
    def home(self) -> Path:
        return Path(self.flwr_home).resolve() if self.flwr_home else self.run_dir / "flwr_home"


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
        cmd = [str(flower_bin_dir() / "flower-superlink"), "--host", cfg.host, "--port", str(self.port)]
        if cfg.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-certfile", str(cfg.tls.certfile), "--ssl-keyfile", str(cfg.tls.keyfile),
                    "--ssl-ca-certfile", str(cfg.tls.ca_certfile)]
        if cfg.simulation:
            cmd.append("--simulation")
        cmd += ["--isolation", cfg.isolation]
        database = cfg.database if cfg.database is not None else cfg.run_dir / "state.db"
        cmd += ["--database", str(database)]
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
                        f"{_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).is_success:
                        return
                time.sleep(0.1)
        raise SuperLinkError(
            f"flower-superlink did not answer {url} within {self.config.startup_timeout_s:.0f}s; "
            f"its log ({self.log_path}) ends:\n{_tail(self.log_path)}"
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


# ---------------------------------------------------------------------------------------------
# flwr CLI
# ---------------------------------------------------------------------------------------------


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


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


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
            err = _tail(stderr_path, 20) if stderr_path else ""
            raise FlwrCliError(f"`flwr log --stream` exited with {code}: {strip_ansi(err)}", err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# FAB checks
# ---------------------------------------------------------------------------------------------


def check_fab(app_dir: Path, forbidden: Sequence[Path] = ()) -> list[tuple[str, int]]:
    """Build the app's FAB the way `flwr run` does and return its (path, size) entries.

    Raises ValueError if it is over Flower's 10 MB limit, or if it would contain files under
    one of the `forbidden` folders (e.g. the run directory: the SuperLink's files would be
    bundled into the app; add the folder to the app's `.gitignore`).
    """
    with warnings.catch_warnings():  # typer/click deprecation on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.cli.build import build_fab_from_disk  # noqa: PLC0415 - heavy import

    app_dir = Path(app_dir).resolve()
    try:
        with warnings.catch_warnings():  # pathspec's 'gitwildmatch' deprecation, once per pattern
            warnings.simplefilter("ignore", DeprecationWarning)
            fab = build_fab_from_disk(app_dir)
    except ValueError as err:
        raise ValueError(f"cannot bundle the Flower app in {app_dir}: {err}") from err
    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        entries = [(i.filename, i.file_size) for i in zf.infolist() if not i.filename.startswith(".info/")]
    for folder in forbidden:
        folder = Path(folder).resolve()
        if not folder.is_relative_to(app_dir):
            continue
        rel = folder.relative_to(app_dir).as_posix() + "/"
        inside = [name for name, _ in entries if name.startswith(rel)]
        if inside:
            raise ValueError(
                f"the Flower app bundle of {app_dir} would include {len(inside)} file(s) under {folder} "
                f"(e.g. {inside[0]}); add '{rel}' to {app_dir / '.gitignore'} or use a folder outside the app"
            )
    if len(fab) > FAB_MAX_SIZE:
        biggest = ", ".join(f"{n} ({s:,} B)" for n, s in sorted(entries, key=lambda e: -e[1])[:5])
        raise ValueError(f"the Flower app bundle is {len(fab):,} bytes, over Flower's {FAB_MAX_SIZE:,}; "
                         f"largest files: {biggest}; .gitignore them or set fab-exclude in [tool.flwr.app]")
    return entries


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResources:
    """Ray resources of a simulation.

    `num_cpus_per_client` / `num_gpus_per_client`: what each simulated ClientApp reserves (Ray
    runs `total / per-client` of them at a time). `ray_address=None` starts a fresh private Ray
    for the run (`RAY_ADDRESS=local`); `"HOST:PORT"` joins an existing cluster (`ray start
    --head`): the ClientApp code is then imported from this machine's FAB copy by path, so its
    workers must share this file system (a single-host cluster). `ray_num_cpus`/`ray_num_gpus`
    cap a private Ray instance (default: all of this machine).

    Flower 1.41 carries the per-client CPU count as an integer. A fractional value is emulated
    on a private Ray: each client reserves 1 logical CPU and Ray is told it has
    `floor(total / num_cpus_per_client)` CPUs, which runs the same number of clients at a time.
    """

    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    ray_num_gpus: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus_per_client <= 0:
            raise ValueError(f"num_cpus_per_client={self.num_cpus_per_client}: must be > 0")
        if self.num_gpus_per_client < 0:
            raise ValueError(f"num_gpus_per_client={self.num_gpus_per_client}: must be >= 0")
        if self.ray_address is not None and (self.ray_num_cpus is not None or self.ray_num_gpus is not None):
            raise ValueError("ray_num_cpus/ray_num_gpus size a private Ray; an existing cluster keeps its own")
        if self.ray_address is not None and not float(self.num_cpus_per_client).is_integer():
            raise ValueError(f"num_cpus_per_client={self.num_cpus_per_client}: Flower 1.41 passes whole CPUs "
                             "per client, and an existing Ray cluster cannot be rescaled to emulate a fraction")

    @property
    def ray_env(self) -> str:
        """The `RAY_ADDRESS` the simulation's `ray.init()` will use."""
        return self.ray_address or "local"

    def federation_config(self, num_supernodes: int) -> dict[str, Any]:
        """Flower's federation (simulation) config for `flwr run --federation-config`."""
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes={num_supernodes}: must be >= 1")
        cfg: dict[str, Any] = {"num-supernodes": int(num_supernodes), "backend": "ray"}
        cpus = float(self.num_cpus_per_client)
        ray_cpus = self.ray_num_cpus
        if cpus.is_integer():
            cfg["client-resources-num-cpus"] = int(cpus)
        else:
            total = ray_cpus if ray_cpus is not None else (os.cpu_count() or 1)
            cfg["client-resources-num-cpus"] = 1
            ray_cpus = max(1, int(total / cpus))
        cfg["client-resources-num-gpus"] = float(self.num_gpus_per_client)
        if self.ray_address is None:
            if ray_cpus is not None:
                cfg["init-args-num-cpus"] = int(ray_cpus)
            if self.ray_num_gpus is not None:
                cfg["init-args-num-gpus"] = int(self.ray_num_gpus)
        return cfg


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys the app declares (`[tool.flwr.app.config]`, nested tables dotted)."""
    import tomllib

    data = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text())
    config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})

    def flat(d: Mapping[str, Any], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for k, v in d.items():
            keys |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return keys

    return flat(config)


def _install_sigterm_handler() -> Callable[[], None]:
    """Turn SIGTERM into SystemExit while a simulation runs (so `finally` tears down)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def error_text(lines: Sequence[str], max_lines: int = 80) -> str:
    """The last traceback in the streamed log (with the `ERROR` line announcing it), if any."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        errors = [line for line in lines if line.startswith("ERROR")]
        return "\n".join(errors[-5:])
    start = starts[-1]
    if start > 0 and lines[start - 1].startswith("ERROR"):
        start -= 1
    return "\n".join(lines[start:start + max_lines]).strip()


#: Lines Flower and Ray print on every simulation that tell nothing about the run.
NOISE_PATTERNS = (
    re.compile(r"^WARNING :\s+Since flwr 1\.32, default simulated SuperNodes changed"),
    re.compile(r"^INFO :\s+To change federation size, use the following command:"),
    re.compile(r"^INFO :\s+\s*flwr federation simulation-config "),
    re.compile(r"FutureWarning: Tip: In future versions of Ray, Ray will no longer override accelerator"),
    re.compile(r"^\s+warnings\.warn\($"),
    re.compile(r"^INFO :\s*$"),
    re.compile(r"^\(ClientAppActor pid=\d+\) WARNING :\s+Manually terminating ClientAppActor$"),
)


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISE_PATTERNS)


def follow_run(link: SuperLinkProcess, cli: FlwrCli, run_id: int, on_line: Callable[[str], None],
                tail: deque[str], deadline: float | None, timeout_s: float | None,
                filter_noise: bool) -> dict[str, Any]:
    """Stream the run's log to `on_line` until the run is finished; return its `flwr ls` record.

    Raises SimulationTimeout past `deadline`, SimulationFailed if the SuperLink dies.
    """
    lines: queue.Queue[str | BaseException | None] = queue.Queue()
    log_proc = cli.log_stream_process(run_id)

    def pump() -> None:
        try:
            for ln in iter_log_lines(log_proc, cli.log_stderr_path(run_id)):
                lines.put(ln)
            lines.put(None)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            lines.put(err)

    reader = threading.Thread(target=pump, name=f"flwr-log-{run_id}", daemon=True)
    reader.start()
    streaming = True
    next_poll = 0.0
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise SimulationTimeout(f"run {run_id} ran past its {timeout_s:.0f}s limit and was stopped",
                                        status="timeout", run_id=run_id, log_tail=list(tail))
            if not link.is_running():
                raise SimulationFailed(f"the SuperLink died during run {run_id}; its log ({link.log_path}) "
                                       f"ends:\n{_tail(link.log_path)}", run_id=run_id, log_tail=list(tail))
            if streaming:
                try:
                    item = lines.get(timeout=0.5)
                except queue.Empty:
                    continue
                if isinstance(item, str):
                    tail.append(item)
                    if not (filter_noise and is_noise(item)):
                        on_line(item)
                    continue
                # The stream ends when the run is finished (or if `flwr log` failed).
                streaming = False
                if isinstance(item, BaseException):
                    on_line(f"[launcher] log stream of run {run_id} broke ({item}); polling its status")
            elif time.monotonic() < next_poll:
                time.sleep(0.2)
                continue
            info = cli.run_info(run_id)
            if str(info.get("status", "")).startswith(_FINISHED):
                return info
            next_poll = time.monotonic() + 1.0
    finally:
        if log_proc.poll() is None:
            log_proc.kill()
        reader.join(timeout=5)


def run_simulation_app(
    app_dir: Path,
    run_dir: Path,
    run_config: Mapping[str, Any],
    num_supernodes: int,
    num_cpus_per_client: float = 1.0,
    num_gpus_per_client: float = 0.0,
    ray_address: str | None = None,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] = print,
    *,
    ray_num_cpus: int | None = None,
    ray_num_gpus: int | None = None,
    check_bundle: bool = True,
    keep_out_of_bundle: Sequence[Path] = (),
    filter_noise: bool = True,
) -> str:
    """Run the Flower app in `app_dir` on the simulation engine (Ray); return its final status.

    Starts a private SuperLink (`--simulation`, loopback, free port; state, Flower home and log
    under `run_dir`), submits one run with `run_config` and `num_supernodes` simulated nodes,
    calls `on_line` with each line of the ServerApp's log as it arrives (ClientApp prints come
    along too: Ray forwards them; Flower's and Ray's boilerplate lines are dropped unless
    `filter_noise=False`; the launcher's own lines start with `[launcher]`), and returns
    `"finished:completed"`. Raises `SimulationFailed` (with Flower's status details and the
    streamed traceback) if the run failed or was stopped, `SimulationTimeout` after `timeout_s`
    (counted from the call). Everything it started is gone when it returns or raises, also on
    Ctrl-C (KeyboardInterrupt) and SIGTERM (turned into SystemExit(143) while it runs in the
    main thread); if this process is SIGKILLed, the SuperLink's reaper process kills all of it
    within about 10 s (Linux).

    `app_dir` is the folder holding the app's `pyproject.toml`. The apps import the app's
    packages from the bundle (FAB), which holds only source and config files: pass data
    locations explicitly in `run_config`. See `SimulationResources` for the Ray settings.
    With `check_bundle`, the bundle is built once beforehand and refused (ValueError) if it is
    over 10 MB or would contain files under `run_dir` or any of `keep_out_of_bundle` (e.g. the
    run's output folder: its *.json would be shipped with every later run unless ignored).
    """
    t_start = time.monotonic()
    deadline = None if timeout_s is None else t_start + timeout_s
    app_dir = Path(app_dir).resolve()
    run_dir = Path(run_dir).resolve()
    resources = SimulationResources(num_cpus_per_client, num_gpus_per_client, ray_address, ray_num_cpus, ray_num_gpus)
    federation = resources.federation_config(num_supernodes)
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} has no pyproject.toml: the app folder is the one holding [tool.flwr.app]")
    unknown = sorted(set(run_config) - app_config_keys(app_dir))
    if unknown:  # Flower would only say "Invalid run configuration."
        raise ValueError(f"run config keys {unknown} are not declared in [tool.flwr.app.config] of "
                         f"{app_dir / 'pyproject.toml'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home: Path | None = None
    tmp_home: str | None = None
    if run_dir.is_relative_to(app_dir):
        # Keep the Flower home (unpacked bundles: *.py, *.toml) out of the app's own bundle.
        tmp_home = tempfile.mkdtemp(prefix="fedmtl-flwr-home-")
        flwr_home = Path(tmp_home)
    if check_bundle:
        check_fab(app_dir, forbidden=[run_dir, *keep_out_of_bundle])

    link = SuperLinkProcess(SuperLinkConfig(
        run_dir=run_dir, simulation=True, flwr_home=flwr_home, env={"RAY_ADDRESS": resources.ray_env},
    ))
    restore_sigterm = _install_sigterm_handler()
    tail: deque[str] = deque(maxlen=400)
    run_id: int | None = None
    finished = False
    try:
        link.start()
        # The CLI's children carry the SuperLink's marker: stop() kills them too.
        cli = FlwrCli(link.flwr_home, link.connection("fedmtl-sim"), env={ENV_TAG: link.tag})
        cli.write_connection()
        on_line(f"[launcher] SuperLink on {link.address} (log {link.log_path}); RAY_ADDRESS={resources.ray_env}; "
                f"federation config {federation}")
        try:
            run_id = cli.submit_run(app_dir, dict(run_config), federation, stream=False, files_dir=link.flwr_home)
        except FlwrCliError as err:
            raise SimulationFailed(f"the run was not accepted: {err}", status="not-submitted",
                                   details=str(err)) from err
        on_line(f"[launcher] run {run_id} submitted ({time.monotonic() - t_start:.1f}s)")
        info = follow_run(link, cli, run_id, on_line, tail, deadline, timeout_s, filter_noise)
        finished = True
        status = str(info.get("status", "unknown"))
        details = str(info.get("status-details", ""))
        if status != COMPLETED:
            text = error_text(list(tail))
            raise SimulationFailed(
                f"run {run_id} ended with status {status}: {details}" + (f"\n{text}" if text else ""),
                status=status, details=details, error_text=text, run_id=run_id, log_tail=list(tail))
        on_line(f"[launcher] run {run_id}: {status} ({time.monotonic() - t_start:.1f}s)")
        return status
    finally:
        try:
            if run_id is not None and not finished and link.is_running():
                # Ask for a clean stop first (flwr-simulation then shuts Ray down itself).
                with contextlib.suppress(Exception):
                    FlwrCli(link.flwr_home, link.connection("fedmtl-sim"), env={ENV_TAG: link.tag},
                            command_timeout_s=15).stop_run(run_id)
        finally:
            link.stop()
            restore_sigterm()
            if tmp_home is not None:
                shutil.rmtree(tmp_home, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--reap":
    _reap_when_parent_dies(int(sys.argv[2]), sys.argv[3], sys.argv[4])
