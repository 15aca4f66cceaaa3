"""Affinity signals and their exact aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from strategies.affinity import (
    AffinityStats,
    AffinityTracker,
    gradient_cosine,
    lookahead_affinity,
    measure_affinity,
)
from tasks.models import MultiTaskModel


def _tiny_model() -> MultiTaskModel:
    """Body: x -> w * x (one scalar); heads: f -> h_t * f. Hand-checkable with MSE."""
    body = nn.Linear(1, 1, bias=False)
    heads = {"a": nn.Linear(1, 1, bias=False), "b": nn.Linear(1, 1, bias=False)}
    model = MultiTaskModel(body, heads)
    with torch.no_grad():
        body.weight.fill_(0.5)
        heads["a"].weight.fill_(2.0)
        heads["b"].weight.fill_(-1.0)
    return model


def _mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((pred.squeeze(-1) - y) ** 2).mean()


def _manual_lookahead(w: float, h: dict, data: dict, lr: float, wd: float = 0.0) -> np.ndarray:
    """Closed form for L_t(w) = mean((h_t * w * x - y)^2), dL/dw = mean(2 (h_t w x - y) h_t x)."""
    def loss(t: str, w_: float) -> float:
        x, y = data[t]
        return float(np.mean((h[t] * w_ * x - y) ** 2))

    def grad(t: str) -> float:
        x, y = data[t]
        return float(np.mean(2 * (h[t] * w * x - y) * h[t] * x))

    tasks = list(data)
    return np.array([[1 - loss(j, w - lr * (grad(i) + wd * w)) / loss(j, w) for j in tasks] for i in tasks])


def test_lookahead_matches_manual_and_leaves_model_untouched() -> None:
    model = _tiny_model()
    data = {"a": (np.array([1.0, 2.0]), np.array([3.0, 0.0])), "b": (np.array([-1.0, 0.5]), np.array([0.0, 2.0]))}
    batches = {t: (torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y, dtype=torch.float32)) for t, (x, y) in data.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = lookahead_affinity(model, batches, lr=0.05, loss_fn=_mse)
    want = _manual_lookahead(0.5, {"a": 2.0, "b": -1.0}, data, 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got[0, 0] > 0) and (got[1, 1] > 0)  # a step on a task helps itself
    decayed = lookahead_affinity(model, batches, lr=0.05, loss_fn=_mse, weight_decay=0.3)
    np.testing.assert_allclose(decayed, _manual_lookahead(0.5, {"a": 2.0, "b": -1.0}, data, 0.05, 0.3), rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_lookahead_weight_decay_and_nan_for_zero_loss() -> None:
    model = _tiny_model()
    # task b is solved exactly at w = 0.5: y = h_b * w * x
    x = torch.tensor([[1.0], [2.0]])
    batches = {"a": (x, torch.tensor([3.0, 1.0])), "b": (x, torch.tensor([-0.5, -1.0]))}
    z = lookahead_affinity(model, batches, lr=0.1, loss_fn=_mse)
    assert math.isnan(z[0, 1]) and math.isnan(z[1, 1]) and np.isfinite(z[:, 0]).all()
    stats = AffinityStats(["a", "b"]).add(z)
    assert stats.counts.tolist() == [[1, 0], [1, 0]]


def test_model_with_batchnorm_keeps_buffers() -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    model = MultiTaskModel(body, {"a": nn.Linear(6, 3), "b": nn.Linear(6, 3), "c": nn.Linear(6, 3)})
    model.train()
    batches = {t: (torch.randn(8, 4), torch.randint(0, 3, (8,))) for t in "abc"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = lookahead_affinity(model, batches, lr=0.5)
    c = gradient_cosine(model, batches)
    assert z.shape == (3, 3) and c.shape == (3, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-6)
    np.testing.assert_allclose(c, c.T, atol=1e-12)


def test_gradient_cosine_matches_manual() -> None:
    model = _tiny_model()
    x = torch.tensor([[1.0], [2.0]])
    batches = {"a": (x, torch.tensor([3.0, 0.0])), "b": (x, torch.tensor([0.0, 2.0]))}
    c = gradient_cosine(model, batches, loss_fn=_mse)
    # one body parameter: cosine is the sign product of the two scalar gradients
    ga = np.mean(2 * (2.0 * 0.5 * np.array([1, 2]) - np.array([3, 0])) * 2.0 * np.array([1, 2]))
    gb = np.mean(2 * (-1.0 * 0.5 * np.array([1, 2]) - np.array([0, 2])) * -1.0 * np.array([1, 2]))
    assert c[0, 1] == pytest.approx(np.sign(ga * gb))
    assert measure_affinity(model, batches, "cosine", loss_fn=_mse)[0, 1] == pytest.approx(c[0, 1])
    with pytest.raises(ValueError):
        measure_affinity(model, batches, "nope")


def test_stats_merge_is_exact_and_keeps_negatives() -> None:
    rng = np.random.default_rng(0)
    tasks = ["a", "b", "c"]
    mats = [rng.normal(-0.5, 1.0, (3, 3)) for _ in range(7)]
    # client 1 sees a, b, c; client 2 sees only c, a (different order and subset)
    one = AffinityStats(tasks)
    for m in mats[:4]:
        one.add(m)
    two = AffinityStats(["c", "a"])
    for m in mats[4:]:
        two.add(m[np.ix_([2, 0], [2, 0])])
    total = AffinityStats(tasks).merge(one).merge(two)
    want_sum = sum(mats[:4]) + sum(np.where(np.isin(np.arange(3), [0, 2])[:, None] & np.isin(np.arange(3), [0, 2])[None, :], m, 0) for m in mats[4:])
    np.testing.assert_allclose(total.sums, want_sum, rtol=1e-12)
    assert total.counts[0, 2] == 7 and total.counts[0, 1] == 4
    mean = total.mean()
    assert mean[0, 2] == pytest.approx(np.mean([m[0, 2] for m in mats]))
    # a pair whose total is negative survives (the MAS Counter bug would drop it)
    neg = AffinityStats(["a", "b"]).add(np.array([[0.0, -1.0], [-2.0, 0.0]]))
    back = AffinityStats.from_metrics(neg.to_metrics("aff.x"), "aff.x")
    assert back.mean()[0, 1] == -1.0 and back.mean()[1, 0] == -2.0
    assert AffinityStats(["a", "b"]).add(np.zeros((2, 2))).to_metrics()["aff.lookahead.sum.a.b"] == 0.0


def test_stats_wire_roundtrip_and_union() -> None:
    s = AffinityStats(["x", "y"]).add(np.array([[1.0, np.nan], [-0.25, 2.0]]))
    metrics = s.to_metrics("aff.lookahead")
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert metrics["aff.lookahead.count.y.x"] == 1 and "aff.lookahead.sum.x.y" not in metrics
    other_metrics = {"unrelated": 3, "aff.cosine.sum.x.y": 9.0}
    back = AffinityStats.from_metrics({**metrics, **other_metrics}, "aff.lookahead")
    np.testing.assert_array_equal(back.reindexed(["x", "y"]).counts, s.counts)
    np.testing.assert_allclose(back.reindexed(["x", "y"]).sums, s.sums)
    # union by name: a client holding (y, z) merges into (x, y)
    u = AffinityStats(["x", "y"]).merge(s).merge(AffinityStats(["y", "z"]).add(np.ones((2, 2))))
    assert u.tasks == ["x", "y", "z"]
    assert u.counts[1, 2] == 1 and u.counts[0, 2] == 0 and math.isnan(u.mean()[0, 2])
    assert u.sums[1, 1] == 3.0 and u.counts[1, 1] == 2
    again = AffinityStats.from_dict(json.loads(json.dumps(u.to_dict())))
    np.testing.assert_array_equal(again.counts, u.counts)


def test_tracker_mean_window_ema() -> None:
    tasks = ["a", "b"]
    rounds = [np.array([[0.0, r], [-r, 0.0]]) for r in (1.0, 2.0, 3.0, 4.0)]
    mean, win, ema = AffinityTracker(tasks, "mean"), AffinityTracker(tasks, "window", window=2), AffinityTracker(tasks, "ema", alpha=0.5)
    for r, m in enumerate(rounds):
        for t in (mean, win, ema):
            t.update(m, round=r)
    assert mean.matrix()[0, 1] == pytest.approx(2.5)
    assert win.matrix()[0, 1] == pytest.approx(3.5) and win.matrix()[1, 0] == pytest.approx(-3.5)
    # ema: 1 -> 0.5*1+0.5*2=1.5 -> 2.25 -> 3.125
    assert ema.matrix()[0, 1] == pytest.approx(3.125)


def test_tracker_pairs_unmeasured_and_stats_input_and_roundtrip() -> None:
    tr = AffinityTracker(["a", "b", "c"], "window", window=3)
    s = AffinityStats(["b", "a"]).add(np.array([[0.0, -0.2], [0.4, 0.0]])).add(np.array([[0.0, -0.4], [0.6, 0.0]]))
    tr.update(s, round=0)  # round value = pooled mean of that round
    tr.update(AffinityStats(["c", "b"]).add(np.array([[0.0, 1.0], [1.0, 0.0]])), round=1)
    m = tr.matrix()
    assert m[1, 0] == pytest.approx(-0.3) and m[0, 1] == pytest.approx(0.5)
    assert math.isnan(m[0, 2]) and math.isnan(m[2, 0])
    assert tr.staleness()[0, 1] == 1 and tr.staleness()[1, 2] == 0 and tr.staleness()[0, 2] == -1
    back = AffinityTracker.from_dict(json.loads(json.dumps(tr.to_dict())))
    np.testing.assert_array_equal(np.isnan(back.matrix()), np.isnan(m))
    np.testing.assert_allclose(np.nan_to_num(back.matrix()), np.nan_to_num(m))
    back.update(np.full((3, 3), 2.0), round=2)
    assert back.matrix()[0, 1] == pytest.approx(1.25)  # window keeps the per-pair history
    with pytest.raises(ValueError):
        tr.update(AffinityStats(["a", "zzz"]))
