"""What the Fleet gateway lets one request, one peer and everyone together cost the coordinator.

Every limit protects one thing (docs/security.md, "Gateway limits", has the figures):

* **body size per route** (`route_limit`): what each Fleet route can legitimately carry.
  Heartbeats, node registration, polls, `get-run`/`get-fab` requests and object pulls are a few
  hundred bytes of protobuf; only `push-object` (one object: an array chunk of at most Flower's
  `FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`, 5 MiB by default, or one record) and `push-messages` (the
  message metadata and its object tree, ~70 bytes per object id) carry model-sized data. The big
  limit is derived from the chunk size (chunk + 1 MiB of protobuf and record headroom) and can be
  raised with `--max-body-bytes` (e.g. for clients that raise the chunk size).
* **connections** in total and per peer address, and **requests in flight** in total, per peer
  address and per authenticated key: a client that opens many connections or sends many requests
  at once gets refused connections / `503` (which `flower-supernode` retries with back-off)
  instead of taking every slot.
* **time**: a request's headers must be complete within `header_timeout_s` of the connection
  opening (or of the previous response), a TLS handshake within `handshake_timeout_s`, and a body
  must keep arriving (`body_idle_timeout_s` between chunks, `body_timeout_s` plus the body's
  size at `body_min_rate` bytes/s overall): a slowloris holds a slot for seconds, not for ever.

`RefusalLog` writes every refusal with the peer's address and the reason, but at most
`per_peer` lines per peer and minute (then one summary line), so a flood cannot fill the disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "BIG_ROUTES",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SMALL_BODY",
    "GatewayLimits",
    "InFlight",
    "RefusalLog",
    "default_max_body",
]

LOG = logging.getLogger("fedmtl.fleet_gateway")

#: Flower's array chunk size unless the environment changes it (`flwr.common.constant`).
DEFAULT_CHUNK_SIZE = 5 * 1024 * 1024
#: Routes whose body carries model data; every other Fleet route gets the small limit.
BIG_ROUTES = frozenset({"/v1/fleet/push-object", "/v1/fleet/push-messages"})
#: Enough for any small Fleet request (the largest, register/activate, is ~300 bytes).
DEFAULT_SMALL_BODY = 64 * 1024


def default_max_body() -> int:
    """The big-route limit: one array chunk (as this environment sets it) plus 1 MiB headroom."""
    try:
        chunk = int(os.environ.get("FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))
    except ValueError:
        chunk = DEFAULT_CHUNK_SIZE
    return max(chunk, 1) + 1024 * 1024


@dataclass(frozen=True)
class GatewayLimits:
    """All limits of one gateway (see the module docstring for what each protects)."""

    max_body_bytes: int = 0  # big routes; 0 = default_max_body()
    small_body_bytes: int = DEFAULT_SMALL_BODY
    max_connections: int = 512
    max_connections_per_peer: int = 64
    max_requests: int = 256
    max_requests_per_peer: int = 64
    max_requests_per_key: int = 16
    header_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    body_idle_timeout_s: float = 20.0
    body_timeout_s: float = 30.0
    body_min_rate: int = 64 * 1024  # bytes/s a body must average beyond body_timeout_s
    upstream_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_body_bytes == 0:
            object.__setattr__(self, "max_body_bytes", default_max_body())
        for name in ("max_body_bytes", "small_body_bytes", "max_connections", "max_connections_per_peer",
                     "max_requests", "max_requests_per_peer", "max_requests_per_key", "body_min_rate"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"gateway limit {name} = {getattr(self, name)!r}: must be >= 1")
        for name in ("header_timeout_s", "handshake_timeout_s", "body_idle_timeout_s", "body_timeout_s",
                     "upstream_timeout_s"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"gateway limit {name} = {getattr(self, name)!r}: must be > 0")

    def route_limit(self, path: str) -> int:
        """The largest body `path` may carry."""
        return self.max_body_bytes if path in BIG_ROUTES else self.small_body_bytes

    def body_deadline_s(self, length: int | None, path: str) -> float:
        """How long a body of `length` bytes (unknown: the route's limit) may take in all."""
        size = self.route_limit(path) if length is None else length
        return self.body_timeout_s + size / self.body_min_rate


class InFlight:
    """Counts of what is open now: connections per peer, requests per peer and per key."""

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self.total_connections = 0
        self.total_requests = 0

    @staticmethod
    def _add(counts: dict[str, int], key: str, delta: int) -> None:
        value = counts.get(key, 0) + delta
        if value > 0:
            counts[key] = value
        else:
            counts.pop(key, None)

    def open_connection(self, peer: str, limits: GatewayLimits) -> str | None:
        """Count a new connection; return why it is refused (and do not count it), else None."""
        if self.total_connections >= limits.max_connections:
            return f"too many connections in total ({limits.max_connections})"
        if self.connections.get(peer, 0) >= limits.max_connections_per_peer:
            return f"too many connections from this address ({limits.max_connections_per_peer})"
        self.total_connections += 1
        self._add(self.connections, peer, 1)
        return None

    def close_connection(self, peer: str) -> None:
        self.total_connections -= 1
        self._add(self.connections, peer, -1)

    def start_request(self, peer: str, limits: GatewayLimits) -> str | None:
        if self.total_requests >= limits.max_requests:
            return f"too many requests in flight in total ({limits.max_requests})"
        if self.requests.get(peer, 0) >= limits.max_requests_per_peer:
            return f"too many requests in flight from this address ({limits.max_requests_per_peer})"
        self.total_requests += 1
        self._add(self.requests, peer, 1)
        return None

    def end_request(self, peer: str) -> None:
        self.total_requests -= 1
        self._add(self.requests, peer, -1)

    def start_key(self, key: str, limits: GatewayLimits) -> str | None:
        if self.keys.get(key, 0) >= limits.max_requests_per_key:
            return f"too many requests in flight for key {key} ({limits.max_requests_per_key})"
        self._add(self.keys, key, 1)
        return None

    def end_key(self, key: str) -> None:
        self._add(self.keys, key, -1)


class RefusalLog:
    """`WARNING Refused ... from PEER: REASON`, at most `per_peer` lines per peer per window."""

    def __init__(self, per_peer: int = 20, window_s: float = 60.0, max_peers: int = 4096,
                 logger: logging.Logger | None = None) -> None:
        self.per_peer = per_peer
        self.window_s = window_s
        self.max_peers = max_peers
        self.log = logger or LOG
        self.total = 0
        self._peers: OrderedDict[str, list[float]] = OrderedDict()  # peer -> [window start, lines, suppressed]

    def refused(self, peer: str, what: str, reason: str) -> None:
        self.total += 1
        now = time.monotonic()
        state = self._peers.get(peer)
        if state is None or now - state[0] >= self.window_s:
            if state is not None and state[2]:
                self.log.warning("Refused %d more request(s) from %s in the last %.0fs (not logged one by one)",
                                 int(state[2]), peer, self.window_s)
            state = [now, 0, 0]
            self._peers[peer] = state
        self._peers.move_to_end(peer)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        if state[1] < self.per_peer:
            state[1] += 1
            self.log.warning("Refused %s from %s: %s", what, peer, reason)
        else:
            state[2] += 1

    def flush(self) -> None:
        """Log the summary lines still owed (at shutdown)."""
        for peer, state in self._peers.items():
            if state[2]:
                self.log.warning("Refused %d more request(s) from %s in the last %.0fs (not logged one by one)",
                                 int(state[2]), peer, time.monotonic() - state[0])
                state[2] = 0
