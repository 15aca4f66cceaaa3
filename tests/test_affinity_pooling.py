"""Pooling clients' summaries per task, every pair from pooled gradients, coverage, robustness to one client."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.affinity import (
    AffinityStats,
    GradientReport,
    combine_virtual_stats,
    first_order_lookahead,
    pool_gradients,
    round_affinity,
)
from strategies.grouping import best_grouping
from testbed.hostile_affinity import forge_gradient_report

DIM = 400


def _report(client: str, grads: dict, steps: int = 10, examples: int = 320, loss: float = 1.0) -> GradientReport:
    ts = list(grads)
    return GradientReport(client, {t: np.asarray(g, np.float32) for t, g in grads.items()},
                          {t: steps for t in ts}, {t: examples for t in ts}, {t: loss for t in ts}, seed=1)


def _planted_reports(holdings: list[list[str]], noise: float = 0.3, seed: int = 0) -> list[GradientReport]:
    """Tasks a0, a1, a2 share direction u; b0, b1 share v (orthogonal-ish); every client adds noise."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(DIM), rng.standard_normal(DIM)
    base = {"a0": u, "a1": u, "a2": u, "b0": v, "b1": v}
    return [_report(f"c{i}", {t: base[t] + noise * np.sqrt(DIM) * rng.standard_normal(DIM) / np.sqrt(10) for t in h})
            for i, h in enumerate(holdings)]


def test_mean_pooling_is_examples_weighted_and_first_order_formula() -> None:
    r1 = _report("x", {"a": np.ones(DIM)}, examples=100, loss=2.0)
    r2 = _report("y", {"a": 3 * np.ones(DIM), "b": -np.ones(DIM)}, examples=300, loss=1.0)
    pooled = pool_gradients([r1, r2], ["a", "b", "c"], "mean")
    np.testing.assert_allclose(pooled.vectors[0], 2.5 * np.ones(DIM))
    assert pooled.losses[0] == pytest.approx(1.25) and np.isnan(pooled.losses[2])
    assert pooled.holders == {"a": ["x", "y"], "b": ["y"]} and pooled.examples["a"] == 400
    z = first_order_lookahead(np.stack([pooled.vectors[0], pooled.vectors[1], np.zeros(DIM)]), pooled.losses, lr=0.1)
    assert z[0, 1] == pytest.approx(0.1 * (-2.5 * DIM) / 1.0) and z[1, 0] == pytest.approx(0.1 * (-2.5 * DIM) / 1.25)
    assert np.isnan(z[0, 2])


def test_round_affinity_covers_pairs_no_client_holds_together() -> None:
    tasks = ["a0", "a1", "a2", "b0", "b1"]
    reports = _planted_reports([["a0", "b0"], ["a1"], ["a2", "b1"], ["a0", "a1"]])
    ra = round_affinity(tasks, "gradients", lr=0.1, gradient_reports=reports)
    assert ra.source == "gradients" and ra.measured
    cov = ra.coverage
    assert cov.kind("a0", "b0") == "same-client" and cov.kind("a0", "a1") == "same-client"
    assert cov.kind("a1", "b1") == "cross-client" and cov.count("a1", "b1") == 3  # c1, c3 (a1) and c2 (b1)
    assert cov.count("a0", "a1") == 3  # c0, c1, c3
    assert cov.summary() == {"same-client": 6, "cross-client": 14, "never": 0}
    pairs = cov.to_dict()["pairs"]
    assert len(pairs) == 20 and [0, 1, "same-client", 3] in pairs
    assert best_grouping(ra.matrices["cosine"], 2, tasks).as_lists() == [["a0", "a1", "a2"], ["b0", "b1"]]
    assert best_grouping(ra.matrices["lookahead"], 2, tasks).as_lists() == [["a0", "a1", "a2"], ["b0", "b1"]]
    d = ra.to_dict()
    assert d["coverage"]["summary"]["cross-client"] == 14 and d["gradients"]["holders"]["a0"] == ["c0", "c3"]
    # a task nobody reported: its pairs are "never" and NaN
    ra2 = round_affinity(tasks + ["z"], "gradients", 0.1, reports)
    assert ra2.coverage.kind("a0", "z") == "never" and np.isnan(ra2.matrices["lookahead"][0, 5])


@pytest.mark.parametrize("kind", ["steer"])
def test_robust_pooling_resists_one_hostile_client(kind: str) -> None:
    """Every client holds every task; one client forges a common direction (steer: 30x its honest
    norm, passing validation) - the mean's grouping falls for it, the robust pooling's does not."""
    tasks = ["a0", "a1", "a2", "b0", "b1"]
    truth = [["a0", "a1", "a2"], ["b0", "b1"]]
    honest = _planted_reports([tasks] * 7, noise=0.3, seed=1)
    forged = forge_gradient_report(kind, _planted_reports([tasks], seed=2)[0], tasks, seed=5)
    reports = honest + [forged]
    clean = round_affinity(tasks, "gradients", 0.1, honest, pooling="mean")
    assert best_grouping(clean.matrices["cosine"], 2, tasks).as_lists() == truth
    mean = round_affinity(tasks, "gradients", 0.1, reports, pooling="mean")
    robust = round_affinity(tasks, "gradients", 0.1, reports, pooling="robust")
    for signal in ("cosine", "lookahead"):
        assert best_grouping(robust.matrices[signal], 2, tasks).as_lists() == truth, signal
    mean_cos = mean.matrices["cosine"]
    assert mean_cos[0, 3] > 0.9  # the hostile direction dominates the mean: a's and b's look alike
    assert abs(robust.matrices["cosine"][0, 3]) < 0.3
    assert robust.details["gradients"]["clipped"]["a0"] >= 1


def test_virtual_stats_mean_is_exact_and_robust_takes_the_median_of_client_means() -> None:
    tasks = ["a", "b"]
    honest = [AffinityStats(tasks).add(np.array([[0.1, v], [v, 0.1]])) for v in (0.02, 0.03, 0.04)]
    hostile = AffinityStats(tasks, sums=np.array([[0.0, 600.0], [600.0, 0.0]]), counts=np.array([[0, 600], [600, 0]]))
    mean = combine_virtual_stats(honest + [hostile], tasks, "mean")
    robust = combine_virtual_stats(honest + [hostile], tasks, "robust")
    assert mean.matrix[0, 1] == pytest.approx((0.09 + 600.0) / 603)  # the inflated counts buy the mean
    assert robust.matrix[0, 1] == pytest.approx(0.035)  # median of 0.02, 0.03, 0.04, 1.0
    assert mean.counts[0, 1] == 603 and robust.clients[0, 1] == 4
    assert robust.as_stats().mean()[0, 1] == pytest.approx(0.035)
    ra = round_affinity(tasks, "virtual-step", 0.1, virtual_stats=[{"lookahead": s} for s in honest])
    assert ra.source == "virtual-step" and ra.coverage.kind("a", "b") == "same-client" and ra.coverage.count("a", "b") == 3
    assert np.isnan(ra.matrices["cosine"][0, 1])  # no client sent cosine stats


def test_tracker_weights_rounds_per_pair_and_round_trips() -> None:
    import json

    from strategies.affinity import AffinityTracker

    for mode in ("mean", "window"):
        tr = AffinityTracker(["a", "b"], mode, window=3)
        tr.update(np.array([[1.0, 0.0], [0.0, 1.0]]), round=0, weights=np.array([[1.0, 1.0], [1.0, 1.0]]))
        tr.update(np.array([[1.0, 0.9], [0.9, 1.0]]), round=1, weights=np.array([[1.0, 3.0], [3.0, 1.0]]))
        assert tr.matrix()[0, 1] == pytest.approx(0.675)  # (0 * 1 + 0.9 * 3) / 4
        back = AffinityTracker.from_dict(json.loads(json.dumps(tr.to_dict())))
        back.update(np.array([[1.0, 0.0], [0.0, 1.0]]), round=2)  # weight 1
        assert back.matrix()[0, 1] == pytest.approx(2.7 / 5)
    # states written before weights existed still load (every round weighed 1)
    old = AffinityTracker(["a", "b"], "mean").to_dict()
    old.pop("weight")
    old["hist"] = [[[0.5], []], [[], []]]
    assert np.isnan(AffinityTracker.from_dict(old).matrix()[0, 1])


def test_tasks_measured_on_different_group_models_are_not_paired() -> None:
    tasks = ["a0", "a1", "b0", "b1"]
    reports = _planted_reports([["a0", "a1"], ["b0", "b1"], ["a0"]])
    reports[0].group = reports[2].group = 7
    reports[1].group = 8
    ra = round_affinity(tasks, "gradients", 0.1, reports)
    assert np.isnan(ra.matrices["cosine"][0, 2]) and np.isfinite(ra.matrices["cosine"][0, 1])
    assert ra.coverage.kind("a0", "b0") == "never" and ra.coverage.kind("b0", "b1") == "same-client"
    reports[2].group = 8  # a0 in two groups of one round: a bug upstream
    with pytest.raises(ValueError, match="two|groups"):
        round_affinity(tasks, "gradients", 0.1, reports)
