"""Grouped ColD Fusion: the same contributors, run through fedmtl's real round loop with task grouping.

The contributors are in-process Flower nodes (`testbed.inprocess.InProcessGrid`), each holding
one seen dataset (the text suite's `one-per-client` partition); `coordinator.loop.Coordinator`
runs the rounds with `mode = mas | dynamic`: all-in-one (= plain ColD Fusion) until
`split_round`, then one body per task group chosen from the measured affinity. Per round it
samples `contributors / datasets` of the clients (`fraction`); a round that measures adds the
holders of the undrawn datasets as measure-only probes (`affinity_coverage`), so every pair is
measured while the round trains only what it drew.

Affinity in this setting: no contributor ever trains two datasets together, so every pair is
measured across clients, from the per-task gradient summaries the sampled contributors return in
the merged rounds (`affinity-method = gradients`, docs/affinity.md). The summary records the
tracked matrix and the pair coverage (same-client / cross-client / never) the split read.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from experiments.coldfusion.config import ColdFusionConfig
from strategies.affinity.summaries import window_steps
from strategies.fusion import State, fuse_states

SUITE_FILE = """# Written by `fedmtl coldfusion`: the text suite of this experiment, loadable by every client.
from tasks.text.suite import TextSuiteConfig, make_text_suite

CONFIG = {config}


def make_suite():
    return make_text_suite(TextSuiteConfig(**{{k: tuple(v) if isinstance(v, list) else v for k, v in CONFIG.items()}}))
"""


@dataclass
class GroupedRun:
    """The bodies grouped ColD Fusion ended with, and what the loop recorded."""

    body_of_task: dict[str, State]
    merged_body: State
    summary: dict


def write_suite_file(cfg: ColdFusionConfig, folder: Path, partition: str = "one-per-client") -> str:
    """A `file.py:function` suite spec for this experiment's datasets (clients load it by name)."""
    sc = cfg.suite_config(partition)
    config = {"name": sc.name, "tasks": list(sc.tasks), "held_out": list(sc.held_out), "max_length": sc.max_length,
              "train_per_task": sc.train_per_task, "test_per_task": sc.test_per_task, "partition": sc.partition}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "coldfusion_suite.py"
    path.write_text(SUITE_FILE.format(config=json.dumps(config)))
    return f"{path}:make_suite"


def run_config(cfg: ColdFusionConfig, seed: int, suite: str, out: Path) -> dict:
    """The fedmtl run config that makes the round loop a grouped ColD Fusion."""
    return {
        "suite": suite, "mode": cfg.grouping, "rounds": cfg.iterations, "seed": seed, "data-seed": cfg.data_seed,
        "fraction": cfg.contributors / len(cfg.seen), "min-clients": len(cfg.seen), "client-capacity": 1,
        "local-steps": cfg.local_steps, "batch-size": cfg.batch_size, "lr": cfg.lr, "optimizer": cfg.optimizer,
        "fusion": "uniform",
        "split-round": cfg.split_round, "max-groups": cfg.max_groups, "regroup-every": cfg.regroup_every,
        "affinity-coverage": cfg.affinity_coverage,
        "device": cfg.device, "plots": False, "checkpoint-keep": 1, "out": str(out),
        "min-clients-timeout": 60.0,
    }


def run_grouped(cfg: ColdFusionConfig, seed: int, tick=lambda n, d: None, workdir: Path | None = None) -> GroupedRun:
    """Run grouped ColD Fusion for one seed on an in-process grid; returns the group bodies."""
    from coordinator.config import RunConfig  # noqa: PLC0415 - Flower-side imports only when grouping
    from coordinator.loop import Coordinator  # noqa: PLC0415
    from testbed.inprocess import InProcessGrid  # noqa: PLC0415

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fedmtl-coldfusion-"))
    suite = write_suite_file(cfg, root)
    run_cfg = RunConfig.from_dict(run_config(cfg, seed, suite, root / f"grouped_seed{seed}"))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("round") and not line.startswith("round   0/"):
            tick(1, f"seed {seed}: grouped ({cfg.grouping}) {line.split('|')[0].strip()}")

    coordinator = Coordinator(InProcessGrid(len(cfg.seen)), run_cfg, log=log)
    history = coordinator.run()
    groups = coordinator.groups
    body_of_task = {t: g.body for g in groups for t in g.tasks}
    merged = fuse_states([g.body for g in groups], [float(len(g.tasks)) for g in groups])
    rounds = history.rounds
    measured = [r.get("affinity") for r in rounds if r.get("affinity")]
    summary = {
        "mode": cfg.grouping,
        "final_groups": [list(g.tasks) for g in groups],
        "groups_per_round": [r["groups"] for r in rounds],
        "events": [e for r in rounds for e in r.get("events", [])],
        "train_seconds": sum(float((r.get("compute") or {}).get("train_seconds", 0.0)) for r in rounds),
        "affinity_seconds": sum(float((r.get("compute") or {}).get("affinity_seconds", 0.0)) for r in rounds),
        "client_trainings": sum(len(r.get("clients", [])) for r in rounds),
        "clients_per_round": [r.get("clients", []) for r in rounds],
        # measure-only coverage (`affinity-coverage = "probe"`): gradient windows, no training
        "client_probes": sum(len((r.get("compute") or {}).get("probes", [])) for r in rounds),
        "probes_per_round": [(r.get("compute") or {}).get("probes", []) for r in rounds],
        "probe_steps": window_steps(run_cfg.affinity_steps, 1),
        "affinity": measured[-1]["tracked"] if measured else None,
        "affinity_signal": measured[-1].get("signal") if measured else None,
        "affinity_coverage": measured[-1]["coverage"]["summary"] if measured else None,
        "affinity_measured_rounds": len(measured),
        "seen_accuracy_per_round": [{t: m.get("accuracy") for t, m in r["metrics"].items()} for r in rounds],
    }
    return GroupedRun(body_of_task, merged, summary)
