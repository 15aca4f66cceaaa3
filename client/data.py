"""Where a client's private data comes from, cached for the life of the process.

Deployed clients read their own folder (`data-dir` in the SuperNode's node config, written
by `fedmtl prepare-data` or by the user). Simulated clients have only `partition-id` and
`num-partitions`, so they cut their share out of the suite named in the message config.
Either way the data never leaves the client; only its task names and counts are reported.
A deployed client loads only suites it trusts (`client/trust.py`), checked before any import.
"""

from __future__ import annotations

from functools import lru_cache

from client.folder import read_client_dir
from client.trust import check_suite_trusted
from tasks.registry import load_suite
from tasks.suite import Suite, TaskData


@lru_cache(maxsize=8)
def _partition(suite: str, partition_id: int, num_partitions: int, seed: int, data_root: str) -> dict[str, TaskData]:
    return load_suite(suite).partition(partition_id, num_partitions, seed, data_root)


@lru_cache(maxsize=8)
def _folder(data_dir: str, suite: str = "") -> tuple[dict, dict[str, TaskData]]:
    """Read and validate the folder; with a suite, also check its tasks and class counts against it."""
    return read_client_dir(data_dir, suite=load_suite(suite) if suite else None)


def client_suite(node_config: dict, suite: str) -> Suite:
    """The suite the run config names, if this client trusts it (`client/trust.py`): checked
    before anything of it is imported."""
    check_suite_trusted(suite, node_config)
    return load_suite(suite)


def local_tasks(node_config: dict, suite: str, seed: int, data_root: str) -> dict[str, TaskData]:
    """The tasks this client holds, with its private train/test splits."""
    check_suite_trusted(suite, node_config)
    data_dir = str(node_config.get("data-dir", "") or "")
    if data_dir:
        return _folder(data_dir, suite)[1]
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ValueError(
            "this client has neither a 'data-dir' in its node config nor simulation "
            f"'partition-id'/'num-partitions'; node config keys: {sorted(node_config)}"
        )
    return _partition(suite, int(node_config["partition-id"]), int(node_config["num-partitions"]), seed, data_root)


def client_name(node_config: dict) -> str:
    """A human-readable name for progress lines: the node config's `name`, the folder's, or the partition."""
    if node_config.get("name"):
        return str(node_config["name"])
    data_dir = str(node_config.get("data-dir", "") or "")
    if data_dir:
        return str(_folder(data_dir)[0].get("name") or data_dir)
    return f"partition-{node_config.get('partition-id', '?')}"
