"""The only place the coordinator speaks Flower: building messages and reading replies.

Keeping this thin means the round loop deals in `ClientUpdate`s and plain dicts, and the
algorithms in `strategies/` never see a Flower type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from coordinator.config import RunConfig
from coordinator.state import ClientInfo, TaskGroup
from strategies.affinity import SIGNALS, AffinityStats
from strategies.fusion import ClientUpdate
from tasks import protocol as P
from tasks.models import split_state


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


def query_message(node_id: int, cfg: RunConfig) -> Message:
    return Message(RecordDict({P.CONFIG: ConfigRecord(base_config(cfg, 0))}), dst_node_id=node_id, message_type=P.QUERY)


def parse_query_reply(reply: Message) -> ClientInfo:
    info = reply.content[P.INFO]
    tasks = [str(t) for t in info["tasks"]]
    return ClientInfo(
        node_id=reply.metadata.src_node_id,
        name=str(info["name"]),
        tasks=tasks,
        train_examples=dict(zip(tasks, (int(n) for n in info["train-examples"]))),
        test_examples=dict(zip(tasks, (int(n) for n in info["test-examples"]))),
        device=str(info["device"]),
    )


def train_message(node_id: int, group: TaskGroup, tasks: list[str], cfg: RunConfig, round_: int) -> Message:
    config = base_config(cfg, round_) | {
        "group": group.gid,
        "tasks": tasks,
        "local-epochs": cfg.local_epochs,
        "local-steps": cfg.local_steps,
        "batch-size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "affinity-every": cfg.affinity_every if len(group.tasks) > 1 else 0,
        "affinity-batch-size": cfg.affinity_batch_size,
    }
    content = RecordDict({P.MODEL: ArrayRecord(group.state_for(tasks)), P.CONFIG: ConfigRecord(config)})
    return Message(content, dst_node_id=node_id, message_type=P.TRAIN, group_id=train_group_id(round_, group.gid))


def train_group_id(round_: int, gid: int) -> str:
    """Flower copies a message's group_id onto its reply (error replies too): it names our group."""
    return f"round-{round_}.group-{gid}"


def group_of(reply: Message) -> int:
    """The task group a train reply (or error) answers, from its Flower group_id."""
    _, _, gid = reply.metadata.group_id.rpartition(".group-")
    return int(gid) if gid.isdigit() else -1


def evaluate_message(node_id: int, group: TaskGroup, tasks: list[str], cfg: RunConfig, round_: int) -> Message:
    config = base_config(cfg, round_) | {"group": group.gid, "tasks": tasks}
    content = RecordDict({P.MODEL: ArrayRecord(group.state_for(tasks)), P.CONFIG: ConfigRecord(config)})
    return Message(content, dst_node_id=node_id, message_type=P.EVALUATE, group_id=f"eval-{round_}")


@dataclass
class TrainReply:
    """A train reply decoded into fusion inputs plus the client's bookkeeping."""

    update: ClientUpdate
    losses: dict[str, float]
    train_seconds: float
    affinity_seconds: float
    steps: int
    affinity: dict[str, AffinityStats] = field(default_factory=dict)


def parse_train_reply(reply: Message) -> TrainReply:
    """Decode a train reply; raises ValueError with the reason if the reply is malformed."""
    for key in (P.MODEL, P.METRICS, P.CONFIG):
        if key not in reply.content:
            raise ValueError(f"reply has no {key!r} record (records: {sorted(reply.content.keys())})")
    tasks = [str(t) for t in reply.content[P.CONFIG]["tasks"]]
    metrics = dict(reply.content[P.METRICS])
    state = reply.content[P.MODEL].to_torch_state_dict()
    body, heads = split_state(state)
    examples, losses = {}, {}
    for t in tasks:
        ex_key, loss_key = P.task_key(P.EXAMPLES, t), P.task_key(P.LOSS, t)
        if ex_key not in metrics or loss_key not in metrics:
            raise ValueError(f"reply lacks {ex_key!r} or {loss_key!r}")
        examples[t] = metrics[ex_key]
        losses[t] = float(metrics[loss_key])
    affinity = {s: AffinityStats.from_metrics(metrics, prefix=s) for s in SIGNALS}
    affinity = {s: stats for s, stats in affinity.items() if stats.n > 0}
    return TrainReply(
        update=ClientUpdate(node_id=reply.metadata.src_node_id, body=body, heads=heads, examples=examples),
        losses=losses,
        train_seconds=float(metrics.get(P.TRAIN_SECONDS, 0.0)),
        affinity_seconds=float(metrics.get(P.AFFINITY_SECONDS, 0.0)),
        steps=int(metrics.get(P.STEPS, 0)),
        affinity=affinity,
    )


def parse_evaluate_reply(reply: Message) -> dict[str, dict[str, float]]:
    """{task: {accuracy, loss, examples}} for every task the client evaluated."""
    metrics = dict(reply.content[P.METRICS])
    prefix = P.ACCURACY + "."
    tasks = [k[len(prefix):] for k in metrics if k.startswith(prefix)]
    return {t: {name: float(metrics[P.task_key(name, t)]) for name in (P.ACCURACY, P.LOSS, P.EXAMPLES)} for t in tasks}


def error_text(reply: Message) -> str:
    """The client's error as one line (Flower carries the exception text in `reason`)."""
    err = reply.error
    reason = (err.reason or "").strip().splitlines()
    return f"code {err.code}: {reason[-1] if reason else 'no reason given'}"


def send(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    if not messages:
        return []
    return list(grid.send_and_receive(messages, timeout=timeout))
