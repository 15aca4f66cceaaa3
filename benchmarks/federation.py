"""One federation run in this process, for benchmarks that need many runs (quality, recovery).

The real round loop (`coordinator.loop.Coordinator`) drives the real ClientApp through
`testbed.inprocess.InProcessGrid`: same scheduling, messages, reply checks, fusion, affinity
and grouping as `fedmtl simulate`, without Ray and SuperLink processes, so a run costs its
training and little else and dozens of runs fit on two cores. (Those processes are what the
overhead and scale benchmarks measure.)

Clients are served ONE AT A TIME (a single worker thread) with one torch thread: a client's
`train_seconds` is then its own compute on one core, not a share of cores fought over by
clients running side by side, so client compute adds up the same whatever the number of
clients per round. Results do not depend on this: client randomness is keyed by client name
and round, and fusion folds replies in a fixed order.

Besides client seconds the run counts **task-batches**: one forward and backward pass of one
task's mini-batch (the unit of training work; a multi-task step on k tasks is k task-batches),
read from the train replies' step counts. It is a machine-independent measure of training
compute; seconds are what the issue asks for and what includes affinity measurement.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # noqa: F401 - puts the repository on sys.path
import torch

from coordinator.config import RunConfig
from coordinator.history import mean_accuracy
from coordinator.loop import Coordinator
from tasks import protocol as P
from testbed.inprocess import InProcessGrid


@dataclass
class RunResult:
    history: dict[str, Any]
    wall: float
    task_batches: dict[int, int] = field(default_factory=dict)  # round -> task-batches trained that round
    task_batches_per_task: dict[str, int] = field(default_factory=dict)  # over the whole run
    final_groups: list[list[str]] = field(default_factory=list)


def run_federation(config: dict[str, Any], clients: int, out: Path, serial: bool = True) -> RunResult:
    """Run `config` (run-config keys) with `clients` simulated clients; outputs under `out`."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict(config | {"out": str(out), "min-clients": clients, "plots": False})
    grid = InProcessGrid(clients)
    if serial:
        grid.pool.shutdown(wait=False)
        grid.pool = cf.ThreadPoolExecutor(max_workers=1)
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    start = time.perf_counter()
    try:
        history = coordinator.run().to_dict()
    finally:
        grid.pool.shutdown(wait=False)
    wall = time.perf_counter() - start
    per_round, per_task = _task_batches(grid)
    return RunResult(history, wall, per_round, per_task, coordinator.grouping())


def _task_batches(grid: InProcessGrid) -> tuple[dict[int, int], dict[str, int]]:
    """Task-batches per round and per task, from the train replies (steps x tasks trained)."""
    round_of = {}
    for msg in grid.sent:
        if msg.metadata.message_type == P.TRAIN:
            round_of[msg.metadata.message_id] = int(msg.content[P.CONFIG]["round"])
    per_round: dict[int, int] = defaultdict(int)
    per_task: dict[str, int] = defaultdict(int)
    for reply in grid.replies:
        if reply.metadata.message_type != P.TRAIN or reply.has_error():
            continue
        metrics = reply.content[P.METRICS]
        steps = int(metrics.get(P.STEPS, 0))
        tasks = [k.split(".", 1)[1] for k in metrics.keys() if k.startswith(P.EXAMPLES + ".")]
        r = round_of.get(reply.metadata.reply_to_message_id, -1)
        per_round[r] += steps * len(tasks)
        for t in tasks:
            per_task[t] += steps
    return dict(per_round), dict(per_task)


# ----------------------------------------------------------------------------- reading a history
def curve(result: RunResult) -> list[dict[str, Any]]:
    """One point per evaluated round: mean accuracy, total loss, and what was spent up to then
    (client seconds of training and of affinity measurement, task-batches, round seconds)."""
    points, train, aff, batches, wall = [], 0.0, 0.0, 0, 0.0
    for r in result.history["rounds"]:
        c = r.get("compute") or {}
        train += float(c.get("train_seconds", 0.0))
        aff += float(c.get("affinity_seconds", 0.0))
        batches += result.task_batches.get(r["round"], 0)
        wall += float(r.get("seconds", 0.0))
        if not (r.get("evaluated", True) and r.get("metrics")):
            continue
        losses = [m.get("loss") for m in r["metrics"].values()]
        points.append({
            "round": r["round"], "mean_accuracy": mean_accuracy(r["metrics"]),
            "total_loss": sum(v for v in losses if v is not None and math.isfinite(v)),
            "accuracy": {t: m.get("accuracy") for t, m in r["metrics"].items()},
            "loss": {t: m.get("loss") for t, m in r["metrics"].items()},
            "compute": train + aff, "train_seconds": train, "affinity_seconds": aff,
            "task_batches": batches, "round_seconds": wall, "groups": r["groups"],
        })
    return points


def value_at(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation of the curve (xs increasing) at x; NaN outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return float("nan")
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def first_reach(xs: list[float], ys: list[float], target: float) -> float:
    """The x at which the curve first reaches `target` (interpolated between the points around
    the crossing); NaN if it never does."""
    for i, y in enumerate(ys):
        if y >= target:
            if i == 0:
                return xs[0]
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], y
            return x1 if y1 == y0 else x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return float("nan")
