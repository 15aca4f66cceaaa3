"""Use what a federation produced: load a run's saved models and predict with them.

    import fedmtl
    run = fedmtl.load_run("runs/simulate")            # the best round's models ("latest" also)
    run.tasks                                          # ['mnist_class', ...]
    model = run["mnist_class"]                         # knows its group, suite and round
    model.predict(images)                              # class ids; predict_proba, logits too
    run.evaluate_folders(["clients/client_0"])         # re-evaluate on client data folders

A run folder keeps one safetensors file per task group (body + the group's heads). Loading
rebuilds each group's model from the run's suite and checks that the files fit it, so a folder
from another suite, or from a changed suite definition, fails with a message saying which.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from client.training import as_inputs, evaluate_multitask, resolve_device
from fedmtl.runs import RunFormatError, Snapshot, read_model_index
from tasks.models import MultiTaskModel
from tasks.suite import Suite, TaskData

BATCH = 256  # as the clients' evaluation (client.training.evaluate_multitask)


@dataclass
class TaskModel:
    """One task's model: its group's shared body and the task's head, as saved by the run."""

    task: str
    group: str  # the group id, as in models/index.json
    group_tasks: list[str]
    suite: Suite
    round: int
    which: str  # "best" or "latest"
    module: MultiTaskModel  # shared by the tasks of one group
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def suite_name(self) -> str:
        return self.suite.name

    @property
    def num_classes(self) -> int:
        return self.suite.task(self.task).num_classes

    def _batch(self, inputs: Any) -> np.ndarray | torch.Tensor:
        if isinstance(inputs, torch.Tensor):
            return inputs
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
            return self.suite.text_inputs(inputs)
        return self.suite.model_inputs(np.asarray(inputs))

    @torch.no_grad()
    def logits(self, inputs: Any) -> np.ndarray:
        """Logits (N, num_classes) for a batch: an array, a tensor, or text lines (text suites)."""
        x = self._batch(inputs)
        self.module.eval()
        out = [self.module(as_inputs(x[i:i + BATCH], self.device), self.task).cpu() for i in range(0, len(x), BATCH)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.num_classes), np.float32)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits(inputs)), dim=1).numpy()

    def predict(self, inputs: Any) -> np.ndarray:
        """Predicted class ids (N,)."""
        return self.logits(inputs).argmax(1)

    def evaluate(self, x: Any, y: Sequence[int]) -> dict[str, float]:
        """Accuracy, mean cross-entropy and example count on labelled inputs."""
        logits = torch.from_numpy(self.logits(x))
        labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
        n = len(labels)
        return {
            "accuracy": float((logits.argmax(1) == labels).sum()) / n if n else float("nan"),
            "loss": float(F.cross_entropy(logits, labels, reduction="sum")) / n if n else float("nan"),
            "examples": float(n),
        }

    def __repr__(self) -> str:
        return (f"TaskModel(task={self.task!r}, group={self.group!r}, suite={self.suite.name!r}, "
                f"round={self.round}, which={self.which!r})")


@dataclass
class LoadedRun:
    """The saved models of one run folder, one `TaskModel` per task."""

    run_dir: Path
    which: str
    round: int
    suite: Suite
    suite_name: str  # as the run recorded it (a built-in name, or module:function)
    mean_accuracy: float | None
    models: dict[str, TaskModel]
    groups: dict[str, list[str]]
    config: dict[str, Any]
    format: int

    @property
    def tasks(self) -> list[str]:
        return list(self.models)

    def __getitem__(self, task: str) -> TaskModel:
        if task not in self.models:
            raise KeyError(f"run {self.run_dir} has no model for task {task!r}; tasks: {self.tasks}")
        return self.models[task]

    def __iter__(self) -> Iterator[TaskModel]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def predict(self, task: str, inputs: Any) -> np.ndarray:
        return self[task].predict(inputs)

    def evaluate(self, data: dict[str, TaskData], tasks: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """Per-task metrics on the test splits of `data` ({task: TaskData}), computed exactly as the
        coordinator's evaluation does (client.training.evaluate_multitask, per group)."""
        wanted = [t for t in (tasks or data) if t in data]
        missing = [t for t in wanted if t not in self.models]
        if missing:
            raise KeyError(f"run {self.run_dir} has no model for tasks {missing}; tasks: {self.tasks}")
        results: dict[str, dict[str, float]] = {}
        by_group: dict[str, list[str]] = defaultdict(list)
        for t in wanted:
            by_group[self.models[t].group].append(t)
        for group_tasks in by_group.values():
            module = self.models[group_tasks[0]].module
            results.update(evaluate_multitask(module, data, group_tasks, batch_size=BATCH, device=str(self.models[group_tasks[0]].device)))
        return results

    def evaluate_folders(self, folders: Iterable[str | Path], split: str = "test",
                         on_folder: Callable[[Path], None] | None = None) -> dict[str, dict[str, float]]:
        """Pooled per-task metrics over client data folders (client/folder.py format), as the
        coordinator pools its clients' replies: accuracy and loss weighted by examples.
        `split` is "test" (what the coordinator evaluates) or "train"."""
        from client.folder import read_client_dir

        if split not in ("test", "train"):
            raise ValueError(f"split = {split!r}: expected 'test' or 'train'")
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"correct": 0.0, "loss": 0.0, "examples": 0.0})
        for folder in folders:
            manifest, data = read_client_dir(folder, suite=self.suite)
            if manifest["suite"] not in (self.suite.name, self.suite_name):
                raise RunFormatError(f"data folder {folder} is for suite {manifest['suite']!r} but run {self.run_dir} "
                                     f"was trained on suite {self.suite_name!r}")
            if split == "train":
                data = {t: TaskData(d.x_train, d.y_train, d.x_train, d.y_train) for t, d in data.items()}
            for t, m in self.evaluate(data).items():
                if m["examples"]:
                    totals[t]["correct"] += m["accuracy"] * m["examples"]
                    totals[t]["loss"] += m["loss"] * m["examples"]
                totals[t]["examples"] += m["examples"]
            if on_folder is not None:
                on_folder(Path(folder))
        return {t: {"accuracy": totals[t]["correct"] / totals[t]["examples"] if totals[t]["examples"] else math.nan,
                    "loss": totals[t]["loss"] / totals[t]["examples"] if totals[t]["examples"] else math.nan,
                    "examples": totals[t]["examples"]} for t in self.tasks if t in totals}

    def __repr__(self) -> str:
        return (f"LoadedRun({str(self.run_dir)!r}, which={self.which!r}, round={self.round}, "
                f"suite={self.suite_name!r}, groups={self.groups})")


def load_run(run_dir: str | Path, which: str = "best", *, suite: str | Suite | None = None,
             device: str = "cpu") -> LoadedRun:
    """Load the `best` (default) or `latest` models of a run folder.

    `suite` overrides the suite recorded by the run (e.g. a `file.py:function` suite whose file
    moved); it must define the same tasks and model. A run written before best-round models
    existed (format 1) has only `latest`: asking it for `best` warns and gives `latest`.
    Raises RunFormatError for a folder that is not a run, is from an unknown format, or whose
    files do not fit the suite.
    """
    run_dir = Path(run_dir)
    index = read_model_index(run_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"which = {which!r}: expected 'best' or 'latest'")
    if which == "best" and "best" not in index.snapshots:
        warnings.warn(f"{run_dir / 'models' / 'index.json'} has no 'best' models (format {index.format}); "
                      f"using the latest (round {index.snapshots['latest'].round})", stacklevel=2)
        which = "latest"
    snapshot = index.snapshot(which)
    the_suite = _resolve_suite(index.suite, suite, run_dir)
    dev = resolve_device(device)
    models: dict[str, TaskModel] = {}
    for g in snapshot.groups:
        module = _load_group(g.path, g.tasks, the_suite, index.suite, snapshot)
        module.to(dev).eval()
        for t in g.tasks:
            models[t] = TaskModel(t, g.gid, list(g.tasks), the_suite, snapshot.round, which, module, dev)
    order = [t for t in the_suite.task_names if t in models]
    return LoadedRun(
        run_dir=run_dir, which=which, round=snapshot.round, suite=the_suite, suite_name=index.suite,
        mean_accuracy=snapshot.mean_accuracy, models={t: models[t] for t in order},
        groups={g.gid: list(g.tasks) for g in snapshot.groups}, config=index.config, format=index.format,
    )


def _resolve_suite(recorded: str, override: str | Suite | None, run_dir: Path) -> Suite:
    from tasks.registry import load_suite

    if isinstance(override, Suite):
        return override
    name = override or recorded
    try:
        return load_suite(name)
    except (ValueError, FileNotFoundError) as exc:
        raise RunFormatError(f"run {run_dir} was trained on suite {recorded!r}, which cannot be loaded here: {exc}"
                             + ("" if override else "; pass the suite explicitly (suite= / --suite)")) from exc


def _load_group(path: Path, tasks: list[str], suite: Suite, recorded: str, snapshot: Snapshot) -> MultiTaskModel:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    unknown = [t for t in tasks if t not in suite.task_names]
    if unknown:
        raise RunFormatError(f"{path}: tasks {unknown} are not in suite {suite.name!r} (tasks {suite.task_names}); "
                             f"the run was made with another suite or another version of it")
    if not path.is_file():
        raise RunFormatError(f"{path} is missing (models/index.json lists it for {snapshot.name!r} round {snapshot.round})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RunFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("suite") and meta["suite"] != recorded:
        raise RunFormatError(f"{path} was saved by suite {meta['suite']!r} but models/index.json says {recorded!r}")
    if meta.get("round") and str(meta["round"]) != str(snapshot.round):
        raise RunFormatError(f"{path} holds round {meta['round']} but models/index.json says {snapshot.name} is "
                             f"round {snapshot.round} (the run is writing it right now? try again)")
    model = suite.build_model(tasks)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise RunFormatError(f"{path} does not fit suite {suite.name!r}'s model as defined here "
                             f"({'; '.join(first[:3])[:400]}): the run was made with another version of the suite") from exc
    return model
