"""The gateway's HTTP server: uvicorn's h11 protocol with connection limits and header deadlines.

uvicorn alone lets a connection sit idle or dribble its request headers for ever (it arms its
keep-alive timer only after a response) and counts no connections per peer, so a handful of
slow clients could hold every socket of the public port. `LimitedH11Protocol` adds, per
connection:

* a refusal (logged, then closed) when the peer or everyone together already holds
  `max_connections_per_peer` / `max_connections` connections;
* a deadline: the request headers must be complete `header_timeout_s` after the connection
  opened or the previous response ended; otherwise the connection is closed (and, if part of a
  request had arrived or none ever came, the refusal is logged: a slowloris);

and `serve_gateway` passes `ssl_handshake_timeout` to the event loop so a stalled TLS
handshake is dropped after `handshake_timeout_s` (asyncio's default is 60 s), and shrinks
asyncio's per-connection TLS read buffer from 256 KiB to `TLS_READ_BUFFER`. uvicorn buffers at
most 64 KiB of an unread body per connection before it stops reading the socket, so a body the
gateway refuses (or has not authenticated yet) costs it no more than that.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import sslproto
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["LimitedH11Protocol", "protocol_for", "serve_gateway"]

LOG = logging.getLogger("fedmtl.fleet_gateway")


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus per-peer connection limits and a header deadline.

    `gateway` (a `launch.gateway.FleetGateway`, set on the subclass made by `protocol_for`)
    holds the limits, the in-flight counts and the refusal log.
    """

    gateway: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else "?"
        self._counted = False
        self._timed_cycle: Any = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._requests_seen = 0
        gw = self.gateway
        why = gw.inflight.open_connection(self._peer, gw.limits)
        if why is not None:
            gw.refusals.refused(self._peer, "connection", why)
            transport.abort()
            return
        self._counted = True
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if getattr(self, "_counted", False):
            self._counted = False
            self.gateway.inflight.close_connection(self._peer)
        super().connection_lost(exc)

    # -- header deadline ---------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.gateway.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial or self._requests_seen == 0:
            what = "partial request headers" if partial else "no request"
            self.gateway.refusals.refused(
                self._peer, "connection",
                f"{what} within {self.gateway.limits.header_timeout_s:g}s of opening (slow or idle client)")
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._timed_cycle:
            self._timed_cycle = self.cycle  # a new request's headers are complete
            self._requests_seen += 1
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._timed_cycle is self.cycle:
            self._arm_header_timer()  # the next request's headers have the same deadline


def protocol_for(gateway: Any) -> type[LimitedH11Protocol]:
    """A protocol class bound to one gateway instance (uvicorn instantiates it per connection)."""
    return type("GatewayH11Protocol", (LimitedH11Protocol,), {"gateway": gateway})


#: asyncio allocates this much per TLS connection for reads (its default is 256 KiB, which made
#: each open connection, e.g. a slowloris, cost ~0.3 MiB); TLS records are at most 16 KiB.
TLS_READ_BUFFER = 32 * 1024


async def serve_gateway(server: Any, handshake_timeout_s: float) -> None:
    """Run a `uvicorn.Server`, with TLS handshakes bounded by `handshake_timeout_s` and small
    per-connection TLS read buffers (this process serves only the gateway)."""
    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    create_server = loop.create_server

    async def bounded_create_server(*args: Any, **kwargs: Any) -> asyncio.AbstractServer:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", handshake_timeout_s)
        return await create_server(*args, **kwargs)

    loop.create_server = bounded_create_server  # type: ignore[method-assign]
    try:
        await server.serve()
    finally:
        loop.create_server = create_server  # type: ignore[method-assign]
