"""The Fleet gateway's limits, with real requests to a real gateway process on 127.0.0.1.

One gateway (TLS, authorized-keys folder, short timeouts) in front of a stand-in SuperLink (a
small uvicorn app over TLS that records every request it completes). Each test sends real
HTTPS requests or raw TLS bytes and checks what the gateway answers, what reached the upstream
and what the gateway logged (peer address and reason). Bounded: a few dozen connections, every
wait capped at a few seconds. Memory figures are in benchmarks/bench_gateway.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from launch.gateway import GatewayConfig, GatewayLimits, gateway_command
from launch.gateway_auth import (
    PUBLIC_KEY_HEADER,
    SIGNATURE_HEADER,
    SYSTEM_TIME_TOLERANCE_S,
    TIMESTAMP_HEADER,
    TIMESTAMP_TOLERANCE_S,
)
from launch.processes import free_port
from launch.security import create_ca, create_client_keypair, create_server_cert

try:  # works whether or not tests/ is a package
    from tests.netns import stop_processes
except ImportError:  # pragma: no cover
    from netns import stop_processes  # type: ignore

REPO = Path(__file__).resolve().parents[1]

# A stand-in SuperLink: answers every POST with 200 and the body's sha256, and appends one JSON
# line per *completed* request to argv[1]; `x-test-sleep: S` makes it wait S seconds first.
_UPSTREAM = """\
import asyncio, hashlib, json, sys, uvicorn
log = sys.argv[1]
async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                await send({"type": m["type"] + ".complete"})
                if m["type"] == "lifespan.shutdown":
                    return
        return
    h = hashlib.sha256(); n = 0; chunked = True
    hdrs = {k.decode(): v.decode() for k, v in scope["headers"]}
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return
        h.update(m.get("body", b"")); n += len(m.get("body", b""))
        if not m.get("more_body"):
            break
    await asyncio.sleep(float(hdrs.get("x-test-sleep", "0")))
    with open(log, "a") as f:
        f.write(json.dumps({"path": scope["path"], "n": n, "sha": h.hexdigest(),
                            "xff": hdrs.get("x-forwarded-for"), "cl": hdrs.get("content-length")}) + "\\n")
    body = h.hexdigest().encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4],
            log_level="warning")
"""

LIMITS = GatewayLimits(
    max_body_bytes=2 * 1024 * 1024, small_body_bytes=4096, max_connections=40, max_connections_per_peer=8,
    max_requests=40, max_requests_per_peer=4, max_requests_per_key=4, header_timeout_s=1.0,
    handshake_timeout_s=1.0, body_idle_timeout_s=1.0, body_timeout_s=2.0, body_min_rate=1024 * 1024,
)


@dataclass
class Gateway:
    url: str
    host: str
    port: int
    ca: Path
    log: Path
    upstream_log: Path
    keys: Path
    key: ec.EllipticCurvePrivateKey
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def upstream_requests(self) -> list[dict[str, Any]]:
        if not self.upstream_log.exists():
            return []
        return [json.loads(line) for line in self.upstream_log.read_text().splitlines() if line.strip()]

    def signed(self, key: ec.EllipticCurvePrivateKey | None = None, age_s: float = 0.0,
               bad_signature: bool = False) -> dict[str, str]:
        """Headers as flower-supernode signs them (node_auth_http_interceptor.py)."""
        key = key or self.key
        stamp = (dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=age_s)).isoformat()
        sig = key.sign(stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        if bad_signature:
            sig = key.sign(b"something else", ec.ECDSA(hashes.SHA256()))
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return {PUBLIC_KEY_HEADER: base64.b64encode(pem).decode(), TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: base64.b64encode(sig).decode()}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca)),
                            timeout=10, trust_env=False)

    def tls_socket(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        raw = socket.create_connection((self.host, self.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=self.host)


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_ssh_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gw")
    pki = root / "pki"
    srv = create_server_cert(create_ca(pki), pki, [], [])
    keys = root / "authorized"
    keys.mkdir()
    kp = create_client_keypair(root / "client", "site-a")
    (keys / "site-a.pub").write_bytes(kp.public_key_path.read_bytes())
    up_port, gw_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    started: list[subprocess.Popen[bytes]] = []
    up_log, gw_log = root / "upstream.jsonl", root / "gateway.log"
    try:
        with open(root / "upstream.out", "wb") as out:
            started.append(subprocess.Popen(
                [sys.executable, "-c", _UPSTREAM, str(up_log), str(up_port), str(srv.cert_path), str(srv.key_path)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        cfg = GatewayConfig(listen=f"127.0.0.1:{gw_port}", upstream=f"127.0.0.1:{up_port}",
                            ssl_certfile=str(srv.cert_path), ssl_keyfile=str(srv.key_path),
                            upstream_ca_certfile=str(srv.ca_cert_path), authorized_keys=str(keys), limits=LIMITS)
        with open(gw_log, "wb") as out:
            proc = subprocess.Popen(gateway_command(cfg), stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO, start_new_session=True)
        started.append(proc)
        _wait(lambda: "Uvicorn running" in gw_log.read_text(errors="replace"), 30, "the gateway")
        gw = Gateway(f"https://127.0.0.1:{gw_port}", "127.0.0.1", gw_port, srv.ca_cert_path, gw_log, up_log,
                     keys, _load_private(kp.private_key_path), proc)
        with gw.client() as c:  # the upstream is up once a signed request goes through
            _wait(lambda: _ok(c, gw), 30, "the upstream")
        yield gw
    finally:
        stop_processes(started)


def _ok(c: httpx.Client, gw: Gateway) -> bool:
    try:
        return c.post("/v1/fleet/send-node-heartbeat", content=b"hb", headers=gw.signed()).status_code == 200
    except httpx.HTTPError:
        return False


def _connection_closed(sock: ssl.SSLSocket, within: float) -> float:
    """Seconds until the server closed `sock` (reads until EOF/reset); fails after `within`."""
    sock.settimeout(within)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError(f"connection still open after {within}s") from None
    return time.monotonic() - t0


def test_flower_auth_constants_match_the_installed_flower() -> None:
    from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_TOLERANCE
    from flwr.common.constant import TIMESTAMP_HEADER as FLWR_TS
    from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER

    assert (PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER) == (
        FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER, FLWR_TS)
    assert (TIMESTAMP_TOLERANCE_S, SYSTEM_TIME_TOLERANCE_S) == (TIMESTAMP_TOLERANCE, SYSTEM_TIME_TOLERANCE)


def test_signed_requests_are_streamed_through_intact(gateway: Gateway) -> None:
    gw = gateway
    big = os.urandom(LIMITS.max_body_bytes - 4096)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 100_000):
            yield big[i:i + 100_000]

    with gw.client() as c:
        r1 = c.post("/v1/fleet/push-object", content=big, headers=gw.signed())
        r2 = c.post("/v1/fleet/push-object", content=chunks(), headers=gw.signed())
    want = hashlib.sha256(big).hexdigest()
    assert (r1.status_code, r1.text) == (200, want) and (r2.status_code, r2.text) == (200, want)
    pushed = [r for r in gw.upstream_requests() if r["path"] == "/v1/fleet/push-object"]
    assert [(r["n"], r["sha"], r["xff"]) for r in pushed[-2:]] == [(len(big), want, "127.0.0.1")] * 2
    assert pushed[-2]["cl"] == str(len(big))  # a declared length is passed on, not re-buffered


def test_unauthenticated_requests_are_refused_before_the_body_is_read(gateway: Gateway) -> None:
    gw = gateway
    before = len(gw.upstream_requests())
    with gw.client() as c:
        cases = {
            "no headers": ("/v1/fleet/send-node-heartbeat", {}),
            "bad signature": ("/v1/fleet/pull-messages", gw.signed(bad_signature=True)),
            "stale timestamp": ("/v1/fleet/pull-messages", gw.signed(age_s=TIMESTAMP_TOLERANCE_S + 60)),
            "unknown key": ("/v1/fleet/pull-messages", gw.signed(ec.generate_private_key(ec.SECP384R1()))),
        }
        got = {name: c.post(path, content=b"x", headers=h) for name, (path, h) in cases.items()}
        activate = c.post("/v1/fleet/activate-node", content=b"x",
                          headers=gw.signed(ec.generate_private_key(ec.SECP384R1())))
        register = c.post("/v1/fleet/register-node", content=b"x", headers=gw.signed())
        twice = c.post("/v1/fleet/pull-messages", content=b"x",
                       headers=[*gw.signed().items(), (SIGNATURE_HEADER, gw.signed()[SIGNATURE_HEADER])])
    for name, r in got.items():
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid SuperNode authentication"}), name
    # what the SuperLink itself answers, so flower-supernode (and `fedmtl client`) react the same
    assert (activate.status_code, activate.json()["code"]) == (412, 2004)
    assert (register.status_code, register.json()["code"]) == (412, 2001)
    assert twice.status_code == 400  # the gateway and the SuperLink must judge the same header
    assert len(gw.upstream_requests()) == before

    # A stranger streaming 64 MiB (chunked: no length to refuse it by): answered at once, and the
    # gateway stops reading after its buffers.
    sock = gw.tls_socket()
    sock.sendall(b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: coord\r\nTransfer-Encoding: chunked\r\n\r\n")
    frame = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    sent, t0 = 0, time.monotonic()
    sock.settimeout(5)
    try:
        while sent < 64 * 1024 * 1024:
            sock.sendall(frame)
            sent += len(frame)
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, TimeoutError):
        pass
    dt_s = time.monotonic() - t0
    sock.close()
    assert sent < 16 * 1024 * 1024, f"the gateway kept reading an unauthenticated body ({sent} bytes)"
    assert dt_s < 8
    assert len(gw.upstream_requests()) == before
    log = gw.log_text()
    for reason in ("no SuperNode signature headers", "invalid signature", "outside the allowed window",
                   "not among the coordinator's authorized keys", "self-registration is disabled"):
        assert f"from 127.0.0.1: unauthenticated: {reason}" in log or reason in log, reason
    print(f"unauthenticated 64 MiB upload cut after {sent / 2**20:.1f} MiB in {dt_s:.2f}s")


def test_body_size_limits_per_route(gateway: Gateway) -> None:
    gw = gateway
    before = len(gw.upstream_requests())
    with gw.client() as c:
        small = c.post("/v1/fleet/send-node-heartbeat", content=b"x" * (LIMITS.small_body_bytes + 1),
                       headers=gw.signed())
        big = c.post("/v1/fleet/push-object", content=b"x" * (LIMITS.max_body_bytes + 1), headers=gw.signed())

        def chunks() -> Iterator[bytes]:
            for _ in range(LIMITS.max_body_bytes // 65536 + 2):
                yield b"y" * 65536

        streamed = c.post("/v1/fleet/push-messages", content=chunks(), headers=gw.signed())
        fine = c.post("/v1/fleet/send-node-heartbeat", content=b"x" * LIMITS.small_body_bytes, headers=gw.signed())
    assert small.status_code == 413 and big.status_code == 413 and streamed.status_code == 413
    assert fine.status_code == 200
    done = gw.upstream_requests()[before:]
    assert [r["path"] for r in done] == ["/v1/fleet/send-node-heartbeat"], done  # only the one within limits
    log = gw.log_text()
    assert f"declared, over this route's limit of {LIMITS.small_body_bytes}" in log
    assert f"body over this route's limit of {LIMITS.max_body_bytes} bytes" in log


def test_slow_and_idle_connections_are_dropped(gateway: Gateway) -> None:
    gw = gateway
    slowloris = gw.tls_socket()
    slowloris.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: coord\r\n")  # never finishes
    idle = gw.tls_socket()  # sends nothing
    raw = socket.create_connection((gw.host, gw.port), timeout=10)  # not even a TLS handshake
    slow_body = gw.tls_socket()
    head = "".join(f"{k}: {v}\r\n" for k, v in gw.signed().items())
    slow_body.sendall(f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: coord\r\nContent-Length: 100000\r\n{head}\r\n"
                      .encode() + b"z" * 10)
    t_loris = _connection_closed(slowloris, 5)
    t_idle = _connection_closed(idle, 5)
    raw.settimeout(5)
    t0 = time.monotonic()
    assert raw.recv(1) == b""
    t_raw = time.monotonic() - t0
    slow_body.settimeout(5)
    answer = slow_body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    for s in (slowloris, idle, raw, slow_body):
        s.close()
    assert max(t_loris, t_idle, t_raw) < LIMITS.header_timeout_s + 2.5, (t_loris, t_idle, t_raw)
    log = gw.log_text()
    assert "Refused connection from 127.0.0.1: partial request headers within 1s" in log
    assert "Refused connection from 127.0.0.1: no request within 1s" in log
    assert "no body data for 1s (10 bytes so far; slow client)" in log
    print(f"slowloris dropped after {t_loris:.1f}s, idle after {t_idle:.1f}s, stalled TLS handshake after {t_raw:.1f}s")


def test_connection_and_in_flight_limits(gateway: Gateway) -> None:
    gw = gateway
    held = [gw.tls_socket() for _ in range(LIMITS.max_connections_per_peer)]
    extra = gw.tls_socket()
    try:
        assert _connection_closed(extra, 3) < 0.5  # refused at once ...
        head = "".join(f"{k}: {v}\r\n" for k, v in gw.signed().items())
        held[0].sendall(f"POST /v1/fleet/send-node-heartbeat HTTP/1.1\r\nHost: c\r\nContent-Length: 1\r\n{head}\r\nx"
                        .encode())
        held[0].settimeout(5)
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200")  # ... while those within the limit are served
    finally:
        for s in [*held, extra]:
            s.close()
    assert "Refused connection from 127.0.0.1: too many connections from this address (8)" in gw.log_text()
    time.sleep(0.3)  # let the gateway see the closes

    results: list[int] = []

    def one() -> None:
        with gw.client() as c:
            results.append(c.post("/v1/fleet/pull-messages", content=b"p",
                                  headers={**gw.signed(), "x-test-sleep": "1.5"}).status_code)

    threads = [threading.Thread(target=one) for _ in range(LIMITS.max_requests_per_peer + 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(results).count(200) == LIMITS.max_requests_per_peer, results
    assert sorted(results).count(503) == 2, results
    assert "too many requests in flight" in gw.log_text()


def test_a_revoked_key_is_refused_within_a_second(gateway: Gateway, tmp_path: Path) -> None:
    gw = gateway
    kp = create_client_keypair(tmp_path, "late")
    late = _load_private(kp.private_key_path)
    with gw.client() as c:
        assert c.post("/v1/fleet/pull-messages", content=b"p", headers=gw.signed(late)).status_code == 401
        (gw.keys / "late.pub").write_bytes(kp.public_key_path.read_bytes())  # `fedmtl keys register`
        time.sleep(0.3)  # (registering with the SuperLink takes longer than that)
        assert c.post("/v1/fleet/pull-messages", content=b"p", headers=gw.signed(late)).status_code == 200
        (gw.keys / "late.pub").unlink()  # `fedmtl keys revoke`
        time.sleep(1.2)
        assert c.post("/v1/fleet/pull-messages", content=b"p", headers=gw.signed(late)).status_code == 401
        assert c.get("/docs").status_code == 404
    assert "Refused GET '/docs' from 127.0.0.1: not a Fleet API route" in gw.log_text()
