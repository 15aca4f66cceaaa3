"""Discovery: who is in the federation, what each client holds, and who it is.

A node is asked (a `query` message) what it holds only when the coordinator is about to use it,
so a round costs what it samples, not the size of the federation: with `fraction` < 1 each
round draws its clients from all connected nodes, and only the drawn nodes not met yet are
queried. Identity: with a client registry (secure deployments, `client-registry`), a node's
name is the one bound to its authenticated key at registration, whatever it reports; without
one, the reported name, and a second live node claiming a name already in use is refused
instead of silently replacing the first (a node that died and came back under a new node id
does take its old place).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from coordinator.client_registry import ClientRegistryError, bind_identity, load_registry
from coordinator.config import RunConfig
from coordinator.messaging import Exchange, Outbox, error_text
from coordinator.replies import Refused, read_query, short, unknown_tasks
from coordinator.state import ClientInfo, RoundOutcome

QUERY_BACKOFF = 3  # rounds before a node that failed its query is asked again
JOIN_LINES = 20  # join lines logged per discovery pass; the rest are counted


def draw_order(seed: int, round_: int, key: object) -> str:
    """A deterministic pseudo-random rank for sampling: the same for the same (seed, round, key)
    in every process and after a resume (keys are client names where known)."""
    return hashlib.blake2b(f"{seed}/{round_}/{key}".encode(), digest_size=8).hexdigest()


class Roster:
    """The clients met so far, by node id, and the rules for admitting a new one."""

    def __init__(self, cfg: RunConfig, suite_tasks: list[str], log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.tasks = suite_tasks
        self.log = log
        self.clients: dict[int, ClientInfo] = {}
        self.unresponsive: dict[int, int] = {}  # node id -> round its query failed
        self.registry_path = cfg.client_registry
        self.unreported = RoundOutcome(round=-1, groups=[])  # joins and refusals outside a round

    # -- who is here -------------------------------------------------------------------------

    def name_of(self, node: int) -> str:
        info = self.clients.get(node)
        return info.name if info else f"node-{node}"

    def live(self, online: set[int] | list[int]) -> dict[int, ClientInfo]:
        """Known clients whose nodes Flower lists as connected: a SuperNode that died drops out
        here, so no round waits for it (it is picked up again if it re-joins)."""
        online = set(online)
        return {n: c for n, c in self.clients.items() if n in online}

    def _may_query(self, node: int, round_: int) -> bool:
        failed = self.unresponsive.get(node)
        return failed is None or round_ - failed >= QUERY_BACKOFF

    # -- sampling ----------------------------------------------------------------------------

    def draw(self, online: list[int], fraction: float, round_: int, salt: str = "") -> list[int]:
        """The nodes a round uses: all of them for fraction 1, else ceil(fraction x N) drawn
        deterministically (by name where known, so a resumed run draws the same clients)."""
        if fraction >= 1.0:
            return sorted(online)
        k = max(1, math.ceil(fraction * len(online)))
        key = {n: (self.clients[n].name if n in self.clients else n) for n in online}
        return sorted(online, key=lambda n: draw_order(self.cfg.seed, round_, f"{salt}{key[n]}"))[:k]

    def pool(self, exchange: Exchange, outbox: Outbox, nodes: list[int], round_: int,
             outcome: RoundOutcome | None) -> dict[int, ClientInfo]:
        """The known clients among `nodes`, after asking the ones not met yet what they hold."""
        new = [n for n in nodes if n not in self.clients and self._may_query(n, round_)]
        if new:
            self.discover(exchange, outbox, new, round_, outcome)
        return {n: self.clients[n] for n in nodes if n in self.clients}

    # -- joining -----------------------------------------------------------------------------

    def wait_for(self, exchange: Exchange, outbox: Outbox, count: int, timeout: float) -> None:
        """Start-up: meet clients until `count` are known (at most all connected nodes are asked,
        in batches when the run samples, so a huge federation is not queried whole)."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5.0
        while len(self.clients) < count:
            online = exchange.node_ids()
            unknown = [n for n in online if n not in self.clients]  # each pass asks again: no backoff here
            if self.cfg.fraction < 1.0:  # a sampling run: meet a batch, not the whole federation
                unknown = sorted(unknown, key=lambda n: draw_order(self.cfg.seed, 0, n))
                unknown = unknown[: max(2 * (count - len(self.clients)), math.ceil(self.cfg.fraction * len(online)))]
            if unknown:
                self.discover(exchange, outbox, unknown, 0, None)
            if len(self.clients) >= count or time.monotonic() > deadline:
                break
            if time.monotonic() >= next_note:
                self.log(f"  waiting for clients: {len(self.clients)} of {count} joined "
                         f"({deadline - time.monotonic():.0f}s left of min-clients-timeout)")
                next_note = time.monotonic() + 15.0
            time.sleep(1.0)
        if len(self.clients) < count:
            raise RuntimeError(f"only {len(self.clients)} of the {count} required clients joined within {timeout:.0f}s")

    def discover(self, exchange: Exchange, outbox: Outbox, nodes: list[int], round_: int,
                 outcome: RoundOutcome | None) -> list[ClientInfo]:
        """Query `nodes` and admit those whose answers are valid; the others are backed off."""
        # Give new nodes time to answer (a deployed node polls and starts a ClientApp process);
        # replies are collected as they come, so only a silent node costs the whole wait.
        wait = min(max(self.cfg.round_timeout, 60.0), 120.0)
        answered, silent = exchange.send([outbox.query(n) for n in nodes], timeout=wait)
        online = set(exchange.node_ids())
        joined: list[ClientInfo] = []
        for sent in silent:
            self.unresponsive[sent.node] = round_
        outcome = outcome if outcome is not None else self.unreported
        for sent, reply in sorted(answered, key=lambda pair: pair[0].node):  # a fixed order: first come is lowest id
            node = sent.node
            if reply.has_error():
                self.unresponsive[node] = round_
                self.log(f"  node {node} failed to describe its data: {error_text(reply)}")
                continue
            info = read_query(reply, sent, self.tasks, self.cfg.max_examples)
            if isinstance(info, Refused):
                self.unresponsive[node] = round_
                self._refuse(node, f"node-{node}", info.reasons, outcome)
                continue
            stray = unknown_tasks(reply, self.tasks)
            if stray:
                self.log(f"  {short(info.name)} (node {node}) holds tasks {stray} unknown to suite "
                         f"{self.cfg.suite!r}: ignored")
            refusal = self._admit(info, online)
            if refusal:
                self.unresponsive[node] = round_
                self._refuse(node, info.name, [refusal], outcome)
                continue
            self.unresponsive.pop(node, None)
            joined.append(info)
            if len(joined) <= JOIN_LINES:
                examples = ", ".join(f"{t}:{info.train_examples[t]}" for t in info.tasks)
                self.log(f"  joined: {info.name} (node {node}, {short(info.device)}) tasks {examples}")
        if len(joined) > JOIN_LINES:
            self.log(f"  ... and {len(joined) - JOIN_LINES} more clients joined")
        outcome.joined += [c.name for c in joined]
        return joined

    def report_into(self, outcome: RoundOutcome) -> None:
        """Hand joins and refusals made outside a round (start-up) to a round's record."""
        outcome.joined = self.unreported.joined + outcome.joined
        outcome.rejected = self.unreported.rejected + outcome.rejected
        self.unreported = RoundOutcome(round=-1, groups=[])

    def _admit(self, info: ClientInfo, online: set[int]) -> str | None:
        """Apply the identity rules (`coordinator.client_registry.bind_identity`); returns why the
        client is refused, or None (then it is in). The registry is re-read at every join, so keys
        registered or revoked while the coordinator runs count at once."""
        node = info.node_id
        try:
            registry = load_registry(self.registry_path) if self.registry_path else None
        except ClientRegistryError as exc:
            return str(exc)  # a damaged registry fails closed
        connected = {n: c.name for n, c in self.clients.items() if n in online and n != node}
        identity = bind_identity(node, info.name, registry, connected)
        if identity.refused:
            return identity.refused
        if identity.note:
            self.log(f"  {identity.note}")
        info.name = identity.name
        for other, known in list(self.clients.items()):
            if known.name == info.name and other != node:  # the same client, back under a new node id
                del self.clients[other]
                self.log(f"  {info.name} re-joined as node {node} (was node {other})")
        self.clients[node] = info
        return None

    def _refuse(self, node: int, name: str, reasons: list[str], outcome: RoundOutcome) -> None:
        self.log(f"  refused node {node} ({short(name)}): {'; '.join(reasons[:3])}")
        outcome.reject(node, short(name), None, reasons, "query")
