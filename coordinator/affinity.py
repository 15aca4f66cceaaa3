"""Affinity: ask for measurements only when a split will read them, and fold in what comes back.

Which rounds measure is the merge/split plan's call (`MergeSplitPlan.measures`: the merged
rounds before each split); `affinity-monitor = true` measures every round as well, for people
who want to watch affinity in any mode. What is measured is `affinity-method`: by default
per-task gradient summaries (`gradients`), which give every task pair, also pairs no client
holds together; or the exact virtual step between a client's own tasks. Clients' measurements
arrive already checked (`coordinator.replies`); here one round's are pooled over its clients
(`strategies.affinity.round_affinity`) and folded into one tracker per signal, which the split
reads. The history gets the tracked matrix and, per task pair, how it was measured over the
phase (same client, cross-client, never) and from how many measurements.
"""

from __future__ import annotations

import numpy as np

from coordinator.affinity_ask import NOTHING, AffinityAsk
from coordinator.config import RunConfig
from coordinator.state import RoundOutcome, TaskGroup
from coordinator.train import TrainResults
from strategies.affinity import (
    SIGNALS, AffinityTracker, PairCoverage, measures_gradients, round_affinity, sketch_dim, sketch_seed,
)
from strategies.merge_split import MergeSplitPlan


class AffinityBook:
    """The trackers and pair coverage of the current measurement phase, and when to measure.

    `body_params`: P, the trainable body parameters a gradient summary is taken over (the
    summary is min(P, affinity-sketch-dim) long); 0 (only for callers that never `ask`) = unknown.
    """

    def __init__(self, tasks: list[str], cfg: RunConfig, plan: MergeSplitPlan, body_params: int = 0) -> None:
        self.tasks = tasks
        self.cfg = cfg
        self.plan = plan
        gradients = measures_gradients(cfg.affinity_method) and body_params > 0
        self.dim = sketch_dim(body_params, cfg.affinity_sketch_dim) if gradients else 0
        self.reset()

    def _new(self) -> AffinityTracker:
        cfg = self.cfg
        return AffinityTracker(self.tasks, mode=cfg.affinity_average, window=cfg.affinity_window, alpha=cfg.affinity_ema)

    def reset(self) -> None:
        """A merge starts a fresh measurement phase."""
        self.trackers = {s: self._new() for s in SIGNALS}
        self.coverage = PairCoverage.empty(self.tasks)

    @property
    def probes(self) -> bool:
        """Whether rounds that sample add their coverage holders as measure-only probes: only
        gradient summaries can be taken without training (`affinity-coverage = "probe"`)."""
        return self.cfg.affinity_coverage == "probe" and self.dim > 0

    def measuring(self, round_: int) -> bool:
        return self.cfg.affinity_method != "none" and (self.cfg.affinity_monitor or self.plan.measures(round_))

    def ask(self, group: TaskGroup, round_: int) -> AffinityAsk:
        """What the train messages of `group` ask clients to measure this round (a group of one
        task has no pair to measure)."""
        cfg = self.cfg
        if not self.measuring(round_) or len(group.tasks) < 2:
            return NOTHING
        return AffinityAsk(
            method=cfg.affinity_method, steps=cfg.affinity_steps, sketch_dim=cfg.affinity_sketch_dim, dim=self.dim,
            seed=sketch_seed(cfg.affinity_sketch_seed, round_), every=cfg.affinity_every,
            probe_batch_size=cfg.affinity_batch_size, batch_size=cfg.batch_size,
        )

    def matrix(self, signal: str | None = None) -> np.ndarray:
        return self.trackers[signal or self.cfg.affinity_signal].matrix()

    def update(self, round_: int, results: TrainResults, outcome: RoundOutcome) -> None:
        """Pool this round's valid measurements per task and signal, and track them."""
        replies = sorted((rep for by_group in (results.valid, results.probes) for reps in by_group.values() for rep in reps),
                         key=lambda rep: rep.update.node_id)
        # pooled in a fixed order (by client name), not the order replies happened to arrive in
        reports = sorted((rep.gradients for rep in replies if rep.gradients is not None), key=lambda g: (g.client, g.group))
        virtual = [rep.affinity for rep in replies if rep.affinity]
        if not reports and not virtual:
            return
        ra = round_affinity(self.tasks, self.cfg.affinity_method, self.cfg.lr, reports, virtual, self.cfg.affinity_pooling)
        if not ra.measured:
            return
        ra.feed(self.trackers, round=round_)
        self.coverage = self.coverage.merged(ra.coverage)
        signal = self.cfg.affinity_signal
        outcome.affinity = {
            "signal": signal,
            "method": ra.source,
            "tasks": list(self.tasks),
            "matrix": _nullable(self.matrix(signal)),
            "coverage": self.coverage.to_dict(),
            "round": ra.to_dict(),
            "tracked": {s: {"tasks": self.tasks, "matrix": _nullable(t.matrix())} for s, t in self.trackers.items()},
        }

    def unmeasured_pairs(self) -> tuple[int, int]:
        """(ordered pairs never measured, ordered pairs in all) for the split signal."""
        m = self.matrix()
        off = ~np.eye(len(self.tasks), dtype=bool)
        return int((~np.isfinite(m) & off).sum()), int(off.sum())

    def to_dict(self) -> dict:
        return {"trackers": {s: t.to_dict() for s, t in self.trackers.items()}, "coverage": self.coverage.to_dict()}

    def load(self, d: dict) -> None:
        trackers = d.get("trackers", d)  # checkpoints before pair coverage held the trackers only
        self.trackers = {s: AffinityTracker.from_dict(v) for s, v in trackers.items()}
        self.coverage = PairCoverage.from_dict(self.tasks, d["coverage"]) if "coverage" in d else PairCoverage.empty(self.tasks)


def _nullable(m: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if np.isfinite(v) else None for v in row] for row in m.tolist()]
