"""Planted `mas` runs through the real round loop (in-process grid), for tests and benchmarks.

The same case everywhere: 8 planted tasks in groups of 3, 3 and 2, 8 clients that each hold
`HOLDINGS[case]` tasks, 3 measured merged rounds of 30 local steps (batch 64, lr 0.1), then the
MAS split and one round of the groups. Used by tests/test_affinity_loop.py and
benchmarks/bench_affinity_loop.py.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.config import RunConfig
from coordinator.history import History
from coordinator.loop import Coordinator
from tasks.registry import load_suite
from tasks.suite import Suite
from testbed.inprocess import InProcessGrid
from testbed.planted_mix import suite_name

CLIENTS = 8
HOLDINGS = {"all": 8, "few": 4, "two": 2, "one": 1}  # tasks each client holds (of 8)


def planted_mas(out: Path, case: str, seed: int = 0, **overrides) -> tuple[Suite, History]:
    """(the planted suite, the run's history); `overrides` are run-config keys."""
    name = suite_name(num_groups=3, tasks_per_group=(3, 3, 2), train_per_task=512, teacher_seed=seed,
                      tasks_per_client=HOLDINGS[case])
    cfg = RunConfig.from_dict({
        "suite": name, "mode": "mas", "rounds": 4, "split-round": 3, "max-groups": 3, "min-clients": CLIENTS,
        "local-steps": 30, "batch-size": 64, "lr": 0.1, "seed": seed, "evaluate-every": 4, "plots": False,
        "out": str(out),
    } | overrides)
    coordinator = Coordinator(InProcessGrid(CLIENTS), cfg, log=lambda line: None)
    return load_suite(name), coordinator.run()
