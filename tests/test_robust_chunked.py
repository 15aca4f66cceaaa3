"""Chunked robust reducers (float32 [C, n] chunks) return the stacked float64 reducers' values bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.fusion.chunked import median_chunk, trimmed_mean_chunk
from strategies.robust import coordinate_median, trim_count, trimmed_mean


def _data(n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.integers(-3, 4, size=(n, c)).astype(np.float32)  # many exact ties
    v[:, : c // 2] = rng.standard_normal((n, c // 2)).astype(np.float32)
    return v


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("weights", ["equal", "counts", "half-mass"])
def test_chunk_median_and_trimmed_mean_match_stacked(n, weights):
    values = _data(n, 40, seed=n)
    rng = np.random.default_rng(n + 100)
    w = {"equal": np.full(n, 7.0), "counts": rng.integers(1, 20, n).astype(np.float64),
         "half-mass": np.array([2.0] + [1.0] * (n - 1)) if n > 1 else np.ones(1)}[weights]
    if weights == "half-mass" and n > 2:
        w[-1] = float(n - 3)  # total 2n - 2: a cumulative weight lands exactly on the half
    stacked, tw = torch.from_numpy(values.astype(np.float64)), torch.from_numpy(w)
    expected = coordinate_median(stacked, tw).numpy()
    assert np.array_equal(median_chunk(np.ascontiguousarray(values.T), w), expected)
    for trim in (0.0, 0.2, 0.34):
        if n - 2 * trim_count(n, trim) < 1:
            continue
        got = trimmed_mean_chunk(np.ascontiguousarray(values.T), w, trim_count(n, trim))
        ref = trimmed_mean(stacked, tw, trim).numpy()
        if trim_count(n, trim) == 0:  # the stacked k = 0 case is BLAS's weighted mean: same up to rounding
            np.testing.assert_allclose(got, ref, rtol=1e-15, atol=1e-15)
        else:
            assert np.array_equal(got, ref)
