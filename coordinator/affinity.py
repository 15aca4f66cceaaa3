"""Affinity: ask for measurements only when a split will read them, and fold in what comes back.

Which rounds measure is the merge/split plan's call (`MergeSplitPlan.measures`: the merged
rounds before each split); `affinity-monitor = true` measures every round as well, for people
who want to watch affinity in any mode. Clients' measurements arrive already checked
(`coordinator.replies`); here they are pooled over the round's clients and folded into one
tracker per signal, which the split reads. The history gets the tracked matrix and, per task
pair, how it was measured and from how many measurements.
"""

from __future__ import annotations

import numpy as np

from coordinator.config import RunConfig
from coordinator.state import RoundOutcome, TaskGroup
from coordinator.train import TrainResults
from strategies.affinity import SIGNALS, AffinityStats, AffinityTracker
from strategies.merge_split import MergeSplitPlan


class AffinityBook:
    """The trackers of the current merged phase, and when to measure."""

    def __init__(self, tasks: list[str], cfg: RunConfig, plan: MergeSplitPlan) -> None:
        self.tasks = tasks
        self.cfg = cfg
        self.plan = plan
        self.trackers = {s: self._new() for s in SIGNALS}

    def _new(self) -> AffinityTracker:
        cfg = self.cfg
        return AffinityTracker(self.tasks, mode=cfg.affinity_average, window=cfg.affinity_window, alpha=cfg.affinity_ema)

    def reset(self) -> None:
        """A merge starts a fresh measurement phase."""
        self.trackers = {s: self._new() for s in SIGNALS}

    def measuring(self, round_: int) -> bool:
        return self.cfg.affinity_every > 0 and (self.cfg.affinity_monitor or self.plan.measures(round_))

    def message_config(self, group: TaskGroup, round_: int) -> dict:
        """The measurement settings a train message of `group` carries this round."""
        on = self.measuring(round_) and len(group.tasks) > 1
        return {
            "affinity-every": self.cfg.affinity_every if on else 0,
            "affinity-batch-size": self.cfg.affinity_batch_size,
        }

    def matrix(self, signal: str | None = None) -> np.ndarray:
        return self.trackers[signal or self.cfg.affinity_signal].matrix()

    def update(self, round_: int, results: TrainResults, outcome: RoundOutcome) -> None:
        """Pool this round's valid measurements (exact sums over steps and clients) per signal."""
        measured: dict[str, AffinityStats] = {}
        for signal in self.trackers:
            stats = AffinityStats(list(self.tasks))
            for reps in results.valid.values():
                for rep in reps:
                    if signal in rep.affinity:
                        stats.merge(rep.affinity[signal])
            if stats.counts.sum() > 0:
                self.trackers[signal].update(stats.reindexed(self.tasks), round=round_)
                measured[signal] = stats
        if measured:
            signal = self.cfg.affinity_signal
            tracked = self.trackers[signal]
            outcome.affinity = {
                "signal": signal,
                "tasks": list(self.tasks),
                "matrix": _nullable(tracked.matrix()),
                "coverage": self.coverage(measured.get(signal)),
                "round": {s: st.to_dict() for s, st in measured.items()},
                "tracked": {s: {"tasks": self.tasks, "matrix": _nullable(self.trackers[s].matrix())} for s in measured},
            }

    def coverage(self, stats: AffinityStats | None) -> dict:
        """Per ordered task pair: how it was measured and from how many measurements."""
        counts = np.zeros((len(self.tasks), len(self.tasks)), np.int64)
        if stats is not None:
            counts = stats.reindexed(self.tasks).counts
        pairs = []
        for i, ti in enumerate(self.tasks):
            for j, tj in enumerate(self.tasks):
                if i != j:
                    how = "same-client" if counts[i, j] > 0 else "never"
                    pairs.append([ti, tj, how, int(counts[i, j])])
        return {"pairs": pairs}

    def unmeasured_pairs(self) -> tuple[int, int]:
        """(ordered pairs never measured, ordered pairs in all) for the split signal."""
        m = self.matrix()
        off = ~np.eye(len(self.tasks), dtype=bool)
        return int((~np.isfinite(m) & off).sum()), int(off.sum())

    def to_dict(self) -> dict:
        return {s: t.to_dict() for s, t in self.trackers.items()}

    def load(self, d: dict) -> None:
        self.trackers = {s: AffinityTracker.from_dict(v) for s, v in d.items()}


def _nullable(m: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if np.isfinite(v) else None for v in row] for row in m.tolist()]
