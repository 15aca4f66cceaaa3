"""Record: what a finished round leaves on disk, and the line it prints.

* the round's entry in the history (`coordinator.history`),
* the latest model of every group, and the best round's models beside them (by mean
  validation accuracy over the tasks), described in `models/index.json`,
* a checkpoint with everything needed to continue (`coordinator.checkpoint`),
* the progress line, with the affinity measurement's cost in rounds that measure.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from safetensors.torch import save_file

import fedmtl
from common.atomic import atomic_path, write_json_atomic
from coordinator.history import mean_accuracy
from coordinator.state import RoundOutcome, TaskGroup

MODELS = "models"
BEST = "best"
INDEX = "index.json"
INDEX_FORMAT = 2


def group_file(gid: int) -> str:
    return f"group_{gid}.safetensors"


def _write_group(path: Path, g: TaskGroup, round_: int, suite: str) -> None:
    with atomic_path(path) as tmp:
        save_file(g.tensors(), str(tmp), metadata={"round": str(round_), "tasks": ",".join(g.tasks), "suite": suite})


def _entry(groups: list[TaskGroup], round_: int, accuracy: float, prefix: str = "") -> dict:
    return {
        "round": round_,
        "mean_accuracy": accuracy if math.isfinite(accuracy) else None,
        "groups": {str(g.gid): {"tasks": list(g.tasks), "file": prefix + group_file(g.gid)} for g in groups},
    }


class ModelStore:
    """models/: the latest model of every group, and the best round's (`best/`)."""

    def __init__(self, out: Path, suite: str, config: dict) -> None:
        self.dir = Path(out) / MODELS
        self.suite = suite
        self.config = config
        self.best: dict | None = None

    def save(self, groups: list[TaskGroup], round_: int, metrics: dict, evaluated: bool) -> bool:
        """Write the latest models; copy them to best/ when this round is the best so far.
        Returns True if it was."""
        self.dir.mkdir(parents=True, exist_ok=True)
        keep = {group_file(g.gid) for g in groups}
        for old in self.dir.glob("group_*.safetensors"):
            if old.name not in keep:
                old.unlink()
        for g in groups:
            _write_group(self.dir / group_file(g.gid), g, round_, self.suite)
        accuracy = mean_accuracy(metrics) if evaluated else float("nan")
        improved = math.isfinite(accuracy) and (self.best is None or self.best["mean_accuracy"] is None
                                                or accuracy > self.best["mean_accuracy"])
        if improved:
            best_dir = self.dir / BEST
            tmp = self.dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for g in groups:
                shutil.copyfile(self.dir / group_file(g.gid), tmp / group_file(g.gid))
            shutil.rmtree(best_dir, ignore_errors=True)
            tmp.rename(best_dir)
            self.best = _entry(groups, round_, accuracy, prefix=f"{BEST}/")
        index = {
            "format": INDEX_FORMAT, "fedmtl": fedmtl.__version__, "suite": self.suite, "config": self.config,
            "latest": _entry(groups, round_, accuracy),
            "best": self.best,
        }
        write_json_atomic(self.dir / INDEX, index)
        return improved


def progress_line(o: RoundOutcome, rounds: int) -> str:
    """The one line a round prints (tools parse its leading `round  R/N |`)."""
    acc = mean_accuracy(o.metrics) if o.evaluated else float("nan")
    faults = ""
    if o.dropped or o.rejected or o.errors:
        faults = f" ({len(o.dropped)} dropped, {len(o.rejected)} rejected, {len(o.errors)} failed)"
    shown = f"{acc:.3f}" if math.isfinite(acc) else "  -  "
    line = (f"round {o.round:>3}/{rounds} | groups {len(o.groups)} | clients {len(o.clients)}{faults} "
            f"| {o.seconds:6.1f}s | mean acc {shown}")
    compute = o.compute or {}
    affinity_s = float(compute.get("affinity_seconds", 0.0) or 0.0)
    if affinity_s > 0 or o.affinity:
        train_s = float(compute.get("train_seconds", 0.0) or 0.0)
        share = f" ({100 * affinity_s / train_s:.1f}% of training)" if train_s > 0 else ""
        line += f" | affinity {affinity_s:.2f}s{share}"
        summary = ((o.affinity or {}).get("coverage") or {}).get("summary")
        if summary:
            known = summary.get("same-client", 0) + summary.get("cross-client", 0)
            line += f", {known}/{known + summary.get('never', 0)} pairs measured"
    return line
