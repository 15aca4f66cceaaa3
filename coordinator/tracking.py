"""Experiment tracking: a run's config, per-round metrics, groups, affinity and compute, logged to
TensorBoard and/or MLflow as the rounds end, so runs can be compared in the tools people use.

Switched on by the run-config key `tracking` ("" = off, or a comma list of `tensorboard`,
`mlflow`). Both write inside the run's output folder and need no server:
  * TensorBoard: event files in OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`);
    scalars `accuracy/<task>`, `loss/<task>`, `accuracy/mean`, `groups/count`, `clients/*`,
    `compute/*`, `time/round_seconds`; texts `config`, `groups`, `affinity`, `events`.
  * MLflow: a local SQLite store OUT/mlflow.db with artifacts in OUT/mlartifacts (MLflow 3 keeps
    the plain-folder store in maintenance mode and refuses it by default; SQLite is its local
    file store now): experiment `fedmtl`, one MLflow run per fedmtl run with the config as
    params, the same metrics with step = round, and `groups/round_R.json`,
    `affinity/round_R.json` artifacts. Read it with
    `MlflowClient(tracking_uri="sqlite:///OUT/mlflow.db")` or `mlflow ui --backend-store-uri ...`.
The libraries come with the optional extra `fedmtl[tracking]`; asking for one that is missing
fails at once, naming the extra. The round loop calls `open_trackers(...)` once and then
`log_round(entry)` with each round's history entry and `close()` at the end (`replay` does the
same for a finished run folder).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from coordinator.config import TRACKING_BACKENDS as BACKENDS

EXTRA = "fedmtl[tracking]"
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
MLFLOW_EXPERIMENT = "fedmtl"
MLFLOW_RUN_FILE = "mlflow_run.json"  # the MLflow run id of this output folder (reused by --resume)


class TrackingError(ValueError):
    """A tracking spec that names an unknown backend, or a backend whose library is missing."""


def parse_spec(spec: str) -> list[str]:
    """`"tensorboard, mlflow"` -> ["tensorboard", "mlflow"]; "" / "none" -> []. Unknown names raise."""
    names = [s.strip().lower() for s in (spec or "").split(",") if s.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise TrackingError(f"tracking: unknown backend(s) {unknown}; use a comma list of {', '.join(BACKENDS)} (or '')")
    return list(dict.fromkeys(names))


def check_available(spec: str) -> list[str]:
    """The backends of `spec`, after checking their libraries are installed (TrackingError names the extra)."""
    names = parse_spec(spec)
    for name in names:
        module, package = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackingError(f"tracking = {spec!r} needs the {package!r} package, which is not installed: "
                                f"pip install '{EXTRA}' (or: pip install {package})")
    return names


class Tracker(Protocol):
    def log_round(self, entry: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def round_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The numbers of one round entry, by metric name (None/NaN left out)."""
    out: dict[str, float | None] = {}
    accs = []
    for task, m in sorted((entry.get("metrics") or {}).items()):
        acc, loss = _num((m or {}).get("accuracy")), _num((m or {}).get("loss"))
        out[f"accuracy/{task}"], out[f"loss/{task}"] = acc, loss
        if acc is not None:
            accs.append(acc)
    out["accuracy/mean"] = sum(accs) / len(accs) if accs else None
    out["groups/count"] = float(len(entry.get("groups") or []))
    for key in ("clients", "dropped", "rejected", "errors"):
        if key in entry:
            out[f"clients/{'trained' if key == 'clients' else key}"] = float(len(entry.get(key) or []))
    compute = entry.get("compute") or {}
    for key in ("train_seconds", "affinity_seconds"):
        out[f"compute/{key}"] = _num(compute.get(key))
    examples = compute.get("examples")
    if isinstance(examples, dict):
        out["compute/examples"] = float(sum(v for v in examples.values() if isinstance(v, (int, float))))
    elif isinstance(examples, (int, float)):
        out["compute/examples"] = float(examples)
    out["time/round_seconds"] = _num(entry.get("seconds"))
    return {k: v for k, v in out.items() if v is not None}


def affinity_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """{signal, tasks, matrix, coverage?} of a round, in either history format, or None."""
    from fedmtl.runs import (
        normalise_affinity,  # one interpretation of both history formats
    )

    return normalise_affinity(entry.get("affinity"))


def _markdown_matrix(tasks: list[str], matrix: list[list[float | None]]) -> str:
    head = "| i \\ j | " + " | ".join(tasks) + " |\n|" + "---|" * (len(tasks) + 1) + "\n"
    rows = ["| " + t + " | " + " | ".join("–" if v is None else f"{v:.4g}" for v in row) + " |"
            for t, row in zip(tasks, matrix)]
    return head + "\n".join(rows)


class TensorBoardTracker:
    def __init__(self, out: Path, config: dict[str, Any], tasks: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=1, sort_keys=True, default=str) + "\n```", 0)
        self.writer.add_text("tasks", ", ".join(tasks), 0)

    def log_round(self, entry: dict[str, Any]) -> None:
        r = int(entry["round"])
        for name, value in round_scalars(entry).items():
            self.writer.add_scalar(name, value, r)
        groups = entry.get("groups") or []
        self.writer.add_text("groups", "; ".join("[" + ", ".join(g) + "]" for g in groups), r)
        aff = affinity_of(entry)
        if aff and aff.get("matrix"):
            self.writer.add_text("affinity", f"{aff['signal']} after round {r}\n\n" + _markdown_matrix(aff["tasks"], aff["matrix"]), r)
        if entry.get("events"):
            self.writer.add_text("events", "\n".join(f"- {e}" for e in entry["events"]), r)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, out: Path, config: dict[str, Any], tasks: list[str]) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.out = out
        self.client = MlflowClient(tracking_uri=mlflow_uri(out))
        exp = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            MLFLOW_EXPERIMENT, artifact_location=(out / "mlartifacts").resolve().as_uri())
        id_file = out / MLFLOW_RUN_FILE
        self.run_id = None
        if config.get("resume") and id_file.is_file():
            self.run_id = json.loads(id_file.read_text()).get("run_id")
            try:
                self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - the store lost it: start a new MLflow run
                self.run_id = None
        if self.run_id is None:
            run = self.client.create_run(exp_id, run_name=out.name, tags={
                "fedmtl.suite": str(config.get("suite", "")), "fedmtl.mode": str(config.get("mode", "")),
                "fedmtl.out": str(out), "fedmtl.tasks": ",".join(tasks)})
            self.run_id = run.info.run_id
            id_file.write_text(json.dumps({"run_id": self.run_id, "experiment_id": exp_id}) + "\n")
            params = [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_batch(self.run_id, tags=[RunTag("fedmtl.tasks", ",".join(tasks))])
            self.client.log_dict(self.run_id, config, "config.json")

    def log_round(self, entry: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        r = int(entry["round"])
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, r) for name, value in round_scalars(entry).items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500])
        self.client.log_dict(self.run_id, {"round": r, "groups": entry.get("groups") or [],
                                           "assignments": entry.get("assignments") or {}}, f"groups/round_{r}.json")
        aff = affinity_of(entry)
        if aff and aff.get("matrix"):
            self.client.log_dict(self.run_id, {"round": r, **aff}, f"affinity/round_{r}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


def mlflow_uri(out: Path) -> str:
    return "sqlite:///" + str((Path(out) / "mlflow.db").resolve())


class Trackers:
    """The backends of one run; `log_round`/`close` fan out. A backend that fails mid-run is
    reported through `log` and dropped: tracking must never stop a federation."""

    def __init__(self, trackers: dict[str, Tracker], log: Any = print) -> None:
        self.trackers = trackers
        self.log = log

    @property
    def names(self) -> list[str]:
        return list(self.trackers)

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001
                self.log(f"  tracking: {name} failed ({type(exc).__name__}: {exc}); it is switched off for this run")
                del self.trackers[name]

    def log_round(self, entry: dict[str, Any]) -> None:
        self._each("log_round", entry)

    def close(self) -> None:
        self._each("close")
        self.trackers = {}


def open_trackers(spec: str, out: Path, config: dict[str, Any], tasks: list[str], log: Any = print) -> Trackers:
    """The trackers of `spec` (e.g. "tensorboard,mlflow"; "" = none), writing under `out`."""
    makers = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    names = check_available(spec)
    out = Path(out)
    if names:
        out.mkdir(parents=True, exist_ok=True)
    return Trackers({n: makers[n](out, config, tasks) for n in names}, log=log)


def replay(run_dir: str | Path, spec: str) -> Trackers:
    """Log a finished (or running) run folder's history to the trackers of `spec` after the fact."""
    from fedmtl.runs import read_history

    history = read_history(run_dir)
    trackers = open_trackers(spec, Path(run_dir), dict(history.config, resume=False), history.tasks)
    for entry in history.rounds:
        trackers.log_round(entry)
    trackers.close()
    return trackers
