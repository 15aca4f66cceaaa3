"""One round's affinity: validated client reports in, matrices + coverage for tracker and history out.

This is what the coordinator calls once per measured round, after validating every reply:

    ra = round_affinity(tasks, method, lr, gradient_reports, virtual_stats, pooling)
    ra.feed(trackers, round=r)   # = tracker.update(ra.matrices[s], round=r, weights=ra.weights.get(s))
    history_entry["affinity"]["coverage"] = ra.coverage.to_dict()
    history_entry["affinity"]["round"] = ra.to_dict()

Which matrix feeds the tracker (`source`): with "gradients" or "both" the pooled-gradient
estimate (it covers every pair whose tasks were reported, including pairs no client holds
together, all from one estimator); with "virtual-step" the exact same-client measurements.
With "both", the virtual-step matrices are kept in `details` for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from strategies.affinity.coverage import PairCoverage, gradient_coverage, virtual_step_coverage
from strategies.affinity.firstorder import gradient_affinity
from strategies.affinity.names import NEVER, SIGNALS, check_method, measures_gradients, measures_virtual_step
from strategies.affinity.pooling import check_pooling, pool_gradients, pool_virtual_signals
from strategies.affinity.reports import GradientReport
from strategies.affinity.stats import AffinityStats
from strategies.affinity.tracker import AffinityTracker


def _jsonable(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in np.asarray(m, np.float64).tolist()]


@dataclass
class RoundAffinity:
    """One round's affinity over `tasks` (row = source i, column = target j)."""

    tasks: list[str]
    method: str
    source: str  # "gradients" | "virtual-step" | "none": which measurements `matrices` come from
    matrices: dict[str, np.ndarray]  # signal -> [n, n], NaN = not measured this round
    coverage: PairCoverage
    details: dict[str, object] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # signal -> per-pair round weight (absent = 1)

    def feed(self, trackers: Mapping[str, AffinityTracker], round: int) -> None:
        """Fold this round into one tracker per signal (only signals present in both)."""
        for signal, tracker in trackers.items():
            if signal in self.matrices:
                tracker.update(self.matrices[signal], round=round, weights=self.weights.get(signal))

    @property
    def measured(self) -> bool:
        """Whether any off-diagonal pair was measured this round."""
        off = ~np.eye(len(self.tasks), dtype=bool)
        return any(bool(np.isfinite(m[off]).any()) for m in self.matrices.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-able (NaN -> None), for the history's `affinity.round`."""
        return {
            "method": self.method, "source": self.source, "tasks": list(self.tasks),
            "matrices": {s: _jsonable(m) for s, m in self.matrices.items()},
            "coverage": self.coverage.to_dict(), **self.details,
        }


def _different_models(reports: Sequence[GradientReport], tasks: list[str]) -> np.ndarray:
    """[n, n] True where tasks i and j were measured on different group models this round."""
    group_of: dict[str, object] = {}
    for r in reports:
        for t in r.grads:
            if group_of.setdefault(t, r.group) != r.group:
                raise ValueError(f"task {t!r} reported in groups {group_of[t]!r} and {r.group!r} in one round")
    g = [group_of.get(t, None) for t in tasks]
    known = np.array([t in group_of for t in tasks])
    same = np.array([[a == b for b in g] for a in g], dtype=bool)
    return ~same & known[:, None] & known[None, :]


def round_affinity(
    tasks: Sequence[str],
    method: str,
    lr: float,
    gradient_reports: Sequence[GradientReport] = (),
    virtual_stats: Sequence[Mapping[str, AffinityStats]] = (),
    pooling: str = "mean",
    trim_fraction: float = 0.0,
) -> RoundAffinity:
    """Combine one round's VALIDATED reports (see the module docstring).

    `gradient_reports`: one `GradientReport` per client and group (a client training two groups
    sends two; pooling per task is unaffected). Gradients are only comparable at one model, so
    when reports carry different `group`s (split groups measured in the same round), pairs of
    tasks of different groups stay unmeasured ("never") this round. `virtual_stats`: per client and group, its
    {signal: AffinityStats}. `lr`: the clients' learning rate (scale of the first-order lookahead,
    the same lr the exact virtual step uses). `pooling`: "mean" | "robust".
    """
    tasks = list(tasks)
    check_method(method)
    check_pooling(pooling)
    n = len(tasks)
    nan = np.full((n, n), np.nan)
    details: dict[str, object] = {}
    matrices = {s: nan.copy() for s in SIGNALS}
    coverage = PairCoverage.empty(tasks)
    weights: dict[str, np.ndarray] = {}
    source = "none"
    if measures_virtual_step(method) and virtual_stats:
        combined = pool_virtual_signals(virtual_stats, tasks, pooling)
        if combined:
            source = "virtual-step"
            matrices = {s: combined[s].matrix if s in combined else nan.copy() for s in SIGNALS}
            first = combined.get("lookahead") or next(iter(combined.values()))
            coverage = virtual_step_coverage(first.counts, tasks)
            details["virtual-step"] = {
                "matrices": {s: _jsonable(c.matrix) for s, c in combined.items()},
                "counts": first.counts.tolist(), "clients": first.clients.tolist(),
            }
    if measures_gradients(method) and gradient_reports:
        pooled = pool_gradients(gradient_reports, tasks, pooling, trim_fraction)
        if pooled.measured().any():
            source = "gradients"
            matrices = gradient_affinity(pooled, lr)
            coverage = gradient_coverage(gradient_reports, tasks)
            apart = _different_models(gradient_reports, tasks)
            for m in matrices.values():
                m[apart] = np.nan
            coverage.kinds[apart], coverage.counts[apart] = NEVER, 0
            norms = np.linalg.norm(np.nan_to_num(pooled.vectors), axis=1)
            weights = {"cosine": np.outer(norms, norms)}  # see AffinityTracker: cosine noise ~ 1/(|g_i||g_j|)
            details["gradients"] = {
                "holders": pooled.holders, "steps": pooled.steps, "examples": pooled.examples,
                "losses": {t: float(pooled.losses[a]) for a, t in enumerate(tasks) if math.isfinite(pooled.losses[a])},
                "norms": {t: float(np.linalg.norm(pooled.vectors[a])) for a, t in enumerate(tasks) if t in pooled.holders},
                "clipped": pooled.clipped, "dim": int(pooled.vectors.shape[1]),
            }
    return RoundAffinity(tasks, method, source, matrices, coverage, details, weights)
