"""Long-polling at the Fleet gateway: a new message, and its objects, reach the SuperNode at once.

Why
---
An idle `flower-supernode` pulls, and when the SuperLink has no message for it, sleeps a
hard-coded 3 s before pulling again (`flwr/supernode/start_client_internal.py`: `time.sleep(3)`;
no option or variable changes it). A coordinator round sends at least two messages to every
client (train, then evaluate) and each waits 0-3 s (1.5 s on average, more for the slowest of
several clients) before its client even sees it.

How
---
When the SuperLink answers a `pull-messages` with no message, the gateway does not relay that
answer: it keeps the SuperNode's request open and sends the same request to the SuperLink again
every `poll_s` (default 0.2 s) until a message is there or `hold_s` (default 20 s, below the
SuperNode's 30 s read timeout, `flwr/supercore/protobuf/client.py`) has passed, then relays
that answer. To the SuperNode this is an ordinary, slower pull; it never reaches its 3 s sleep
while messages keep coming. Nothing of Flower is patched.

The same for `pull-object`: the ServerApp stores a message before it has uploaded the message's
objects (the model), so a SuperNode that gets the message within 0.2 s may ask for an object that
is not there yet; it is told "not available" and backs off 1 s, then 2 s, 4 s ...
(`PULL_INITIAL_BACKOFF`, `flwr/supercore/inflatable/inflatable_utils.py`, hard-coded). The gateway
holds such a `pull-object` answer ("found, not available") and asks again every
`object_poll_s` (default 0.02 s) until the object is there or the hold ends: the SuperNode gets
the object as soon as it is uploaded. Pulling an object changes nothing on the SuperLink
(`flwr/superlink/servicer/fleet/fleet_handlers.py`, `pull_object`).

Why it is safe
--------------
* The request is re-sent unchanged, signed headers included: the SuperLink checks the
  signature and the node id every time, accepts a signed timestamp for 300 s
  (`TIMESTAMP_TOLERANCE`) and keeps no nonces (`flwr/superlink/routers/fleet/node_auth.py`).
  A pull the SuperLink refuses (401, ...) is relayed at once and never held.
* A hold ends when the SuperNode disconnects (checked before every re-send, so no message is
  taken for a client that is gone) or sends a newer pull for the same node; the older request
  then answers "no message". Only a pull the SuperLink accepted may end another node's hold, so
  a stranger cannot cut holds short by naming a node id.
* The SuperLink marks a message delivered when it hands it out, exactly as without the hold:
  a connection lost in the few milliseconds between that and the relay loses the message as a
  network failure would (the coordinator's round timeout covers it).

Cost and bounds: while a client waits, the SuperLink answers one small request per `poll_s`
for it (about 5 per second per idle client at 0.2 s) instead of one per 3 s, and its pull
occupies one of the gateway's in-flight request slots. So that held pulls never starve other
requests, at most `max_held` pulls are held at once in total and `max_held_per_peer` per peer
address (by default half the gateway's request limits); beyond that a pull is forwarded once, as
without holding (that SuperNode then sleeps its 3 s).

Shutdown: `release_all` answers every held pull at once (with the SuperLink's last, empty
answer) and holds no new one, so a stopping gateway waits for no hold to run out: uvicorn
otherwise waits up to its graceful-shutdown timeout for those connections, and each stop of a
coordinator took 5 s more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

__all__ = ["DEFAULT_OBJECT_POLL_S", "DEFAULT_PULL_HOLD_S", "DEFAULT_PULL_POLL_S", "HELD_ROUTES", "OBJECT_ROUTE",
           "PULL_ROUTE", "HeldAnswer", "PullHolder"]

LOG = logging.getLogger("fedmtl.fleet_gateway")

PULL_ROUTE = "/v1/fleet/pull-messages"
OBJECT_ROUTE = "/v1/fleet/pull-object"
HELD_ROUTES = frozenset({PULL_ROUTE, OBJECT_ROUTE})
DEFAULT_PULL_HOLD_S = 20.0
DEFAULT_PULL_POLL_S = 0.2
DEFAULT_OBJECT_POLL_S = 0.02

#: The SuperLink's last answer: status, headers (without content-encoding/-length) and decoded body.
HeldAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


class PullHolder:
    """Holds empty `pull-messages` and pending `pull-object` answers (see the module docstring)."""

    def __init__(self, hold_s: float = DEFAULT_PULL_HOLD_S, poll_s: float = DEFAULT_PULL_POLL_S,
                 object_poll_s: float = DEFAULT_OBJECT_POLL_S, max_held: int = 128,
                 max_held_per_peer: int = 32) -> None:
        self.hold_s = hold_s
        self.poll_s = poll_s
        self.object_poll_s = object_poll_s
        self.max_held = max_held
        self.max_held_per_peer = max_held_per_peer
        self.held = 0  # message pulls answered after at least one re-send
        self.held_objects = 0  # object pulls answered after at least one re-send
        self.not_held = 0  # pulls forwarded once because max_held(_per_peer) were held already
        self._holds: dict[int, asyncio.Event] = {}  # node id -> "stop holding" of its current pull
        self._active: dict[str, int] = {}  # peer -> pulls being held now
        self._stops: set[asyncio.Event] = set()  # "stop holding" of every pull held now
        self.closing = False  # set by release_all: nothing is held any more
        self._active_total = 0

    @property
    def enabled(self) -> bool:
        return self.hold_s > 0

    async def pull(self, client: httpx.AsyncClient, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                   receive: Any, peer: str = "") -> HeldAnswer | None:
        """Send one `pull-messages` / `pull-object` (`path`) to the SuperLink and re-send it while
        the answer is "nothing yet"; the answer to relay, or None if the client went away while
        held (then nothing more was pulled for it). httpx errors propagate (the caller answers them)."""
        if path == PULL_ROUTE:
            node, waiting, poll_s = _pull_node_id(body), _empty_pull, self.poll_s
        elif path == OBJECT_ROUTE:
            node, waiting, poll_s = None, _object_pending, self.object_poll_s
        else:
            raise ValueError(f"{path} is not a held route")
        may_hold = self.enabled and not self.closing and self._active_total < self.max_held \
            and self._active.get(peer, 0) < self.max_held_per_peer
        if not may_hold:
            if self.enabled:
                self.not_held += 1
            return await _send(client, path, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_s
        stop = asyncio.Event()
        self._stops.add(stop)
        gone = asyncio.ensure_future(_disconnected(receive))
        stopped = asyncio.ensure_future(stop.wait())
        self._active_total += 1
        self._active[peer] = self._active.get(peer, 0) + 1
        polls = 0
        try:
            while True:
                if gone.done():
                    return None  # nobody to answer: take no message for it
                answer = await _send(client, path, headers, body)
                polls += 1
                status, _headers, raw = answer
                if status != 200 or not waiting(raw) or stop.is_set() or loop.time() >= deadline:
                    break
                if polls == 1 and node is not None:
                    # The SuperLink accepted this request (signature, node id): only now may it end
                    # an older hold of the same node (a SuperNode that gave up on that request).
                    previous = self._holds.get(node)
                    if previous is not None:
                        previous.set()
                    self._holds[node] = stop
                await asyncio.wait({gone, stopped}, timeout=min(poll_s, max(0.0, deadline - loop.time())))
            if polls > 1:
                if node is None:
                    self.held_objects += 1
                else:
                    self.held += 1
            return answer
        finally:
            gone.cancel()
            stopped.cancel()
            self._stops.discard(stop)
            self._active_total -= 1
            left = self._active.get(peer, 0) - 1
            if left > 0:
                self._active[peer] = left
            else:
                self._active.pop(peer, None)
            if node is not None and self._holds.get(node) is stop:
                del self._holds[node]

    def release_all(self) -> int:
        """Answer every held pull now and hold no more (the gateway is stopping); how many were held."""
        self.closing = True
        stops = list(self._stops)
        for stop in stops:
            stop.set()
        return len(stops)


async def _send(client: httpx.AsyncClient, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> HeldAnswer:
    """One request to the SuperLink; its answer decoded (an encoded answer is relayed decoded:
    `content-encoding` and `content-length` are dropped here, the relay sets the length)."""
    resp = await client.send(client.build_request("POST", path, headers=headers, content=body))
    out = [(k, v) for k, v in resp.headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
    return resp.status_code, out, resp.content


def _pull_node_id(body: bytes) -> int | None:
    """The node id of a `pull-messages` request, None if it cannot be read (then no other hold ends)."""
    try:
        from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611,C0415

        request = PullMessagesRequest()
        request.ParseFromString(body)
        return int(request.node.node_id)
    except Exception:  # noqa: BLE001 - anything unexpected is forwarded as it is
        return None


def _object_pending(raw: bytes) -> bool:
    """True if a `pull-object` answer says the object exists but is not uploaded yet."""
    try:
        from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611,C0415

        response = PullObjectResponse()
        response.ParseFromString(raw)
        return response.object_found and not response.object_available
    except Exception:  # noqa: BLE001 - unreadable (e.g. compressed): relay it, never hold it
        return False


def _empty_pull(raw: bytes) -> bool:
    """True if a `pull-messages` answer carries no message."""
    try:
        from flwr.proto.fleet_pb2 import PullMessagesResponse  # pylint: disable=E0611,C0415

        response = PullMessagesResponse()
        response.ParseFromString(raw)
        return len(response.messages_list) == 0
    except Exception:  # noqa: BLE001 - unreadable: relay it, never hold it
        return False


async def _disconnected(receive: Any) -> None:
    """Return when the client closes its connection (its request body was read already)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
