"""What the dashboard page shows, computed from the run folder: plain dicts, no web framework.

The page asks `/api/run?since=R` every few seconds; `run_payload` answers with the run's header
(suite, tasks, planned rounds, whether it finished) and the round entries after R in a compact
form: per-task accuracy, groups, client outcomes, compute and the affinity matrix normalised over
both history formats (format 2: `affinity.matrix` + `coverage.pairs`; format 1:
`affinity.tracked[signal].matrix` + this round's measurement counts).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from fedmtl.runs import RunFormatError, RunHistory, normalise_affinity, read_history
from fedmtl.runs import finite as _num


def _people(items: Any) -> list[dict[str, Any]]:
    """dropped/rejected/errors entries as {client, group, reason} (formats differ in the reason key)."""
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        reason = item.get("reason") or item.get("error") or "; ".join(str(r) for r in (item.get("reasons") or [])[:3])
        out.append({"client": str(item.get("client") or item.get("node") or "?"),
                    "group": item.get("group"), "reason": str(reason or "")[:300]})
    return out


def compact_round(entry: dict[str, Any], tasks: list[str], signal: str = "lookahead") -> dict[str, Any]:
    metrics = entry.get("metrics") or {}
    accs = {t: _num((metrics.get(t) or {}).get("accuracy")) for t in tasks} if tasks else \
        {t: _num((m or {}).get("accuracy")) for t, m in metrics.items()}
    known = [a for a in accs.values() if a is not None]
    compute = entry.get("compute") or {}
    return {
        "round": entry["round"],
        "groups": [list(g) for g in entry.get("groups") or []],
        "accuracy": accs,
        "loss": {t: _num((metrics.get(t) or {}).get("loss")) for t in accs},
        "mean_accuracy": sum(known) / len(known) if known else None,
        "clients": [str(c) for c in entry.get("clients") or []],
        "dropped": _people(entry.get("dropped")),
        "rejected": _people(entry.get("rejected")),
        "errors": _people(entry.get("errors")),
        "events": [str(e) for e in entry.get("events") or []],
        "seconds": _num(entry.get("seconds")),
        "train_seconds": _num(compute.get("train_seconds")),
        "affinity_seconds": _num(compute.get("affinity_seconds")),
        "evaluated": bool(entry.get("evaluated", bool(metrics))),
        "affinity": normalise_affinity(entry.get("affinity"), signal),
    }


def run_payload(history: RunHistory, run_dir: Path, since: int = -1) -> dict[str, Any]:
    cfg = history.config
    tasks = history.tasks or sorted({t for e in history.rounds for t in (e.get("metrics") or {})})
    signal = str(cfg.get("affinity-signal") or "lookahead")
    rounds = [compact_round(e, tasks, signal) for e in history.rounds if e["round"] > since]
    planned = history.planned_rounds
    last = history.last_round
    finished = history.complete or (planned is not None and last is not None and last >= planned)
    return {
        "run": {
            "dir": str(run_dir), "name": run_dir.name, "suite": history.suite, "tasks": tasks,
            "mode": cfg.get("mode"), "planned_rounds": planned, "last_round": last, "format": history.format,
            "source": history.source, "finished": bool(finished),
            "config": {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool))},
        },
        "rounds": rounds,
    }


class RunWatcher:
    """Reads the run folder on demand, re-parsing only when a history file changed (size, mtime)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self._key: tuple | None = None
        self._history: RunHistory | None = None
        self._lock = threading.Lock()

    def _stat_key(self) -> tuple:
        key = []
        for name in ("history.jsonl", "history.json"):
            try:
                st = os.stat(self.run_dir / name)
                key.append((name, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                key.append((name, None))
        return tuple(key)

    def history(self) -> RunHistory | None:
        """The current history, or None while the run has written none yet (RunFormatError for a
        folder that is not a readable run)."""
        with self._lock:
            key = self._stat_key()
            if all(k[1] is None for k in key):
                return None
            if key != self._key:
                self._history = read_history(self.run_dir)
                self._key = key
            return self._history

    def payload(self, since: int = -1) -> dict[str, Any]:
        empty = {"dir": str(self.run_dir), "name": self.run_dir.name, "suite": None, "tasks": [],
                 "planned_rounds": None, "last_round": None, "finished": False, "config": {}}
        try:
            history = self.history()
        except RunFormatError as exc:
            return {"run": empty, "rounds": [], "error": str(exc)}
        if history is None:
            return {"run": {**empty, "waiting": True}, "rounds": []}
        return run_payload(history, self.run_dir, since)
