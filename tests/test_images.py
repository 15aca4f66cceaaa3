"""Image domains, the default/tiny suites and their non-IID partitions (fast: no training)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import images
from tasks.images import load_domain, make_default_suite, make_tiny_suite, read_idx
from tasks.partition import assign_tasks, split_indices, train_test_split
from tasks.registry import load_suite


@pytest.fixture(scope="module")
def default_suite():
    return make_default_suite()


@pytest.mark.parametrize("domain,n", [("mnist", 5000), ("digits", 1797), ("fashion", 6000)])
def test_domain_shapes_dtypes_ranges(domain: str, n: int) -> None:
    x, y = load_domain(domain)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert set(np.unique(y)) == set(range(10))
    assert not x.flags.writeable  # cached and shared: must not be mutated by callers


def test_domains_are_cached() -> None:
    assert load_domain("fashion")[0] is load_domain("fashion", str(images.PACKAGE_DATA_ROOT))[0]


def test_digits_framed_like_mnist() -> None:
    x, _ = load_domain("digits")
    assert x[:, :, :4, :].max() == 0 and x[:, :, -4:, :].max() == 0  # 4-pixel empty border, as MNIST


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write((1234).to_bytes(4, "big") + bytes(8))
    with pytest.raises(ValueError, match="magic number 1234"):
        read_idx(bad)


def test_missing_data_root_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_domain("fashion", str(missing))
    # A root that exists but lacks the files names the file it tried.
    with pytest.raises(FileNotFoundError, match="sample-images-idx3-ubyte.gz"):
        make_tiny_suite().load_partition(0, 1, 0, str(tmp_path))


def test_explicit_data_root_is_honoured() -> None:
    x, _ = load_domain("fashion", str(images.PACKAGE_DATA_ROOT))
    assert x.shape == (6000, 1, 28, 28)


def test_default_suite_contract(default_suite) -> None:
    assert default_suite.name == "default"
    assert len(default_suite.tasks) >= 8
    assert {t.domain for t in default_suite.tasks} == {"mnist", "digits", "fashion"}
    assert all(name.isidentifier() for name in default_suite.task_names)
    assert default_suite.task("fashion_footwear").num_classes == 2
    assert default_suite.task("mnist_class").num_classes == 10
    model = default_suite.build_model()
    out = model(torch.zeros(3, 1, 28, 28), "digits_class")
    assert out.shape == (3, 10)
    assert load_suite("default").task_names == default_suite.task_names


def test_partition_arrays(default_suite) -> None:
    part = default_suite.load_partition(0, 6, 0, "")
    assert part
    for task, data in part.items():
        spec = default_suite.task(task)
        for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
            assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
            assert y.dtype == np.int64 and 0 <= y.min() and y.max() < spec.num_classes
            assert 0.0 <= x.min() and x.max() <= 1.0
        assert data.num_train > 3 * data.num_test  # 80/20
        assert len(np.unique(data.y_train)) == spec.num_classes


def test_labels_are_derived_correctly(default_suite) -> None:
    part = default_suite.load_partition(0, 1, 0, "")
    x_all, y_all = load_domain("fashion")
    data = part["fashion_footwear"]
    # Find the original class of a few training images and check the derived label.
    flat = x_all.reshape(len(x_all), -1)
    for i in range(5):
        j = int(np.flatnonzero((flat == data.x_train[i].reshape(-1)).all(axis=1))[0])
        assert data.y_train[i] == int(y_all[j] in (5, 7, 9))


def test_partition_is_deterministic(default_suite) -> None:
    a = default_suite.load_partition(2, 6, 7, "")
    b = default_suite.load_partition(2, 6, 7, "")
    assert a.keys() == b.keys()
    for task in a:
        np.testing.assert_array_equal(a[task].x_train, b[task].x_train)
        np.testing.assert_array_equal(a[task].y_test, b[task].y_test)
    c = default_suite.load_partition(2, 6, 8, "")
    first = next(iter(a.keys() & c.keys()))
    assert not np.array_equal(a[first].y_train[:50], c[first].y_train[:50])


def _image_keys(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


@pytest.mark.parametrize("num_partitions", [2, 6])
def test_slices_disjoint_across_clients_and_splits(default_suite, num_partitions: int) -> None:
    seen: dict[str, set[bytes]] = {}
    parts = [default_suite.load_partition(k, num_partitions, 0, "") for k in range(num_partitions)]
    for part in parts:
        per_domain: dict[str, set[bytes]] = {}
        for task, data in part.items():
            train, test = _image_keys(data.x_train), _image_keys(data.x_test)
            assert not train & test
            per_domain.setdefault(default_suite.task(task).domain, set()).update(train | test)
        for domain, keys in per_domain.items():
            # The three sources hold no exact duplicate images, so equal pixels mean a shared example.
            assert not seen.setdefault(domain, set()) & keys, domain
            seen[domain] |= keys


@pytest.mark.parametrize("num_partitions", [1, 2, 3, 4, 5, 6, 8, 13])
def test_every_task_is_held(default_suite, num_partitions: int) -> None:
    domains = [t.domain for t in default_suite.tasks]
    assignment = assign_tasks(default_suite.task_names, domains, num_partitions, seed=0, tasks_per_domain=2)
    held = set().union(*map(set, assignment))
    assert held == set(default_suite.task_names)
    assert all(assignment)  # nobody is left without tasks
    if num_partitions == 1:
        assert assignment == [default_suite.task_names]
    else:
        assert all(len(a) < len(default_suite.task_names) for a in assignment)  # non-IID
    parts = [default_suite.load_partition(k, num_partitions, 0, "") for k in range(num_partitions)]
    assert [list(p) for p in parts] == assignment


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_assign_tasks_covers_for_several_seeds_and_widths(seed: int) -> None:
    names = [f"t{i}" for i in range(7)]
    domains = ["a", "a", "a", "b", "b", "c", "d"]
    for p in range(1, 9):
        for dpc in (1, 2, 3):
            for tpd in (1, 2, None):
                assignment = assign_tasks(names, domains, p, seed, dpc, tpd)
                assert set().union(*map(set, assignment)) == set(names), (p, dpc, tpd)


@pytest.mark.parametrize("bad", [-1, 6, 100])
def test_bad_partition_id(default_suite, bad: int) -> None:
    with pytest.raises(ValueError, match="partition_id"):
        default_suite.load_partition(bad, 6, 0, "")


def test_bad_num_partitions(default_suite) -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        default_suite.load_partition(0, 0, 0, "")


def test_tiny_suite_is_small() -> None:
    tiny = make_tiny_suite()
    assert tiny.name == "tiny" and len(tiny.tasks) == 4
    for k in range(3):
        for data in tiny.load_partition(k, 3, 0, "").values():
            assert 100 <= data.num_train <= 160 and data.num_test >= 20


def test_split_helpers() -> None:
    parts = split_indices(103, 4, seed=0, key="d")
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert [len(p) for p in parts] == [26, 26, 26, 25]
    train, test = train_test_split(np.arange(10), 0.2, seed=0)
    assert len(train) == 8 and len(test) == 2 and not set(train) & set(test)
    train, test = train_test_split(np.arange(2), 0.2, seed=0)
    assert len(train) == 1 and len(test) == 1
    with pytest.raises(ValueError):
        split_indices(3, 4, seed=0)
