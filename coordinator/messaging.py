"""The only place the coordinator speaks Flower: building messages and collecting their replies.

Two jobs, both thin:

* `Outbox` builds query, train and evaluate messages. A group's model is packed
  (`tasks.packing`: one flat array per dtype, an ArrayRecord) once per round (per model
  version), and that record is shared by every message that carries it: it is serialised once,
  Flower's content addressing uploads it once however many clients receive it, and it is a
  handful of Flower objects instead of two per tensor. Its layout (names, dtypes, shapes) rides
  in each message's config record, so a train message is 6 Flower objects, each one request.
* `Exchange` pushes messages and pulls their replies *as they arrive* (Flower's
  `push_messages` / `pull_messages`), matching each reply to the message it answers by Flower's
  reply-to id — never by anything the client wrote. The caller folds each reply in (streaming
  fusion) instead of holding a whole round of replies.

Everything else in the coordinator deals in plain Python types and `strategies/` dataclasses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from coordinator.config import RunConfig
from coordinator.state import TaskGroup
from tasks import protocol as P
from tasks.packing import layout_entries, pack


@dataclass(frozen=True)
class Sent:
    """What one message asked of whom: the key its reply is matched and checked against."""

    kind: str  # P.QUERY, P.TRAIN or P.EVALUATE
    node: int
    gid: int | None = None  # the group a train message trains
    tasks: tuple[str, ...] = ()  # the tasks it asked for (train), or every task evaluated
    groups: dict[int, tuple[str, ...]] = field(default_factory=dict, compare=False)  # evaluate: gid -> tasks
    attempt: int = 0
    evaluate: bool = False  # train: the client scores the received model first (`P.EVALUATE_FIRST`)
    probe: bool = False  # train: measure only (`P.MEASURE_ONLY`); the reply carries no model


def base_config(cfg: RunConfig, round_: int) -> dict:
    """Settings every message carries, so simulated and deployed clients behave the same."""
    return {
        "suite": cfg.suite,
        "data-root": cfg.data_root,
        "data-seed": cfg.data_seed,
        "device": cfg.device,
        "seed": cfg.seed,
        "round": round_,
    }


def train_group_id(round_: int, gid: int) -> str:
    """A readable Flower group_id for train messages (logs only: replies are matched by id)."""
    return f"round-{round_}.group-{gid}"


def packed_records(state: Mapping[str, torch.Tensor]) -> tuple[ArrayRecord, dict[str, list]]:
    """A state dict as (its Flower ArrayRecord of flat arrays, its layout's wire form), see
    `tasks.packing`; the layout travels in the message's config (`layout_entries`)."""
    buffers, layout = pack(state)
    return ArrayRecord({dtype: Array(buf) for dtype, buf in buffers.items()}), layout


class Outbox:
    """Builds one round's messages; each group model is packed into records once."""

    def __init__(self, cfg: RunConfig, round_: int) -> None:
        self.cfg = cfg
        self.round = round_
        self._records: dict[tuple[int, int], tuple[ArrayRecord, dict[str, list]]] = {}

    def model_records(self, group: TaskGroup) -> tuple[ArrayRecord, dict[str, list]]:
        """The group's whole model (body and every head, in `state_for(group.tasks)` order),
        packed, as one shared (arrays, layout) pair; rebuilt only when the group's weights
        changed (`group.version`)."""
        key = (group.gid, group.version)
        if key not in self._records:
            self._records[key] = packed_records(group.state_for(group.tasks))
        return self._records[key]

    def query(self, node: int) -> tuple[Message, Sent]:
        content = RecordDict({P.CONFIG: ConfigRecord(base_config(self.cfg, self.round))})
        return Message(content, dst_node_id=node, message_type=P.QUERY), Sent(P.QUERY, node)

    def train(self, node: int, group: TaskGroup, tasks: list[str], extra: dict, attempt: int = 0,
              evaluate: bool = False, probe: bool = False) -> tuple[Message, Sent]:
        """Train `tasks` (the group's tasks this client holds) starting from the group's model.

        `extra` carries the round's training and measurement settings (see `coordinator.train`);
        with `evaluate` the client first scores the model it received on those tasks' test split
        (the previous round's evaluation, travelling with this round's training); a `probe` only
        measures the gradient summaries `extra` asks for, at the group's model.
        """
        config = base_config(self.cfg, self.round) | {"group": group.gid, "tasks": list(tasks)} | extra
        if probe:
            config[P.MEASURE_ONLY] = True
        elif evaluate:
            config[P.EVALUATE_FIRST] = True
        arrays, layout = self.model_records(group)
        config |= layout_entries(layout, P.LAYOUT)
        content = RecordDict({P.MODEL: arrays, P.CONFIG: ConfigRecord(config)})
        msg = Message(content, dst_node_id=node, message_type=P.TRAIN, group_id=train_group_id(self.round, group.gid))
        return msg, Sent(P.TRAIN, node, group.gid, tuple(tasks), attempt=attempt, evaluate=evaluate and not probe,
                         probe=probe)

    def evaluate(self, node: int, groups: list[tuple[TaskGroup, list[str]]]) -> tuple[Message, Sent]:
        """One message evaluates every group this client holds tasks of (one packed model each)."""
        config = base_config(self.cfg, self.round) | {P.EVAL_GROUPS: [g.gid for g, _ in groups]}
        records: dict = {}
        for g, tasks in groups:
            config[P.group_key("tasks", g.gid)] = list(tasks)
            records[P.group_key(P.MODEL, g.gid)], layout = self.model_records(g)
            config |= layout_entries(layout, P.group_key(P.LAYOUT, g.gid))
        content = RecordDict(records | {P.CONFIG: ConfigRecord(config)})
        asked = {g.gid: tuple(tasks) for g, tasks in groups}
        every = tuple(t for ts in asked.values() for t in ts)
        return Message(content, dst_node_id=node, message_type=P.EVALUATE, group_id=f"eval-{self.round}"), Sent(
            P.EVALUATE, node, None, every, groups=asked)


class Exchange:
    """Push messages, then pull replies incrementally until all are in or the deadline passes.

    Polls quickly while replies keep coming and backs off (up to `max_poll`) while none do, so a
    reply is picked up within a fraction of a second instead of Flower's fixed 3 s sleep in
    `send_and_receive`.
    """

    def __init__(self, grid: Grid, min_poll: float = 0.01, max_poll: float = 0.25) -> None:
        self.grid = grid
        self.min_poll = min_poll
        self.max_poll = max_poll

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def push(self, outgoing: list[tuple[Message, Sent]]) -> tuple[dict[str, Sent], list[Sent]]:
        """Send; returns (message id -> what it asked, messages Flower refused to store)."""
        if not outgoing:
            return {}, []
        ids = list(self.grid.push_messages([m for m, _ in outgoing]))
        ids += [None] * (len(outgoing) - len(ids))
        pending = {str(mid): sent for mid, (_, sent) in zip(ids, outgoing) if mid}
        refused = [sent for mid, (_, sent) in zip(ids, outgoing) if not mid]
        return pending, refused

    def collect(self, pending: dict[str, Sent], timeout: float) -> Iterator[tuple[Sent, Message]]:
        """Yield (what was asked, its reply) as replies arrive. Replies to ids we did not send, or a
        second reply to one message, are skipped: only Flower's reply-to id decides the match.
        On return, `pending` holds the messages that got no reply in time."""
        deadline = time.monotonic() + timeout
        poll = self.min_poll
        while pending:
            got = list(self.grid.pull_messages(list(pending)))
            for reply in got:
                sent = pending.pop(str(reply.metadata.reply_to_message_id), None)
                if sent is not None:
                    yield sent, reply
            if not pending or time.monotonic() >= deadline:
                return
            poll = self.min_poll if got else min(self.max_poll, poll * 2)
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def send(self, outgoing: list[tuple[Message, Sent]], timeout: float) -> tuple[list[tuple[Sent, Message]], list[Sent]]:
        """Push and collect everything: (answered pairs, messages left unanswered)."""
        pending, refused = self.push(outgoing)
        answered = list(self.collect(pending, timeout))
        return answered, refused + list(pending.values())


def error_text(reply: Message) -> str:
    """The client's error as one line (Flower carries the exception text in `reason`)."""
    err = reply.error
    reason = (err.reason or "").strip().splitlines()
    return f"code {err.code}: {reason[-1][:300] if reason else 'no reason given'}"
