"""Robust reducers on one parameter chunk: values [n clients, C coordinates] float32 -> float64 [C].

Same semantics as the stacked reducers in `strategies.robust` (which work on float64 stacks of
whole tensors): weight-0 clients are left out; the weighted median is the smallest value whose
cumulative weight reaches half the total, averaged with the next value when it lands exactly on
the half; the trimmed mean drops the k = floor(trim * n) lowest and highest values per
coordinate and averages the rest with their clients' weights. Sorting float32 values gives the
same order as sorting their float64 copies, and ties keep row order (stable sorts), so with
rows in the same order these return the stacked reducers' values bitwise (the trimmed mean's
float64 sum runs over the kept values in ascending order, as the stacked one does).
"""

from __future__ import annotations

import math

import numpy as np

# Relative tolerance when deciding that a cumulative weight sits exactly on the half-way mark
# (exact for integer weights such as example counts; a guard for non-integer ones).
HALF_RTOL = 1e-12


def trim_count(n: int, trim_fraction: float) -> int:
    """k = floor(trim_fraction * n), robust to float noise (0.29 * 100 must give 29, not 28)."""
    return math.floor(trim_fraction * n + 1e-9)


def check_trim_fraction(trim_fraction: float) -> None:
    if not (isinstance(trim_fraction, (int, float)) and 0.0 <= trim_fraction < 1.0):
        raise ValueError(f"trim_fraction must be in [0, 1), got {trim_fraction!r}")


def trimmed_count_or_raise(n: int, trim_fraction: float) -> int:
    k = trim_count(n, trim_fraction)
    if n - 2 * k < 1:
        raise ValueError(
            f"trimmed mean with trim_fraction={trim_fraction} drops {k} low and {k} high values "
            f"of {n} clients: nothing would remain"
        )
    return k


def _equal(weights: np.ndarray) -> bool:
    return bool(np.all(weights == weights[0]))


def median_chunk(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coordinate-wise weighted median of values [C, n] (n clients, weights [n] all > 0): float64 [C]."""
    n = values.shape[1]
    if n == 1:
        return values[:, 0].astype(np.float64)
    if _equal(weights):
        # Equal weights: the ordinary median (the weighted rule gives the same answer).
        ordered = np.sort(values, axis=1)
        mid = n // 2
        if n % 2:
            return ordered[:, mid].astype(np.float64)
        return (ordered[:, mid - 1].astype(np.float64) + ordered[:, mid].astype(np.float64)) / 2
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    cum = np.cumsum(weights[order], axis=1)
    half = np.float64(weights.sum()) / 2
    idx = np.argmax(cum >= half * (1 - HALF_RTOL), axis=1)[:, None]  # first index reaching the half
    lower = np.take_along_axis(ordered, idx, axis=1).astype(np.float64)
    on_half = np.abs(np.take_along_axis(cum, idx, axis=1) - half) <= HALF_RTOL * abs(half)
    upper = np.take_along_axis(ordered, np.minimum(idx + 1, n - 1), axis=1).astype(np.float64)
    return np.where(on_half & (idx < n - 1), (lower + upper) / 2, lower)[:, 0]


def trimmed_mean_chunk(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Coordinate-wise trimmed mean of values [C, n] dropping k low and k high (weights > 0)."""
    n = values.shape[1]
    if k == 0:
        return _weighted_rows(np.ascontiguousarray(values.T), weights) / _plain_sum(weights)
    if _equal(weights):
        kept = np.sort(values, axis=1)[:, k:n - k]
        w = np.full(n - 2 * k, weights[0])
    else:
        order = np.argsort(values, axis=1, kind="stable")[:, k:n - k]
        kept = np.take_along_axis(values, order, axis=1)
        w = None
        wk = weights[order]  # [C, m]: each kept value's client weight
        num = _weighted_rows(np.ascontiguousarray(kept.T), np.ascontiguousarray(wk.T))
        return num / _sum_rows(np.ascontiguousarray(wk.T))
    num = _weighted_rows(np.ascontiguousarray(kept.T), w)
    return num / _plain_sum(w)


def _weighted_rows(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_i rows[i] * weights[i] in float64, in row order (weights [m] or [m, C])."""
    out = rows[0] * np.float64(1) * weights[0]
    for i in range(1, len(rows)):
        out += rows[i].astype(np.float64) * weights[i]
    return out


def _sum_rows(rows: np.ndarray) -> np.ndarray:
    out = rows[0].astype(np.float64, copy=True)
    for row in rows[1:]:
        out += row
    return out


def _plain_sum(w: np.ndarray) -> np.float64:
    total = np.float64(0)
    for x in w:
        total += x
    return total
