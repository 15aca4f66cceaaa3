"""Fleet gateway: expose only the SuperNode-facing Fleet API to the network.

Why this exists
---------------
``flower-superlink`` 1.41 serves three APIs on ONE HTTP(S) port: Fleet
(``/v1/fleet/*``, used by SuperNodes), Control (``/v1/control/*``: ``flwr
run/ls/stop/log``, ``flwr supernode register``) and Runtime (``/v1/runtime/*``,
used by the ServerApp), plus ``/docs`` and ``/openapi.json``. Control has no
credential in the open-source build (account auth is Flower Enterprise), so
whoever reaches that port can list, start and stop runs and register a new
SuperNode key, which defeats SuperNode authentication.

Flower 1.41 has no option to put Fleet on its own address: ``--host/--port``
bind all three APIs together, ``--fleet-api-address`` is deprecated and
ignored for the HTTP Fleet API, and the undocumented
``FLWR_INTERNAL_GRPC_FLEET_API=1`` switch starts the *legacy gRPC* Fleet
servicer, which ``flower-supernode`` 1.41 cannot talk to any more (its only
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
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from launch.gateway_hold import DEFAULT_PULL_HOLD_S, DEFAULT_PULL_POLL_S, HELD_ROUTES, PullHolder

__all__ = [
    "FLEET_ROUTES",
    "GatewayConfig",
    "FleetGateway",
    "parse_hostport",
    "gateway_command",
    "serve",
    "main",
]

LOG = logging.getLogger("fedmtl.fleet_gateway")

#: The only requests that pass: what ``flower-supernode`` 1.41 sends
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
                           "x-forwarded-host", "x-real-ip", "content-length"}
_RESP_DROP = _HOP_BY_HOP | {"server", "date"}

#: Flower chunks objects at 5 MiB; requests are a protobuf message each.
DEFAULT_MAX_BODY = 64 * 1024 * 1024



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
    """Where to listen, where to forward, with which TLS material.

    ``insecure=True`` serves plain HTTP and talks plain HTTP to the SuperLink
    (only for a SuperLink started with ``--insecure``). Otherwise
    ``ssl_certfile``/``ssl_keyfile`` (the SuperLink's own server certificate
    is fine: its SAN covers the public names) and ``upstream_ca_certfile``
    (the federation CA, which signed the SuperLink certificate; the upstream
    address, normally 127.0.0.1, must be in that certificate's SAN) are
    required.
    """

    listen: str
    upstream: str
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    upstream_ca_certfile: str | None = None
    insecure: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    upstream_timeout_s: float = 60.0
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


class FleetGateway:
    """ASGI app forwarding the Fleet routes to the SuperLink, 404 for the rest."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self.refused = 0
        self.forwarded = 0
        self.holder = PullHolder(config.pull_hold_s, config.pull_poll_s)

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
        client = scope.get("client") or ("?", 0)
        if method != "POST" or path not in FLEET_ROUTES:
            self.refused += 1
            LOG.warning(
                "Refused %s %r from %s (only the Fleet API is exposed)",
                method[:16],
                path[:200],
                client[0],
            )
            await _plain(send, 404, b"Not Found\n")
            return
        await self._forward(scope, receive, send, client[0])

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
                LOG.info("forwarded %d requests; answered %d message pulls and %d object pulls after holding them",
                         self.forwarded, self.holder.held, self.holder.held_objects)
                if self._client is not None:
                    await self._client.aclose()
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
            timeout=httpx.Timeout(cfg.upstream_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
            trust_env=False,  # never route to an HTTP(S)_PROXY from the env
        )

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any, peer: str) -> None:
        if self._client is None:  # lifespan off (e.g. some test servers)
            self._client = self._make_client()
        headers: list[tuple[bytes, bytes]] = []
        declared_len: int | None = None
        for k, v in scope.get("headers", []):
            lk = k.lower()
            if lk == b"content-length":
                try:
                    declared_len = int(v)
                except ValueError:
                    await _plain(send, 400, b"Bad Content-Length\n")
                    return
            if lk.decode("latin-1") in _REQ_DROP:
                continue
            headers.append((k, v))
        if declared_len is not None and declared_len > self.config.max_body_bytes:
            await _plain(send, 413, b"Request too large\n")
            return
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.config.max_body_bytes:
                await _plain(send, 413, b"Request too large\n")
                return
        headers.append((b"x-forwarded-for", peer.encode("latin-1")))
        headers.append(
            (b"x-forwarded-proto", b"http" if self.config.insecure else b"https")
        )
        # Forward the canonical (decoded, allow-listed) path and no query
        # string: Flower's Fleet routes take none, and nothing else can ride along.
        url = scope["path"]
        if url in HELD_ROUTES and await self.holder.forward(self._client, url, headers, bytes(body), receive, send):
            self.forwarded += 1
            return
        try:
            req = self._client.build_request("POST", url, headers=headers, content=bytes(body))
            resp = await self._client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            LOG.error("SuperLink timed out on %s: %s", scope["path"], exc)
            await _plain(send, 504, b"Upstream timeout\n")
            return
        except httpx.HTTPError as exc:
            # 502 is retryable for flower-supernode: it keeps trying while the
            # SuperLink restarts instead of giving up.
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
            return
        try:
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
        except (httpx.HTTPError, OSError) as exc:
            LOG.error("Error relaying response for %s: %s", scope["path"], exc)
        finally:
            await resp.aclose()


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --------------------------------------------------------------------------- #
# Running it
# --------------------------------------------------------------------------- #
def _uvicorn_config(config: GatewayConfig, log_level: str = "info") -> Any:
    import uvicorn  # pylint: disable=import-outside-toplevel

    host, port = parse_hostport(config.listen)
    return uvicorn.Config(
        app=FleetGateway(config),
        host=host,
        port=port,
        ssl_certfile=None if config.insecure else config.ssl_certfile,
        ssl_keyfile=None if config.insecure else config.ssl_keyfile,
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # the peer address is the real client
        server_header=False,
        log_level=log_level,
        timeout_keep_alive=75,
    )


def serve(config: GatewayConfig, log_level: str = "info", validate: bool = True) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM."""
    import uvicorn  # pylint: disable=import-outside-toplevel

    if validate:
        config.validate()
    server = uvicorn.Server(_uvicorn_config(config, log_level))
    LOG.info(
        "Fleet gateway: %s://%s -> %s (only POST %s)",
        "http" if config.insecure else "https",
        config.listen,
        config.upstream_url,
        "/v1/fleet/{...}",
    )
    asyncio.run(server.serve())
    if not server.started:  # e.g. address in use: uvicorn logged why
        sys.exit(1)


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
    if config.max_body_bytes != DEFAULT_MAX_BODY:
        cmd += ["--max-body-bytes", str(config.max_body_bytes)]
    if config.pull_hold_s != DEFAULT_PULL_HOLD_S:
        cmd += ["--pull-hold", f"{config.pull_hold_s:g}"]
    if config.pull_poll_s != DEFAULT_PULL_POLL_S:
        cmd += ["--pull-poll", f"{config.pull_poll_s:g}"]
    return cmd


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
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
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
    cfg = GatewayConfig(
        listen=a.listen,
        upstream=a.upstream,
        ssl_certfile=a.ssl_certfile,
        ssl_keyfile=a.ssl_keyfile,
        upstream_ca_certfile=a.upstream_ca_certfile,
        insecure=a.insecure,
        max_body_bytes=a.max_body_bytes,
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
