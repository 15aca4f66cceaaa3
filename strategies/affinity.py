"""Inter-task affinity signals and their exact aggregation across steps, clients and rounds.

Two signals are measured on the SHARED body of a `MultiTaskModel` (heads are per task and fixed):

* TAG lookahead affinity (Fifty et al. 2021):
      Z(i->j) = 1 - L_j(theta') / L_j(theta),  theta' = theta_body - lr * grad_body L_i
  One virtual SGD step on the body with task i's loss only; positive means "a step on i helps j".
* Gradient cosine: cos(grad_body L_i, grad_body L_j), TAG's cheaper baseline.

Aggregation is kept as exact (sum, count) pairs so that means over steps, clients and rounds do
not depend on how the work was split. Negative values are information and are always kept (the
MAS reference summed with `collections.Counter`, which silently drops non-positive totals).

Matrix convention everywhere: row = source task i, column = target task j, entry Z(i->j); task
order is given by an explicit task list. This module is torch/numpy only (no Flower).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SIGNALS = ("lookahead", "cosine")
# A base loss at or below this is "already solved": the lookahead ratio is undefined there.
_MIN_BASE_LOSS = 1e-12


# --------------------------------------------------------------------------------------------
# Measuring affinity on one set of batches
# --------------------------------------------------------------------------------------------


def _body_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The body's parameters (live, requiring grad) and private copies of its buffers.

    Buffers are cloned so that a forward pass in training mode (e.g. BatchNorm running stats)
    updates the copies, never the model: measuring affinity must leave the model untouched.
    """
    params = {k: p for k, p in model.body.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in model.body.named_buffers()}
    return params, buffers


def _task_loss(
    model: nn.Module,
    body_params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    task: str,
    batch: Batch,
    loss_fn: LossFn,
) -> torch.Tensor:
    """Task loss with the body evaluated at `body_params` (a functional call) and the live head."""
    x, y = batch
    features = functional_call(model.body, {**body_params, **buffers}, (x,))
    return loss_fn(model.heads[task](features), y)


def _body_grads(
    model: nn.Module,
    batches: Mapping[str, Batch],
    loss_fn: LossFn,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, ...]], list[str]]:
    """Per task: its loss at the current body and its gradient w.r.t. the body's parameters.

    Uses `torch.autograd.grad`, which returns gradients instead of accumulating them into
    `.grad`, so no gradients are left behind on the model. Parameters that a task's loss does not
    reach get a zero gradient.
    """
    params, buffers = _body_state(model)
    names = [k for k, p in params.items() if p.requires_grad]
    if not names:
        raise ValueError("the model's body has no trainable parameters: affinity is undefined")
    losses: dict[str, torch.Tensor] = {}
    grads: dict[str, tuple[torch.Tensor, ...]] = {}
    for task, batch in batches.items():
        loss = _task_loss(model, params, buffers, task, batch, loss_fn)
        g = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        grads[task] = tuple(torch.zeros_like(params[k]) if gi is None else gi.detach() for k, gi in zip(names, g))
        losses[task] = loss.detach()
    return losses, grads, names


def _check_batches(model: nn.Module, batches: Mapping[str, Batch]) -> None:
    if not batches:
        raise ValueError("affinity needs at least one task batch")
    missing = [t for t in batches if t not in model.heads]
    if missing:
        raise KeyError(f"model has no heads for tasks {missing}; heads are {list(model.heads.keys())}")


def lookahead_affinity(
    model: nn.Module,
    batches: Mapping[str, Batch],
    lr: float,
    loss_fn: LossFn = F.cross_entropy,
    weight_decay: float = 0.0,
) -> np.ndarray:
    """TAG lookahead affinity matrix Z[i, j] = Z(i->j), tasks in the order of `list(batches)`.

    Each task j is evaluated on its own batch `batches[j]` (clients hold different samples per
    task). The virtual step moves only the shared body: theta' = theta - lr * (g_i + wd * theta),
    heads stay fixed. The diagonal (self-affinity) is kept; grouping ignores it.

    Entries whose base loss L_j(theta) is (numerically) zero are NaN: the ratio is undefined,
    and `AffinityStats.add` skips non-finite entries rather than counting them.
    The model is never modified: the virtual steps are functional calls on new tensors, buffers
    are cloned, and no `.grad` is written. Costs one backward per task and, per source task, one
    body forward over all tasks' batches at once (n*n forwards when input shapes differ).
    """
    _check_batches(model, batches)
    base, grads, names = _body_grads(model, batches, loss_fn)
    return _lookahead_from_grads(model, batches, base, grads, names, lr, loss_fn, weight_decay)


def gradient_cosine(
    model: nn.Module,
    batches: Mapping[str, Batch],
    loss_fn: LossFn = F.cross_entropy,
) -> np.ndarray:
    """Cosine similarity of the tasks' body gradients, C[i, j] = cos(g_i, g_j) (symmetric).

    A task whose body gradient is exactly zero has NaN affinities (direction undefined). Like
    `lookahead_affinity`, leaves the model and its `.grad` fields untouched.
    """
    _check_batches(model, batches)
    _, grads, _ = _body_grads(model, batches, loss_fn)
    return _cosine_from_grads(grads, list(batches))


def measure_both(
    model: nn.Module,
    batches: Mapping[str, Batch],
    lr: float,
    loss_fn: LossFn = F.cross_entropy,
    weight_decay: float = 0.0,
) -> dict[str, np.ndarray]:
    """Both signals from ONE set of per-task gradients: {"lookahead": Z, "cosine": C}.

    What a client measures every k-th step; sharing the backward passes makes the cosine
    signal nearly free next to the lookahead one.
    """
    _check_batches(model, batches)
    base, grads, names = _body_grads(model, batches, loss_fn)
    return {
        "lookahead": _lookahead_from_grads(model, batches, base, grads, names, lr, loss_fn, weight_decay),
        "cosine": _cosine_from_grads(grads, list(batches)),
    }


def _cosine_from_grads(grads: Mapping[str, tuple[torch.Tensor, ...]], tasks: list[str]) -> np.ndarray:
    flat = torch.stack([torch.cat([g.reshape(-1) for g in grads[t]]).to(torch.float64) for t in tasks])
    norms = flat.norm(dim=1)
    gram = flat @ flat.T
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.nan)
    return cos.clamp(-1.0, 1.0).numpy()


def _lookahead_from_grads(
    model: nn.Module,
    batches: Mapping[str, Batch],
    base: Mapping[str, torch.Tensor],
    grads: Mapping[str, tuple[torch.Tensor, ...]],
    names: list[str],
    lr: float,
    loss_fn: LossFn,
    weight_decay: float,
) -> np.ndarray:
    tasks = list(batches)
    params, buffers = _body_state(model)
    out = np.full((len(tasks), len(tasks)), np.nan, dtype=np.float64)
    shapes = {tuple(x.shape[1:]) for x, _ in batches.values()}
    stacked = torch.cat([x for x, _ in batches.values()]) if len(shapes) == 1 else None
    sizes = [len(x) for x, _ in batches.values()]
    with torch.no_grad():
        for a, src in enumerate(tasks):
            stepped = dict(params)
            for k, g in zip(names, grads[src]):
                p = params[k].detach()
                stepped[k] = p - lr * (g + weight_decay * p)
            if stacked is not None:  # one body forward for every target task's batch
                features = functional_call(model.body, {**stepped, **buffers}, (stacked,)).split(sizes)
            for b, dst in enumerate(tasks):
                l0 = float(base[dst])
                if not math.isfinite(l0) or l0 <= _MIN_BASE_LOSS:
                    continue
                if stacked is not None:
                    l1 = float(loss_fn(model.heads[dst](features[b]), batches[dst][1]))
                else:
                    l1 = float(_task_loss(model, stepped, buffers, dst, batches[dst], loss_fn))
                out[a, b] = 1.0 - l1 / l0
    return out


def measure_affinity(
    model: nn.Module,
    batches: Mapping[str, Batch],
    signal: str = "lookahead",
    lr: float = 0.05,
    loss_fn: LossFn = F.cross_entropy,
) -> np.ndarray:
    """Dispatch on the signal name ("lookahead" or "cosine"), so callers can take it from config."""
    if signal == "lookahead":
        return lookahead_affinity(model, batches, lr, loss_fn)
    if signal == "cosine":
        return gradient_cosine(model, batches, loss_fn)
    raise ValueError(f"affinity signal {signal!r} is not one of {SIGNALS}")


# --------------------------------------------------------------------------------------------
# Exact aggregation across steps and clients
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Coordinator-side aggregation across rounds
# --------------------------------------------------------------------------------------------

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
