"""Certificates, SuperNode keys, refusal behaviour and Fleet-only exposure.

* Unit tests: files, permissions, SANs, and that Flower's own loaders accept
  what :mod:`launch.security` writes; the Fleet gateway's allow-list.
* ``slow``: a real ``flower-superlink`` (TLS + SuperNode auth) on loopback; a
  registered SuperNode connects, an unregistered one and one without the CA
  are refused within seconds with recognisable messages.
* ``netns`` (+ ``slow``): SuperLink on the hub namespace's loopback, the Fleet
  gateway on its LAN address; from a member namespace a SuperNode trains
  (answers a real run) while ``flwr ls/run/stop``, ``flwr supernode
  register``, ``/docs`` and ``/openapi.json`` are refused.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from launch.gateway import FLEET_ROUTES, FleetGateway, GatewayConfig, gateway_command
from launch.security import (
    SecurityError,
    certificate_covers,
    certificate_sans,
    create_ca,
    create_client_keypair,
    create_server_cert,
    load_client_public_key,
)
from testbed.flower_app import write_flower_app

try:  # works whether or not tests/ is a package
    from tests.netns import NetnsLan, skip_unless_netns, stop_processes
except ImportError:  # pragma: no cover
    from netns import NetnsLan, skip_unless_netns, stop_processes  # type: ignore

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- #
# Unit tests: certificates and keys
# --------------------------------------------------------------------------- #
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_and_server_cert_files_and_sans(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    assert _mode(ca.key_path) == 0o600
    assert _mode(ca.cert_path) == 0o644
    srv = create_server_cert(
        ca, tmp_path / "srv", ["coord.example.org", "10.1.2.3"], ["192.168.5.6"]
    )
    assert _mode(srv.key_path) == 0o600
    assert srv.ca_cert_path.read_bytes() == ca.cert_path.read_bytes()
    dns, ips = certificate_sans(srv.cert_path)
    # an IP given among host names becomes an IP SAN; loopback always added
    assert set(dns) == {"coord.example.org", "localhost"}
    assert set(ips) == {"10.1.2.3", "192.168.5.6", "127.0.0.1", "::1"}
    for host in ("coord.example.org:9092", "10.1.2.3", "127.0.0.1:9093", "[::1]:1"):
        assert certificate_covers(srv.cert_path, host), host
    assert not certificate_covers(srv.cert_path, "10.9.9.9:9092")
    assert not certificate_covers(srv.cert_path, "other.example.org")

    # Flower's SuperLink reads the three files as given (try_obtain_server_certificates)
    import argparse

    from flwr.common.args import try_obtain_server_certificates

    certs = try_obtain_server_certificates(
        argparse.Namespace(
            ssl_certfile=str(srv.cert_path),
            ssl_keyfile=str(srv.key_path),
            ssl_ca_certfile=str(srv.ca_cert_path),
        )
    )
    assert certs is not None and certs[0].startswith(b"-----BEGIN CERTIFICATE")


def test_server_cert_verifies_like_flower_client(tmp_path: Path) -> None:
    """Real TLS handshake, client context built as flwr's ProtobufClient does."""
    ca = create_ca(tmp_path)
    srv = create_server_cert(ca, tmp_path, ["coord.example.org"], [])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(srv.cert_path, srv.key_path)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = lsock.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (OSError, ssl.SSLError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # as flwr does
    client_ctx.load_verify_locations(cadata=ca.cert_path.read_text())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            client_ctx.wrap_socket(raw, server_hostname="10.9.9.9")
    lsock.close()
    t.join(timeout=5)


def test_client_keypair_loads_with_flower_loaders(tmp_path: Path) -> None:
    kp = create_client_keypair(tmp_path, "site-a")
    assert kp.private_key_path.name == "site-a.key"
    assert _mode(kp.private_key_path) == 0o600
    line = kp.public_key_path.read_text().strip()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(" site-a")
    assert kp.fingerprint.startswith("SHA256:")

    # flower-supernode --auth-supernode-private-key
    import argparse

    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    priv, pub = _try_setup_client_authentication(
        argparse.Namespace(
            auth_supernode_private_key=str(kp.private_key_path),
            auth_supernode_public_key=None,
        )
    )
    assert priv.curve.name == "secp384r1"

    # flwr supernode register KEY.pub (CLI side), then the SuperLink's check
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_public_key,
        public_key_to_bytes,
        uses_nist_ec_curve,
    )

    pem = try_load_public_key(kp.public_key_path)
    assert uses_nist_ec_curve(bytes_to_public_key(pem))
    assert pem == public_key_to_bytes(pub)  # the pair matches
    assert load_client_public_key(kp.public_key_path).curve.name == "secp384r1"


def test_refusals_and_errors(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca")
    with pytest.raises(SecurityError, match="overwrite"):
        create_ca(tmp_path / "ca")
    create_ca(tmp_path / "ca", overwrite=True)
    kp = create_client_keypair(tmp_path / "k", "n1")
    with pytest.raises(SecurityError, match="overwrite"):
        create_client_keypair(tmp_path / "k", "n1")
    for bad in ("../evil", "", "a b", "x/y"):
        with pytest.raises(SecurityError, match="Invalid client name"):
            create_client_keypair(tmp_path / "k", bad)
    with pytest.raises(SecurityError, match="wildcard bind address"):
        create_server_cert(ca, tmp_path / "s", [], ["0.0.0.0"])
    with pytest.raises(SecurityError, match="neither a valid host name"):
        create_server_cert(ca, tmp_path / "s", ["bad host"], [])
    with pytest.raises(SecurityError, match="lists of strings"):
        create_server_cert(ca, tmp_path / "s", "coord", [])  # type: ignore[arg-type]
    with pytest.raises(SecurityError, match="not a CA certificate|does not exist"):
        create_server_cert(tmp_path / "k", tmp_path / "s", ["a"], [])
    with pytest.raises(SecurityError, match="not an OpenSSH public key"):
        load_client_public_key(kp.private_key_path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "ed.pub").write_bytes(ed + b" x\n")
    with pytest.raises(SecurityError, match="ECDSA key on a NIST curve"):
        load_client_public_key(tmp_path / "ed.pub")


# --------------------------------------------------------------------------- #
# Unit tests: Fleet gateway allow-list (no SuperLink needed)
# --------------------------------------------------------------------------- #
def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_gateway_routes_are_exactly_the_installed_flower_fleet_api() -> None:
    """The allow-list follows Flower: every route of the installed SuperLink's Fleet router, all
    POST, and nothing else (re-checked whenever flwr is upgraded)."""
    from flwr.superlink.routers.fleet.router import router

    installed = {(sorted(r.methods)[0], r.path) for r in router.routes}
    assert installed == {("POST", path) for path in FLEET_ROUTES}


def test_gateway_allow_list() -> None:
    import httpx

    assert len(FLEET_ROUTES) == 12
    dead = _free_port()  # nothing listens there
    gw = FleetGateway(
        GatewayConfig(listen="127.0.0.1:1", upstream=f"127.0.0.1:{dead}", insecure=True)
    )

    async def go() -> list[tuple[str, str, int]]:
        out = []
        transport = httpx.ASGITransport(app=gw, client=("10.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            for method, path in [
                ("GET", "/docs"),
                ("GET", "/openapi.json"),
                ("POST", "/v1/control/list-runs"),
                ("POST", "/v1/control/register-node"),
                ("POST", "/v1/control/start-run"),
                ("POST", "/v1/control/stop-run"),
                ("POST", "/v1/runtime/pull-messages"),
                ("GET", "/v1/fleet/pull-messages"),
                ("POST", "/v1/fleet/../control/list-runs"),
                ("POST", "/v1/fleet/pull-messages/x"),
                ("POST", "/v1/fleet/pull-messages"),  # allowed: upstream down -> 502
            ]:
                r = await c.request(method, path, content=b"\x00")
                out.append((method, path, r.status_code))
        await gw._client.aclose()  # pylint: disable=protected-access
        return out

    import asyncio

    results = asyncio.run(go())
    assert [code for _, _, code in results[:-1]] == [404] * (len(results) - 1), results
    assert results[-1][2] == 502  # retryable for flower-supernode
    assert gw.refused == len(results) - 1


def test_gateway_command_and_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="required"):
        GatewayConfig(listen="0.0.0.0:9092", upstream="127.0.0.1:9093").validate()
    with pytest.raises(ValueError, match="HOST:PORT"):
        GatewayConfig(listen="9092", upstream="127.0.0.1:9093", insecure=True).validate()
    cfg = GatewayConfig(
        listen="[::]:9092", upstream="127.0.0.1:9093",
        ssl_certfile="s.crt", ssl_keyfile="s.key", upstream_ca_certfile="ca.crt",
    )
    cmd = gateway_command(cfg)
    assert cmd[1:3] == ["-m", "launch.gateway"]
    assert "--insecure" not in cmd and "--upstream-ca-certfile" in cmd


# --------------------------------------------------------------------------- #
# Real processes
# --------------------------------------------------------------------------- #
def _need_flower_bins() -> None:
    for name in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr"):
        if not (BIN / name).exists():
            pytest.skip(f"{name} not found next to {sys.executable}")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        # flower-superlink starts `flower-superexec` by name, so the venv's bin
        # directory must come first on PATH.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(k, None)
    home.mkdir(parents=True, exist_ok=True)
    return env


def _write_connections(home: Path, conns: dict[str, str], ca: Path) -> None:
    lines = ["[superlink]", f'default = "{next(iter(conns))}"', ""]
    for name, addr in conns.items():
        lines += [f"[superlink.{name}]", f'address = "{addr}"', f'root-certificates = "{ca}"', ""]
    (home / "config.toml").write_text("\n".join(lines))


def _wait_for(pred: Callable[[], bool], timeout: float, what: str,
              proc: subprocess.Popen[Any] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out / exited waiting for {what}\n{tail}")


def _log_has(log: Path, needle: str) -> Callable[[], bool]:
    return lambda: log.exists() and needle in log.read_text(errors="replace")


def _superlink_cmd(pki_dir: Path, host: str, port: int, db: Path) -> list[str]:
    """The flags fedmtl's launcher passes (TLS + SuperNode auth, loopback)."""
    return [
        str(BIN / "flower-superlink"),
        "--host", host, "--port", str(port),
        "--ssl-certfile", str(pki_dir / "server.crt"),
        "--ssl-keyfile", str(pki_dir / "server.key"),
        "--ssl-ca-certfile", str(pki_dir / "ca.crt"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str(db),
    ]


def _supernode_cmd(superlink: str, ca: Path | None, key: Path, port: int,
                   extra: list[str] | None = None) -> list[str]:
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink, "--port", str(port),
           "--auth-supernode-private-key", str(key)]
    if ca is not None:
        cmd += ["--root-certificates", str(ca)]
    return cmd + (extra or [])


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_processes(started)


def _popen(started: list[subprocess.Popen[Any]], cmd: list[str], env: dict[str, str],
           log: Path, cwd: Path | None = None) -> subprocess.Popen[Any]:
    f = open(log, "wb")  # noqa: SIM115 - closed by the child's exit
    p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True, cwd=cwd)
    f.close()
    started.append(p)
    return p


def _flwr(args: list[str], env: dict[str, str], prefix: list[str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), str(BIN / "flwr"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _run_all_to_exit(cmds: dict[str, list[str]], env: dict[str, str], log_dir: Path,
                     timeout: float = 60,
                     prefix: list[str] | None = None) -> dict[str, tuple[int, str, float]]:
    """Run commands concurrently until each process itself exits.

    Output goes to files, not pipes: flower-supernode leaves a
    `flower-superexec` child holding the inherited stdout/stderr until the
    SuperNode has been reaped, so reading a pipe to EOF
    (subprocess.run(capture_output=True)) deadlocks. Wait for each process,
    then stop what is left of its process group.
    Returns {name: (exit status, output, seconds)}.
    """
    t0 = time.monotonic()
    started = {}
    for name, cmd in cmds.items():
        log = log_dir / f"{name}.log"
        with open(log, "wb") as f:
            started[name] = (subprocess.Popen([*(prefix or []), *cmd], env=env, stdout=f,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True), log)
    out = {}
    try:
        for name, (p, log) in started.items():
            try:
                rc = p.wait(timeout=max(0.1, t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = -1
            out[name] = (rc, "", time.monotonic() - t0)
    finally:
        stop_processes([p for p, _ in started.values()])
    return {n: (rc, started[n][1].read_text(errors="replace"), dt)
            for n, (rc, _, dt) in out.items()}


REFUSED_UNREGISTERED = "Failed to activate SuperNode"
EXIT_CONNECTION_ERROR = "Exit Code: 305"


@pytest.mark.slow
def test_loopback_tls_auth_registered_and_refused(tmp_path: Path, procs: list) -> None:
    _need_flower_bins()
    pki = tmp_path / "pki"
    create_server_cert(create_ca(pki), pki, [], [])
    n1 = create_client_keypair(tmp_path / "keys", "n1")
    n2 = create_client_keypair(tmp_path / "keys", "n2")
    env = _env(tmp_path / "home")
    port = _free_port()
    _write_connections(tmp_path / "home", {"local": f"127.0.0.1:{port}"}, pki / "ca.crt")

    sl_log = tmp_path / "superlink.log"
    sl = _popen(procs, _superlink_cmd(pki, "127.0.0.1", port, tmp_path / "state.db"),
                env, sl_log)
    _wait_for(_log_has(sl_log, "Application startup complete"), 30, "SuperLink", sl, sl_log)

    r = _flwr(["supernode", "register", str(n1.public_key_path), "local", "--name", "n1"], env)
    assert r.returncode == 0, r.stdout + r.stderr

    n1_log = tmp_path / "n1.log"
    n1p = _popen(procs, _supernode_cmd(f"127.0.0.1:{port}", pki / "ca.crt",
                                       n1.private_key_path, _free_port()), env, n1_log)
    # Concurrently: an unregistered key, and the registered key without our CA.
    refusals = _run_all_to_exit({
        "unregistered": _supernode_cmd(f"127.0.0.1:{port}", pki / "ca.crt",
                                       n2.private_key_path, _free_port(),
                                       ["--max-wait-time", "30"]),
        "no-ca": _supernode_cmd(f"127.0.0.1:{port}", None, n1.private_key_path,
                                _free_port(), ["--max-wait-time", "30"]),
    }, env, tmp_path)

    # Unregistered key: refused fast, no retry loop (exit status 1, Flower's
    # own code 305 only in the output).
    rc2, out2, dt_unreg = refusals["unregistered"]
    assert rc2 == 1, out2
    assert REFUSED_UNREGISTERED in out2 and EXIT_CONNECTION_ERROR in out2, out2
    assert dt_unreg < 20, dt_unreg

    # No CA given: the system store does not know our CA -> refused fast.
    rc3, out3, dt_noca = refusals["no-ca"]
    assert rc3 == 1 and "CERTIFICATE_VERIFY_FAILED" in out3, out3
    assert EXIT_CONNECTION_ERROR in out3 and dt_noca < 20

    _wait_for(_log_has(n1_log, "SuperNode ID"), 30, "registered SuperNode", n1p, n1_log)
    ls = _flwr(["supernode", "ls", "local", "--format", "json"], env)
    nodes = json.loads(ls.stdout)["nodes"]
    assert [n["status"] for n in nodes] == ["online"], ls.stdout
    print(f"unregistered refused in {dt_unreg:.1f}s, no-CA refused in {dt_noca:.1f}s")


# A Flower app that needs nothing but flwr: one query round-trip per node.
_TINY_SERVER = """\
import time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    want = int(context.run_config["expect-nodes"])
    deadline = time.time() + 60
    nodes = list(grid.get_node_ids())
    while len(nodes) < want and time.time() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({"q": ConfigRecord({"ping": 7})}), dst_node_id=n,
                    message_type="query") for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=60))
    ok = [r for r in replies if not r.has_error() and r.content["a"]["pong"] == 8]
    if len(ok) < want:
        raise RuntimeError(f"{len(ok)} good replies of {want}")
"""
_TINY_CLIENT = """\
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

@app.query()
def query(msg: Message, context: Context) -> Message:
    ping = msg.content["q"]["ping"]
    print("TINYAPP got ping", ping, flush=True)
    return Message(RecordDict({"a": ConfigRecord({"pong": ping + 1})}), reply_to=msg)
"""


def _write_tiny_app(root: Path, expect_nodes: int = 1) -> Path:
    return write_flower_app(root, "tinyapp", {"tinyapp/server.py": _TINY_SERVER, "tinyapp/client.py": _TINY_CLIENT},
                            "tinyapp.server:app", "tinyapp.client:app", {"expect-nodes": expect_nodes})


# Run inside the client's namespace: the API docs, a Control and a Runtime
# route through the gateway, then a TCP connect to the SuperLink's own port.
_PROBE = """\
import socket, sys, httpx
base, ca, direct = sys.argv[1], sys.argv[2], sys.argv[3]
with httpx.Client(base_url=base, verify=ca, timeout=10, trust_env=False) as c:
    for m, p in [("GET", "/docs"), ("GET", "/openapi.json"),
                 ("POST", "/v1/control/list-runs"), ("POST", "/v1/runtime/pull-messages")]:
        print(m, p, c.request(m, p).status_code)
h, port = direct.rsplit(":", 1)
try:
    socket.create_connection((h, int(port)), timeout=5).close()
    print("DIRECT open")
except OSError as e:
    print("DIRECT refused", e.errno)
"""


@pytest.mark.slow
@pytest.mark.netns
def test_netns_only_fleet_api_reachable(tmp_path: Path) -> None:
    _need_flower_bins()
    skip_unless_netns()
    sl_port, gw_port = 9093, 9092
    with NetnsLan(n_members=1) as lan:
        hub, member = lan.hub, lan.members[0]
        pki = tmp_path / "pki"
        create_server_cert(create_ca(pki), pki, [], [hub.address])
        ca = pki / "ca.crt"
        n1 = create_client_keypair(tmp_path / "keys", "n1")
        rogue = create_client_keypair(tmp_path / "keys", "rogue")
        app_dir = _write_tiny_app(tmp_path / "app")

        hub_env = _env(tmp_path / "hub-home")
        _write_connections(tmp_path / "hub-home", {"local": f"127.0.0.1:{sl_port}"}, ca)
        mem_env = _env(tmp_path / "member-home")
        public = f"{hub.address}:{gw_port}"
        _write_connections(tmp_path / "member-home",
                           {"coord": public, "direct": f"{hub.address}:{sl_port}"}, ca)

        # Coordinator side: SuperLink on the hub's loopback, gateway on its LAN IP.
        sl_log, gw_log = tmp_path / "superlink.log", tmp_path / "gateway.log"
        with open(sl_log, "wb") as f:
            sl = hub.popen(_superlink_cmd(pki, "127.0.0.1", sl_port, tmp_path / "s.db"),
                           env=hub_env, stdout=f, stderr=subprocess.STDOUT)
        gw_cfg = GatewayConfig(
            listen=f"0.0.0.0:{gw_port}", upstream=f"127.0.0.1:{sl_port}",
            ssl_certfile=str(pki / "server.crt"), ssl_keyfile=str(pki / "server.key"),
            upstream_ca_certfile=str(ca))
        with open(gw_log, "wb") as f:
            gw = hub.popen(gateway_command(gw_cfg), env=hub_env, stdout=f,
                           stderr=subprocess.STDOUT, cwd=REPO)
        _wait_for(_log_has(sl_log, "Application startup complete"), 30, "SuperLink", sl, sl_log)
        _wait_for(_log_has(gw_log, "Uvicorn running"), 30, "gateway", gw, gw_log)

        r = _flwr(["supernode", "register", str(n1.public_key_path), "local"], hub_env,
                  hub.prefix())
        assert r.returncode == 0, r.stdout + r.stderr

        # Client side: the SuperNode reaches the Fleet API through the gateway.
        n1_log = tmp_path / "n1.log"
        with open(n1_log, "wb") as f:
            n1p = member.popen(_supernode_cmd(public, ca, n1.private_key_path, 9094),
                               env=mem_env, stdout=f, stderr=subprocess.STDOUT)
        _wait_for(_log_has(n1_log, "SuperNode ID"), 40, "SuperNode via gateway", n1p, n1_log)

        # ... and trains: a real run started on the coordinator host. While it
        # is in flight, the client's namespace tries the Control API through the
        # public address (and the SuperLink's own port) and must be refused.
        run_log = tmp_path / "run.log"
        with open(run_log, "wb") as f:
            run = hub.popen([str(BIN / "flwr"), "run", str(app_dir), "local", "--stream"],
                            env=hub_env, stdout=f, stderr=subprocess.STDOUT)
        _wait_for(lambda: re.search(r"started run (\d+)", run_log.read_text()) is not None,
                  60, "run start", run, run_log)
        run_id = re.search(r"started run (\d+)", run_log.read_text()).group(1)

        flwr = str(BIN / "flwr")
        attempts = _run_all_to_exit({
            "ls": [flwr, "ls", "coord"],
            "stop": [flwr, "stop", run_id, "coord"],
            "run": [flwr, "run", str(app_dir), "coord"],
            "register": [flwr, "supernode", "register", str(rogue.public_key_path), "coord"],
            "ls-direct": [flwr, "ls", "direct"],  # SuperLink's port: not listening there
            "probe": [sys.executable, "-c", _PROBE, f"https://{public}", str(ca),
                      f"{hub.address}:{sl_port}"],
        }, mem_env, tmp_path, timeout=90, prefix=member.prefix())
        rc, probe_out, _ = attempts.pop("probe")
        assert rc == 0, probe_out
        lines = [x for x in probe_out.splitlines() if x.startswith(("GET", "POST", "DIRECT"))]
        assert len(lines) == 5 and all(x.endswith(" 404") for x in lines[:4]), probe_out
        assert lines[4].startswith("DIRECT refused"), probe_out
        for what, (rc, out, _) in attempts.items():
            assert rc != 0, f"{what} was not refused:\n{out}"
            if what != "ls-direct":
                assert "404 Not Found" in out, f"{what}: {out}"

        assert run.wait(timeout=120) == 0, run_log.read_text()
        assert "TINYAPP got ping 7" in n1_log.read_text()

        # ... and nothing changed on the coordinator: one key, run not stopped.
        nodes = json.loads(_flwr(["supernode", "ls", "local", "--format", "json"], hub_env,
                                 hub.prefix()).stdout)["nodes"]
        assert len(nodes) == 1 and nodes[0]["status"] == "online", nodes
        runs = json.loads(_flwr(["ls", "local", "--format", "json"], hub_env,
                                hub.prefix()).stdout)["runs"]
        # one run (the refused `flwr run` created none), completed (not stopped)
        assert [x["status"] for x in runs] == ["finished:completed"], runs
        assert gw_log.read_text().count("Refused") >= 8


@pytest.mark.slow
def test_trusted_entities_refuse_an_app_bundle_submitted_from_a_folder(tmp_path: Path, procs: list) -> None:
    """`fedmtl client --trusted-entities` (Flower's app verification): a bundle that `flwr run`
    built from a local folder carries no signature, so the client refuses to run any of it and
    the run gets an error reply instead of the client's answer."""
    _need_flower_bins()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pki = tmp_path / "pki"
    create_server_cert(create_ca(pki), pki, [], [])
    n1 = create_client_keypair(tmp_path / "keys", "n1")
    env = _env(tmp_path / "home")
    port = _free_port()
    _write_connections(tmp_path / "home", {"local": f"127.0.0.1:{port}"}, pki / "ca.crt")
    sl_log = tmp_path / "superlink.log"
    sl = _popen(procs, _superlink_cmd(pki, "127.0.0.1", port, tmp_path / "state.db"), env, sl_log)
    _wait_for(_log_has(sl_log, "Application startup complete"), 30, "SuperLink", sl, sl_log)
    r = _flwr(["supernode", "register", str(n1.public_key_path), "local"], env)
    assert r.returncode == 0, r.stdout + r.stderr

    entity = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f"fpk_00000000-0000-0000-0000-000000000001: '{entity} publisher'\n")
    data = tmp_path / "data"
    assert subprocess.run([sys.executable, "-m", "fedmtl.cli", "prepare-data", "--suite", "tiny", "--clients", "1",
                           "--out", str(data)], cwd=REPO, env=env, capture_output=True, timeout=120).returncode == 0
    client_log = tmp_path / "client.log"
    _popen(procs, [sys.executable, "-m", "fedmtl.cli", "client", "--coordinator", f"127.0.0.1:{port}",
                   "--data", str(data / "client_0"), "--key", str(n1.private_key_path), "--ca", str(pki / "ca.crt"),
                   "--trusted-entities", str(trusted), "--work-dir", str(tmp_path / "work"), "--max-wait", "60"],
           env, client_log, cwd=REPO)
    _wait_for(_log_has(client_log, "joined as node"), 60, "the client to join", log=client_log)

    app_dir = _write_tiny_app(tmp_path / "app")
    run = _flwr(["run", str(app_dir), "local", "--format", "json"], env)
    run_id = json.loads(run.stdout[run.stdout.find("{"):])["run-id"]
    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline:
        runs = json.loads(_flwr(["ls", "local", "--run-id", str(run_id), "--format", "json"], env).stdout)["runs"]
        status = runs[0]["status"]
        if status.startswith("finished"):
            break
        time.sleep(1)
    out = client_log.read_text(errors="replace")
    assert status == "finished:failed", (status, out[-3000:])  # the ServerApp got no good reply
    assert "refused to run the coordinator's app bundle" in out, out[-3000:]
    supernode_log = (tmp_path / "work" / "supernode.log").read_text(errors="replace")
    assert "App verification is not supported by the connected SuperLink" in supernode_log
    assert "TINYAPP got ping" not in supernode_log  # none of the bundle's code ran


@pytest.mark.slow
def test_pinned_clients_run_only_the_app_bundle_they_expect(tmp_path: Path, procs: list) -> None:
    """`fedmtl client --app-hash H` (what `--pin-app` does with this machine's own bundle): the
    client with the bundle's hash answers; the one pinned to other code refuses before any of
    the bundle is unpacked, and says so."""
    _need_flower_bins()
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    pki = tmp_path / "pki"
    create_server_cert(create_ca(pki), pki, [], [])
    env = _env(tmp_path / "home")
    port = _free_port()
    _write_connections(tmp_path / "home", {"local": f"127.0.0.1:{port}"}, pki / "ca.crt")
    sl_log = tmp_path / "superlink.log"
    sl = _popen(procs, _superlink_cmd(pki, "127.0.0.1", port, tmp_path / "state.db"), env, sl_log)
    _wait_for(_log_has(sl_log, "Application startup complete"), 30, "SuperLink", sl, sl_log)
    app_dir = _write_tiny_app(tmp_path / "app", expect_nodes=2)
    right = hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()
    data = tmp_path / "data"
    assert subprocess.run([sys.executable, "-m", "fedmtl.cli", "prepare-data", "--suite", "tiny", "--clients", "1",
                           "--out", str(data)], cwd=REPO, env=env, capture_output=True, timeout=120).returncode == 0
    logs = {}
    for name, pinned in (("good", right), ("other", "0" * 64)):
        kp = create_client_keypair(tmp_path / "keys", name)
        r = _flwr(["supernode", "register", str(kp.public_key_path), "local"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        logs[name] = tmp_path / f"{name}.log"
        _popen(procs, [sys.executable, "-m", "fedmtl.cli", "client", "--coordinator", f"127.0.0.1:{port}",
                       "--data", str(data / "client_0"), "--name", name, "--key", str(kp.private_key_path),
                       "--ca", str(pki / "ca.crt"), "--app-hash", pinned, "--work-dir", str(tmp_path / name),
                       "--max-wait", "60"], env, logs[name], cwd=REPO)
    for log in logs.values():
        _wait_for(_log_has(log, "joined as node"), 60, "the clients to join", log=log)
    run = _flwr(["run", str(app_dir), "local", "--format", "json"], env)
    run_id = json.loads(run.stdout[run.stdout.find("{"):])["run-id"]
    deadline, status = time.monotonic() + 120, ""
    while time.monotonic() < deadline and not status.startswith("finished"):
        time.sleep(1)
        status = json.loads(_flwr(["ls", "local", "--run-id", str(run_id), "--format", "json"],
                                  env).stdout)["runs"][0]["status"]
    good = (tmp_path / "good" / "supernode.log").read_text(errors="replace")
    other = logs["other"].read_text(errors="replace")
    assert status == "finished:failed", status  # one of the two replies is the refusal
    assert "TINYAPP got ping 7" in good
    assert f"refused app bundle {right[:16]}" in other, other[-3000:]
    assert "TINYAPP got ping" not in (tmp_path / "other" / "supernode.log").read_text(errors="replace")
    assert not list((tmp_path / "other" / "flwr_home").glob("apps/*")), "the refused bundle was unpacked"
