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
      * "mean":   unweighted mean of all round means (MAS: average over rounds 0..R-1);
      * "window": unweighted mean of the last `window` round means of that pair;
      * "ema":    m <- (1 - alpha) * m + alpha * x, initialised to the first measurement.
    Per-pair (not global) windows mean that pairs no longer measured (e.g. across groups after a
    split) keep their last estimate instead of turning unknown; `staleness()` tells how old each
    estimate is so the caller can decide whether to trust it. Unmeasured pairs are NaN.
    """

    tasks: list[str]
    mode: str = "mean"
    window: int = 5
    alpha: float = 0.3
    rounds_seen: int = 0
    _value: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # mean-mode sum / ema value
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
        if self._hist is None:
            self._hist = [[deque(maxlen=self.window) for _ in range(n)] for _ in range(n)]

    def update(self, stats: AffinityStats | np.ndarray, round: int | None = None) -> None:
        """Fold in one round: an `AffinityStats` (tasks by name, a subset of the universe is fine)
        or a plain matrix in universe order (NaN = not measured). Unknown task names raise."""
        rnd = self.rounds_seen if round is None else int(round)
        x = self._round_matrix(stats)
        for a, b in zip(*np.nonzero(np.isfinite(x))):
            v = float(x[a, b])
            if self.mode == "mean":
                self._value[a, b] += v
            elif self.mode == "ema":
                self._value[a, b] = v if self._n[a, b] == 0 else (1 - self.alpha) * self._value[a, b] + self.alpha * v
            else:
                self._hist[a][b].append(v)
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
            out[seen] = self._value[seen] / self._n[seen]
        elif self.mode == "ema":
            out[seen] = self._value[seen]
        else:
            for a, b in zip(*np.nonzero(seen)):
                out[a, b] = float(np.mean(self._hist[a][b]))
        return out

    def staleness(self) -> np.ndarray:
        """Rounds since each pair was last measured (relative to `rounds_seen`); -1 if never."""
        return np.where(self._last >= 0, self.rounds_seen - 1 - self._last, -1)

    def to_dict(self) -> dict[str, object]:
        """JSON-able state (NaN-free: lists of floats/ints, `None` never needed)."""
        return {
            "tasks": list(self.tasks), "mode": self.mode, "window": self.window, "alpha": self.alpha,
            "rounds_seen": self.rounds_seen, "value": self._value.tolist(), "n": self._n.tolist(),
            "last": self._last.tolist(), "hist": [[list(d) for d in row] for row in self._hist],
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
        except ValueError as exc:
            raise ValueError(f"tracker state does not match its {n} tasks: {exc}") from exc
        t._hist = [[deque(vals, maxlen=t.window) for vals in row] for row in d["hist"]]  # type: ignore[union-attr]
        return t
