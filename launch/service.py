"""Real deployments, coordinator side: the coordinator service that clients join from other machines.

`fedmtl coordinator` and `fedmtl keys` are thin command lines over this module:

* `CoordinatorService` starts `flower-superlink` on 127.0.0.1 only (TLS + SuperNode
  authentication unless `insecure`; state in `RUN_DIR/state.db`, Flower home in
  `RUN_DIR/flwr_home`, log in `RUN_DIR/superlink.log`), the Fleet-only gateway
  (`launch/gateway.py`) on the public `host:port` (log `RUN_DIR/gateway.log`), writes the
  loopback connection for the `flwr` CLI, registers the client public keys found in the
  authorized-keys folder, submits the fedmtl app with a run config and follows its log until the
  run is finished. `stop()` tears all of it down; every process carries the SuperLink's marker
  (`processes.ENV_TAG`), so the SuperLink's reaper also kills the gateway if the coordinator is
  SIGKILLed.
* `register_keys`, `coordinator_connection` and friends keep the record of registered client
  keys (`RUN_DIR/registered_keys.json`) and reach a running coordinator's SuperLink.

The client side (`SuperNodeProcess`, `LogFollower`, `classify_supernode_output`) lives in
`launch/supernode.py`; its names stay importable from here.

Everything here was checked with flwr 1.41 and again with 1.42 on loopback and across network namespaces
(tests/test_deployment.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from coordinator.client_registry import REGISTRY_FILE, registry_from_registered, write_registry
from launch import simulation as launcher
from launch.bundle import staged_app
from launch.flwr_cli import FlwrCli, FlwrCliError, SuperLinkConnection
from launch.gateway import DEFAULT_PULL_HOLD_S, GatewayConfig, GatewayLimits, gateway_command, parse_hostport
from launch.processes import ENV_TAG, log_tail, process_start_time
from launch.security import (
    CA_CERT_NAME,
    SERVER_CERT_NAME,
    SERVER_KEY_NAME,
    SecurityError,
    certificate_covers,
    certificate_sans,
    load_client_public_key,
    public_key_fingerprint,
)
from launch.simulation import SimulationFailed
from launch.superlink import SuperLinkConfig, SuperLinkProcess, TlsFiles, child_env
from launch.supernode import (
    TASK_POLL_ENV,
    LogFollower,
    SuperNodeConfig,
    SuperNodeProcess,
    classify_supernode_output,
)

__all__ = [
    "AUTHORIZED_KEYS_DIR",
    "CLIENT_REGISTRY",
    "COORDINATOR_INFO",
    "CoordinatorService",
    "DeploymentError",
    "DeploymentFailed",
    "GatewayProcess",
    "LogFollower",
    "REGISTERED_KEYS",
    "RUN_CONFIG_FILE",
    "SuperNodeConfig",
    "SuperNodeProcess",
    "classify_supernode_output",
    "client_registry_path",
    "coordinator_connection",
    "insecure_banner",
    "register_keys",
]

#: Files and folders of a coordinator's run directory.
AUTHORIZED_KEYS_DIR = "authorized_keys"  # *.pub registered at every start
REGISTERED_KEYS = "registered_keys.json"  # name -> {fingerprint, node_id, file[, revoked]}
CLIENT_REGISTRY = REGISTRY_FILE  # node id -> name, for the ServerApp (coordinator/client_registry.py)
COORDINATOR_INFO = "coordinator.json"  # addresses and pid of the running (or last) coordinator
RUN_CONFIG_FILE = "run_config.toml"  # the run config of the last start (defaults for --resume)
CONNECTION_NAME = "local"  # the flwr CLI connection to the loopback SuperLink
OBJECT_STORES = ("memory", "database")  # where the SuperLink keeps messages' objects (`--objects`)

_GATEWAY_READY = "Uvicorn running"


class DeploymentError(RuntimeError):
    """Something the coordinator or a client cannot start with; the message says what to do."""


class DeploymentFailed(SimulationFailed):
    """The deployed run did not complete (same fields as `launcher.SimulationFailed`)."""


def insecure_banner(what: str) -> str:
    """The loud warning printed whenever TLS and authentication are switched off."""
    bar = "!" * 78
    return (f"{bar}\n!!! INSECURE {what}: no TLS, no client authentication. Traffic and model updates\n"
            f"!!! travel in plain text and ANY host that reaches the port can join as a client.\n"
            f"!!! Use --insecure only on a trusted test network.\n{bar}")


# ---------------------------------------------------------------------------------------------
# Fleet gateway
# ---------------------------------------------------------------------------------------------


class GatewayProcess:
    """`python -m launch.gateway` as a child, a member of the SuperLink's process family."""

    def __init__(self, config: GatewayConfig, log_path: Path, tag: str, startup_timeout_s: float = 30.0) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self.tag = tag
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self.config.validate()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                gateway_command(self.config), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_env({ENV_TAG: self.tag}), cwd=str(Path(__file__).resolve().parents[1]),
                start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            if _GATEWAY_READY in text:
                return self
            if self.proc.poll() is not None:
                self.proc = None
                why = ""
                if "address already in use" in text.lower() or "errno 98" in text.lower():
                    why = f"{self.config.listen} is already in use (another coordinator?); "
                raise DeploymentError(f"the Fleet gateway did not start: {why}its log ({self.log_path}) ends:\n"
                                      f"{log_tail(self.log_path, 15)}")
            time.sleep(0.1)
        self.stop()
        raise DeploymentError(f"the Fleet gateway did not start within {self.startup_timeout_s:.0f}s; "
                              f"its log ({self.log_path}) ends:\n{log_tail(self.log_path, 15)}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.proc = None


# ---------------------------------------------------------------------------------------------
# Client keys on the coordinator
# ---------------------------------------------------------------------------------------------


def key_name(pub: Path) -> str:
    """A public key's client name: its comment (`fedmtl keys create` writes the name), else the file stem."""
    fields = pub.read_text(encoding="ascii", errors="replace").split()
    return fields[2] if len(fields) >= 3 else pub.stem


def read_registered(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(run_dir) / REGISTERED_KEYS
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_registered(run_dir: Path, data: Mapping[str, Any]) -> None:
    """Record the registered keys, and the client registry the ServerApp reads (node id -> name),
    so a registration or revocation while the coordinator runs is seen by its next discovery."""
    write_json_atomic(Path(run_dir) / REGISTERED_KEYS, dict(data), sort_keys=True)
    write_registry(Path(run_dir) / CLIENT_REGISTRY, registry_from_registered(data))


def client_registry_path(run_dir: Path) -> Path:
    """Where the coordinator of `run_dir` keeps its client registry (run-config `client-registry`)."""
    return Path(run_dir).resolve() / CLIENT_REGISTRY


def register_keys(cli: FlwrCli, run_dir: Path, public_keys: Sequence[Path]) -> list[tuple[str, str, int | None]]:
    """Register each public key with the SuperLink (already registered ones are fine).

    Records name, fingerprint and node id in `run_dir/registered_keys.json` and returns
    `(name, fingerprint, node_id or None)` per key. Raises DeploymentError for a bad key file.
    """
    registered = read_registered(run_dir)
    out = []
    for pub in public_keys:
        pub = Path(pub)
        try:
            load_client_public_key(pub)
            fingerprint = public_key_fingerprint(pub)
        except SecurityError as exc:
            raise DeploymentError(f"client key {pub}: {exc}") from exc
        name = key_name(pub)
        held = registered.get(name) or {}
        if held and held.get("fingerprint") != fingerprint and not held.get("revoked"):
            raise DeploymentError(
                f"client key {pub}: the name {name!r} is already bound to another key ({held.get('fingerprint')}, "
                f"node {held.get('node_id')}); a second client may not take a registered name. Give this client "
                f"its own name (`fedmtl keys create OTHER_NAME`), or revoke the old key first "
                f"(`fedmtl keys revoke {name}`)")
        node_id: int | None = None
        try:
            node_id = cli.register_supernode(pub, name=name)
        except FlwrCliError as err:
            if "already in use" not in (str(err) + err.output).lower():
                raise DeploymentError(f"registering {pub} failed: {err}") from err
            previous = next((v for v in registered.values() if v.get("fingerprint") == fingerprint), {})
            if previous.get("revoked"):
                raise DeploymentError(
                    f"the key {pub} ({name}) was revoked, and Flower never accepts a revoked key again: "
                    f"make a new key pair on the client (`fedmtl keys create {name} --force`) and register "
                    "its .pub") from err
            node_id = int(previous["node_id"]) if previous.get("node_id") is not None else None
        registered[name] = {"fingerprint": fingerprint, "node_id": node_id, "file": str(pub.resolve())}
        out.append((name, fingerprint, node_id))
    write_registered(run_dir, registered)
    return out


def authorized_key_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.pub") if p.is_file()) if Path(folder).is_dir() else []


def coordinator_connection(run_dir: Path) -> tuple[FlwrCli, dict[str, Any]]:
    """The `flwr` CLI of a RUNNING coordinator (from `run_dir/coordinator.json`); DeploymentError if none."""
    run_dir = Path(run_dir).resolve()
    info_path = run_dir / COORDINATOR_INFO
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DeploymentError(f"no coordinator has run in {run_dir} ({info_path} missing)") from None
    pid = int(info.get("pid", 0))
    alive = pid > 0 and Path(f"/proc/{pid}").exists() and process_start_time(pid) == info.get("pid_start")
    if not alive or info.get("state") != "running":
        raise DeploymentError(f"the coordinator of {run_dir} is not running")
    conn = SuperLinkConnection(CONNECTION_NAME, info["superlink"], insecure=bool(info["insecure"]),
                               root_certificates=Path(info["ca"]) if info.get("ca") else None)
    return FlwrCli(Path(info["flwr_home"]), conn, command_timeout_s=60), info


# ---------------------------------------------------------------------------------------------
# The coordinator service
# ---------------------------------------------------------------------------------------------


@dataclass
class CoordinatorSettings:
    """Where and how the coordinator listens (see `fedmtl coordinator --help`)."""

    run_dir: Path
    host: str = "0.0.0.0"
    port: int = 9092
    tls_dir: Path | None = None  # default run_dir/tls
    insecure: bool = False
    authorized_keys: Path | None = None  # default run_dir/authorized_keys
    superlink_port: int | None = None  # internal, loopback only; None = free port
    gateway_limits: GatewayLimits | None = None  # None = the gateway's defaults (launch/gateway_limits.py)
    pull_hold_s: float = DEFAULT_PULL_HOLD_S  # the gateway holds empty pulls (0: SuperNodes poll every 3 s)
    objects: str = "memory"  # where the SuperLink keeps messages' objects: memory | database (launch/superlink_main.py)

    def __post_init__(self) -> None:
        if self.objects not in OBJECT_STORES:
            raise ValueError(f"objects={self.objects!r}: must be one of {', '.join(OBJECT_STORES)}")
        self.run_dir = Path(self.run_dir).resolve()
        self.tls_dir = Path(self.tls_dir).resolve() if self.tls_dir else self.run_dir / "tls"
        self.authorized_keys = (Path(self.authorized_keys).resolve() if self.authorized_keys
                                else self.run_dir / AUTHORIZED_KEYS_DIR)

    @property
    def public(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def tls_files(self) -> TlsFiles:
        assert self.tls_dir is not None
        return TlsFiles(self.tls_dir / SERVER_CERT_NAME, self.tls_dir / SERVER_KEY_NAME, self.tls_dir / CA_CERT_NAME)

    def check(self) -> list[str]:
        """Pre-flight checks; returns the addresses clients may dial. Raises DeploymentError."""
        try:
            parse_hostport(self.public)
        except ValueError as exc:
            raise DeploymentError(f"--host/--port: {exc}") from None
        if self.insecure:
            return []
        tls = self.tls_files()
        missing = [p.name for p in (tls.certfile, tls.keyfile, tls.ca_certfile) if not p.is_file()]
        if missing:
            hint = self.host if self.host not in ("0.0.0.0", "::", "") else "<name or IP clients dial>"
            raise DeploymentError(
                f"TLS is on but {self.tls_dir} lacks {', '.join(missing)}: create them with "
                f"`fedmtl certs --out {self.tls_dir} --host {hint}` (or pass --tls-dir, or --insecure on a "
                "trusted test network)")
        try:
            dns, ips = certificate_sans(tls.certfile)
            if not certificate_covers(tls.certfile, "127.0.0.1"):
                raise DeploymentError(
                    f"{tls.certfile} has no SAN for 127.0.0.1, which the SuperLink's own services dial: "
                    "recreate it with `fedmtl certs` (it always adds loopback)")
            if self.host not in ("0.0.0.0", "::", "") and not certificate_covers(tls.certfile, self.host):
                raise DeploymentError(
                    f"{tls.certfile} does not cover --host {self.host} (it covers {', '.join(dns + ips)}): "
                    f"recreate it with `fedmtl certs --out {self.tls_dir} --host {self.host} --force`")
        except SecurityError as exc:
            raise DeploymentError(str(exc)) from exc
        return [*dns, *ips]


class CoordinatorService:
    """The SuperLink (loopback), the Fleet gateway (public) and the `flwr` CLI, for one run dir."""

    def __init__(self, settings: CoordinatorSettings, app_dir: Path, on_line: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.app_dir = Path(app_dir).resolve()
        self.on_line = on_line
        s = settings
        self.link = SuperLinkProcess(SuperLinkConfig(
            run_dir=s.run_dir, host="127.0.0.1", port=s.superlink_port,
            tls=None if s.insecure else s.tls_files(), enable_supernode_auth=not s.insecure,
            database=s.run_dir / "state.db", objects_in_memory=s.objects == "memory", flwr_home=s.run_dir / "flwr_home",
            env={TASK_POLL_ENV: "0.2"},  # its SuperExec starts the ServerApp within 0.2 s, not 1 s
        ))
        self.gateway: GatewayProcess | None = None
        self.cli: FlwrCli | None = None
        self.run_id: int | None = None
        self._finished = False

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> CoordinatorService:
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        if not s.insecure:
            assert s.authorized_keys is not None
            s.authorized_keys.mkdir(parents=True, exist_ok=True)
        self.link.start()
        tls = None if s.insecure else s.tls_files()
        self.gateway = GatewayProcess(
            GatewayConfig(listen=s.public, upstream=self.link.address, insecure=s.insecure,
                          ssl_certfile=str(tls.certfile) if tls else None,
                          ssl_keyfile=str(tls.keyfile) if tls else None,
                          upstream_ca_certfile=str(tls.ca_certfile) if tls else None,
                          # refuse, before reading any body, requests not signed by an accepted key
                          authorized_keys=None if s.insecure else str(s.authorized_keys),
                          limits=s.gateway_limits or GatewayLimits(),
                          pull_hold_s=s.pull_hold_s),
            s.run_dir / "gateway.log", self.link.tag)
        self.gateway.start()
        self.cli = FlwrCli(self.link.flwr_home, self.link.connection(CONNECTION_NAME), env={ENV_TAG: self.link.tag})
        self.cli.write_connection()
        self._write_info("running")
        return self

    def _write_info(self, state: str) -> None:
        s = self.settings
        info = {
            "state": state,
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "public": s.public,
            "superlink": self.link.address if self.link.port else None,
            "insecure": s.insecure,
            "ca": str(s.tls_files().ca_certfile) if not s.insecure else None,
            "tls_dir": str(s.tls_dir),
            "authorized_keys": str(s.authorized_keys),
            "flwr_home": str(self.link.flwr_home),
            "run_id": self.run_id,
        }
        write_json_atomic(s.run_dir / COORDINATOR_INFO, info)

    def register_authorized_keys(self) -> tuple[list[tuple[str, str, int | None]], list[str]]:
        """Register every `*.pub` of the authorized-keys folder and unregister the nodes of keys
        removed from it since (`fedmtl keys revoke` while the coordinator was down). Returns
        (accepted keys as (name, fingerprint, node id), revoked names); no-op when insecure."""
        if self.settings.insecure:
            return [], []
        assert self.cli is not None and self.settings.authorized_keys is not None
        run_dir = self.settings.run_dir
        accepted = register_keys(self.cli, run_dir, authorized_key_files(self.settings.authorized_keys))
        current = {name for name, _fp, _node in accepted}
        registered = read_registered(run_dir)
        revoked = []
        for name in sorted(set(registered) - current):
            record = registered[name]
            if record.get("revoked"):
                continue
            if record.get("node_id") is not None:
                with contextlib.suppress(FlwrCliError):
                    self.cli.unregister_supernode(int(record["node_id"]))
            record["revoked"] = True
            revoked.append(name)
        if revoked:
            write_registered(run_dir, registered)
        return accepted, revoked

    def stop_stale_runs(self) -> list[int]:
        """Stop runs a previous (killed) coordinator left unfinished in the state database, so
        their queued messages do not keep the clients busy. Returns their ids."""
        assert self.cli is not None
        stale = [int(r["run-id"]) for r in self.cli.list_runs()
                 if not str(r.get("status", "")).startswith("finished")]
        for run_id in stale:
            with contextlib.suppress(FlwrCliError):
                self.cli.stop_run(run_id)
        return stale

    def submit(self, run_config: Mapping[str, Any]) -> int:
        assert self.cli is not None
        try:
            # The bundle is built from a clean copy of the code only (launch/bundle.py): nothing of a
            # data, key or run folder that lies in the project folder is shipped.
            with staged_app(self.app_dir, exclude=[self.settings.run_dir]) as staged:
                self.run_id = self.cli.submit_run(staged, dict(run_config), None, stream=False,
                                                  files_dir=self.link.flwr_home)
        except FlwrCliError as err:
            raise DeploymentFailed(f"the run was not accepted: {err}", status="not-submitted", details=str(err)) from err
        self._write_info("running")
        return self.run_id

    def follow(self, on_line: Callable[[str], None] | None = None, timeout_s: float | None = None) -> str:
        """Stream the run's log until it is finished; return `finished:completed` or raise DeploymentFailed."""
        assert self.cli is not None and self.run_id is not None
        on_line = on_line or self.on_line
        tail: deque[str] = deque(maxlen=400)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            info = launcher.follow_run(_Watched(self.link, self.gateway), self.cli, self.run_id, on_line, tail,
                                        deadline, timeout_s, True)
        except SimulationFailed as exc:
            raise DeploymentFailed(str(exc).replace("SuperLink died", "coordinator's SuperLink or gateway died"),
                                   status=exc.status, details=exc.details, run_id=self.run_id,
                                   log_tail=list(tail)) from exc
        self._finished = True
        status = str(info.get("status", "unknown"))
        details = str(info.get("status-details", ""))
        if status != launcher.COMPLETED:
            error_text = launcher.error_text(list(tail))
            raise DeploymentFailed(
                f"run {self.run_id} ended with status {status}: {details}" + (f"\n{error_text}" if error_text else ""),
                status=status, details=details, error_text=error_text, run_id=self.run_id, log_tail=list(tail))
        return status

    def stop(self) -> None:
        """Stop the run if it is still going, then the gateway, the SuperLink and all they started."""
        try:
            if self.run_id is not None and not self._finished and self.link.is_running():
                with contextlib.suppress(Exception):
                    FlwrCli(self.link.flwr_home, self.link.connection(CONNECTION_NAME), env={ENV_TAG: self.link.tag},
                            command_timeout_s=15).stop_run(self.run_id)
        finally:
            try:
                if self.gateway is not None:
                    self.gateway.stop()
            finally:
                self.link.stop()
                with contextlib.suppress(OSError):
                    if (self.settings.run_dir / COORDINATOR_INFO).exists():
                        self._write_info("stopped")

    def __enter__(self) -> CoordinatorService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Watched:
    """What `launcher.follow_run` needs of a SuperLink: alive only while the gateway is too."""

    def __init__(self, link: SuperLinkProcess, gateway: GatewayProcess | None) -> None:
        self._link = link
        self._gateway = gateway
        self.log_path = link.log_path

    def is_running(self) -> bool:
        if self._gateway is not None and not self._gateway.is_running():
            self.log_path = self._gateway.log_path
            return False
        return self._link.is_running()
