"""Fleet gateway: expose only the SuperNode-facing Fleet API to the network.

Why this exists
---------------
``flower-superlink`` (1.41, 1.42) serves three APIs on ONE HTTP(S) port: Fleet
(``/v1/fleet/*``, used by SuperNodes), Control (``/v1/control/*``: ``flwr
run/ls/stop/log``, ``flwr supernode register``) and Runtime (``/v1/runtime/*``,
used by the ServerApp), plus ``/docs`` and ``/openapi.json``. Control has no
credential in the open-source build (account auth is Flower Enterprise), so
whoever reaches that port can list, start and stop runs and register a new
SuperNode key, which defeats SuperNode authentication.

Flower 1.41 and 1.42 have no option to put Fleet on its own address: ``--host/--port``
bind all three APIs together, ``--fleet-api-address`` is deprecated and
ignored for the HTTP Fleet API, and the undocumented
``FLWR_INTERNAL_GRPC_FLEET_API=1`` switch starts the *legacy gRPC* Fleet
servicer, which ``flower-supernode`` 1.41/1.42 cannot talk to any more (its only
transport is protobuf-over-HTTP, ``flwr/supernode/fleet_http_connection.py``).

So fedmtl runs the SuperLink on the loopback interface only
(``flower-superlink --host 127.0.0.1``; its SuperExec dials the Runtime API
there) and puts this gateway on the public address. It terminates TLS with
the same server certificate, lets through exactly the twelve ``POST
/v1/fleet/...`` routes ``flower-supernode`` uses, and re-encrypts to the
SuperLink on 127.0.0.1 (verifying it against the federation CA). Everything
else gets a bare 404 and a log line. SuperNode authentication is untouched:
the signed headers (public key, timestamp, signature) and the body are passed
through unchanged and verified by the SuperLink itself.

Long-polling ``pull-messages``
------------------------------
An idle ``flower-supernode`` sleeps a hard-coded 3 s after every pull that
found no message; the gateway holds such pulls open until a message is there
(``launch/gateway_hold.py``), so a new message reaches its client within
``pull_poll_s`` instead of 0-3 s later, and holds a ``pull-object`` for an
object not uploaded yet instead of letting the SuperNode back off 1-4 s.
``pull_hold_s=0`` turns both off.

Run it as a process::

    python -m launch.gateway --listen 0.0.0.0:9092 \\
        --upstream 127.0.0.1:9093 \\
        --ssl-certfile server.crt --ssl-keyfile server.key \\
        --upstream-ca-certfile ca.crt

or build the argument list with :func:`gateway_command`.

Limits (``launch/gateway_limits.py``; figures in docs/security.md): body size per route,
connections and requests in flight in total, per peer address and per key, header / TLS
handshake / body deadlines. With ``--authorized-keys DIR`` (what ``fedmtl coordinator`` passes)
every request must carry a SuperNode signature by one of those keys, checked on the headers
before any body byte is read (``launch/gateway_auth.py``); bodies are streamed to the SuperLink,
never buffered. Every refusal is logged with the peer's address and the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from launch.gateway_auth import (
    PUBLIC_KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthorizedKeys,
    check_signed_headers,
)
from launch.gateway_hold import (
    DEFAULT_PULL_HOLD_S,
    DEFAULT_PULL_POLL_S,
    HELD_ROUTES,
    PullHolder,
)
from launch.gateway_limits import GatewayLimits, InFlight, RefusalLog

__all__ = [
    "FLEET_ROUTES",
    "FleetGateway",
    "GatewayConfig",
    "GatewayLimits",
    "gateway_command",
    "main",
    "parse_hostport",
    "serve",
]

LOG = logging.getLogger("fedmtl.fleet_gateway")

#: The only requests that pass: what ``flower-supernode`` 1.42 sends
#: (``flwr/supernode/fleet_http_client.py``; the SuperLink's fleet router in
#: ``flwr/superlink/routers/fleet/router.py`` has exactly these, all POST).
FLEET_ROUTES: frozenset[str] = frozenset(
    f"/v1/fleet/{name}"
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)

# RFC 9110 hop-by-hop headers and headers the gateway sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_REQ_DROP = _HOP_BY_HOP | {"forwarded", "x-forwarded-for", "x-forwarded-proto",
                           "x-forwarded-host", "x-real-ip", "content-length", "expect"}
_RESP_DROP = _HOP_BY_HOP | {"server", "date"}
#: Headers that must appear once: the gateway and the SuperLink must judge the same values.
_SINGLE_HEADERS = frozenset({"content-length", PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER})

#: Kept for callers of the old single limit: the big-route default (Flower's array chunk + 1 MiB).
DEFAULT_MAX_BODY = GatewayLimits().max_body_bytes

#: What the SuperLink itself answers (flwr 1.42 error catalogue), so ``flower-supernode`` reacts
#: to a refusal by the gateway exactly as to one by the SuperLink (and ``fedmtl client``
#: recognises it): an unknown key on activate-node -> 412 code 2004 "Failed to activate
#: SuperNode."; self-registration with authentication on -> 412 code 2001; a bad signature on
#: any other route -> 401 "Invalid SuperNode authentication" (the SuperNode then stops).
_ACTIVATION_FAILED = (412, {"code": 2004, "detail": "Failed to activate SuperNode."})
_REGISTRATION_DISABLED = (412, {"code": 2001, "detail": "SuperNode authentication is enabled. "
                                                       "All SuperNodes must be registered via the CLI."})
_UNAUTHENTICATED = (401, {"detail": "Invalid SuperNode authentication"})



def parse_hostport(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` -> ``(host, port)``; ValueError if bad."""
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or not v[end + 1 :].startswith(":"):
            raise ValueError(f"bad address {value!r}, expected [IPv6]:PORT")
        host, port_s = v[1:end], v[end + 2 :]
    else:
        host, sep, port_s = v.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"bad address {value!r}, expected HOST:PORT")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def _fmt(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


@dataclass(frozen=True)
class GatewayConfig:
    """Where to listen, where to forward, with which TLS material, keys and limits.

    ``insecure=True`` serves plain HTTP and talks plain HTTP to the SuperLink
    (only for a SuperLink started with ``--insecure``). Otherwise
    ``ssl_certfile``/``ssl_keyfile`` (the SuperLink's own server certificate
    is fine: its SAN covers the public names) and ``upstream_ca_certfile``
    (the federation CA, which signed the SuperLink certificate; the upstream
    address, normally 127.0.0.1, must be in that certificate's SAN) are
    required. ``authorized_keys`` (a folder of ``*.pub``, TLS mode only) makes
    the gateway refuse every request not signed by one of those keys before
    reading its body; without it the SuperLink alone checks signatures.
    """

    listen: str
    upstream: str
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    upstream_ca_certfile: str | None = None
    insecure: bool = False
    authorized_keys: str | None = None
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    pull_hold_s: float = DEFAULT_PULL_HOLD_S
    pull_poll_s: float = DEFAULT_PULL_POLL_S

    def validate(self) -> None:
        """Raise ValueError with a readable reason if unusable."""
        parse_hostport(self.listen)
        if not 0 <= self.pull_hold_s <= 25:
            raise ValueError(f"pull hold {self.pull_hold_s} s: must be between 0 (off) and 25 s "
                             "(the SuperNode gives up on a request after 30 s)")
        if not 0.01 <= self.pull_poll_s <= 5:
            raise ValueError(f"pull poll interval {self.pull_poll_s} s: must be between 0.01 and 5 s")
        uh, _ = parse_hostport(self.upstream)
        if self.insecure and self.authorized_keys:
            raise ValueError("--authorized-keys needs TLS: SuperNode signatures are only sent over TLS")
        if not self.insecure:
            missing = [
                flag
                for flag, val in (
                    ("--ssl-certfile", self.ssl_certfile),
                    ("--ssl-keyfile", self.ssl_keyfile),
                    ("--upstream-ca-certfile", self.upstream_ca_certfile),
                )
                if not val
            ]
            if missing:
                raise ValueError(
                    "TLS is on: " + ", ".join(missing) + " required (or --insecure)"
                )
            for p in (self.ssl_certfile, self.ssl_keyfile, self.upstream_ca_certfile):
                if not Path(str(p)).is_file():
                    raise ValueError(f"file not found: {p}")
            from launch.security import (  # pylint: disable=import-outside-toplevel
                SecurityError,
                certificate_covers,
            )

            try:
                if not certificate_covers(str(self.ssl_certfile), uh):
                    LOG.warning(
                        "%s has no SAN for the upstream address %s: if it is also "
                        "the SuperLink's certificate, forwarding will fail TLS "
                        "verification (create it with launch.security, which "
                        "adds 127.0.0.1).",
                        self.ssl_certfile, uh,
                    )
            except SecurityError as exc:
                raise ValueError(str(exc)) from exc
        if self.authorized_keys and not Path(self.authorized_keys).is_dir():
            raise ValueError(f"--authorized-keys {self.authorized_keys}: not a folder")
        try:
            is_loopback = ipaddress.ip_address(uh).is_loopback
        except ValueError:
            is_loopback = uh == "localhost"
        if not is_loopback:
            LOG.warning(
                "Upstream %s is not a loopback address: the SuperLink's Control "
                "API may be reachable from the network there.",
                self.upstream,
            )

    @property
    def upstream_url(self) -> str:
        """Base URL of the SuperLink."""
        h, p = parse_hostport(self.upstream)
        return f"{'http' if self.insecure else 'https'}://{_fmt(h, p)}"


class _Refused(Exception):
    """The request is refused mid-body: status, client-visible body, logged reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ClientGone(Exception):
    """The client disconnected before its body was complete."""


class FleetGateway:
    """ASGI app forwarding the Fleet routes to the SuperLink, 404 for the rest.

    Counters (for tests and the shutdown line): `refused`, `forwarded`, and `largest`
    (route -> largest body forwarded), which shows what each route really needs.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.inflight = InFlight()
        self.refusals = RefusalLog()
        self.keys = AuthorizedKeys(config.authorized_keys) if config.authorized_keys else None
        self._client: httpx.AsyncClient | None = None
        self.forwarded = 0
        self.holder = PullHolder(config.pull_hold_s, config.pull_poll_s,
                                 max_held=max(1, self.limits.max_requests // 2),
                                 max_held_per_peer=max(1, self.limits.max_requests_per_peer // 2))
        self.largest: dict[str, int] = {}

    @property
    def refused(self) -> int:
        return self.refusals.total

    # -- ASGI ------------------------------------------------------------- #
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websocket: not used by Flower
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path = scope.get("path", "")
        method = scope.get("method", "")
        peer = (scope.get("client") or ("?", 0))[0]
        what = f"{method[:16]} {path[:200]!r}"
        if method != "POST" or path not in FLEET_ROUTES:
            self.refusals.refused(peer, what, "not a Fleet API route (only the Fleet API is exposed)")
            await _plain(send, 404, b"Not Found\n")
            return
        why = self.inflight.start_request(peer, self.limits)
        if why is not None:
            self.refusals.refused(peer, what, why)
            await _plain(send, 503, b"Too many requests\n", retry_after=True)
            return
        try:
            await self._screen_and_forward(scope, receive, send, peer, what)
        finally:
            self.inflight.end_request(peer)

    async def _screen_and_forward(self, scope: dict[str, Any], receive: Any, send: Any,
                                  peer: str, what: str) -> None:
        path = scope["path"]
        headers: dict[str, str] = {}
        declared: int | None = None
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            if name in headers and name in _SINGLE_HEADERS:
                self.refusals.refused(peer, what, f"header {name} given twice")
                await _plain(send, 400, b"Duplicate header\n")
                return
            headers[name] = v.decode("latin-1")
        if "content-length" in headers:
            try:
                declared = int(headers["content-length"])
                if declared < 0:
                    raise ValueError
            except ValueError:
                self.refusals.refused(peer, what, f"bad Content-Length {headers['content-length'][:40]!r}")
                await _plain(send, 400, b"Bad Content-Length\n")
                return
        limit = self.limits.route_limit(path)
        if declared is not None and declared > limit:
            self.refusals.refused(peer, what, f"body of {declared} bytes declared, over this route's limit of {limit}")
            await _plain(send, 413, b"Request too large\n")
            return
        key_name: str | None = None
        if self.keys is not None:
            if path == "/v1/fleet/register-node":
                self.refusals.refused(peer, what, "self-registration is disabled (SuperNode authentication is on)")
                await _json(send, *_REGISTRATION_DISABLED)
                return
            verdict = check_signed_headers(headers, self.keys)
            if not verdict.ok:
                self.refusals.refused(peer, what, f"unauthenticated: {verdict.reason}")
                if verdict.unknown_key and path == "/v1/fleet/activate-node":
                    await _json(send, *_ACTIVATION_FAILED)
                else:
                    await _json(send, *_UNAUTHENTICATED)
                return
            key_name = verdict.key_name
            why = self.inflight.start_key(str(key_name), self.limits)
            if why is not None:
                self.refusals.refused(peer, what, why)
                await _plain(send, 503, b"Too many requests\n", retry_after=True)
                return
        try:
            await self._forward(scope, receive, send, peer, what, scope.get("headers", []), declared, limit,
                                key_name)
        finally:
            if key_name is not None:
                self.inflight.end_key(key_name)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    self._client = self._make_client()
                except Exception as exc:  # pylint: disable=broad-except
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                LOG.info("held pulls: %d message pulls and %d object pulls answered after holding them, "
                         "%d not held (limit reached)", self.holder.held, self.holder.held_objects,
                         self.holder.not_held)
                if self._client is not None:
                    await self._client.aclose()
                self.refusals.flush()
                sizes = ", ".join(f"{p.rsplit('/', 1)[1]} {n:,}" for p, n in sorted(self.largest.items()))
                LOG.info("Fleet gateway stopping: %d requests forwarded, %d refused; largest bodies (bytes): %s",
                         self.forwarded, self.refused, sizes or "none")
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _make_client(self) -> httpx.AsyncClient:
        cfg = self.config
        verify: ssl.SSLContext | bool = False
        if not cfg.insecure:
            verify = ssl.create_default_context(cafile=str(cfg.upstream_ca_certfile))
        return httpx.AsyncClient(
            base_url=cfg.upstream_url,
            verify=verify,
            timeout=httpx.Timeout(cfg.limits.upstream_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max(8, cfg.limits.max_requests), max_keepalive_connections=50),
            follow_redirects=False,
            trust_env=False,  # never route to an HTTP(S)_PROXY from the env
        )

    def _body(self, receive: Any, path: str, declared: int | None, limit: int,
              state: dict[str, Any]) -> AsyncIterator[bytes]:
        """The request body as it arrives, checked against the route's size limit and the
        body deadlines; raises _Refused / _ClientGone (also noted in `state`, since the HTTP
        client may wrap what its content iterator raises)."""
        limits = self.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_deadline_s(declared, path)

        async def chunks() -> AsyncIterator[bytes]:
            received = 0
            while True:
                remaining = deadline - loop.time()
                wait = min(remaining, limits.body_idle_timeout_s)
                try:
                    if wait <= 0:
                        raise asyncio.TimeoutError
                    msg = await asyncio.wait_for(receive(), timeout=wait)
                except asyncio.TimeoutError:
                    if remaining <= limits.body_idle_timeout_s:
                        why = (f"body not complete within {limits.body_deadline_s(declared, path):.0f}s "
                               f"({received} of {declared if declared is not None else '?'} bytes; slow client)")
                    else:
                        why = f"no body data for {limits.body_idle_timeout_s:g}s ({received} bytes so far; slow client)"
                    state["error"] = _Refused(408, why)
                    raise state["error"] from None
                if msg["type"] == "http.disconnect":
                    state["error"] = _ClientGone()
                    raise state["error"]
                chunk = msg.get("body", b"")
                received += len(chunk)
                if received > limit:
                    state["error"] = _Refused(413, f"body over this route's limit of {limit} bytes")
                    raise state["error"]
                state["received"] = received
                if chunk:
                    yield chunk
                if not msg.get("more_body", False):
                    return

        return chunks()

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any, peer: str, what: str,
                       raw_headers: Sequence[tuple[bytes, bytes]], declared: int | None, limit: int,
                       key_name: str | None) -> None:
        if self._client is None:  # lifespan off (e.g. some test servers)
            self._client = self._make_client()
        path = scope["path"]
        headers: list[tuple[bytes, bytes]] = [
            (k, v) for k, v in raw_headers if k.lower().decode("latin-1") not in _REQ_DROP]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        headers.append((b"x-forwarded-for", peer.encode("latin-1")))
        headers.append(
            (b"x-forwarded-proto", b"http" if self.config.insecure else b"https")
        )
        state: dict[str, Any] = {"received": 0}
        # Forward the canonical (decoded, allow-listed) path and no query
        # string: Flower's Fleet routes take none, and nothing else can ride along.
        if path in HELD_ROUTES and self.holder.enabled:
            await self._forward_held(receive, send, peer, what, path, headers, declared, limit, key_name)
            return
        try:
            req = self._client.build_request("POST", path, headers=headers,
                                             content=self._body(receive, path, declared, limit, state))
            resp = await self._client.send(req, stream=True)
        except Exception as exc:  # noqa: BLE001 - sorted out below
            error = state.get("error")
            if isinstance(error, _ClientGone):
                return
            if isinstance(error, _Refused):
                self.refusals.refused(peer, what, error.reason)
                await _plain(send, error.status, f"{error.reason}\n".encode())
                return
            if not isinstance(exc, httpx.HTTPError):
                raise
            await self._upstream_failed(send, path, peer, exc)
            return
        try:
            self._note_refusal(resp.status_code, what, peer, key_name)
            out_headers = [
                (k.lower(), v)
                for k, v in resp.headers.raw
                if k.lower().decode("latin-1") not in _RESP_DROP
            ]
            await send(
                {"type": "http.response.start", "status": resp.status_code,
                 "headers": out_headers}
            )
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.forwarded += 1
            self.largest[path] = max(self.largest.get(path, 0), int(state.get("received", 0)))
        except (httpx.HTTPError, OSError) as exc:
            LOG.error("Error relaying response for %s to %s: %s", path, peer, exc)
        finally:
            await resp.aclose()


    async def _forward_held(self, receive: Any, send: Any, peer: str, what: str, path: str,
                            headers: list[tuple[bytes, bytes]], declared: int | None, limit: int,
                            key_name: str | None) -> None:
        """A pull the SuperLink may answer "nothing yet": read its (small) body whole, then let
        the `PullHolder` re-send it until there is something (`launch/gateway_hold.py`)."""
        state: dict[str, Any] = {"received": 0}
        try:
            body = b"".join([chunk async for chunk in self._body(receive, path, declared, limit, state)])
        except _ClientGone:
            return
        except _Refused as error:
            self.refusals.refused(peer, what, error.reason)
            await _plain(send, error.status, f"{error.reason}\n".encode())
            return
        try:
            answer = await self.holder.pull(self._client, path, headers, body, receive, peer)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            await self._upstream_failed(send, path, peer, exc)
            return
        if answer is None:  # the SuperNode went away while its pull was held
            return
        status, raw_headers, raw = answer
        self._note_refusal(status, what, peer, key_name)
        out_headers = [(k.lower(), v) for k, v in raw_headers
                       if k.lower().decode("latin-1") not in _RESP_DROP | {"content-length"}]
        out_headers.append((b"content-length", str(len(raw)).encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": raw, "more_body": False})
        except OSError as exc:
            LOG.error("Error relaying response for %s to %s: %s", path, peer, exc)
            return
        self.forwarded += 1
        self.largest[path] = max(self.largest.get(path, 0), len(body))

    @staticmethod
    def _note_refusal(status: int, what: str, peer: str, key_name: str | None) -> None:
        if status in (400, 401, 403, 412, 413):
            who = f"{peer}" + (f" (key {key_name})" if key_name else "")
            LOG.warning("SuperLink refused %s from %s: HTTP %d", what, who, status)

    async def _upstream_failed(self, send: Any, path: str, peer: str, exc: httpx.HTTPError) -> None:
        """Answer a request the SuperLink did not answer: 504 on a timeout, else 502 (which
        `flower-supernode` retries: it keeps trying while the SuperLink restarts)."""
        if isinstance(exc, httpx.TimeoutException):
            LOG.error("SuperLink timed out on %s from %s: %s", path, peer, exc)
            await _plain(send, 504, b"Upstream timeout\n")
            return
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSL" in str(exc):
            LOG.error(
                "TLS verification of the SuperLink at %s failed: %s (the "
                "SuperLink certificate needs a SAN for that address and must be "
                "signed by --upstream-ca-certfile; SuperNodes keep retrying)",
                self.config.upstream, exc,
            )
        else:
            LOG.error("SuperLink unreachable (%s): %s", self.config.upstream, exc)
        await _plain(send, 502, b"SuperLink unreachable\n")


async def _plain(send: Any, status: int, body: bytes, retry_after: bool = False) -> None:
    """A refusal: small text body, and the connection closed (an unread body is never drained)."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------- #
# Running it
# --------------------------------------------------------------------------- #
def _uvicorn_config(config: GatewayConfig, log_level: str = "info") -> Any:
    import uvicorn  # pylint: disable=import-outside-toplevel

    from launch.gateway_server import protocol_for  # pylint: disable=import-outside-toplevel

    host, port = parse_hostport(config.listen)
    app = FleetGateway(config)
    return uvicorn.Config(
        app=app,
        host=host,
        port=port,
        ssl_certfile=None if config.insecure else config.ssl_certfile,
        ssl_keyfile=None if config.insecure else config.ssl_keyfile,
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # the peer address is the real client
        server_header=False,
        date_header=False,
        log_level=log_level,
        http=protocol_for(app),  # h11 + connection limits + header deadline
        loop="asyncio",
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        timeout_keep_alive=max(1, int(config.limits.header_timeout_s)),
        timeout_graceful_shutdown=5,
    )


def _uvicorn_server(config: GatewayConfig, log_level: str = "info") -> Any:
    """A `uvicorn.Server` for the gateway that, when it stops, first answers the pulls it holds
    (`PullHolder.release_all`); plain uvicorn waits for them, up to its graceful-shutdown timeout."""
    import uvicorn  # pylint: disable=import-outside-toplevel

    class GatewayServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            released = self.config.app.holder.release_all()
            if released:
                LOG.info("Stopping: answered %d held pull(s) at once", released)
            await super().shutdown(sockets)

    return GatewayServer(_uvicorn_config(config, log_level))


def serve(config: GatewayConfig, log_level: str = "info", validate: bool = True) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM."""
    from launch.gateway_server import serve_gateway  # pylint: disable=import-outside-toplevel

    if validate:
        config.validate()
    server = _uvicorn_server(config, log_level)
    lim = config.limits
    LOG.info(
        "Fleet gateway: %s://%s -> %s (only POST %s); %s; bodies <= %d B (push-object, push-messages) "
        "and <= %d B (other routes); connections <= %d (%d per address); requests in flight <= %d "
        "(%d per address, %d per key); headers within %gs, TLS handshake within %gs",
        "http" if config.insecure else "https",
        config.listen,
        config.upstream_url,
        "/v1/fleet/{...}",
        f"only requests signed by a key in {config.authorized_keys}" if config.authorized_keys
        else "signatures checked by the SuperLink only",
        lim.max_body_bytes, lim.small_body_bytes, lim.max_connections, lim.max_connections_per_peer,
        lim.max_requests, lim.max_requests_per_peer, lim.max_requests_per_key, lim.header_timeout_s,
        lim.handshake_timeout_s,
    )
    asyncio.run(serve_gateway(server, lim.handshake_timeout_s))
    if not server.started:  # e.g. address in use: uvicorn logged why
        sys.exit(1)


def _limit_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def gateway_command(config: GatewayConfig, python: str | None = None) -> list[str]:
    """Argument list that starts the gateway as its own process."""
    cmd = [python or sys.executable, "-m", "launch.gateway",
           "--listen", config.listen, "--upstream", config.upstream]
    if config.insecure:
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-certfile", str(config.ssl_certfile),
            "--ssl-keyfile", str(config.ssl_keyfile),
            "--upstream-ca-certfile", str(config.upstream_ca_certfile),
        ]
    if config.authorized_keys:
        cmd += ["--authorized-keys", str(config.authorized_keys)]
    defaults = GatewayLimits()
    for f in dataclasses.fields(GatewayLimits):
        value = getattr(config.limits, f.name)
        if value != getattr(defaults, f.name):
            cmd += [_limit_flag(f.name), f"{value:g}" if isinstance(value, float) else str(value)]
    if config.pull_hold_s != DEFAULT_PULL_HOLD_S:
        cmd += ["--pull-hold", f"{config.pull_hold_s:g}"]
    if config.pull_poll_s != DEFAULT_PULL_POLL_S:
        cmd += ["--pull-poll", f"{config.pull_poll_s:g}"]
    return cmd


_LIMIT_HELP = {
    "max_body_bytes": "largest push-object / push-messages body (default: Flower's array chunk size + 1 MiB)",
    "small_body_bytes": "largest body of every other Fleet route",
    "max_connections": "open connections in total",
    "max_connections_per_peer": "open connections per client address",
    "max_requests": "requests in flight in total",
    "max_requests_per_peer": "requests in flight per client address",
    "max_requests_per_key": "requests in flight per authenticated key",
    "header_timeout_s": "seconds for a request's headers to arrive (from connect or the previous response)",
    "handshake_timeout_s": "seconds for a TLS handshake",
    "body_idle_timeout_s": "seconds a body may pause",
    "body_timeout_s": "seconds a body may take, plus its size / --body-min-rate",
    "body_min_rate": "bytes/s a body must average beyond --body-timeout-s",
    "upstream_timeout_s": "seconds to wait for the SuperLink",
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m launch.gateway``."""
    p = argparse.ArgumentParser(
        prog="python -m launch.gateway",
        description="Expose only the Flower Fleet API of a loopback SuperLink.",
    )
    p.add_argument("--listen", required=True, help="public HOST:PORT, e.g. 0.0.0.0:9092")
    p.add_argument("--upstream", default="127.0.0.1:9093",
                   help="the SuperLink's --host:--port (loopback)")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--upstream-ca-certfile", help="CA that signed the SuperLink cert")
    p.add_argument("--insecure", action="store_true",
                   help="plain HTTP on both sides (SuperLink started with --insecure)")
    p.add_argument("--authorized-keys", metavar="DIR",
                   help="folder of client public keys (*.pub): refuse, before reading the body, every "
                        "request not signed by one of them (re-read when the folder changes)")
    defaults = GatewayLimits()
    for f in dataclasses.fields(GatewayLimits):
        kind = float if isinstance(getattr(defaults, f.name), float) else int
        p.add_argument(_limit_flag(f.name), dest=f.name, type=kind, default=None,
                       help=f"{_LIMIT_HELP.get(f.name, f.name)} (default {getattr(defaults, f.name)})")
    p.add_argument("--pull-hold", type=float, default=DEFAULT_PULL_HOLD_S, metavar="S",
                   help="hold an empty pull-messages open up to S seconds until a message arrives "
                        f"(default {DEFAULT_PULL_HOLD_S:g}; 0 = plain forwarding: SuperNodes poll every 3 s)")
    p.add_argument("--pull-poll", type=float, default=DEFAULT_PULL_POLL_S, metavar="S",
                   help=f"while holding, ask the SuperLink again every S seconds (default {DEFAULT_PULL_POLL_S:g})")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(),
        format="%(asctime)s %(levelname)s [fleet-gateway] %(message)s",
    )
    # httpx logs every forwarded request at INFO: heartbeats and 3 s polls.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        limits = GatewayLimits(**{f.name: getattr(a, f.name) for f in dataclasses.fields(GatewayLimits)
                                  if getattr(a, f.name) is not None})
    except ValueError as exc:
        p.error(str(exc))
    cfg = GatewayConfig(
        listen=a.listen,
        upstream=a.upstream,
        ssl_certfile=a.ssl_certfile,
        ssl_keyfile=a.ssl_keyfile,
        upstream_ca_certfile=a.upstream_ca_certfile,
        insecure=a.insecure,
        authorized_keys=a.authorized_keys,
        limits=limits,
        pull_hold_s=a.pull_hold,
        pull_poll_s=a.pull_poll,
    )
    if cfg.insecure:
        LOG.warning(
            "!!! INSECURE: the Fleet gateway serves plain HTTP; traffic and node "
            "identities are not protected. Use only on a trusted test network. !!!"
        )
    try:
        cfg.validate()
    except ValueError as exc:
        p.error(str(exc))
    serve(cfg, a.log_level, validate=False)


if __name__ == "__main__":
    main()
