"""The planted suite: contract checks, and centralized recovery of the planted groups.

Recovery protocol (see the caution at the end of shared/ALGORITHMS.md): train all-in-one with
the plain sum of task losses and average affinity over the EARLY steps only (first 150 SGD
steps, measured every 10), while the tasks are still being learned.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strategies.affinity import AffinityStats, gradient_cosine, lookahead_affinity
from strategies.grouping import best_grouping
from tasks.planted import make_planted_suite
from tasks.registry import load_suite
from tasks.suite import Suite


def test_factory_defaults_and_registry() -> None:
    suite = make_planted_suite()
    assert isinstance(suite, Suite)
    assert load_suite("planted").task_names == suite.task_names
    assert len(suite.task_names) == 9
    flat = sorted(t for g in suite.planted_groups for t in g)
    assert flat == sorted(suite.task_names)
    assert [len(g) for g in suite.planted_groups] == [3, 3, 3]
    # the shuffled naming means planted groups are not contiguous blocks of t0..t8
    assert suite.planted_groups != [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6", "t7", "t8"]]


def test_variants_parameterise() -> None:
    suite = make_planted_suite(num_groups=4, tasks_per_group=(2, 3, 2, 2), subspace_dim=5, noise_dims=3,
                               num_classes=3, conflict=True, teacher_seed=7)
    assert len(suite.task_names) == 10
    assert sorted(len(g) for g in suite.planted_groups) == [2, 2, 3, 3]  # conflict task joins group 0
    data = suite.load_partition(0, 1, 0, "")
    assert set(data) == set(suite.task_names)
    some = next(iter(data.values()))
    assert some.x_train.shape[1] == 4 * 5 + 3 and some.y_train.max() < 3
    model = suite.build_model()
    assert model(torch.from_numpy(some.x_train[:4]), suite.task_names[0]).shape == (4, 3)


def test_partitions_deterministic_and_cover_groups() -> None:
    suite = make_planted_suite()
    a = suite.load_partition(3, 20, 1, "")
    b = suite.load_partition(3, 20, 1, "")
    assert list(a) == list(b) and len(a) == 5
    for t in a:
        np.testing.assert_array_equal(a[t].x_train, b[t].x_train)
        np.testing.assert_array_equal(a[t].y_train, b[t].y_train)
    other = suite.load_partition(4, 20, 1, "")
    shared = set(a) & set(other)
    for t in shared:  # each client has its own samples
        assert not np.array_equal(a[t].x_train, other[t].x_train)
    holdings = [set(suite.load_partition(p, 20, 1, "")) for p in range(20)]
    assert set().union(*holdings) == set(suite.task_names)
    group_of = {t: k for k, g in enumerate(suite.planted_groups) for t in g}
    mixed = sum(len({group_of[t] for t in h}) >= 2 for h in holdings)
    within = sum(len({group_of[t] for t in h}) < len(h) for h in holdings)
    assert mixed >= 10, "most clients should hold tasks of different groups (cross-group affinity)"
    assert within >= 3, "some clients should hold two tasks of one group (within-group affinity)"


def _early_affinity(seed: int, steps: int = 150, every: int = 10, lr: float = 0.1, batch: int = 128):
    """Centralized all-in-one SGD on the planted data; mean affinities over the early steps."""
    torch.set_num_threads(1)
    suite = make_planted_suite(teacher_seed=seed, train_per_task=2048)
    data = suite.load_partition(0, 1, seed, "")
    tasks = suite.task_names
    model = suite.build_model(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    xs = {t: torch.from_numpy(d.x_train) for t, d in data.items()}
    ys = {t: torch.from_numpy(d.y_train) for t, d in data.items()}
    lookahead, cosine = AffinityStats(tasks), AffinityStats(tasks)
    for step in range(steps):
        batches = {}
        for t in tasks:
            idx = torch.randint(0, len(ys[t]), (batch,), generator=gen)
            batches[t] = (xs[t][idx], ys[t][idx])
        if step % every == 0:
            lookahead.add(lookahead_affinity(model, batches, lr))
            cosine.add(gradient_cosine(model, batches))
        opt.zero_grad()
        sum(F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()).backward()
        opt.step()
    return suite, lookahead, cosine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_groups_recovered(seed: int) -> None:
    start = time.perf_counter()
    suite, lookahead, cosine = _early_affinity(seed)
    truth = tuple(tuple(g) for g in suite.planted_groups)
    k = len(truth)
    assert lookahead.counts[0, 1] == 15
    got_la = best_grouping(lookahead.mean(), k, suite.task_names)
    got_cos = best_grouping(cosine.mean(), k, suite.task_names)
    print(f"seed {seed}: lookahead {got_la.named()} cosine {got_cos.named()} ({time.perf_counter() - start:.1f}s)")
    assert got_la.named() == truth
    assert got_cos.named() == truth
