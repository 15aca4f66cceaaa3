"""Exact (sum, count) aggregation of affinity matrices across steps, clients and rounds.

Negative values are information and are always kept (the MAS reference summed with
`collections.Counter`, which silently drops non-positive totals). Matrix convention
everywhere: row = source task i, column = target task j, entry Z(i->j); task order is given by
an explicit task list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class AffinityStats:
    """Running (sum, count) per ordered task pair: exact means across steps and clients.

    `sums[i, j]` is the float64 total of the finite Z(i->j) measured so far and `counts[i, j]`
    how many there were. Merging adds totals, so the mean of merged stats equals the mean of all
    underlying measurements regardless of how they were split. Negative totals are kept.

    Wire format (`to_metrics` / `from_metrics`), flat scalars suited to a Flower MetricRecord:
        "<prefix>.sum.<task_i>.<task_j>"   -> float   (only pairs with count > 0)
        "<prefix>.count.<task_i>.<task_j>" -> int
    Task names are Python identifiers and so contain no ".", which makes the keys unambiguous;
    naming tasks (not indices) lets clients holding different task subsets be merged by name.
    A task with no measured pair at all does not appear on the wire (it carries no information).
    """

    tasks: list[str]
    sums: np.ndarray = field(default=None)  # type: ignore[assignment]
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task names in {self.tasks}")
        n = len(self.tasks)
        self.sums = np.zeros((n, n), np.float64) if self.sums is None else np.asarray(self.sums, np.float64).copy()
        self.counts = np.zeros((n, n), np.int64) if self.counts is None else np.asarray(self.counts, np.int64).copy()
        if self.sums.shape != (n, n) or self.counts.shape != (n, n):
            raise ValueError(f"sums/counts must be {n}x{n} for tasks {self.tasks}")

    @property
    def n(self) -> int:
        return len(self.tasks)

    def add(self, matrix: np.ndarray, tasks: Sequence[str] | None = None) -> "AffinityStats":
        """Accumulate one measured matrix (in `tasks` order, default this object's order).

        `tasks` may be a subset of (or add to) this object's tasks; new names are appended.
        Non-finite entries (NaN: undefined measurement) are skipped, not counted. Returns self.
        """
        tasks = self.tasks if tasks is None else list(tasks)
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (len(tasks), len(tasks)):
            raise ValueError(f"matrix shape {m.shape} does not match {len(tasks)} tasks")
        idx = self._indices(tasks)
        ok = np.isfinite(m)
        self.sums[np.ix_(idx, idx)] += np.where(ok, m, 0.0)
        self.counts[np.ix_(idx, idx)] += ok.astype(np.int64)
        return self

    def merge(self, other: "AffinityStats") -> "AffinityStats":
        """Add another's totals in place (tasks united by name, new ones appended). Returns self."""
        idx = self._indices(other.tasks)
        self.sums[np.ix_(idx, idx)] += other.sums
        self.counts[np.ix_(idx, idx)] += other.counts
        return self

    def mean(self) -> np.ndarray:
        """Mean Z per pair; NaN where nothing was measured."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def reindexed(self, tasks: Sequence[str]) -> "AffinityStats":
        """A copy in another task order/universe; pairs outside `tasks` are dropped."""
        out = AffinityStats(list(tasks))
        keep = [t for t in self.tasks if t in set(out.tasks)]
        src = [self.tasks.index(t) for t in keep]
        dst = [out.tasks.index(t) for t in keep]
        out.sums[np.ix_(dst, dst)] = self.sums[np.ix_(src, src)]
        out.counts[np.ix_(dst, dst)] = self.counts[np.ix_(src, src)]
        return out

    def _indices(self, tasks: Sequence[str]) -> list[int]:
        """Positions of `tasks` in this object, growing it with unseen names (union by name)."""
        new = [t for t in tasks if t not in self.tasks]
        if new:
            n0, n1 = self.n, self.n + len(new)
            sums = np.zeros((n1, n1), np.float64)
            counts = np.zeros((n1, n1), np.int64)
            sums[:n0, :n0], counts[:n0, :n0] = self.sums, self.counts
            self.tasks, self.sums, self.counts = self.tasks + new, sums, counts
        return [self.tasks.index(t) for t in tasks]

    # -- wire format -------------------------------------------------------------------------

    def to_metrics(self, prefix: str = "aff.lookahead") -> dict[str, float | int]:
        """Flat {key: python scalar} dict for a Flower MetricRecord (see class docstring)."""
        out: dict[str, float | int] = {}
        for a, ti in enumerate(self.tasks):
            for b, tj in enumerate(self.tasks):
                c = int(self.counts[a, b])
                if c > 0:
                    out[f"{prefix}.sum.{ti}.{tj}"] = float(self.sums[a, b])
                    out[f"{prefix}.count.{ti}.{tj}"] = c
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object], prefix: str = "aff.lookahead") -> "AffinityStats":
        """Inverse of `to_metrics`; keys not starting with `<prefix>.sum.`/`<prefix>.count.` are ignored."""
        parsed: dict[tuple[str, str], list[float]] = {}
        for key, value in metrics.items():
            for kind, slot in (("sum", 0), ("count", 1)):
                head = f"{prefix}.{kind}."
                if key.startswith(head):
                    ti, sep, tj = key[len(head):].partition(".")
                    if not sep or not ti or not tj or "." in tj:
                        raise ValueError(f"malformed affinity metric key {key!r}")
                    parsed.setdefault((ti, tj), [0.0, 0])[slot] = value  # type: ignore[assignment]
        tasks: list[str] = []
        for ti, tj in parsed:
            for t in (ti, tj):
                if t not in tasks:
                    tasks.append(t)
        stats = cls(tasks)
        for (ti, tj), (s, c) in parsed.items():
            a, b = tasks.index(ti), tasks.index(tj)
            stats.sums[a, b], stats.counts[a, b] = float(s), int(c)  # type: ignore[arg-type]
        return stats

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict (tasks, sums, counts as nested lists)."""
        return {"tasks": list(self.tasks), "sums": self.sums.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "AffinityStats":
        tasks = list(d["tasks"])  # type: ignore[call-overload]
        n = len(tasks)
        sums = np.asarray(d["sums"], np.float64).reshape(n, n)
        return cls(tasks, sums, np.asarray(d["counts"], np.int64).reshape(n, n))


