"""The contract every task suite fulfils.

A suite says which tasks exist, what the shared body and the per-task heads look like, and
how one client's private data for its tasks is produced. Both the coordinator (to build the
initial model and to validate replies) and the clients (to train) load the same suite, so
everything here is plain torch/numpy and imports no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tasks.models import MultiTaskModel


@dataclass(frozen=True)
class TaskSpec:
    """One classification task: a name (a valid Python identifier), its classes and its input domain."""

    name: str
    num_classes: int
    domain: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"task name {self.name!r} must be a Python identifier (letters, digits, _)")
        if self.num_classes < 2:
            raise ValueError(f"task {self.name!r}: num_classes must be >= 2, got {self.num_classes}")


@dataclass
class TaskData:
    """One client's private data for one task: its own train and test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise ValueError(f"{split} split has {len(x)} inputs but {len(y)} labels")

    @property
    def num_train(self) -> int:
        return int(len(self.y_train))  # a plain int even if y is a numpy array: it goes into Flower records

    @property
    def num_test(self) -> int:
        return int(len(self.y_test))


# partition(partition_id, num_partitions, seed, data_root) -> {task name: TaskData}
PartitionLoader = Callable[[int, int, int, str], dict[str, TaskData]]


class PartitionError(ValueError):
    """A suite's partition loader returned something other than {task name (str): TaskData}."""


def _loader_name(loader: Callable) -> str:
    """`module.function` of a loader (through functools.partial), for error messages."""
    func = getattr(loader, "func", loader)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def checked_partition(result: object, suite_name: str, loader: Callable) -> dict[str, TaskData]:
    """Normalise what a partition loader returned, or refuse it naming the loader.

    Task names come back as plain `str` (numpy strings, e.g. from `np.unique` or a DataFrame,
    are converted: Flower's records accept only exact Python types in one list, so a mix of
    `str` and `numpy.str_` would fail inside the client's query reply); anything else that is not
    a string is refused, as is a value that is not a TaskData.
    """
    where = f"suite {suite_name!r}: load_partition ({_loader_name(loader)})"
    if not isinstance(result, dict):
        raise PartitionError(f"{where} returned {type(result).__name__}, expected a dict of task name -> TaskData")
    out: dict[str, TaskData] = {}
    for name, data in result.items():
        if isinstance(name, str):
            name = str(name)  # numpy.str_ and other str subclasses -> exactly str
        if not isinstance(name, str):
            raise PartitionError(f"{where} returned task name {name!r} of type {type(name).__module__}.{type(name).__name__}; "
                                 "task names must be strings")
        if not isinstance(data, TaskData):
            raise PartitionError(f"{where} returned {type(data).__name__} for task {name!r}, expected tasks.TaskData")
        out[name] = data
    return out


@dataclass
class Suite:
    """A set of tasks sharing one body.

    `make_body()` returns an nn.Module mapping a batch of inputs to features of size
    `feature_dim`; `make_head(task)` maps those features to the task's logits (a linear
    layer unless the suite says otherwise). `load_partition` returns the tasks one client
    holds, each with its own train/test split; it must be deterministic in its arguments.

    Two optional hooks let people feed a trained model new inputs (`fedmtl.load_run`,
    `fedmtl predict`; see fedmtl/inputs.py): `prepare_inputs(x)` turns an array a user has
    (one example or a batch, raw pixels, ...) into the batch the body expects (default: a
    1-D array becomes a batch of one), and `encode_text(lines)` turns text lines into model
    inputs (token ids) for suites whose inputs are text; without it a suite takes no text.
    """

    name: str
    tasks: list[TaskSpec]
    make_body: Callable[[], nn.Module]
    feature_dim: int
    load_partition: PartitionLoader
    make_head: Callable[[TaskSpec, int], nn.Module] | None = None
    description: str = ""
    # Ground truth for suites with planted task groups (used to score recovered groupings).
    planted_groups: list[list[str]] | None = None
    defaults: dict[str, object] = field(default_factory=dict)
    prepare_inputs: Callable[[np.ndarray], np.ndarray] | None = None
    encode_text: Callable[[Sequence[str]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name!r} has duplicate task names: {names}")
        if not names:
            raise ValueError(f"suite {self.name!r} defines no tasks")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise KeyError(f"suite {self.name!r} has no task {name!r}; tasks are {self.task_names}")

    def head(self, name: str) -> nn.Module:
        spec = self.task(name)
        if self.make_head is not None:
            return self.make_head(spec, self.feature_dim)
        return nn.Linear(self.feature_dim, spec.num_classes)

    def model_inputs(self, x: np.ndarray) -> np.ndarray:
        """A user's array as a batch for the body (the `prepare_inputs` hook, or 1-D -> batch of one)."""
        x = np.asarray(x)
        if self.prepare_inputs is not None:
            return np.asarray(self.prepare_inputs(x))
        return x[None] if x.ndim == 1 else x

    def text_inputs(self, lines: Sequence[str]) -> np.ndarray:
        """Text lines as model inputs, through the suite's `encode_text` hook."""
        if self.encode_text is None:
            raise ValueError(f"suite {self.name!r} takes no text inputs (it defines no encode_text); "
                             "give it arrays (.npy / .npz) instead")
        return np.asarray(self.encode_text(list(lines)))

    def partition(self, partition_id: int, num_partitions: int, seed: int, data_root: str) -> dict[str, TaskData]:
        """`load_partition`, checked and normalised (see `checked_partition`)."""
        result = self.load_partition(int(partition_id), int(num_partitions), int(seed), str(data_root))
        return checked_partition(result, self.name, self.load_partition)

    def build_model(self, task_names: list[str] | None = None, seed: int = 0) -> MultiTaskModel:
        """A fresh model with the body and the heads of `task_names` (all tasks by default)."""
        torch.manual_seed(seed)
        names = self.task_names if task_names is None else list(task_names)
        return MultiTaskModel(self.make_body(), {n: self.head(n) for n in names})

