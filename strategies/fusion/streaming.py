"""Streaming fusion: fold each client's reply into per-group accumulators as it arrives.

The round loop makes one `GroupFusion` per group, announces the clients it asked, in their
canonical order (`expect`, client names), then calls `add(update, key)` for every valid reply
as it arrives and `skip(key)` for every client that failed or was refused, and `result()` once.

* mean (uniform or example weights): summed in float32, one in-place pass per reply, in the
  announced order whatever order replies arrive in (`strategies.fusion.ordered_sum`): bitwise
  the same result for every arrival order. A reply that arrives before the ones announced ahead
  of it waits (in RAM, or beyond a few in a spill file under `spill_dir`); replies mostly come in
  the order they were sent, so memory stays one float32 accumulator per group and head, not one
  model per client. Against the stacked float64 reference (`fuse_group_stacked`) the mean
  differs by float32 rounding only: at most about K x 2^-24 relative to the mean magnitude.
* median and trimmed mean: each reply is kept flat in float32 (in RAM, or appended to a file
  under `spill_dir`) and reduced at `result()` a parameter chunk at a time, rows sorted by `key`,
  so ties and float sums follow a canonical order: bitwise equal to the stacked reducers run on
  the updates sorted by `key`.
* float64 (or complex) parameters, which no fedmtl model has, are held per reply and reduced
  with the stacked reducers in `key` order; integer buffers are taken from the reply with the
  smallest key (the first reply when keys are arrival numbers, as `fuse_states` does).

`key` should be stable across runs (the client's name). Omitted, it is the arrival number.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from strategies.fusion.chunked import (
    check_trim_fraction,
    median_chunk,
    trimmed_count_or_raise,
    trimmed_mean_chunk,
)
from strategies.fusion.clipping import clip_parts
from strategies.fusion.ordered_sum import OrderedSum, float32_runs
from strategies.fusion.reply_store import ReplyStore
from strategies.fusion.stacked import (
    check_weighting,
    check_weights,
    fuse_group_stacked,
    weighted_mean,
)
from strategies.fusion.types import ClientUpdate, Reducer, State

AGGREGATORS = ("mean", "median", "trimmed-mean")
WORKING_BYTES = 64 << 20  # robust reducers' working memory per chunk

_SUMMED = (torch.float32, torch.float16, torch.bfloat16)  # exactly representable in float32


class StreamFusion:
    """Fuses a stream of same-layout state dicts (a group's bodies, or one task's heads)."""

    def __init__(
        self,
        reference: State | None,
        aggregator: str = "mean",
        trim_fraction: float = 0.2,
        median_weighted: bool = True,
        spill_dir: str | os.PathLike | None = None,
        zero_weight_fallback: bool = False,
    ) -> None:
        if aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {aggregator!r}; valid: {', '.join(AGGREGATORS)}")
        if aggregator == "trimmed-mean":
            check_trim_fraction(trim_fraction)
        self.aggregator = aggregator
        self.trim_fraction = trim_fraction
        self.median_weighted = median_weighted
        self.spill_dir = spill_dir
        self.zero_weight_fallback = zero_weight_fallback  # heads: all weights 0 -> equal weights
        self.count = 0
        self._layout: dict[str, tuple[torch.dtype, torch.Size]] | None = None
        self._keys_seen: set[Hashable] = set()
        self._expected: list[Hashable] = []
        if reference is not None:
            self._set_layout(reference)

    # ------------------------------------------------------------------ layout
    def _set_layout(self, state: State) -> None:
        self._layout = {k: (v.dtype, v.shape) for k, v in state.items()}
        self._summed = [k for k, (d, _) in self._layout.items() if d in _SUMMED]
        self._held_keys = [k for k, (d, _) in self._layout.items() if d not in _SUMMED and (d.is_floating_point or d.is_complex)]
        self._int_keys = [k for k in self._layout if k not in self._summed and k not in self._held_keys]
        sizes = [int(np.prod(self._layout[k][1], dtype=np.int64)) for k in self._summed]
        self._sizes = sizes
        self._sum: OrderedSum | None = None
        self._uniform: OrderedSum | None = None  # the same replies with weight 1 (heads whose weights are all 0)
        self._store: ReplyStore | None = None
        self._rows: list[tuple[Hashable, int, int]] = []  # (key, weight, row) for the robust reducers
        self._held: list[tuple[Hashable, int, State]] = []
        self._ints: tuple[Hashable, State] | None = None
        if self.aggregator == "mean":
            self._sum = OrderedSum(sizes, spill_dir=self.spill_dir)
            self._sum.expect(self._expected)
            if self.zero_weight_fallback:
                self._uniform = OrderedSum(sizes, spill_dir=self.spill_dir)
                self._uniform.expect(self._expected)
        else:
            self._store = ReplyStore(sum(sizes), spill_dir=self.spill_dir)

    def _check(self, state: State) -> None:
        assert self._layout is not None
        if state.keys() != self._layout.keys():
            diff = sorted(set(state) ^ set(self._layout))
            raise ValueError(f"state keys differ from the group's layout: {diff[:5]}")
        for k, (dtype, shape) in self._layout.items():
            v = state[k]
            if v.shape != shape:
                raise ValueError(f"{k}: shape {tuple(v.shape)} differs from {tuple(shape)}")
            if v.dtype is not dtype and ((v.dtype in _SUMMED) != (dtype in _SUMMED)
                                         or v.is_floating_point() != dtype.is_floating_point):
                raise ValueError(f"{k}: dtype {v.dtype} does not fuse with {dtype}")

    # ------------------------------------------------------------------ folding
    def expect(self, keys: Sequence[Hashable]) -> None:
        """Announce the keys that may arrive, in the order the mean folds them."""
        self._expected += [k for k in keys if k not in self._expected]
        if self._sum is not None:
            self._sum.expect(keys)
        if self._uniform is not None:
            self._uniform.expect(keys)

    def skip(self, key: Hashable) -> None:
        """An announced key that will not arrive (so the mean can fold the ones after it)."""
        if self._sum is not None and key not in self._keys_seen:
            self._sum.skip(key)
            if self._uniform is not None:
                self._uniform.skip(key)

    def add(self, state: State, weight: int, key: Hashable) -> None:
        """Fold one reply (`weight` a non-negative integer) under a unique `key`."""
        if key in self._keys_seen:
            raise ValueError(f"a reply with key {key!r} was already added")
        if isinstance(weight, bool) or int(weight) != weight or weight < 0:
            raise ValueError(f"fusion weights must be non-negative integers, got {weight!r}")
        weight = int(weight)
        if self._layout is None:
            self._set_layout(state)
        self._check(state)
        self._keys_seen.add(key)
        self.count += 1
        if self._ints is None or key < self._ints[0]:  # type: ignore[operator]
            self._ints = (key, {k: state[k].detach().clone() for k in self._int_keys})
        if self._held_keys:
            self._held.append((key, weight, {k: state[k].detach() for k in self._held_keys}))
        segments = float32_runs([state[k] for k in self._summed])
        if self._sum is not None:
            self._sum.add(key, segments, weight)
            if self._uniform is not None:
                self._uniform.add(key, segments, 1)
        else:
            row = self._store.append(segments)  # type: ignore[union-attr]
            self._rows.append((key, weight, row))

    # ------------------------------------------------------------------ result
    def result(self) -> State:
        """The fused state (reference key order and dtypes). With `zero_weight_fallback`, a stream
        whose weights are all 0 is fused with equal weights (heads); otherwise that raises."""
        if self.count == 0 or self._layout is None:
            raise ValueError("no update to fuse")
        uniform = False
        if self._sum is not None:
            self._sum.total()
            total_w = self._sum.weight
        else:
            total_w = sum(w for _, w, _ in self._rows)
        if total_w == 0:
            if not self.zero_weight_fallback:
                raise ValueError("fusion weights must be finite, non-negative and not all zero: all are 0")
            uniform = True
        if self._sum is not None:
            segments = self._mean(uniform)
        else:
            flat = self._robust(uniform)
            segments = np.split(flat, np.cumsum(self._sizes)[:-1]) if self._sizes else []
        out: State = {}
        position = {k: i for i, k in enumerate(self._summed)}
        held = self._reduce_held(uniform)
        for k, (dtype, shape) in self._layout.items():
            if k in position:
                out[k] = torch.from_numpy(segments[position[k]]).to(dtype).reshape(shape)
            elif k in held:
                out[k] = held[k]
            else:
                out[k] = self._ints[1][k].clone()  # type: ignore[index]
        return out

    def _mean(self, uniform: bool) -> list[np.ndarray]:
        """The per-tensor means, divided in place (the accumulator is not used again)."""
        acc = self._uniform if uniform else self._sum
        assert acc is not None
        parts = acc.total()
        weight = np.float32(acc.weight)
        for part in parts:
            np.divide(part, weight, out=part)
        return parts

    def _robust(self, uniform: bool) -> np.ndarray:
        rows = sorted(self._rows, key=lambda r: r[0])
        weights = np.array([1 if uniform else w for _, w, _ in rows], dtype=np.float64)
        if self.aggregator == "median" and not self.median_weighted:
            weights = (weights > 0).astype(np.float64)  # ignore the weights, but weight-0 clients stay out
        keep = weights > 0
        order = [r for (_, _, r), k in zip(rows, keep) if k]
        weights = weights[keep]
        n = len(order)
        assert self._store is not None
        out = np.empty(self._store.n, dtype=np.float64)
        k = trimmed_count_or_raise(n, self.trim_fraction) if self.aggregator == "trimmed-mean" else 0
        for start, values in self._store.chunks(order, WORKING_BYTES):
            if self.aggregator == "median":
                res = median_chunk(values, weights)
            else:
                res = trimmed_mean_chunk(values, weights, k)
            out[start:start + len(res)] = res
        return out

    def _reduce_held(self, uniform: bool) -> State:
        if not self._held_keys:
            return {}
        from strategies.robust import (
            reducer_for,  # the stacked reducers (no import cycle at load time)
        )

        held = sorted(self._held, key=lambda h: h[0])
        weights = [1.0 if uniform else float(w) for _, w, _ in held]
        reduce = reducer_for(self.aggregator, self.trim_fraction, self.median_weighted)
        w = check_weights(weights)
        return {k: reduce(torch.stack([h[k].to(torch.float64) for _, _, h in held]), w).to(self._layout[k][0]).reshape(self._layout[k][1])  # type: ignore[index]
                for k in self._held_keys}

    def close(self) -> None:
        if self._layout is not None and self._store is not None:
            self._store.close()
        for acc in (getattr(self, "_sum", None), getattr(self, "_uniform", None)):
            if acc is not None:
                acc.close()


class GroupFusion:
    """Streaming fusion of one task group's round: body over every reply, each head over the
    replies that trained it; see the module docstring for the guarantees.

    `reference_body` / `reference_heads` are the model the clients were sent. `weighting` is
    "uniform" (every client weighs 1: ColD Fusion) or "examples" (body by a client's total
    examples, each head by its examples of that task: FedAvg; a head whose holders all report 0
    examples is averaged uniformly). With `clip_norm > 0`, each reply's whole update (body and
    the heads it trained) is clipped to that L2 norm against the reference as it is added.
    """

    def __init__(
        self,
        reference_body: State | None,
        reference_heads: dict[str, State],
        weighting: str = "uniform",
        aggregator: str = "mean",
        trim_fraction: float = 0.2,
        clip_norm: float = 0.0,
        spill_dir: str | os.PathLike | None = None,
        *,
        median_weighted: bool = True,
    ) -> None:
        check_weighting(weighting)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {aggregator!r}; valid: {', '.join(AGGREGATORS)}")
        if clip_norm and reference_body is None:
            raise ValueError("clipping needs the reference body")
        if clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0, got {clip_norm!r}")
        self.reference_body = reference_body
        self.reference_heads = reference_heads
        self.weighting = weighting
        self.clip_norm = float(clip_norm)
        opts: dict[str, Any] = {"aggregator": aggregator, "trim_fraction": trim_fraction,
                                "median_weighted": median_weighted}
        self._opts = opts
        self._spill_dir = spill_dir
        self.body = StreamFusion(reference_body, spill_dir=self._sub_dir("body"), **opts)
        fallback = weighting == "examples"  # a head whose holders all report 0 examples: equal weights
        self.heads = {t: StreamFusion(h, spill_dir=self._sub_dir(f"head-{i}"), zero_weight_fallback=fallback, **opts)
                      for i, (t, h) in enumerate(reference_heads.items())}
        self._trained: set[str] = set()
        self.count = 0

    def expect(self, keys: Sequence[Hashable]) -> None:
        """Announce the clients asked to train this group, in the order the mean folds them."""
        for stream in (self.body, *self.heads.values()):
            stream.expect(keys)

    def skip(self, key: Hashable) -> None:
        """An announced client whose reply will not be used (failed, timed out or refused)."""
        for stream in (self.body, *self.heads.values()):
            stream.skip(key)

    def _sub_dir(self, name: str) -> str | None:
        return None if self._spill_dir is None else os.path.join(os.fspath(self._spill_dir), name)

    def add(self, update: ClientUpdate, key: Hashable | None = None) -> None:
        """Fold one validated reply. Drop your own reference to its tensors afterwards: the
        mean keeps no reference past the next batch, the robust reducers keep a float32 copy."""
        key = self.count if key is None else key
        unknown = sorted(set(update.heads) - set(self.reference_heads))
        if unknown:
            raise ValueError(f"reply has heads for tasks outside the group: {unknown}")
        tasks = [t for t in self.reference_heads if t in update.heads]  # canonical task order
        body, heads = update.body, {t: update.heads[t] for t in tasks}
        if self.clip_norm > 0:
            refs = [self.reference_body] + [self.reference_heads[t] for t in tasks]
            clipped = clip_parts(refs, [body] + [heads[t] for t in tasks], self.clip_norm)  # type: ignore[list-item]
            body, heads = clipped[0], dict(zip(tasks, clipped[1:]))
        uniform = self.weighting == "uniform"
        self.body.add(body, 1 if uniform else _count(update.total_examples), key)
        for t, stream in self.heads.items():
            if t in heads:
                stream.add(heads[t], 1 if uniform else _count(update.examples.get(t, 0)), key)
                self._trained.add(t)
            else:
                stream.skip(key)  # this client does not hold task t
        self.count += 1

    def result(self) -> tuple[State, dict[str, State]]:
        """(fused body, a head for every task of `reference_heads`; untrained tasks keep theirs)."""
        if self.count == 0:
            raise ValueError("fuse_group needs at least one client update")
        body = self.body.result()
        heads: dict[str, State] = {}
        for task, old in self.reference_heads.items():
            if task in self._trained:
                heads[task] = self.heads[task].result()
            else:
                heads[task] = {k: v.clone() for k, v in old.items()}
        return body, heads

    def close(self) -> None:
        """Release spilled replies (also done on garbage collection)."""
        self.body.close()
        for h in self.heads.values():
            h.close()

    def __enter__(self) -> GroupFusion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(n: Any) -> int:
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"example counts must be integers, got {n!r}")
    return int(n)


def streaming_spec(reduce: Reducer) -> dict[str, Any] | None:
    """GroupFusion options equivalent to a stacked reducer, or None for a custom one."""
    spec = getattr(reduce, "streaming", None)
    if spec is None:
        return None
    name, opts = spec
    out: dict[str, Any] = {"aggregator": name}
    if "trim_fraction" in opts:
        out["trim_fraction"] = opts["trim_fraction"]
    if "weighted" in opts:
        out["median_weighted"] = opts["weighted"]
    return out


def fuse_group(
    previous_heads: dict[str, State],
    updates: Sequence[ClientUpdate],
    weighting: str = "uniform",
    reduce: Reducer = weighted_mean,
) -> tuple[State, dict[str, State]]:
    """Fuse one group's round from a list of updates: (new body, new heads for every task of
    `previous_heads`), through `GroupFusion` with the updates' list positions as keys.

    `weighting="uniform"` gives every client the same weight for the body (ColD Fusion);
    `"examples"` weights the body by a client's total examples and each head by the client's
    examples of that task (FedAvg). A `reduce` that is not one of `strategies.robust`'s reducers
    falls back to the stacked reference `fuse_group_stacked`.
    """
    check_weighting(weighting)
    if not updates:
        raise ValueError("fuse_group needs at least one client update")
    spec = streaming_spec(reduce)
    if spec is None:
        return fuse_group_stacked(previous_heads, updates, weighting, reduce)
    with GroupFusion(None, previous_heads, weighting, **spec) as fusion:
        for i, u in enumerate(updates):
            fusion.add(u, key=i)
        return fusion.result()


__all__ = ["AGGREGATORS", "GroupFusion", "StreamFusion", "fuse_group", "streaming_spec"]
