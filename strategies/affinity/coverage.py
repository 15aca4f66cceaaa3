"""How each ordered task pair was measured in a round: same client, across clients, or never.

Kinds (strategies.affinity.names): "same-client" - at least one client measured both tasks
itself; "cross-client" - both tasks were measured but only by different clients (only the
gradient method can fill such a pair); "never" - at least one task had no measurement.
Counts: for gradient summaries, the number of distinct clients whose summaries went into the
pair (holders of i or j); for virtual-step stats, the number of measurements (client steps).
History form (`to_dict`): {"pairs": [[i, j, kind, count], ...]} with i != j indices into `tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from strategies.affinity.names import CROSS_CLIENT, NEVER, SAME_CLIENT
from strategies.affinity.reports import GradientReport

_RANK = {NEVER: 0, CROSS_CLIENT: 1, SAME_CLIENT: 2}


@dataclass
class PairCoverage:
    """Per ordered pair of `tasks` (row i, column j): its kind and measurement count."""

    tasks: list[str]
    kinds: np.ndarray  # [n, n] of str (object)
    counts: np.ndarray  # [n, n] int64

    @classmethod
    def empty(cls, tasks: Sequence[str]) -> "PairCoverage":
        n = len(tasks)
        return cls(list(tasks), np.full((n, n), NEVER, dtype=object), np.zeros((n, n), np.int64))

    def kind(self, ti: str, tj: str) -> str:
        return str(self.kinds[self.tasks.index(ti), self.tasks.index(tj)])

    def count(self, ti: str, tj: str) -> int:
        return int(self.counts[self.tasks.index(ti), self.tasks.index(tj)])

    def summary(self) -> dict[str, int]:
        """How many ordered pairs (i != j) of each kind."""
        off = ~np.eye(len(self.tasks), dtype=bool)
        return {k: int(((self.kinds == k) & off).sum()) for k in (SAME_CLIENT, CROSS_CLIENT, NEVER)}

    def to_dict(self) -> dict[str, object]:
        n = len(self.tasks)
        pairs = [[i, j, str(self.kinds[i, j]), int(self.counts[i, j])] for i in range(n) for j in range(n) if i != j]
        return {"pairs": pairs, "summary": self.summary()}

    @classmethod
    def from_dict(cls, tasks: Sequence[str], d: Mapping[str, object]) -> "PairCoverage":
        out = cls.empty(tasks)
        for i, j, kind, count in d["pairs"]:  # type: ignore[union-attr]
            out.kinds[i, j], out.counts[i, j] = kind, int(count)
        return out

    def merged(self, other: "PairCoverage") -> "PairCoverage":
        """Per pair the better-measured kind (same > cross > never) and the sum of counts."""
        if other.tasks != self.tasks:
            raise ValueError("coverage of different task lists")
        rank = np.vectorize(_RANK.__getitem__, otypes=[np.int64])
        take_other = rank(other.kinds) > rank(self.kinds)
        return PairCoverage(self.tasks, np.where(take_other, other.kinds, self.kinds), self.counts + other.counts)


def gradient_coverage(reports: Sequence[GradientReport], tasks: Sequence[str]) -> PairCoverage:
    """Coverage of the pairs computed from pooled gradient summaries of `reports`."""
    out = PairCoverage.empty(tasks)
    holders = {t: {r.client for r in reports if t in r.grads} for t in out.tasks}
    for a, ti in enumerate(out.tasks):
        for b, tj in enumerate(out.tasks):
            if a == b or not holders[ti] or not holders[tj]:
                continue
            together = any(ti in r.grads and tj in r.grads for r in reports)
            out.kinds[a, b] = SAME_CLIENT if together else CROSS_CLIENT
            out.counts[a, b] = len(holders[ti] | holders[tj])
    return out


def virtual_step_coverage(counts: np.ndarray, tasks: Sequence[str]) -> PairCoverage:
    """Coverage of pairs measured by virtual steps: same-client wherever a count is positive."""
    out = PairCoverage.empty(tasks)
    c = np.asarray(counts, np.int64)
    out.kinds[c > 0] = SAME_CLIENT
    out.counts = c.copy()
    np.fill_diagonal(out.kinds, NEVER)
    return out
