"""Reject forged or broken affinity reports before they reach pooling, like model updates.

Both validators return human-readable problems (empty list = valid), so the coordinator can
name every fault of a reply in the history (it refuses the whole reply: a client that forges
its measurements is not trusted with its update either). A rejected
report contributes nothing; an accepted one is still pooled robustly if asked
(`strategies.affinity.pooling`), because values inside the sane ranges can still be chosen to
steer a split.

What "sane" means, and why:
  * tasks: only tasks the client was asked to train in that group AND holds; a summary for any
    other task is a forgery (it could fill a pair nobody measured).
  * counts: 1 <= steps <= the steps the client could have accumulated
    (`summaries.window_steps(affinity-steps, tasks it trains in the group, steps it ran)`);
    steps <= examples <= steps x batch size; virtual-step counts <= the measurements its steps
    allow (ceil(steps / affinity-every)). Inflated counts would buy
    weight in an examples-weighted mean or an exact (sum, count) merge.
  * values: finite; gradient summaries exactly `dim` long (the coordinator's min(P, sketch dim)),
    norm <= `max_norm` (default 1e4: a batch-mean gradient that long means a diverged model),
    loss in [0, `max_loss`] (default 1e3; the first-order lookahead divides by it); cosine in
    [-1, 1]; lookahead means in [`lookahead_min`, 1] (Z = 1 - L'/L <= 1 always; default lower
    bound -10: one small SGD step making a loss 11x worse means a broken model).
  * the sketch seed echoed back must be the one the coordinator sent this round.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Collection

import numpy as np

from strategies.affinity.names import SIGNALS
from strategies.affinity.reports import GradientReport
from strategies.affinity.stats import AffinityStats

DEFAULT_MAX_GRAD_NORM = 1e4
DEFAULT_MAX_LOSS = 1e3
DEFAULT_LOOKAHEAD_MIN = -10.0
_EPS = 1e-6
_MAX_LISTED = 5


def _listed(names: Collection[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(repr(n) for n in names[:_MAX_LISTED]) + more


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def max_virtual_measurements(steps: int, every: int) -> int:
    """How many virtual-step measurements `steps` training steps allow at one every `every` steps."""
    return 0 if every <= 0 or steps <= 0 else -(-int(steps) // int(every))


def validate_gradient_report(
    report: GradientReport,
    held_tasks: Collection[str],
    max_steps: int,
    dim: int,
    *,
    batch_size: int | None = None,
    expected_seed: int | None = None,
    max_norm: float | None = DEFAULT_MAX_GRAD_NORM,
    max_loss: float = DEFAULT_MAX_LOSS,
) -> list[str]:
    """Problems with one client's gradient summaries (empty = valid).

    `held_tasks`: the tasks this client was asked to train in this group and holds.
    `max_steps`: `window_steps(affinity-steps sent, len(held_tasks), steps the client ran)`.
    `dim`: the expected summary length, `sketch.sketch_dim(P, affinity-sketch-dim)`. `batch_size`: bounds examples per step.
    A report may omit tasks (fewer measurements, not a forgery).
    """
    problems: list[str] = []
    held = set(held_tasks)
    foreign = set(report.grads) - held
    if foreign:
        problems.append(f"gradient summaries for tasks it does not train in this group: {_listed(foreign)}")
    strays = report.extra.get("stray-metrics") if report.extra else None
    if strays:
        problems.append(f"affinity metrics for tasks without a summary: {_listed(strays)}")  # type: ignore[arg-type]
    if expected_seed is not None and report.seed != expected_seed:
        problems.append(f"sketch seed {report.seed!r} is not this round's {expected_seed}")
    for task in sorted(report.grads):
        g = np.asarray(report.grads[task])
        where = f"task {task!r}"
        if g.ndim != 1 or g.shape[0] != dim:
            problems.append(f"{where}: summary has shape {tuple(g.shape)}, expected ({dim},)")
        elif g.dtype.kind != "f":
            problems.append(f"{where}: summary has dtype {g.dtype}, expected float32")
        elif not np.isfinite(g).all():
            problems.append(f"{where}: summary has {int((~np.isfinite(g)).sum())} non-finite entries")
        else:
            norm = float(np.linalg.norm(g.astype(np.float64)))
            if max_norm is not None and norm > max_norm:
                problems.append(f"{where}: summary norm {norm:.3g} exceeds {max_norm:.3g}")
        steps, examples, loss = report.steps.get(task), report.examples.get(task), report.losses.get(task)
        if not _is_int(steps) or not 1 <= steps <= max_steps:  # type: ignore[operator]
            problems.append(f"{where}: {steps!r} accumulated steps, expected an int in [1, {max_steps}]")
        elif not _is_int(examples) or examples < steps or (batch_size is not None and examples > steps * batch_size):  # type: ignore[operator]
            bound = f"[{steps}, {steps * batch_size}]" if batch_size is not None else f">= {steps}"
            problems.append(f"{where}: {examples!r} accumulated examples, expected an int in {bound}")
        if loss is None or not isinstance(loss, (int, float)) or not math.isfinite(loss) or not 0.0 <= loss <= max_loss:
            problems.append(f"{where}: mean loss {loss!r} is not a finite number in [0, {max_loss:g}]")
    return problems


def validate_affinity_stats(
    stats: AffinityStats,
    held_tasks: Collection[str],
    max_count: int,
    signal: str,
    *,
    lookahead_min: float = DEFAULT_LOOKAHEAD_MIN,
) -> list[str]:
    """Problems with one client's virtual-step (sum, count) stats of one signal (empty = valid).

    `max_count`: measurements its steps allow, `max_virtual_measurements(steps, affinity-every)`.
    """
    if signal not in SIGNALS:
        return [f"unknown affinity signal {signal!r}"]
    problems: list[str] = []
    foreign = set(stats.tasks) - set(held_tasks)
    if foreign:
        problems.append(f"{signal} affinity for tasks it does not train in this group: {_listed(foreign)}")
    sums, counts = np.asarray(stats.sums, np.float64), np.asarray(stats.counts)
    if not np.isfinite(sums).all():
        problems.append(f"{signal} affinity sums are not all finite")
        return problems
    if (counts < 0).any() or (counts > max_count).any():
        problems.append(f"{signal} affinity counts in [{int(counts.min())}, {int(counts.max())}], expected [0, {max_count}]")
    if ((counts == 0) & (sums != 0)).any():
        problems.append(f"{signal} affinity has sums for pairs it never measured")
    measured = counts > 0
    if measured.any():
        mean = sums[measured] / counts[measured]
        lo, hi = (-1.0 - _EPS, 1.0 + _EPS) if signal == "cosine" else (lookahead_min, 1.0 + _EPS)
        bad = (mean < lo) | (mean > hi)
        if bad.any():
            problems.append(f"{signal} affinity means in [{mean.min():.3g}, {mean.max():.3g}], outside [{lo:g}, {hi:g}]")
    return problems
