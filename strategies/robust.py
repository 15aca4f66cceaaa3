"""Robust fusion: reducers that a few poisoned or broken clients cannot drag far, and update clipping.

The reducers plug into `strategies.fusion.fuse_states` / `fuse_group` as `reduce`: each takes
`stacked` (float64, shape [n, *param_shape], one row per client) and `weights` (float64, [n])
and returns the fused parameter of shape [*param_shape].

Weights: the mean of a handful of clients can be moved arbitrarily by a single client, the
coordinate-wise median and trimmed mean cannot (up to their breakdown point). Both still honour
the fusion weights so `weighting="examples"` keeps its meaning; with equal weights they are the
textbook median / trimmed mean. Clients with weight 0 are left out entirely (as they are from the
mean), so they do not count towards `n` either. Because weights are example counts a client
controls, bound them with `strategies.validation` (`max_examples`) or use `weighted=False`.

These stacked reducers are the reference; the round loop's streaming fuser
(`strategies.fusion.GroupFusion`) computes the same values a parameter chunk at a time
(`strategies.fusion.chunked`). Each reducer carries a `streaming` tag naming its streaming
equivalent, which is how `fuse_group` picks the fast path.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from strategies.fusion.chunked import HALF_RTOL as _HALF_RTOL
from strategies.fusion.chunked import check_trim_fraction as _check_trim_fraction
from strategies.fusion.chunked import trim_count
from strategies.fusion.clipping import clip_update, clip_updates, update_norm
from strategies.fusion.stacked import weighted_mean
from strategies.fusion.types import Reducer

__all__ = [
    "REDUCERS", "clip_update", "clip_updates", "coordinate_median", "make_reducer", "reducer_for",
    "trim_count", "trimmed_mean", "unweighted_median", "update_norm", "weighted_mean",
]

REDUCERS = ("mean", "median", "trimmed-mean")


def _positive_rows(stacked: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop clients with weight 0: they contribute nothing to a mean, so they must not vote either."""
    if stacked.shape[0] != weights.shape[0]:
        raise ValueError(f"{stacked.shape[0]} stacked rows but {weights.shape[0]} weights")
    if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be a finite, non-negative vector: {weights.tolist()}")
    keep = weights > 0
    if not keep.any():
        raise ValueError("all fusion weights are zero")
    if keep.all():
        return stacked, weights
    return stacked[keep], weights[keep]


def _sorted_with_weights(stacked: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each coordinate's client values and carry each value's client weight along."""
    values, order = torch.sort(stacked, dim=0, stable=True)
    w = weights.reshape((-1,) + (1,) * (stacked.ndim - 1)).expand_as(stacked)
    return values, torch.gather(w, 0, order)


def coordinate_median(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise weighted median.

    For each coordinate, the smallest value whose cumulative weight reaches half the total;
    when the cumulative weight lands exactly on the half, the mean of that value and the next
    (so equal weights give the ordinary median, averaging the two middle values for even n).
    """
    stacked, weights = _positive_rows(stacked, weights)
    n = stacked.shape[0]
    if n == 1:
        return stacked[0].clone()
    values, w = _sorted_with_weights(stacked, weights)
    cum = torch.cumsum(w, dim=0)
    half = weights.sum() / 2
    reached = cum >= half * (1 - _HALF_RTOL)
    idx = torch.argmax(reached.to(torch.int8), dim=0, keepdim=True)  # first index reaching the half
    lower = torch.gather(values, 0, idx)
    on_half = torch.isclose(torch.gather(cum, 0, idx), half.expand_as(lower), rtol=_HALF_RTOL, atol=0.0)
    upper = torch.gather(values, 0, torch.clamp(idx + 1, max=n - 1))
    return torch.where(on_half & (idx < n - 1), (lower + upper) / 2, lower).squeeze(0)


def unweighted_median(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median that ignores the weights (but still drops weight-0 clients)."""
    stacked, weights = _positive_rows(stacked, weights)
    return coordinate_median(stacked, torch.ones_like(weights))


def trimmed_mean(stacked: torch.Tensor, weights: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise trimmed mean: drop the k largest and k smallest values, k = floor(trim * n).

    The remaining values are averaged with their clients' weights. Raises ValueError when
    trimming would leave nothing (n - 2k < 1).
    """
    _check_trim_fraction(trim_fraction)
    stacked, weights = _positive_rows(stacked, weights)
    n = stacked.shape[0]
    k = trim_count(n, trim_fraction)
    if n - 2 * k < 1:
        raise ValueError(
            f"trimmed mean with trim_fraction={trim_fraction} drops {k} low and {k} high values "
            f"of {n} clients: nothing would remain"
        )
    if k == 0:
        return weighted_mean(stacked, weights)
    values, w = _sorted_with_weights(stacked, weights)
    values, w = values[k : n - k], w[k : n - k]
    return (values * w).sum(dim=0) / w.sum(dim=0)


def make_reducer(name: str, **opts: Any) -> Reducer:
    """Build a reducer by name, for configuration strings.

    "mean" (no options), "median" (option `weighted: bool = True`),
    "trimmed-mean" (option `trim_fraction: float = 0.1`).
    """
    allowed = {"mean": set(), "median": {"weighted"}, "trimmed-mean": {"trim_fraction"}}
    if name not in allowed:
        raise ValueError(f"unknown reducer {name!r}; valid reducers: {', '.join(REDUCERS)}")
    unknown = set(opts) - allowed[name]
    if unknown:
        valid = ", ".join(sorted(allowed[name])) or "none"
        raise ValueError(f"reducer {name!r} got unknown option(s) {sorted(unknown)}; valid options: {valid}")
    if name == "mean":
        return weighted_mean
    if name == "median":
        return coordinate_median if opts.get("weighted", True) else unweighted_median
    trim = opts.get("trim_fraction", 0.1)
    _check_trim_fraction(trim)
    reducer = partial(trimmed_mean, trim_fraction=trim)
    reducer.streaming = ("trimmed-mean", {"trim_fraction": trim})  # type: ignore[attr-defined]
    return reducer


def reducer_for(aggregator: str, trim_fraction: float = 0.1, median_weighted: bool = True) -> Reducer:
    """The stacked reducer for a streaming aggregator's options."""
    if aggregator == "median":
        return make_reducer("median", weighted=median_weighted)
    if aggregator == "trimmed-mean":
        return make_reducer("trimmed-mean", trim_fraction=trim_fraction)
    return make_reducer(aggregator)


coordinate_median.streaming = ("median", {"weighted": True})  # type: ignore[attr-defined]
unweighted_median.streaming = ("median", {"weighted": False})  # type: ignore[attr-defined]


