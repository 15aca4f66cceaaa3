"""Run folders for tests of the readers, the dashboard and the trackers (not a test module).

`tiny_run` drives the real round loop (coordinator.loop.Coordinator on testbed.inprocess's
InProcessGrid) on the `tiny` suite; `write_format2` rewrites a history in the output format of
PLAN.md (history.jsonl with a header line; affinity as {signal, tasks, matrix, coverage}), so
the readers are tested against the format the coordinator is moving to as well as today's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = {"suite": "tiny", "rounds": 2, "min-clients": 3, "plots": False, "local-steps": 20, "affinity-every": 0}


def tiny_run(out: Path, clients: int = 3, **cfg: Any) -> dict:
    """A 2-round federation on the tiny suite; returns its history document."""
    from coordinator.config import RunConfig
    from coordinator.loop import Coordinator
    from testbed.inprocess import InProcessGrid

    config = RunConfig.from_dict(TINY | {"out": str(out), "min-clients": clients} | cfg)
    Coordinator(InProcessGrid(clients), config, log=lambda line: None).run()
    return json.loads((out / "history.json").read_text())


def format2_entry(entry: dict, signal: str = "lookahead") -> dict:
    """A format-1 round entry with its affinity in the format-2 shape."""
    entry = json.loads(json.dumps(entry))
    aff = entry.get("affinity") or {}
    tracked = (aff.get("tracked") or {}).get(signal)
    if tracked:
        counts = ((aff.get("round") or {}).get(signal) or {}).get("counts") or []
        pairs = [[i, j, "same-client" if c else "never", int(c)] for i, row in enumerate(counts) for j, c in enumerate(row)]
        entry["affinity"] = {"signal": signal, "tasks": tracked["tasks"], "matrix": tracked["matrix"],
                             "coverage": {"pairs": pairs}, "round": aff.get("round")}
    entry.setdefault("evaluated", True)
    return entry


def write_format2(history: dict, out: Path, upto: int | None = None, final: bool = False) -> Path:
    """history.jsonl (header + rounds <= upto) in `out`; with `final`, history.json too."""
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": 2, "config": history["config"], "tasks": history["tasks"], "suite": history["config"]["suite"]}
    rounds = [format2_entry(e) for e in history["rounds"] if upto is None or e["round"] <= upto]
    with (out / "history.jsonl").open("w") as f:
        f.write(json.dumps(header) + "\n")
        for e in rounds:
            f.write(json.dumps(e) + "\n")
    if final:
        (out / "history.json").write_text(json.dumps({**header, "rounds": rounds}))
    return out / "history.jsonl"


def append_round(out: Path, entry: dict) -> None:
    with (out / "history.jsonl").open("a") as f:
        f.write(json.dumps(format2_entry(entry)) + "\n")


def synthetic_history(rounds: int = 5, planned: int | None = None) -> dict:
    """A format-1 style history with every field the dashboard draws: 4 tasks, a split after
    round 2, affinity with counts, a dropped and a rejected client. Numbers are deterministic."""
    import numpy as np

    tasks = ["alpha", "beta", "gamma", "delta"]
    rng = np.random.default_rng(7)
    out = []
    for r in range(rounds + 1):
        groups = [tasks] if r <= 2 else [["alpha", "beta"], ["gamma", "delta"]]
        metrics = {t: {"accuracy": float(min(0.98, 0.2 + 0.12 * r + 0.03 * i)), "loss": float(2.0 / (r + 1)), "examples": 50.0}
                   for i, t in enumerate(tasks)}
        matrix = (rng.standard_normal((4, 4)) * 0.01).round(5).tolist()
        counts = [[0 if (i, j) in ((0, 3), (3, 0)) else 2 for j in range(4)] for i in range(4)]
        entry = {"round": r, "groups": groups, "metrics": metrics, "clients": [] if r == 0 else ["c0", "c1", "c2"],
                 "assignments": {}, "compute": {} if r == 0 else {"train_seconds": 1.5 * r, "affinity_seconds": 0.25},
                 "affinity": {} if r == 0 else {"round": {"lookahead": {"tasks": tasks, "sums": matrix, "counts": counts}},
                                                 "tracked": {"lookahead": {"tasks": tasks, "matrix": matrix}}},
                 "dropped": [{"node": 3, "client": "c3", "group": 0, "reason": "no reply within 5s"}] if r == 1 else [],
                 "rejected": [{"node": 2, "client": "c2", "group": 1, "reasons": ["body.w: 9 non-finite value(s)"]}] if r == 4 else [],
                 "errors": [], "events": ["split into [['alpha', 'beta'], ['gamma', 'delta']] (score 0.1)"] if r == 2 else [],
                 "seconds": 2.0 + r}
        out.append(entry)
    config = {"suite": "tiny", "mode": "mas", "rounds": planned or rounds, "affinity-signal": "lookahead"}
    return {"config": config, "tasks": tasks, "rounds": out}
