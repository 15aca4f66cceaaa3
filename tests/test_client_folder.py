"""Client data folders: round trip, and a ClientDataError naming the culprit for each malformation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.folder import FORMAT, ClientDataError, prepare_client_dirs, read_client_dir, write_client_dir
from tasks.suite import TaskData, TaskSpec

SPECS = [TaskSpec("alpha", 3), TaskSpec("beta", 2)]


def _tasks() -> dict[str, TaskData]:
    rng = np.random.default_rng(0)

    def make(n_train: int, n_test: int, k: int) -> TaskData:
        return TaskData(
            rng.random((n_train, 1, 4, 4), dtype=np.float32), rng.integers(0, k, n_train).astype(np.int64),
            rng.random((n_test, 1, 4, 4), dtype=np.float32), rng.integers(0, k, n_test).astype(np.int64),
        )

    return {"alpha": make(20, 5, 3), "beta": make(12, 4, 2)}


@pytest.fixture
def client_dir(tmp_path: Path) -> Path:
    return write_client_dir(tmp_path / "c0", _tasks(), "toy", "client_0", SPECS)


def _save(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_round_trip(client_dir: Path) -> None:
    manifest, tasks = read_client_dir(client_dir)
    assert manifest["format"] == FORMAT and manifest["suite"] == "toy" and manifest["name"] == "client_0"
    assert manifest["tasks"]["alpha"] == {"num_classes": 3, "train": 20, "test": 5}
    original = _tasks()
    for task in original:
        for attr in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(tasks[task], attr), getattr(original[task], attr))
        assert tasks[task].x_train.dtype == np.float32 and tasks[task].y_train.dtype == np.int64


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ClientDataError, match="does not exist"):
        read_client_dir(tmp_path / "nope")


def test_missing_manifest(client_dir: Path) -> None:
    (client_dir / "manifest.json").unlink()
    with pytest.raises(ClientDataError, match=r"manifest\.json is missing"):
        read_client_dir(client_dir)


def test_malformed_json(client_dir: Path) -> None:
    (client_dir / "manifest.json").write_text('{"format": ')
    with pytest.raises(ClientDataError, match=r"manifest\.json is not valid JSON"):
        read_client_dir(client_dir)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.update(format="other/9"), "format"),
        (lambda m: m.pop("suite"), "'suite'"),
        (lambda m: m.update(tasks={}), "'tasks'"),
        (lambda m: m["tasks"]["alpha"].update(num_classes="3"), "'num_classes'"),
        (lambda m: m["tasks"]["alpha"].pop("train"), "'train'"),
    ],
)
def test_bad_manifest_fields(client_dir: Path, edit, message: str) -> None:
    _edit_manifest(client_dir, edit)
    with pytest.raises(ClientDataError, match=message) as info:
        read_client_dir(client_dir)
    assert "manifest.json" in str(info.value)


def test_task_folder_missing(client_dir: Path) -> None:
    _edit_manifest(client_dir, lambda m: m["tasks"].update(gamma={"num_classes": 2, "train": 1, "test": 1}))
    with pytest.raises(ClientDataError, match="'gamma'.*folder .*gamma is missing"):
        read_client_dir(client_dir)


def test_split_file_missing(client_dir: Path) -> None:
    (client_dir / "beta" / "test.npz").unlink()
    with pytest.raises(ClientDataError, match=r"beta/test\.npz \(task 'beta'\) is missing"):
        read_client_dir(client_dir)


def test_corrupt_npz(client_dir: Path) -> None:
    (client_dir / "alpha" / "train.npz").write_bytes(b"not a zip")
    with pytest.raises(ClientDataError, match=r"alpha/train\.npz \(task 'alpha'\) is not a readable"):
        read_client_dir(client_dir)


def test_missing_array(client_dir: Path) -> None:
    _save(client_dir / "alpha" / "train.npz", x=np.zeros((20, 1, 4, 4), np.float32))
    with pytest.raises(ClientDataError, match=r"alpha/train\.npz .*lacks array\(s\) \['y'\]"):
        read_client_dir(client_dir)


def test_label_out_of_range(client_dir: Path) -> None:
    y = np.zeros(5, np.int64)
    y[2] = 3  # alpha has 3 classes: 0..2
    _save(client_dir / "alpha" / "test.npz", x=np.zeros((5, 1, 4, 4), np.float32), y=y)
    with pytest.raises(ClientDataError, match=r"alpha/test\.npz \(task 'alpha'\): labels must be in \[0, 2\].*max 3"):
        read_client_dir(client_dir)


def test_negative_label(client_dir: Path) -> None:
    _save(client_dir / "beta" / "test.npz", x=np.zeros((4, 1, 4, 4), np.float32), y=np.array([0, -1, 1, 0]))
    with pytest.raises(ClientDataError, match=r"beta/test\.npz.*min -1"):
        read_client_dir(client_dir)


def test_length_mismatch(client_dir: Path) -> None:
    _save(client_dir / "beta" / "train.npz", x=np.zeros((12, 1, 4, 4), np.float32), y=np.zeros(11, np.int64))
    with pytest.raises(ClientDataError, match=r"beta/train\.npz.*x has 12 examples but y has 11"):
        read_client_dir(client_dir)


def test_count_mismatch_with_manifest(client_dir: Path) -> None:
    _edit_manifest(client_dir, lambda m: m["tasks"]["beta"].update(train=13))
    with pytest.raises(ClientDataError, match=r"beta/train\.npz \(task 'beta'\) holds 12 examples but .*train=13"):
        read_client_dir(client_dir)


def test_nan_in_x(client_dir: Path) -> None:
    x = np.zeros((20, 1, 4, 4), np.float32)
    x[3, 0, 1, 1] = np.nan
    _save(client_dir / "alpha" / "train.npz", x=x, y=np.zeros(20, np.int64))
    with pytest.raises(ClientDataError, match=r"alpha/train\.npz.*1 NaN/inf"):
        read_client_dir(client_dir)


def test_integer_x_rejected(client_dir: Path) -> None:
    _save(client_dir / "alpha" / "train.npz", x=np.zeros((20, 1, 4, 4), np.uint8), y=np.zeros(20, np.int64))
    with pytest.raises(ClientDataError, match=r"alpha/train\.npz.*dtype uint8"):
        read_client_dir(client_dir)


def test_writer_refuses_bad_labels(tmp_path: Path) -> None:
    tasks = _tasks()
    tasks["beta"].y_train[0] = 5
    with pytest.raises(ClientDataError, match="task 'beta' train split: labels"):
        write_client_dir(tmp_path / "c", tasks, "toy", "c", SPECS)


def test_suite_check(client_dir: Path) -> None:
    from tasks.suite import Suite

    suite = Suite("toy", [TaskSpec("alpha", 4), TaskSpec("beta", 2)], make_body=lambda: None, feature_dim=1,
                  load_partition=lambda *a: {})
    with pytest.raises(ClientDataError, match="'alpha' has num_classes=3 but suite 'toy' says 4"):
        read_client_dir(client_dir, suite=suite)


def test_prepare_client_dirs(tmp_path: Path) -> None:
    from tasks.images import make_tiny_suite

    suite = make_tiny_suite()
    paths = prepare_client_dirs(suite, 3, tmp_path, seed=0)
    assert [p.name for p in paths] == ["client_0", "client_1", "client_2"]
    held = set()
    for k, path in enumerate(paths):
        manifest, tasks = read_client_dir(path, suite=suite)
        assert manifest["name"] == f"client_{k}" and manifest["suite"] == "tiny"
        expected = suite.load_partition(k, 3, 0, "")
        assert tasks.keys() == expected.keys()
        for task in tasks:
            np.testing.assert_array_equal(tasks[task].x_test, expected[task].x_test)
        held |= tasks.keys()
    assert held == set(suite.task_names)
