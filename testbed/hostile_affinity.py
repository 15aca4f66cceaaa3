"""Forged affinity reports, for tests and benchmarks of validation and robust pooling.

Each forgery takes what an honest client would send and returns what a hostile one sends
instead. Kinds that validation must reject: "nan", "huge", "foreign" (a task it does not hold),
"counts" (inflated steps/examples), "dim" (wrong length), "seed" (not this round's sketch), and
for virtual-step stats "virtual-nan", "virtual-range", "virtual-counts", "virtual-foreign".
Kinds that pass validation and must be outvoted by robust pooling: "steer" (the same direction
for every task it holds, 30x longer than its honest gradient but under the absolute norm bound:
all its tasks look alike) and "virtual-steer" (a fake grouping - tasks at even / odd positions
of its list - at the top of the sane range, every other pair at the bottom, with the most counts allowed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from strategies.affinity import AffinityStats, GradientReport

GRADIENT_FORGERIES = ("nan", "huge", "foreign", "counts", "dim", "seed", "steer")
VIRTUAL_FORGERIES = ("virtual-nan", "virtual-range", "virtual-counts", "virtual-foreign", "virtual-steer")
STEER_SCALE = 30.0


def forge_gradient_report(kind: str, report: GradientReport, all_tasks: Sequence[str], seed: int = 0) -> GradientReport:
    """The hostile version of `report` (a copy; `report` is not modified)."""
    grads = {t: np.array(g, dtype=np.float32, copy=True) for t, g in report.grads.items()}
    steps, examples, losses = dict(report.steps), dict(report.examples), dict(report.losses)
    if not grads:
        return report
    first = sorted(grads)[0]
    if kind == "nan":
        grads[first][:] = np.nan
    elif kind == "huge":
        grads = {t: g * np.float32(1e8) for t, g in grads.items()}
    elif kind == "foreign":
        other = next((t for t in all_tasks if t not in grads), None)
        if other is not None:
            grads[other], steps[other], examples[other], losses[other] = grads[first], steps[first], examples[first], losses[first]
    elif kind == "counts":
        steps = {t: s * 1000 for t, s in steps.items()}
        examples = {t: e * 1000 for t, e in examples.items()}
    elif kind == "dim":
        grads = {t: g[:-1] for t, g in grads.items()}
    elif kind == "seed":
        return replace(report, seed=(report.seed or 0) + 1)
    elif kind == "steer":
        u = np.random.default_rng(seed).standard_normal(len(grads[first])).astype(np.float32)
        u /= np.linalg.norm(u)
        grads = {t: u * np.float32(STEER_SCALE * float(np.linalg.norm(g))) for t, g in grads.items()}
    else:
        raise ValueError(f"unknown gradient forgery {kind!r}; known: {GRADIENT_FORGERIES}")
    return replace(report, grads=grads, steps=steps, examples=examples, losses=losses)


def forge_virtual_stats(kind: str, stats: Mapping[str, AffinityStats], all_tasks: Sequence[str], max_count: int) -> dict[str, AffinityStats]:
    """The hostile version of one client's {signal: AffinityStats} (copies)."""
    out = {}
    for signal, s in stats.items():
        tasks = list(s.tasks)
        sums, counts = s.sums.copy(), s.counts.copy()
        if kind == "virtual-nan":
            sums[0, -1] = np.nan
        elif kind == "virtual-range":
            sums = counts * 5.0
        elif kind == "virtual-counts":
            sums, counts = sums * 1000, counts * 1000
        elif kind == "virtual-foreign":
            other = next((t for t in all_tasks if t not in tasks), None)
            if other is not None:
                grown = AffinityStats(tasks + [other])
                grown.merge(s)
                grown.sums[-1, 0], grown.counts[-1, 0] = 0.9, 1
                tasks, sums, counts = grown.tasks, grown.sums, grown.counts
        elif kind == "virtual-steer":
            parity = np.arange(len(tasks)) % 2
            low = -1.0 if signal == "cosine" else -10.0
            target = np.where(parity[:, None] == parity[None, :], 1.0, low)
            counts = np.full_like(counts, max_count)
            sums = counts * target
        else:
            raise ValueError(f"unknown virtual-step forgery {kind!r}; known: {VIRTUAL_FORGERIES}")
        out[signal] = AffinityStats(tasks, sums, counts)
    return out
