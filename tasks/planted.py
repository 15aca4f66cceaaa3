"""A synthetic suite with PLANTED task groups, to check that affinity-based grouping recovers them.

Inputs are Gaussian vectors split into one disjoint subspace per group (plus optional pure-noise
dimensions). All tasks of group k read only subspace k and share a hidden teacher W_k: task t's
labels are argmax(x_k @ (W_k + variation * V_t)), with a small per-task perturbation V_t and a
fraction of labels replaced at random. Tasks of one group therefore want the same features;
tasks of different groups want features of unrelated inputs and compete for the narrow shared
body (an `MLPBody` with few units).

Optionally (`conflict=True`) one extra task has labels ANTI-correlated with group 0's teacher
(argmin instead of argmax on group 0's inputs). Measured (centralized, 8 of 8 seeds, both
signals): this is no conflict for a shared body — it needs the very same features, only its
head flips their sign — so affinity puts it with group 0, and it is planted INSIDE group 0.
(A task with its own random teacher on group 0's inputs was tried too: early affinity follows
the input subspace more than the teacher, so it lands with group 0 or splits it; its "truth" is
ill-defined, hence not offered.)

Task names are "t0", "t1", ... in a seeded shuffled order, so planted groups are not contiguous
index blocks and names leak nothing; `Suite.planted_groups` holds the truth.

Partitions: with one partition the client holds every task. Otherwise client p holds
`tasks_per_client` tasks: task p mod T (so every task is held when there are at least T
clients) plus others drawn at random, so many clients hold tasks of different groups and
cross-group affinities get measured too. Each client draws its own samples, deterministically
from (teacher_seed, seed, partition_id, task).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np

from tasks.models import MLPBody
from tasks.suite import Suite, TaskData, TaskSpec

CONFLICT = -1  # group id of the conflicting task in `PlantedSpec.task_group`


@dataclass(frozen=True)
class PlantedSpec:
    """Everything that defines the planted problem (teachers are derived from `teacher_seed`)."""

    group_sizes: tuple[int, ...]
    subspace_dim: int
    noise_dims: int
    num_classes: int
    variation: float
    label_noise: float
    conflict: bool
    teacher_seed: int
    train_per_task: int
    test_per_task: int
    tasks_per_client: int

    @property
    def input_dim(self) -> int:
        return len(self.group_sizes) * self.subspace_dim + self.noise_dims

    @property
    def num_tasks(self) -> int:
        return sum(self.group_sizes) + int(self.conflict)

    def task_group(self) -> list[int]:
        """Group of each task slot before shuffling (CONFLICT for the conflicting task)."""
        slots = [k for k, size in enumerate(self.group_sizes) for _ in range(size)]
        return slots + ([CONFLICT] if self.conflict else [])

    def name_order(self) -> np.ndarray:
        """Slot -> task index in the public (shuffled) order."""
        return np.random.default_rng([self.teacher_seed, 7]).permutation(self.num_tasks)

    def teachers(self) -> list[np.ndarray]:
        """Per slot: a [subspace_dim, num_classes] linear teacher (shared base + task perturbation)."""
        rng = np.random.default_rng([self.teacher_seed, 11])
        base = [rng.standard_normal((self.subspace_dim, self.num_classes)) for _ in self.group_sizes]
        out = []
        for k in self.task_group():
            w = -base[0] if k == CONFLICT else base[k]
            out.append(w + self.variation * rng.standard_normal(w.shape))
        return out

    def subspace(self, slot: int) -> slice:
        k = self.task_group()[slot]
        k = 0 if k == CONFLICT else k
        return slice(k * self.subspace_dim, (k + 1) * self.subspace_dim)


def _task_names(spec: PlantedSpec) -> list[str]:
    return [f"t{i}" for i in range(spec.num_tasks)]


def _slot_of(spec: PlantedSpec) -> dict[str, int]:
    """Public task name -> slot."""
    order = spec.name_order()
    return {f"t{int(order[slot])}": slot for slot in range(spec.num_tasks)}


def planted_groups(spec: PlantedSpec) -> list[list[str]]:
    """The planted partition as task names, canonical (members sorted by index, groups by first member).

    The anti-correlated (`conflict`) task needs exactly group 0's features (only its head
    differs), so it is planted IN group 0 — see the module docstring.
    """
    slot_of = _slot_of(spec)
    by_group: dict[int, list[str]] = {}
    groups_of_slot = [0 if k == CONFLICT else k for k in spec.task_group()]
    for name, slot in slot_of.items():
        by_group.setdefault(groups_of_slot[slot], []).append(name)
    groups = [sorted(g, key=lambda n: int(n[1:])) for g in by_group.values()]
    return sorted(groups, key=lambda g: int(g[0][1:]))


def _sample(spec: PlantedSpec, slot: int, teacher: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, spec.input_dim)).astype(np.float32)
    logits = x[:, spec.subspace(slot)].astype(np.float64) @ teacher
    y = logits.argmax(axis=1)
    flip = rng.random(n) < spec.label_noise
    y[flip] = rng.integers(0, spec.num_classes, size=int(flip.sum()))
    return x, y.astype(np.int64)


def client_tasks(spec: PlantedSpec, partition_id: int, num_partitions: int, seed: int) -> list[str]:
    """Which tasks client `partition_id` holds (see module docstring)."""
    names = _task_names(spec)
    if num_partitions <= 1:
        return names
    k = max(1, min(spec.tasks_per_client, len(names)))
    primary = partition_id % len(names)
    rng = np.random.default_rng([spec.teacher_seed, seed, partition_id, 3])
    others = [i for i in rng.permutation(len(names)) if i != primary][: k - 1]
    return [names[i] for i in sorted([primary, *others])]


def load_planted_partition(spec: PlantedSpec, partition_id: int, num_partitions: int, seed: int, data_root: str = "") -> dict[str, TaskData]:
    """One client's private train/test data for the tasks it holds (`data_root` is unused)."""
    if not 0 <= partition_id < max(1, num_partitions):
        raise ValueError(f"partition_id {partition_id} out of range for {num_partitions} partitions")
    teachers = spec.teachers()
    slot_of = _slot_of(spec)
    out: dict[str, TaskData] = {}
    for name in client_tasks(spec, partition_id, num_partitions, seed):
        slot = slot_of[name]
        rng = np.random.default_rng([spec.teacher_seed, seed, partition_id, slot, 5])
        x_tr, y_tr = _sample(spec, slot, teachers[slot], spec.train_per_task, rng)
        x_te, y_te = _sample(spec, slot, teachers[slot], spec.test_per_task, rng)
        out[name] = TaskData(x_tr, y_tr, x_te, y_te)
    return out


def make_planted_suite(
    num_groups: int = 3,
    tasks_per_group: int | Sequence[int] = 3,
    subspace_dim: int = 8,
    noise_dims: int = 0,
    num_classes: int = 4,
    variation: float = 0.3,
    label_noise: float = 0.05,
    conflict: bool = False,
    teacher_seed: int = 0,
    train_per_task: int = 256,
    test_per_task: int = 128,
    tasks_per_client: int = 5,
    hidden: int = 16,
    feature_dim: int = 8,
) -> Suite:
    """Build the planted suite; every argument has a default so `make_planted_suite()` works.

    `tasks_per_group` is one size for all groups or one size per group. `hidden`/`feature_dim`
    size the shared MLP body: keep them small so the groups compete for capacity.
    """
    sizes = (tasks_per_group,) * num_groups if isinstance(tasks_per_group, int) else tuple(int(s) for s in tasks_per_group)
    if len(sizes) != num_groups or num_groups < 1 or min(sizes) < 1:
        raise ValueError(f"need {num_groups} positive group sizes, got {sizes}")
    if not 0.0 <= label_noise < 1.0 or num_classes < 2 or subspace_dim < 1:
        raise ValueError("label_noise must be in [0, 1), num_classes >= 2, subspace_dim >= 1")
    spec = PlantedSpec(sizes, subspace_dim, noise_dims, num_classes, variation, label_noise, conflict,
                       teacher_seed, train_per_task, test_per_task, tasks_per_client)
    return Suite(
        name="planted",
        tasks=[TaskSpec(n, num_classes, domain="planted") for n in _task_names(spec)],
        make_body=partial(MLPBody, spec.input_dim, hidden, feature_dim),
        feature_dim=feature_dim,
        load_partition=partial(load_planted_partition, spec),
        description=(
            f"planted groups {sizes}{' + 1 anti-correlated task in group 0' if conflict else ''}, "
            f"{spec.input_dim}-d Gaussian inputs, {num_classes} classes, MLP body {hidden}->{feature_dim}"
        ),
        planted_groups=planted_groups(spec),
    )
