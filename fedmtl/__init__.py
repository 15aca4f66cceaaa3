"""fedmtl: federated multi-task training on Flower.

The packages beside this one are the system, each side in its own:
  coordinator/  the Flower ServerApp and its round (schedule, train, fuse, affinity, evaluate, regroup, record)
  client/       everything a client machine runs (the ClientApp, local training, data folders, `fedmtl client`)
  launch/       starting, watching and stopping Flower's processes for either side (SuperLink, SuperNode,
                simulation, the `flwr` CLI, the Fleet gateway, TLS and keys)
  strategies/   the algorithms, pure torch/numpy: fusion, validation, affinity, grouping, scheduling
  tasks/        task suites both sides load: the Suite contract, models, data
  common/       one small helper per job (atomic writes, signal handling)
  testbed/      chaos and hostile clients, an in-process grid: for tests and benchmarks only
This package is the public face: the `fedmtl` command (`fedmtl.cli`) and the API for using what a
run produced:

    fedmtl.load_run(RUN_DIR, which="best" | "latest") -> LoadedRun (one TaskModel per task)
    fedmtl.read_history(RUN_DIR)                      -> RunHistory (live or finished run)

Names are imported on first use, so `import fedmtl` stays cheap (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_run": "fedmtl.load",
    "LoadedRun": "fedmtl.load",
    "TaskModel": "fedmtl.load",
    "read_history": "fedmtl.runs",
    "read_model_index": "fedmtl.runs",
    "RunHistory": "fedmtl.runs",
    "RunFormatError": "fedmtl.runs",
}

__all__ = ["LoadedRun", "RunFormatError", "RunHistory", "TaskModel", "__version__", "load_run", "read_history", "read_model_index"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedmtl' has no attribute {name!r}")
