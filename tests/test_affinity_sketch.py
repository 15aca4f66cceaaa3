"""The count sketch: unbiased inner products, deterministic from the seed, exact when small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.affinity import CountSketch, sketch_dim, sketch_seed


def _pair(n: int = 5000, rho: float = 0.4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    b = rho * a + torch.randn(n, generator=g)
    return a, b


def test_inner_products_are_unbiased_over_seeds() -> None:
    a, b = _pair()
    true_ab, true_aa = float(a @ b), float(a @ a)
    est_ab, est_aa = [], []
    for seed in range(300):
        s = CountSketch(len(a), 128, seed).sketch([[a], [b]]).double()
        est_ab.append(float(s[0] @ s[1]))
        est_aa.append(float(s[0] @ s[0]))
    for est, true in ((est_ab, true_ab), (est_aa, true_aa)):
        est = np.array(est)
        stderr = est.std(ddof=1) / np.sqrt(len(est))
        assert abs(est.mean() - true) < 4 * stderr, (est.mean(), true, stderr)
    # error of one sketch is of order |a||b| / sqrt(d), not larger
    spread = np.std(est_ab)
    assert spread < 2.0 * float(a.norm() * b.norm()) / np.sqrt(128)


def test_deterministic_in_seed_and_independent_of_chunking_and_splitting() -> None:
    a, b = _pair(n=3001)
    one = CountSketch(3001, 64, seed=7).sketch([[a], [b]])
    again = CountSketch(3001, 64, seed=7).sketch([[a], [b]])
    chunked = CountSketch(3001, 64, seed=7, chunk=97).sketch([[a], [b]])
    pieces = CountSketch(3001, 64, seed=7).sketch([[a[:1000].reshape(10, 100), a[1000:]], [b[:1000].reshape(10, 100), b[1000:]]])
    assert torch.equal(one, again)
    torch.testing.assert_close(one, chunked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, pieces, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one, CountSketch(3001, 64, seed=8).sketch([[a], [b]]))
    assert one.dtype == torch.float32 and one.shape == (2, 64)


def test_hash_buckets_are_uniform_and_signs_balanced() -> None:
    sk = CountSketch(1 << 20, 256, seed=3)
    bucket, sign = sk.hashes(0, 1 << 20)
    counts = torch.bincount(bucket, minlength=256).double()
    expected = (1 << 20) / 256
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected
    assert abs(float(sign.mean())) < 0.01
    assert set(sign.unique().tolist()) == {-1.0, 1.0}


def test_exact_when_the_vector_is_small() -> None:
    a, b = _pair(n=50)
    assert sketch_dim(50, 128) == 50 and sketch_dim(5000, 128) == 128
    sk = CountSketch(50, 128, seed=1)
    assert sk.exact
    out = sk.sketch([[a[:20], a[20:]], [b]])
    assert torch.equal(out[0], a) and torch.equal(out[1], b)


def test_rejects_wrong_sizes_and_round_seeds_differ() -> None:
    with pytest.raises(ValueError):
        CountSketch(100, 16, 0).sketch([[torch.zeros(99)]])
    with pytest.raises(ValueError):
        sketch_dim(10, 0)
    seeds = {sketch_seed(5, r) for r in range(1, 50)}
    assert len(seeds) == 49 and sketch_seed(5, 1) == sketch_seed(5, 1)
