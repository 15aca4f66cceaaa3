"""Where a client's private data comes from, cached for the life of the process.

Deployed clients read their own folder (`data-dir` in the SuperNode's node config, written
by `fedmtl prepare-data` or by the user). Simulated clients have only `partition-id` and
`num-partitions`, so they cut their share out of the suite named in the message config.
Either way the data never leaves the client; only its task names and counts are reported.
A deployed client loads only suites it trusts (`client/trust.py`), checked before any import.

A deployed client runs every message in a fresh process (Flower's isolation), so the folder is
read once per message. Two things keep that cheap and safe:

* `fedmtl client` validates the folder fully before it connects and hands the folder's
  `folder_fingerprint` to its ClientApp processes (`VALIDATED_ENV`); a process whose folder
  still has that fingerprint skips the checks that read every value (they were done), and any
  change to the folder (a file rewritten, the manifest edited) means a full validation again.
* Within one process the read folder is cached under its fingerprint, so a long-lived process
  (a simulation's Ray actor, a test) re-reads a folder that changed instead of serving stale data.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from client.folder import (
    MANIFEST,
    check_against_suite,
    folder_fingerprint,
    read_client_dir,
)
from client.trust import check_suite_trusted
from tasks.registry import load_suite
from tasks.suite import Suite, TaskData

#: Environment variable with `{"dir": <abs folder>, "fingerprint": <folder_fingerprint>}` of a
#: folder `fedmtl client` validated before starting its SuperNode.
VALIDATED_ENV = "FEDMTL_VALIDATED_DATA"


@lru_cache(maxsize=8)
def _partition(suite: str, partition_id: int, num_partitions: int, seed: int, data_root: str) -> dict[str, TaskData]:
    return load_suite(suite).partition(partition_id, num_partitions, seed, data_root)


def validated_fingerprint(data_dir: str) -> str:
    """The fingerprint `fedmtl client` recorded for `data_dir` when it validated it, else ""."""
    try:
        info = json.loads(os.environ.get(VALIDATED_ENV, "") or "{}")
    except json.JSONDecodeError:
        return ""
    if not isinstance(info, dict) or str(info.get("dir", "")) != str(Path(data_dir).resolve()):
        return ""
    return str(info.get("fingerprint", ""))


def validated_env(data_dir: str | Path, fingerprint_before: str) -> dict[str, str]:
    """`VALIDATED_ENV` for the ClientApp processes of a folder validated just now: only if its
    fingerprint taken before the validation still holds (nothing changed while it was checked)."""
    if not fingerprint_before or folder_fingerprint(data_dir) != fingerprint_before:
        return {}
    return {VALIDATED_ENV: json.dumps({"dir": str(Path(data_dir).resolve()), "fingerprint": fingerprint_before})}


@lru_cache(maxsize=8)
def _read(data_dir: str, fingerprint: str, validated: str) -> tuple[dict, dict[str, TaskData]]:
    return read_client_dir(data_dir, validated=validated)


def _folder(data_dir: str, suite: str = "") -> tuple[dict, dict[str, TaskData]]:
    """Read and validate the folder (cached by content fingerprint); with a suite, also check its
    tasks and class counts against it."""
    fingerprint = folder_fingerprint(data_dir)
    manifest, tasks = _read(data_dir, fingerprint, validated_fingerprint(data_dir) if fingerprint else "")
    if suite:
        check_against_suite(manifest, load_suite(suite), Path(data_dir) / MANIFEST)
    return manifest, tasks


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
