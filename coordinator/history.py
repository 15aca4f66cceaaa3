"""The run's history: one entry per round, written as JSON and CSV after every round.

`history.json` = {"config": {...}, "tasks": [...], "rounds": [ {round, groups, metrics,
clients, assignments, compute, affinity, dropped, rejected, errors, events, seconds}, ...]}
with round 0 the initial model, evaluated before any training.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import atomic_path, write_json_atomic
from coordinator.state import RoundOutcome


@dataclass
class History:
    config: dict
    tasks: list[str]
    rounds: list[dict] = field(default_factory=list)

    def add(self, outcome: RoundOutcome) -> dict:
        entry = dataclasses.asdict(outcome)
        self.rounds = [r for r in self.rounds if r["round"] != outcome.round] + [entry]
        self.rounds.sort(key=lambda r: r["round"])
        return entry

    def to_dict(self) -> dict:
        return {"config": self.config, "tasks": self.tasks, "rounds": self.rounds}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(config=data["config"], tasks=list(data["tasks"]), rounds=list(data["rounds"]))

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "history.json", self.to_dict())
        self._save_csv(out / "metrics.csv")

    def _save_csv(self, path: Path) -> None:
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["round", "task", "group", "accuracy", "loss"])
            for entry in self.rounds:
                group_of = {t: i for i, g in enumerate(entry["groups"]) for t in g}
                for task, m in sorted(entry["metrics"].items()):
                    writer.writerow([entry["round"], task, group_of.get(task, ""), m.get("accuracy"), m.get("loss")])


def mean_accuracy(metrics: dict[str, dict[str, float]]) -> float:
    values = [m["accuracy"] for m in metrics.values() if m.get("accuracy") is not None and math.isfinite(m["accuracy"])]
    return sum(values) / len(values) if values else float("nan")
