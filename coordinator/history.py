"""The run's history, written as it happens: one JSON line and a few CSV rows per round.

On disk (under the run's `out`):
  history.jsonl  line 1 {"format": 2, "config", "tasks", "suite"}; then one object per finished
                 round (round 0 = the initial model, evaluated before any training). Appended
                 as each round ends, so a dashboard or `tail -f` can follow a live run, and a
                 long run costs O(rounds) to write, not O(rounds^2).
  metrics.csv    round, task, group, accuracy, loss (appended rows).
  history.json   the same as one document {"format", "config", "tasks", "suite", "rounds"},
                 written when the run ends.
A checkpoint records how much of history.jsonl belongs to it (`digest`), so a resumed run cuts
the file back to its checkpoint and carries on appending.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import json_safe, write_json_atomic, write_text_atomic
from coordinator.state import RoundOutcome

FORMAT = 2
JSONL, JSON, CSV = "history.jsonl", "history.json", "metrics.csv"
CSV_HEADER = ["round", "task", "group", "accuracy", "loss"]


class HistoryError(RuntimeError):
    """history.jsonl does not match the checkpoint a run resumes from."""


def _line(payload: object) -> str:
    return json.dumps(json_safe(payload), allow_nan=False, separators=(",", ":")) + "\n"


def _csv_rows(entry: dict) -> str:
    group_of = {t: i for i, g in enumerate(entry["groups"]) for t in g}
    buf = io.StringIO()
    writer = csv.writer(buf)
    for task, m in sorted(entry.get("metrics", {}).items()):
        writer.writerow([entry["round"], task, group_of.get(task, ""), m.get("accuracy"), m.get("loss")])
    return buf.getvalue()


@dataclass
class History:
    config: dict
    tasks: list[str]
    suite: str = ""
    rounds: list[dict] = field(default_factory=list)

    def header(self) -> dict:
        return {"format": FORMAT, "config": self.config, "tasks": self.tasks, "suite": self.suite}

    def to_dict(self) -> dict:
        return self.header() | {"rounds": self.rounds}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(config=data["config"], tasks=list(data["tasks"]), suite=data.get("suite", ""), rounds=list(data["rounds"]))

    # -- writing ---------------------------------------------------------------------------------

    def start(self, out: Path) -> None:
        """A fresh run: history.jsonl with just its header line, metrics.csv with its header row."""
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / JSONL, _line(self.header()))
        write_text_atomic(out / CSV, ",".join(CSV_HEADER) + "\n")

    def add(self, outcome: RoundOutcome, out: Path) -> dict:
        """Record a finished round in memory and append it to the files."""
        entry = json_safe(dataclasses.asdict(outcome))
        self.rounds = [r for r in self.rounds if r["round"] != outcome.round] + [entry]
        self.rounds.sort(key=lambda r: r["round"])
        with open(out / JSONL, "a") as f:
            f.write(_line(entry))
            f.flush()
            os.fsync(f.fileno())
        with open(out / CSV, "a", newline="") as f:
            f.write(_csv_rows(entry))
        return entry

    def finish(self, out: Path) -> None:
        """The whole history as one JSON document (at the end of a run)."""
        write_json_atomic(out / JSON, self.to_dict())

    def digest(self, out: Path) -> dict:
        """What a checkpoint stores to find its part of history.jsonl again."""
        data = (out / JSONL).read_bytes()
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rounds": len(self.rounds)}

    # -- resuming --------------------------------------------------------------------------------

    @classmethod
    def resume(cls, out: Path, digest: dict, config: dict) -> "History":
        """The history as it was at a checkpoint: history.jsonl is cut back to the checkpoint's
        length (later rounds are redone) after checking it is the same file."""
        path = out / JSONL
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise HistoryError(f"resume: cannot read {path}: {exc}") from None
        head = data[: digest["bytes"]]
        if len(head) != digest["bytes"] or hashlib.sha256(head).hexdigest() != digest["sha256"]:
            raise HistoryError(f"resume: {path} is not the history this checkpoint was written with "
                               "(edited, truncated or from another run)")
        lines = head.decode().splitlines()
        meta = json.loads(lines[0])
        history = cls(config=config, tasks=list(meta["tasks"]), suite=meta.get("suite", ""),
                      rounds=[json.loads(line) for line in lines[1:]])
        with open(path, "r+b") as f:
            f.truncate(digest["bytes"])
        write_text_atomic(out / CSV, ",".join(CSV_HEADER) + "\n" + "".join(_csv_rows(e) for e in history.rounds))
        return history


def read_history(out: Path) -> dict:
    """A run's history as one document, from history.json or, for a live run, history.jsonl
    (a partly written last line is ignored)."""
    out = Path(out)
    if (out / JSON).is_file():
        return json.loads((out / JSON).read_text())
    lines = (out / JSONL).read_text().splitlines()
    meta = json.loads(lines[0])
    rounds = []
    for line in lines[1:]:
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return meta | {"rounds": rounds}


def mean_accuracy(metrics: dict[str, dict[str, float]]) -> float:
    values = [m["accuracy"] for m in metrics.values() if m.get("accuracy") is not None and math.isfinite(m["accuracy"])]
    return sum(values) / len(values) if values else float("nan")
