"""Planted groups are recovered from gradient summaries in a federation-shaped harness (no Flower).

Cases (testbed.affinity_harness.planted_case): 8 tasks planted in groups of 3, 3 and 2, 8
clients that (a) all hold every task, (b) hold 4 tasks each across groups, (c) hold exactly one
task each. Three merged rounds of 30 local steps, gradients accumulated over each round's first
ceil(10 / tasks held) steps (the default budget of 10 task-steps), then the MAS split. Both signals are read from the same measurements.
"""

from __future__ import annotations

import pytest

from testbed.affinity_harness import HarnessConfig, planted_case, run_affinity_federation


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", ["all", "few", "one"])
def test_gradient_affinity_recovers_planted_groups(case: str, seed: int) -> None:
    suite, n = planted_case(case, teacher_seed=seed)
    res = run_affinity_federation(suite, n, HarnessConfig(method="gradients", seed=seed, data_seed=seed))
    truth = suite.planted_groups
    assert res.groupings["lookahead"] == truth, res.groupings
    assert res.groupings["cosine"] == truth, res.groupings
    assert res.aris == {"lookahead": 1.0, "cosine": 1.0}
    cov = res.rounds[-1].coverage.summary()
    assert cov["never"] == 0
    if case == "one":  # no client holds two tasks: every pair is cross-client
        assert cov == {"same-client": 0, "cross-client": 56, "never": 0}
    if case == "all":
        assert cov["cross-client"] == 0


def test_virtual_step_cannot_see_pairs_no_client_holds() -> None:
    suite, n = planted_case("one", teacher_seed=0)
    res = run_affinity_federation(suite, n, HarnessConfig(method="virtual-step", seed=0))
    assert res.rounds[-1].source == "none" and res.rounds[-1].coverage.summary()["never"] == 56
    assert res.aris["lookahead"] < 1.0


@pytest.mark.parametrize("kind", ["nan", "huge", "foreign", "counts", "dim", "seed"])
def test_forged_reports_are_rejected_named_and_do_not_change_the_grouping(kind: str) -> None:
    suite, n = planted_case("few", teacher_seed=0)
    res = run_affinity_federation(suite, n, HarnessConfig(seed=0), hostile={3: kind})
    assert [(r, c) for r, c, _ in res.rejected] == [(1, "partition-3"), (2, "partition-3"), (3, "partition-3")]
    assert res.groupings["lookahead"] == suite.planted_groups


def test_robust_pooling_outvotes_one_steering_client() -> None:
    """Client 1 sends the same direction for every task it holds, 30x its honest gradient's length
    (inside validation's bounds): with every client holding every task, robust pooling keeps
    the planted grouping."""
    suite, n = planted_case("all", teacher_seed=0)
    mean = run_affinity_federation(suite, n, HarnessConfig(seed=0, affinity_pooling="mean"), hostile={1: "steer"})
    assert mean.aris["lookahead"] < 0.5  # the attack works on the plain mean (measured ARI 0.31)
    res = run_affinity_federation(suite, n, HarnessConfig(seed=0, affinity_pooling="robust"), hostile={1: "steer"})
    assert not res.rejected
    assert res.groupings["lookahead"] == suite.planted_groups and res.groupings["cosine"] == suite.planted_groups


@pytest.mark.slow
def test_robust_combination_outvotes_one_steering_virtual_step_client() -> None:
    """Virtual-step stats: client 1 claims a fake grouping with extreme but in-range values and the
    most measurements allowed; the per-client median keeps the planted grouping, the exact merge does not."""
    suite, n = planted_case("all", teacher_seed=0)
    cfg = dict(method="virtual-step", seed=0, affinity_every=10)
    mean = run_affinity_federation(suite, n, HarnessConfig(affinity_pooling="mean", **cfg), hostile={1: "virtual-steer"})
    robust = run_affinity_federation(suite, n, HarnessConfig(affinity_pooling="robust", **cfg), hostile={1: "virtual-steer"})
    assert not mean.rejected and not robust.rejected
    assert mean.aris["lookahead"] < 1.0
    assert robust.groupings["lookahead"] == suite.planted_groups
