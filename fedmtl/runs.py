"""Read a run's output folder: its history and its saved-model index, in either format.

Everything that *uses* a run (load-and-predict, `fedmtl evaluate`, the dashboard, the trackers'
replay) reads through here, so the folder format is interpreted in one place. Two formats exist:

* format 2 (the coordinator's current output): `history.jsonl` = a header line
  `{"format": 2, "config", "tasks", "suite"}` and one JSON object per finished round, appended as
  rounds end (a live run's last line may be half-written: it is skipped); `history.json` = the same
  as one document with `rounds`, written at the end; `models/index.json` =
  `{"format": 2, "fedmtl", "suite", "config", "latest": SNAPSHOT, "best": SNAPSHOT}` with
  SNAPSHOT = `{"round", "mean_accuracy", "groups": {gid: {"tasks", "file"}}}`.
* format 1 (before): `history.json` = `{"config", "tasks", "rounds"}` and `models/index.json` =
  `{"round", "suite", "groups": {gid: [tasks]}}` (latest models only).

Readers are tolerant: every round field except `round`, `groups` and `metrics` is optional, and
unknown fields are kept. A folder written by a NEWER format is refused with a message saying so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_FORMATS = (1, 2)
SNAPSHOTS = ("best", "latest")


class RunFormatError(ValueError):
    """A folder that is not a fedmtl run, is incomplete, or was written by an unknown format."""


def _check_format(value: Any, where: Path) -> int:
    fmt = 1 if value is None else value
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise RunFormatError(f"{where}: 'format' is {value!r}, expected an integer")
    if fmt not in SUPPORTED_FORMATS:
        newer = fmt > max(SUPPORTED_FORMATS)
        raise RunFormatError(
            f"{where} has format {fmt}; this fedmtl reads formats {SUPPORTED_FORMATS[0]}-{SUPPORTED_FORMATS[-1]}"
            + (" (it was written by a newer fedmtl: upgrade fedmtl to read it)" if newer else "")
        )
    return fmt


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFormatError(f"{path} is not valid JSON ({exc}); is the run still writing it?") from exc
    except UnicodeDecodeError as exc:
        raise RunFormatError(f"{path} is not a text file: {exc}") from exc


# ----------------------------------------------------------------------------- history


@dataclass
class RunHistory:
    """A run's history as far as it has been written: config, tasks, suite and the round entries."""

    format: int
    config: dict[str, Any]
    tasks: list[str]
    suite: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # which file it came from: "history.jsonl" or "history.json"
    complete: bool = False  # history.json exists with every round of history.jsonl (the run ended)

    @property
    def last_round(self) -> int | None:
        return self.rounds[-1]["round"] if self.rounds else None

    @property
    def planned_rounds(self) -> int | None:
        value = self.config.get("rounds")
        return int(value) if isinstance(value, (int, float)) else None

    def round(self, r: int) -> dict[str, Any]:
        for entry in self.rounds:
            if entry["round"] == r:
                return entry
        raise KeyError(f"round {r} is not in the history (rounds {[e['round'] for e in self.rounds]})")

    def to_dict(self) -> dict[str, Any]:
        """The history as the plots module expects it (`tasks`, `rounds`)."""
        return {"format": self.format, "config": self.config, "tasks": self.tasks, "suite": self.suite,
                "rounds": self.rounds}


def _normalise_round(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("round"), int):
        raise RunFormatError(f"{where}: a round entry must be an object with an integer 'round', got {str(entry)[:80]!r}")
    entry.setdefault("groups", [])
    entry.setdefault("metrics", {})
    return entry


def read_jsonl(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, round entries) of a history.jsonl; a half-written last line is skipped, a bad
    line before it is an error (the file is append-only, so only the tail can be partial)."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    header: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:  # no newline yet: the writer is mid-line
                break
            raise RunFormatError(f"{path} line {i + 1} is not valid JSON: {exc}") from exc
        if header is None and isinstance(obj, dict) and "round" not in obj:
            header = obj
            continue
        rounds.append(_normalise_round(obj, f"{path} line {i + 1}"))
    return header, rounds


def read_history(run_dir: str | Path) -> RunHistory:
    """The history of a live or finished run (history.jsonl preferred: it is current while the run
    goes on; history.json is used when it has at least as many rounds, or alone in format 1)."""
    run_dir = Path(run_dir)
    jsonl, doc = run_dir / "history.jsonl", run_dir / "history.json"
    if not run_dir.is_dir():
        raise RunFormatError(f"run folder {run_dir} does not exist")
    data: dict[str, Any] | None = None
    if doc.is_file():
        try:
            data = _read_json(doc)
        except RunFormatError:
            if not jsonl.is_file():
                raise
            data = None  # being rewritten; history.jsonl has it all
        if data is not None and not isinstance(data, dict):
            raise RunFormatError(f"{doc} must hold a JSON object")
    if jsonl.is_file():
        header, rounds = read_jsonl(jsonl)
        header = header or {}
        fmt = _check_format(header.get("format", 2), jsonl)
        history = RunHistory(
            format=fmt, config=dict(header.get("config") or {}), tasks=list(header.get("tasks") or []),
            suite=str(header.get("suite") or (header.get("config") or {}).get("suite", "")),
            rounds=_dedupe(rounds), source="history.jsonl",
        )
        if data is not None:
            done = [_normalise_round(e, str(doc)) for e in data.get("rounds", [])]
            history.complete = len(done) >= len(history.rounds) and bool(done)
            if len(done) > len(history.rounds):
                history.rounds, history.source = _dedupe(done), "history.json"
        return history
    if data is None:
        raise RunFormatError(f"{run_dir} has neither history.jsonl nor history.json: not a fedmtl run folder "
                             "(or the run has not finished its first round yet)")
    fmt = _check_format(data.get("format"), doc)
    config = dict(data.get("config") or {})
    return RunHistory(
        format=fmt, config=config, tasks=list(data.get("tasks") or []),
        suite=str(data.get("suite") or config.get("suite", "")),
        rounds=_dedupe([_normalise_round(e, str(doc)) for e in data.get("rounds", [])]),
        source="history.json", complete=True,
    )


def _dedupe(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per round, the last written winning (a resumed run appends its rounds again)."""
    by_round = {e["round"]: e for e in rounds}
    return [by_round[r] for r in sorted(by_round)]


# ----------------------------------------------------------------------------- model index


@dataclass(frozen=True)
class GroupFile:
    gid: str
    tasks: list[str]
    path: Path


@dataclass(frozen=True)
class Snapshot:
    """One set of saved group models (`latest` or `best`)."""

    name: str
    round: int
    mean_accuracy: float | None
    groups: list[GroupFile]

    def group_of(self, task: str) -> GroupFile:
        for g in self.groups:
            if task in g.tasks:
                return g
        raise KeyError(task)


@dataclass(frozen=True)
class ModelIndex:
    format: int
    suite: str
    config: dict[str, Any]
    snapshots: dict[str, Snapshot]
    fedmtl_version: str | None = None

    def snapshot(self, which: str) -> Snapshot:
        if which not in SNAPSHOTS:
            raise ValueError(f"which = {which!r}: expected one of {SNAPSHOTS}")
        if which not in self.snapshots:
            raise RunFormatError(f"the run has no {which!r} models (it has {sorted(self.snapshots)})")
        return self.snapshots[which]


def read_model_index(run_dir: str | Path) -> ModelIndex:
    """models/index.json of a run folder, either format, with absolute model file paths."""
    run_dir = Path(run_dir)
    models = run_dir / "models"
    path = models / "index.json"
    if not path.is_file():
        if not run_dir.is_dir():
            raise RunFormatError(f"run folder {run_dir} does not exist")
        raise RunFormatError(f"{path} is missing: {run_dir} is not a fedmtl run folder with saved models "
                             "(or the run has not finished its first round yet)")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise RunFormatError(f"{path} must hold a JSON object")
    fmt = _check_format(data.get("format"), path)
    suite = data.get("suite")
    if not isinstance(suite, str) or not suite:
        raise RunFormatError(f"{path}: 'suite' must be a non-empty string, got {suite!r}")
    snapshots: dict[str, Snapshot] = {}
    if fmt == 1:
        groups = data.get("groups")
        if not isinstance(groups, dict) or not isinstance(data.get("round"), int):
            raise RunFormatError(f"{path}: format 1 needs 'round' (int) and 'groups' {{gid: [tasks]}}")
        snapshots["latest"] = Snapshot("latest", data["round"], None, [
            GroupFile(str(gid), list(tasks), models / f"group_{gid}.safetensors") for gid, tasks in groups.items()])
    else:
        for name in SNAPSHOTS:
            if data.get(name) is not None:
                snapshots[name] = _snapshot(name, data[name], models, path)
        if not snapshots:
            raise RunFormatError(f"{path} names neither 'latest' nor 'best' models")
    return ModelIndex(fmt, suite, dict(data.get("config") or {}), snapshots, data.get("fedmtl"))


def _snapshot(name: str, data: Any, models: Path, where: Path) -> Snapshot:
    if not isinstance(data, dict) or not isinstance(data.get("round"), int) or not isinstance(data.get("groups"), dict):
        raise RunFormatError(f"{where}: {name!r} must be an object with 'round' (int) and 'groups'")
    groups = []
    for gid, info in data["groups"].items():
        if isinstance(info, list):  # tolerate {gid: [tasks]}
            info = {"tasks": info}
        if not isinstance(info, dict) or not isinstance(info.get("tasks"), list):
            raise RunFormatError(f"{where}: {name}.groups.{gid} must be an object with a 'tasks' list")
        file = str(info.get("file") or f"group_{gid}.safetensors")
        candidates = [models / file] + ([models / "best" / file] if name == "best" else [])
        path = next((p for p in candidates if p.is_file()), candidates[-1])
        groups.append(GroupFile(str(gid), [str(t) for t in info["tasks"]], path))
    acc = data.get("mean_accuracy")
    acc = float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else None
    return Snapshot(name, data["round"], acc, groups)


# ----------------------------------------------------------------------------- affinity


def finite(v: Any) -> float | None:
    """v as a float if it is a finite number, else None (NaN is written as null)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _matrix(rows: Any) -> list[list[float | None]] | None:
    if not isinstance(rows, list):
        return None
    return [[finite(v) for v in row] if isinstance(row, list) else [] for row in rows]


def normalise_affinity(affinity: Any, preferred: str = "lookahead") -> dict[str, Any] | None:
    """{signal, tasks, matrix, coverage: [[i, j, kind, count], ...] | None, coverage_scope} or None."""
    if not isinstance(affinity, dict) or not affinity:
        return None
    if "matrix" in affinity:  # format 2
        cov = (affinity.get("coverage") or {}).get("pairs")
        pairs = [[int(p[0]), int(p[1]), str(p[2]), int(p[3]) if len(p) > 3 and isinstance(p[3], (int, float)) else 0]
                 for p in cov if isinstance(p, (list, tuple)) and len(p) >= 3] if isinstance(cov, list) else None
        return {"signal": str(affinity.get("signal") or preferred), "tasks": list(affinity.get("tasks") or []),
                "matrix": _matrix(affinity["matrix"]), "coverage": pairs, "coverage_scope": "tracked"}
    tracked = affinity.get("tracked") or {}
    if not isinstance(tracked, dict) or not tracked:
        return None
    signal = preferred if preferred in tracked else min(tracked)
    data = tracked[signal] or {}
    raw = ((affinity.get("round") or {}).get(signal) or {})
    counts = raw.get("counts")
    pairs = None
    if isinstance(counts, list):
        pairs = [[i, j, "measured" if (c or 0) > 0 else "never", int(c or 0)]
                 for i, row in enumerate(counts) for j, c in enumerate(row) if i != j]
    return {"signal": signal, "tasks": list(data.get("tasks") or []), "matrix": _matrix(data.get("matrix")),
            "coverage": pairs, "coverage_scope": "round"}
