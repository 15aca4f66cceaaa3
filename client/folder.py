"""The on-disk format of one client's private data folder (`fedmtl client --data DIR`).

    DIR/manifest.json        {"format": "fedmtl-client-data/1", "suite": <suite name>,
                              "name": <client name>,
                              "tasks": {<task>: {"num_classes": int, "train": n, "test": n}}}
    DIR/<task>/train.npz     arrays x (float32, N x ...; or int64 token ids, N x L) and y (int64, N)
    DIR/<task>/test.npz      same

A deployed client's data is prepared by hand or by other tools, so reading VALIDATES everything
and every error names the file (and task) at fault and what is wrong with it: a mistake found
here is cheap, one found mid-federation is not. Extra manifest keys are allowed (forward compat).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.suite import Suite, TaskData, TaskSpec

FORMAT = "fedmtl-client-data/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
# Integer inputs are token ids (text suites). Only wide signed ints qualify: uint8 inputs are far
# more likely raw pixels someone forgot to scale, and are refused as before.
TOKEN_ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


class ClientDataError(ValueError):
    """A client data folder that is missing, malformed or inconsistent."""


# ----------------------------------------------------------------------------- writing


def _specs_by_name(task_specs: Mapping[str, TaskSpec] | Iterable[TaskSpec]) -> dict[str, TaskSpec]:
    if isinstance(task_specs, Mapping):
        return dict(task_specs)
    return {spec.name: spec for spec in task_specs}


def write_client_dir(
    directory: str | Path,
    tasks: Mapping[str, TaskData],
    suite_name: str,
    client_name: str,
    task_specs: Mapping[str, TaskSpec] | Iterable[TaskSpec],
) -> Path:
    """Write `tasks` as a client data folder and return its path.

    `task_specs` (a name->spec mapping, or any iterable of TaskSpec such as `suite.tasks`) gives
    each task's number of classes. The data are checked with the same rules the reader applies,
    so a folder this writes always reads back.
    """
    directory = Path(directory)
    specs = _specs_by_name(task_specs)
    manifest: dict[str, Any] = {"format": FORMAT, "suite": suite_name, "name": client_name, "tasks": {}}
    if not tasks:
        raise ClientDataError(f"{directory}: refusing to write a client folder with no tasks")
    for task, data in tasks.items():
        if not task.isidentifier():
            raise ClientDataError(f"task name {task!r} is not an identifier (letters, digits, _)")
        if data.num_train < 1:
            raise ClientDataError(f"task {task!r} has no training examples")
        if task not in specs:
            raise ClientDataError(f"task {task!r} has no TaskSpec; specs given for {sorted(specs)}")
        num_classes = specs[task].num_classes
        for split in SPLITS:
            x, y = _split_arrays(data, split)
            _check_arrays(x, y, num_classes, where=f"task {task!r} {split} split")
        manifest["tasks"][task] = {"num_classes": num_classes, "train": data.num_train, "test": data.num_test}

    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # until rewritten, the folder reads as incomplete
    for task, data in tasks.items():
        (directory / task).mkdir(exist_ok=True)
        for split in SPLITS:
            x, y = _split_arrays(data, split)
            np.savez_compressed(directory / task / f"{split}.npz", x=_stored_inputs(x), y=y.astype(np.int64))
    # The manifest goes last: a folder interrupted mid-write has none and is rejected on read.
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def _stored_inputs(x: np.ndarray) -> np.ndarray:
    """Floats (pixels, vectors) as float32; integers (token ids of text suites) as int64."""
    x = np.asarray(x)
    return x.astype(np.int64) if x.dtype in TOKEN_ID_DTYPES else x.astype(np.float32)


def _split_arrays(data: TaskData, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)


def prepare_client_dirs(
    suite: Suite, num_clients: int, out_dir: str | Path, seed: int = 0, data_root: str = "",
    on_written: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write `out_dir/client_0 .. client_{N-1}` from the suite's partition into `num_clients` clients
    (`on_written(path)` after each, for progress)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    out_dir = Path(out_dir)
    paths = []
    for k in range(num_clients):
        name = f"client_{k}"
        tasks = suite.partition(k, num_clients, seed, data_root)
        paths.append(write_client_dir(out_dir / name, tasks, suite.name, name, suite.tasks))
        if on_written is not None:
            on_written(paths[-1])
    return paths


# ----------------------------------------------------------------------------- reading


def folder_fingerprint(directory: str | Path) -> str:
    """A cheap identity of the folder's current content: the manifest's bytes, and the size,
    modification and change times and inode of every split file it lists (stat only, no read).

    Any rewrite of a file changes its ctime, so a fingerprint that matches one taken when the
    folder was validated means the same files, still valid. "" if the folder cannot be read.
    """
    directory = Path(directory).resolve()
    digest = hashlib.sha256(str(directory).encode())
    try:
        raw = (directory / MANIFEST).read_bytes()
        digest.update(raw)
        tasks = json.loads(raw).get("tasks", {})
        for task in sorted(tasks) if isinstance(tasks, dict) else []:
            for split in SPLITS:
                st = os.stat(directory / task / f"{split}.npz")
                digest.update(f"{task}/{split}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}".encode())
    except (OSError, ValueError, AttributeError):
        return ""
    return digest.hexdigest()


def read_client_dir(directory: str | Path, suite: Suite | None = None,
                    validated: str = "") -> tuple[dict[str, Any], dict[str, TaskData]]:
    """Read and validate a client data folder: (manifest, {task: TaskData}).

    With `suite`, also checks that every task exists in it with the same number of classes.
    Raises ClientDataError naming the file and the problem. `validated` is the
    `folder_fingerprint` the folder had when it was last fully validated: if it still matches
    (before and after reading), the per-value checks of the arrays (NaN/inf, label range) are
    skipped; structure, shapes, counts and the suite are always checked.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ClientDataError(f"client data folder {directory} does not exist or is not a directory")
    trusted = bool(validated) and folder_fingerprint(directory) == validated
    manifest = _read_manifest(directory / MANIFEST)
    if suite is not None:
        check_against_suite(manifest, suite, directory / MANIFEST)

    tasks: dict[str, TaskData] = {}
    for task, info in manifest["tasks"].items():
        task_dir = directory / task
        if not task_dir.is_dir():
            raise ClientDataError(f"{directory / MANIFEST} lists task {task!r} but folder {task_dir} is missing")
        arrays = {}
        for split in SPLITS:
            path = task_dir / f"{split}.npz"
            x, y = _read_npz(path, task)
            _check_arrays(x, y, info["num_classes"], where=f"{path} (task {task!r})", values=not trusted)
            if len(y) != info[split]:
                raise ClientDataError(
                    f"{path} (task {task!r}) holds {len(y)} examples but {directory / MANIFEST} says {split}={info[split]}"
                )
            arrays[split] = (_stored_inputs(x), y.astype(np.int64, copy=False))
        if info["train"] < 1:
            raise ClientDataError(f"{task_dir / 'train.npz'} (task {task!r}) has no training examples")
        tasks[task] = TaskData(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1])
    if trusted and folder_fingerprint(directory) != validated:  # changed while we read it: check everything
        return read_client_dir(directory, suite)
    return manifest, tasks


def _read_manifest(path: Path) -> dict[str, Any]:
    """Load manifest.json and check its structure (format tag, names, per-task counts)."""
    if not path.is_file():
        raise ClientDataError(f"{path} is missing: a client data folder needs a manifest (see client/folder.py)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientDataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ClientDataError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ClientDataError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("suite", "name"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise ClientDataError(f"{path}: {key!r} must be a non-empty string, got {manifest.get(key)!r}")
    tasks = manifest.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ClientDataError(f"{path}: 'tasks' must be a non-empty object of task name -> info, got {tasks!r}")
    for task, info in tasks.items():
        if not task.isidentifier():
            raise ClientDataError(f"{path}: task name {task!r} is not an identifier (letters, digits, _)")
        if not isinstance(info, dict):
            raise ClientDataError(f"{path}: task {task!r} must map to an object, got {info!r}")
        for key, minimum in (("num_classes", 2), ("train", 0), ("test", 0)):
            value = info.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ClientDataError(f"{path}: task {task!r} needs integer {key!r} >= {minimum}, got {value!r}")
    return manifest


def check_against_suite(manifest: dict[str, Any], suite: Suite, path: Path) -> None:
    """Every task of the manifest exists in `suite` with the same number of classes."""
    for task, info in manifest["tasks"].items():
        if task not in suite.task_names:
            raise ClientDataError(f"{path}: task {task!r} is not in suite {suite.name!r} (tasks: {suite.task_names})")
        expected = suite.task(task).num_classes
        if info["num_classes"] != expected:
            raise ClientDataError(
                f"{path}: task {task!r} has num_classes={info['num_classes']} but suite {suite.name!r} says {expected}"
            )


def _read_npz(path: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ClientDataError(f"{path} (task {task!r}) is missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ("x", "y") if name not in npz.files]
            if missing:
                raise ClientDataError(f"{path} (task {task!r}) lacks array(s) {missing}; it holds {npz.files}")
            return npz["x"], npz["y"]
    except ClientDataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ClientDataError(f"{path} (task {task!r}) is not a readable .npz file: {exc}") from exc


def _check_arrays(x: np.ndarray, y: np.ndarray, num_classes: int, where: str, values: bool = True) -> None:
    """The rules every split obeys: float inputs with no NaN/inf (or non-negative integer token ids),
    1-D integer labels in range, equal lengths. `values=False` skips the checks that read every
    value (label range, NaN/inf, negative token ids): for a folder already validated."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype not in TOKEN_ID_DTYPES and not np.issubdtype(x.dtype, np.floating):
        raise ClientDataError(f"{where}: x has dtype {x.dtype}, expected float32 (scale raw pixels to floats first) "
                              "or int32/int64 token ids")
    if x.ndim < 2:
        raise ClientDataError(f"{where}: x must have a leading example axis and at least one feature axis, got shape {x.shape}")
    if y.ndim != 1:
        raise ClientDataError(f"{where}: y must be 1-D (one label per example), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ClientDataError(f"{where}: y has dtype {y.dtype}, expected int64 class indices")
    if len(x) != len(y):
        raise ClientDataError(f"{where}: x has {len(x)} examples but y has {len(y)} labels")
    if not values:
        return
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ClientDataError(
            f"{where}: labels must be in [0, {num_classes - 1}] (num_classes={num_classes}), found min {y.min()} max {y.max()}"
        )
    if x.dtype in TOKEN_ID_DTYPES and x.size and x.min() < 0:
        raise ClientDataError(f"{where}: x holds integer inputs (token ids) but some are negative (min {x.min()})")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ClientDataError(f"{where}: x contains {int((~np.isfinite(x)).sum())} NaN/inf values")
