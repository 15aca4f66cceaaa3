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
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch

from strategies.fusion import Reducer, State, weighted_mean
from strategies.norms import distance

REDUCERS = ("mean", "median", "trimmed-mean")

# Relative tolerance when deciding that a cumulative weight sits exactly on the half-way mark
# (exact for integer weights such as example counts; a guard for non-integer ones).
_HALF_RTOL = 1e-12


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


def trim_count(n: int, trim_fraction: float) -> int:
    """k = floor(trim_fraction * n), robust to float noise (0.29 * 100 must give 29, not 28)."""
    return math.floor(trim_fraction * n + 1e-9)


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


def _check_trim_fraction(trim_fraction: float) -> None:
    if not (isinstance(trim_fraction, (int, float)) and 0.0 <= trim_fraction < 1.0):
        raise ValueError(f"trim_fraction must be in [0, 1), got {trim_fraction!r}")


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
    return partial(trimmed_mean, trim_fraction=trim)


def _float_keys(reference: State) -> list[str]:
    return [k for k, v in reference.items() if v.is_floating_point()]


def update_norm(reference: State, state: State) -> float:
    """L2 norm of (state - reference) over the floating-point parameters, in float64."""
    _check_same_keys(reference, state)
    return distance(reference, state)


def _check_same_keys(reference: State, state: State) -> None:
    if set(reference) != set(state):
        diff = sorted(set(reference) ^ set(state))
        raise ValueError(f"state keys differ from the reference: {diff[:5]}")
    for key, ref in reference.items():
        if state[key].shape != ref.shape:
            raise ValueError(f"{key}: shape {tuple(state[key].shape)} differs from reference {tuple(ref.shape)}")


def clip_update(reference: State, state: State, max_norm: float) -> State:
    """Scale (state - reference) down to L2 norm `max_norm` if it is longer; direction is kept.

    Only floating-point parameters are clipped; integer buffers are passed through. A state
    within the bound is returned unchanged (same tensors), so clipping never perturbs it.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm!r}")
    norm = update_norm(reference, state)
    if not math.isfinite(norm):
        raise ValueError("update has non-finite values; reject it (strategies.validation) instead of clipping")
    if norm <= max_norm:
        return dict(state)
    scale = max_norm / norm
    clipped: State = dict(state)
    for key in _float_keys(reference):
        ref = reference[key].detach().to(torch.float64)
        delta = state[key].detach().to(torch.float64) - ref
        clipped[key] = (ref + delta * scale).to(state[key].dtype)
    return clipped


def clip_updates(reference: State, states: Sequence[State], max_norm: float) -> list[State]:
    """Clip every client's update to L2 norm <= max_norm, so no single client can move the model far."""
    return [clip_update(reference, s, max_norm) for s in states]
