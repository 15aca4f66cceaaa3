"""Evaluate: the groups' models on clients' own test splits, at the cadence the run asks for.

`evaluate-every` sets how often (round 0 and the final round are always evaluated), and
`fraction-evaluate` which share of the connected clients (drawn like training clients, so a
huge federation is not evaluated whole). One message per client carries every group it holds
tasks of. With `evaluate-data` the coordinator also scores the models on a held-out data
folder the operator owns (the client folder format of `fedmtl prepare-data`).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from coordinator.config import RunConfig
from coordinator.discovery import Roster
from coordinator.messaging import Exchange, Outbox, error_text
from coordinator.replies import Refused, read_evaluate
from coordinator.state import ClientInfo, RoundOutcome, TaskGroup
from tasks.suite import Suite


def due(cfg: RunConfig, round_: int) -> bool:
    return round_ == 0 or round_ == cfg.rounds or round_ % cfg.evaluate_every == 0


def evaluate(exchange: Exchange, outbox: Outbox, groups: list[TaskGroup], pool: dict[int, ClientInfo],
             roster: Roster, cfg: RunConfig, tasks: list[str], outcome: RoundOutcome) -> dict[str, dict[str, float]]:
    """Per task: accuracy and loss pooled over the evaluated clients' test examples."""
    outgoing = []
    for node, info in sorted(pool.items()):
        held = [(g, [t for t in g.tasks if t in info.tasks]) for g in groups]
        held = [(g, ts) for g, ts in held if ts]
        if held:
            outgoing.append(outbox.evaluate(node, held))
    answered, silent = exchange.send(outgoing, timeout=cfg.round_timeout)
    scores: list[tuple[str, dict[str, dict[str, float]]]] = []
    for sent, reply in answered:
        name = roster.name_of(sent.node)
        if reply.has_error():
            outcome.errors.append({"node": sent.node, "client": name, "group": None, "error": error_text(reply), "kind": "evaluate"})
            roster.log(f"  evaluation failed on {name} (node {sent.node}): {error_text(reply)}")
            continue
        result = read_evaluate(reply, sent, pool[sent.node])
        if isinstance(result, Refused):
            outcome.reject(sent.node, name, None, result.reasons, "evaluate")
            roster.log(f"  rejected evaluation of {name} (node {sent.node}): {'; '.join(result.reasons[:3])}")
            continue
        scores.append((name, result))
    for sent in silent:
        outcome.dropped.append({"node": sent.node, "client": roster.name_of(sent.node), "group": None,
                                "reason": f"no evaluation reply within {cfg.round_timeout:.0f}s"})
    return pooled(scores, tasks)


def pooled(scores: list[tuple[str, dict[str, dict[str, float]]]], tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per task: accuracy and loss over every scoring client's test examples, summed in client-name
    order (the same bits whatever order the replies came in); a task nobody scored is NaN."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"correct": 0.0, "loss": 0.0, "examples": 0.0})
    for _, result in sorted(scores, key=lambda item: (item[0], sorted(item[1]))):
        for t, m in result.items():
            totals[t]["correct"] += m["accuracy"] * m["examples"]
            totals[t]["loss"] += m["loss"] * m["examples"]
            totals[t]["examples"] += m["examples"]
    metrics = {}
    for t in tasks:
        n = totals[t]["examples"] if t in totals else 0.0
        metrics[t] = {
            "accuracy": totals[t]["correct"] / n if n else float("nan"),
            "loss": totals[t]["loss"] / n if n else float("nan"),
            "examples": n,
        }
    return metrics


@lru_cache(maxsize=2)
def held_out_data(folder: str, suite_name: str):
    from client.folder import read_client_dir  # the operator's folder has the client format
    from tasks.registry import load_suite

    return read_client_dir(folder, suite=load_suite(suite_name))[1]


def evaluate_held_out(groups: list[TaskGroup], suite: Suite, cfg: RunConfig) -> dict[str, dict[str, float]]:
    """The groups' models on the operator's own held-out folder (`evaluate-data`), per task."""
    from client.training import evaluate_multitask

    data = held_out_data(cfg.evaluate_data, cfg.suite)
    metrics: dict[str, dict[str, float]] = {}
    for g in groups:
        tasks = [t for t in g.tasks if t in data]
        if not tasks:
            continue
        model = suite.build_model(tasks)
        model.load_state_dict(g.state_for(tasks), strict=True)
        metrics.update(evaluate_multitask(model, data, tasks, device="cpu"))
    return metrics
