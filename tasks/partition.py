"""Generic, pure-numpy helpers to spread tasks and examples over federated clients.

Any suite whose tasks live in "domains" (tasks that read the same kind of input, e.g. all
tasks defined on MNIST images) can reuse these to build a non-IID partition:

* `assign_tasks` decides which tasks each client holds: a rotating window of domains per
  client, and inside each held domain a rotating window of that domain's tasks, widened
  where needed so that every task is held by at least one client.
* `split_indices` cuts a domain's examples into disjoint per-client slices.
* `train_test_split` cuts one client's slice into its own train and test parts.

Everything is deterministic in its arguments (seeds go through numpy's SeedSequence,
never Python's randomised `hash`), so every process computing a partition agrees.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np


def stable_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator determined by `seed` and `keys` alone (strings are hashed with CRC32).

    Used so that, e.g., the shuffle of one domain does not change when another domain is
    added to a suite, and so that every process (Ray worker, deployed client) agrees.
    """
    entropy = [int(seed) & 0xFFFFFFFF]
    for key in keys:
        entropy.append(zlib.crc32(key.encode("utf-8")) if isinstance(key, str) else int(key) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(entropy))


def check_partition_id(partition_id: int, num_partitions: int) -> None:
    """Raise a clear ValueError unless 0 <= partition_id < num_partitions and num_partitions >= 1."""
    if int(num_partitions) < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= int(partition_id) < int(num_partitions):
        raise ValueError(
            f"partition_id {partition_id} is out of range for num_partitions={num_partitions} "
            f"(valid ids: 0..{int(num_partitions) - 1})"
        )


def _rotating_windows(items: Sequence[str], num_holders: int, width: int) -> list[list[str]]:
    """Give holder i the items [i*w, i*w + w) modulo len(items), w widened so all items are covered.

    With stride equal to the window width, the holders' windows tile the item list round
    and round, so holders are spread evenly over items; `w >= ceil(len/holders)` guarantees
    every item falls in some window.
    """
    n = len(items)
    if n == 0 or num_holders == 0:
        return [[] for _ in range(num_holders)]
    w = min(n, max(1, width, math.ceil(n / num_holders)))
    return [[items[(i * w + j) % n] for j in range(w)] for i in range(num_holders)]


def assign_tasks(
    task_names: Sequence[str],
    domains: Sequence[str],
    num_partitions: int,
    seed: int,
    domains_per_client: int | None = None,
    tasks_per_domain: int | None = None,
) -> list[list[str]]:
    """Which tasks each of `num_partitions` clients holds; result[k] lists client k's tasks.

    `domains[i]` is the domain of `task_names[i]`. Each client holds `domains_per_client`
    domains (default: all but one, so clients differ but overlap) and, in each held
    domain, `tasks_per_domain` of its tasks (default: all). Domain and task orders are
    shuffled by `seed` before the rotating windows are laid out. Guarantees: every task is
    held by at least one client; a single client holds every task; each client's list
    follows the order of `task_names`.
    """
    if len(task_names) != len(domains):
        raise ValueError(f"got {len(task_names)} task names but {len(domains)} domains")
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"duplicate task names: {list(task_names)}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions == 1:
        return [list(task_names)]

    unique_domains = list(dict.fromkeys(domains))
    rng = stable_rng(seed, "assign_tasks")
    domain_order = [unique_domains[i] for i in rng.permutation(len(unique_domains))]
    width = domains_per_client if domains_per_client is not None else max(1, len(unique_domains) - 1)
    client_domains = _rotating_windows(domain_order, num_partitions, width)

    held: list[set[str]] = [set() for _ in range(num_partitions)]
    for domain in unique_domains:
        holders = [k for k in range(num_partitions) if domain in client_domains[k]]
        domain_tasks = [t for t, d in zip(task_names, domains) if d == domain]
        domain_tasks = [domain_tasks[i] for i in stable_rng(seed, "tasks", domain).permutation(len(domain_tasks))]
        per_holder = _rotating_windows(domain_tasks, len(holders), tasks_per_domain or len(domain_tasks))
        for k, tasks in zip(holders, per_holder):
            held[k].update(tasks)

    assignment = [[t for t in task_names if t in held[k]] for k in range(num_partitions)]
    missing = set(task_names) - set().union(*held)
    assert not missing, f"assign_tasks left tasks unheld: {sorted(missing)}"  # guaranteed by construction
    return assignment


def split_indices(n: int, num_parts: int, seed: int, key: str = "") -> list[np.ndarray]:
    """Shuffle range(n) (by `seed` and `key`) and cut it into `num_parts` disjoint, near-equal slices.

    Slices stay in shuffled order (not sorted): sources are often ordered by class, so any
    prefix of a slice (e.g. a size cap) is still a random sample.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if n < num_parts:
        raise ValueError(f"cannot split {n} examples into {num_parts} non-empty parts")
    order = stable_rng(seed, "split", key).permutation(n)
    return [part.copy() for part in np.array_split(order, num_parts)]


def train_test_split(
    indices: np.ndarray, test_fraction: float, seed: int, key: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (train, test), both in shuffled order; both are non-empty when len >= 2 and test_fraction > 0."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    indices = np.asarray(indices)
    n = len(indices)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    shuffled = indices[stable_rng(seed, "train_test", key).permutation(n)]
    return shuffled[n_test:].copy(), shuffled[:n_test].copy()


def holders_of(assignment: list[list[str]], tasks: Sequence[str]) -> list[int]:
    """The clients (in order) that hold at least one of `tasks` — e.g. the holders of one domain."""
    wanted = set(tasks)
    return [k for k, held in enumerate(assignment) if wanted & set(held)]
