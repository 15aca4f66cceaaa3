"""Coordinator-side aggregation of affinity across rounds (mean, window, EMA per pair)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from strategies.affinity.stats import AffinityStats


TRACKER_MODES = ("mean", "window", "ema")


def _nan_to_none(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in m.tolist()]


def _none_to_nan(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)


@dataclass
class AffinityTracker:
    """Affinity across rounds over a fixed task universe, per ordered pair.

    Each round contributes, per pair, its pooled round mean (all steps of all clients that
    round: `AffinityStats.mean()`); pairs not measured in a round are left alone that round.
    Modes (all per pair, over the rounds in which that pair was measured):
      * "mean":   mean of all round means (MAS: average over rounds 0..R-1);
      * "window": mean of the last `window` round means of that pair;
      * "ema":    m <- (1 - alpha) * m + alpha * x, initialised to the first measurement.
    Means are unweighted unless `update` is given per-pair round weights. Gradient cosine from
    pooled gradients is weighted by |g_i| |g_j| of the round (`RoundAffinity.weights`): a
    cosine's sampling noise scales like 1 / (|g_i| |g_j|), so early rounds whose gradients are
    still tiny would otherwise count as much as informative ones; measured on planted suites
    with one task per client this turned 3 of 6 misgroupings into exact recoveries. (The
    weighted mean of cosines is then the pooled sum of dot products over the pooled product of
    norms.) EMA ignores weights.
    Per-pair (not global) windows mean that pairs no longer measured (e.g. across groups after a
    split) keep their last estimate instead of turning unknown; `staleness()` tells how old each
    estimate is so the caller can decide whether to trust it. Unmeasured pairs are NaN.
    """

    tasks: list[str]
    mode: str = "mean"
    window: int = 5
    alpha: float = 0.3
    rounds_seen: int = 0
    _value: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # mean-mode weighted sum / ema value
    _weight: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # mean-mode sum of weights
    _n: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # rounds measured per pair
    _last: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # last round measured, -1 never
    _hist: list[list[deque]] = field(default=None, repr=False)  # type: ignore[assignment]  # window mode

    def __post_init__(self) -> None:
        self.tasks = list(self.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task names in {self.tasks}")
        if self.mode not in TRACKER_MODES:
            raise ValueError(f"tracker mode {self.mode!r} is not one of {TRACKER_MODES}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1], got {self.alpha}")
        n = len(self.tasks)
        if self._value is None:
            self._value = np.zeros((n, n), np.float64)
            self._n = np.zeros((n, n), np.int64)
            self._last = np.full((n, n), -1, np.int64)
        if self._weight is None:
            self._weight = self._n.astype(np.float64)
        if self._hist is None:
            self._hist = [[deque(maxlen=self.window) for _ in range(n)] for _ in range(n)]

    def update(self, stats: AffinityStats | np.ndarray, round: int | None = None, weights: np.ndarray | None = None) -> None:
        """Fold in one round: an `AffinityStats` (tasks by name, a subset of the universe is fine)
        or a plain matrix in universe order (NaN = not measured). Unknown task names raise.
        `weights` (universe order, > 0 where measured; None = 1) weight this round per pair."""
        rnd = self.rounds_seen if round is None else int(round)
        x = self._round_matrix(stats)
        n = len(self.tasks)
        w = np.ones((n, n)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (n, n):
            raise ValueError(f"weights shape {w.shape} does not match {n} tasks")
        ok = np.isfinite(x) & np.isfinite(w) & (w > 0)
        for a, b in zip(*np.nonzero(ok)):
            v, wv = float(x[a, b]), float(w[a, b])
            if self.mode == "mean":
                self._value[a, b] += wv * v
                self._weight[a, b] += wv
            elif self.mode == "ema":
                self._value[a, b] = v if self._n[a, b] == 0 else (1 - self.alpha) * self._value[a, b] + self.alpha * v
            else:
                self._hist[a][b].append((v, wv))
            self._n[a, b] += 1
            self._last[a, b] = rnd
        self.rounds_seen = max(self.rounds_seen, rnd + 1)

    def _round_matrix(self, stats: AffinityStats | np.ndarray) -> np.ndarray:
        n = len(self.tasks)
        if isinstance(stats, AffinityStats):
            unknown = [t for t in stats.tasks if t not in self.tasks]
            if unknown:
                raise ValueError(f"tasks {unknown} are not in the tracker's universe {self.tasks}")
            return stats.reindexed(self.tasks).mean()
        x = np.asarray(stats, np.float64)
        if x.shape != (n, n):
            raise ValueError(f"matrix shape {x.shape} does not match {n} tasks")
        return x

    def matrix(self) -> np.ndarray:
        """Current estimate [n, n] in universe order; NaN for pairs never measured."""
        n = len(self.tasks)
        out = np.full((n, n), np.nan)
        seen = self._n > 0
        if self.mode == "mean":
            out[seen] = self._value[seen] / self._weight[seen]
        elif self.mode == "ema":
            out[seen] = self._value[seen]
        else:
            for a, b in zip(*np.nonzero(seen)):
                vals = np.array(self._hist[a][b], np.float64).reshape(-1, 2)
                out[a, b] = float((vals[:, 0] * vals[:, 1]).sum() / vals[:, 1].sum())
        return out

    def staleness(self) -> np.ndarray:
        """Rounds since each pair was last measured (relative to `rounds_seen`); -1 if never."""
        return np.where(self._last >= 0, self.rounds_seen - 1 - self._last, -1)

    def to_dict(self) -> dict[str, object]:
        """JSON-able state (NaN-free: lists of floats/ints, `None` never needed)."""
        return {
            "tasks": list(self.tasks), "mode": self.mode, "window": self.window, "alpha": self.alpha,
            "rounds_seen": self.rounds_seen, "value": self._value.tolist(), "weight": self._weight.tolist(),
            "n": self._n.tolist(), "last": self._last.tolist(),
            "hist": [[[list(vw) for vw in d] for d in row] for row in self._hist],
            "current": _nan_to_none(self.matrix()),  # convenience for history files; ignored on load
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "AffinityTracker":
        t = cls(list(d["tasks"]), str(d["mode"]), int(d["window"]), float(d["alpha"]), int(d["rounds_seen"]))  # type: ignore[arg-type]
        n = len(t.tasks)
        try:
            t._value = np.asarray(d["value"], np.float64).reshape(n, n)
            t._n = np.asarray(d["n"], np.int64).reshape(n, n)
            t._last = np.asarray(d["last"], np.int64).reshape(n, n)
            # states written before weights existed: every round weighed 1
            t._weight = np.asarray(d["weight"], np.float64).reshape(n, n) if "weight" in d else t._n.astype(np.float64)
        except ValueError as exc:
            raise ValueError(f"tracker state does not match its {n} tasks: {exc}") from exc

        def entry(v: object) -> tuple[float, float]:
            return (float(v[0]), float(v[1])) if isinstance(v, (list, tuple)) else (float(v), 1.0)  # type: ignore[index, arg-type]

        t._hist = [[deque((entry(v) for v in vals), maxlen=t.window) for vals in row] for row in d["hist"]]  # type: ignore[union-attr]
        return t
