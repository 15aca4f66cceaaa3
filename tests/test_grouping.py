"""MAS grouping: exact DP == brute force (ties included), heuristic validity, scoring, hysteresis."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from strategies.grouping import (
    Grouping,
    best_grouping,
    brute_force_grouping,
    canonical,
    group_scores,
    set_partitions,
    should_regroup,
)

BELL = [1, 1, 2, 5, 15, 52, 203, 877, 4140]


def _random_affinity(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = seed % 3
    if kind == 0:
        return rng.normal(size=(n, n))  # continuous, negatives included
    if kind == 1:
        return rng.integers(-2, 3, size=(n, n)).astype(float)  # many exact ties
    z = rng.normal(size=(n, n))
    z[rng.random((n, n)) < 0.3] = np.nan  # unmeasured pairs
    return z


def _assert_partition(groups, n: int) -> None:
    flat = sorted(t for g in groups for t in g)
    assert flat == list(range(n))
    assert canonical(groups) == groups


def test_set_partitions_counts() -> None:
    for n in range(1, 9):
        parts = list(set_partitions(n))
        assert len(parts) == BELL[n] and len(set(parts)) == BELL[n]
    assert all(len(p) <= 2 for p in set_partitions(6, 2))


@pytest.mark.parametrize("n", range(1, 9))
def test_exact_equals_brute_force(n: int) -> None:
    for seed in range(40 if n <= 6 else 12):
        z = _random_affinity(n, seed)
        for max_groups in sorted({1, 2, 3, n}):
            got, want = best_grouping(z, max_groups), brute_force_grouping(z, max_groups)
            assert got.groups == want.groups, (n, seed, max_groups)
            assert got.score == pytest.approx(want.score, abs=1e-12)
            assert got.num_groups <= max_groups and got.exact
            _assert_partition(got.groups, n)


def test_ties_prefer_fewer_groups_then_lexicographic() -> None:
    z = np.zeros((4, 4))  # everything ties at 0: one group wins
    assert best_grouping(z, 4).groups == ((0, 1, 2, 3),)
    # two disjoint perfect pairs, either pairing of the remaining tasks ties
    z = np.zeros((4, 4))
    z[0, 1] = z[1, 0] = 1.0
    z[2, 3] = z[3, 2] = 1.0
    assert best_grouping(z, 4).groups == ((0, 1), (2, 3))
    # 3 tasks, symmetric 1s: all-in-one vs pairs... ties between {0,1},{2} and {0,2},{1} -> lexicographic
    z = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=float)
    g = best_grouping(z, 2)
    assert g.groups == brute_force_grouping(z, 2).groups


def test_group_scores_definition() -> None:
    z = np.array([[9.0, 1.0, -2.0], [3.0, 9.0, 4.0], [np.nan, 5.0, 9.0]])
    scores = group_scores(z, [[0, 1], [2]])
    # task 0 in {0,1}: Z(1->0) = 3; task 1: Z(0->1) = 1
    # lone task 2: (in: Z(0->2) + Z(1->2) = -2 + 4; out: Z(2->0) (NaN -> 0) + Z(2->1) = 5) / 4
    np.testing.assert_allclose(scores.per_task, [3.0, 1.0, 7.0 / 4])
    assert scores.objective == pytest.approx((3 + 1 + 7 / 4) / 3)
    three = group_scores(z, [[2, 0, 1]])
    np.testing.assert_allclose(three.per_task, [(3 + 0) / 2, (1 + 5) / 2, (-2 + 4) / 2])
    named = group_scores(z, [["a", "b"], ["c"]], task_names=["a", "b", "c"])
    assert named.objective == scores.objective
    with pytest.raises(ValueError):
        group_scores(z, [[0, 1]])  # does not cover task 2
    with pytest.raises(ValueError):
        group_scores(z, [[0, 1], [1, 2]])


def test_names_and_serialisation() -> None:
    z = _random_affinity(5, 0)
    g = best_grouping(z, 2, task_names=["a", "b", "c", "d", "e"])
    assert sorted(t for grp in g.named() for t in grp) == ["a", "b", "c", "d", "e"]
    back = Grouping.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g
    assert g.as_lists() == [list(x) for x in g.named()]


def test_n12_exact_is_fast() -> None:
    z = _random_affinity(12, 3)
    start = time.perf_counter()
    for max_groups in (3, 12):
        g = best_grouping(z, max_groups)
        _assert_partition(g.groups, 12)
        assert g.exact and g.num_groups <= max_groups
    elapsed = time.perf_counter() - start
    print(f"n=12 exact, max_groups 3 and 12: {elapsed:.3f}s")
    assert elapsed < 20.0


def test_heuristic_valid_for_n16_and_deterministic() -> None:
    for seed in range(3):
        z = _random_affinity(16, seed)
        for max_groups in (1, 3, 16):
            g = best_grouping(z, max_groups)
            assert g.exact == (max_groups == 1) and g.num_groups <= max_groups
            _assert_partition(g.groups, 16)
            assert best_grouping(z, max_groups) == g
    assert best_grouping(np.zeros((16, 16)), 4).groups == (tuple(range(16)),)


@pytest.mark.parametrize("n", range(1, 10))
def test_bipartition_search_equals_brute_force(n: int) -> None:
    """At most 2 groups above the DP's limit: every bipartition, same answer and tie rule."""
    for seed in range(12):
        z = _random_affinity(n, seed)
        got, want = best_grouping(z, 2, exact_limit=0), brute_force_grouping(z, 2)
        assert got.groups == want.groups and got.exact, (n, seed)
        assert got.score == pytest.approx(want.score, abs=1e-12)
    assert best_grouping(np.zeros((n, n)), 2, exact_limit=0).groups == (tuple(range(n)),)


def test_two_groups_above_the_dp_limit_are_exact() -> None:
    for seed in range(3):
        z = _random_affinity(13, seed)
        got, dp = best_grouping(z, 2), best_grouping(z, 2, exact_limit=13)
        assert got.exact and got.groups == dp.groups, seed
        assert best_grouping(z, 1).groups == (tuple(range(13)),)


def test_local_search_finds_the_optimum_at_three_groups_above_the_dp_limit() -> None:
    """bench_grouping's random matrices at n = 13 (seed 12: 8 restarts, no bipartition start, missed)."""
    for seed in (12, 1, 2):
        z = np.random.default_rng([13, 3, seed]).normal(size=(13, 13))
        got, dp = best_grouping(z, 3), best_grouping(z, 3, exact_limit=13)
        assert not got.exact and got.score == pytest.approx(dp.score, abs=1e-12), seed


def test_heuristic_matches_exact_on_planted_blocks() -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), 4))  # 16 tasks, 4 planted blocks
    z = np.where(labels[:, None] == labels[None, :], 1.0, -0.5) + 0.1 * rng.normal(size=(16, 16))
    g = best_grouping(z, 4)
    want = canonical([np.flatnonzero(labels == k).tolist() for k in range(4)])
    assert g.groups == want


def test_heuristic_close_to_exact_for_n10() -> None:
    for seed in range(6):
        z = _random_affinity(10, seed)
        exact, heur = best_grouping(z, 3), best_grouping(z, 3, exact_limit=0)
        assert heur.score <= exact.score + 1e-12
        assert heur.score >= exact.score - 0.05 * abs(exact.score) - 1e-9


def test_should_regroup_hysteresis() -> None:
    z = np.zeros((4, 4))
    z[0, 1] = z[1, 0] = 1.0
    z[2, 3] = z[3, 2] = 0.2
    cur, new = [[0, 1, 2, 3]], [[0, 1], [2, 3]]
    gain = group_scores(z, new).objective - group_scores(z, cur).objective
    assert gain > 0
    assert should_regroup(cur, new, z, margin=0.0)
    assert not should_regroup(cur, new, z, margin=gain + 1e-9)
    assert not should_regroup(new, [[1, 0], [3, 2]], z, margin=-1.0)  # same partition
    names = ["a", "b", "c", "d"]
    assert should_regroup([["a", "b", "c", "d"]], best_grouping(z, 2, names), z, task_names=names)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        best_grouping(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError):
        best_grouping(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError):
        best_grouping(np.array([[0, np.inf], [0, 0]]), 2)
    with pytest.raises(ValueError):
        best_grouping(np.zeros((3, 3)), 2, task_names=["a"])
