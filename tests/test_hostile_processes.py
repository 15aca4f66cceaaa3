"""Hostile clients through real Flower processes: a private SuperLink in simulation mode, the
simulation engine (Ray) and the fedmtl ServerApp, with some simulated clients running the hostile
ClientApp. The run completes, names every culprit, and its models are bitwise those of a run in
which the same clients never take part."""

from pathlib import Path

import pytest
from safetensors.torch import load_file

from coordinator.history import read_history
from launch.simulation import run_simulation_app
from tasks.registry import builtin_data_root
from testbed import hostile

ROOT = Path(__file__).resolve().parents[1]
HONEST, ROUNDS = 3, 1  # every forged reply is refused in the one round; the in-process tests cover more rounds
FORGED = ["t-extra-head,e-accuracy", "t-oversized,e-inflate-examples", "t-inflate-examples,e-foreign-task",
          "t-affinity-counts,e-no-metrics"]


def _simulate(tmp_path: Path, name: str, behaviour_of) -> Path:
    plan = {HONEST + i: {"hostile": behaviour_of(i)} for i in range(len(FORGED))}
    app = hostile.app_folder(ROOT, tmp_path / f"app-{name}", plan)
    out = tmp_path / f"out-{name}"
    config = {"suite": "tiny", "rounds": ROUNDS, "min-clients": HONEST, "local-steps": 3, "affinity-every": 0,
              "quorum": 0.1, "round-timeout": 60.0, "plots": False, "out": str(out), "data-root": builtin_data_root()}
    status = run_simulation_app(app_dir=app, run_dir=tmp_path / f"flower-{name}", run_config=config,
                                num_supernodes=HONEST + len(FORGED), timeout_s=400, on_line=lambda line: None)
    assert status == "finished:completed"
    return out


@pytest.mark.slow
def test_hostile_clients_on_the_simulation_engine_are_refused_named_and_change_nothing(tmp_path):
    attacked = _simulate(tmp_path, "attacked", lambda i: FORGED[i])
    reference = _simulate(tmp_path, "reference", lambda i: "x-crash")
    hist, ref = read_history(attacked), read_history(reference)
    culprits = {f"partition-{HONEST + i}" for i in range(len(FORGED))}
    for r in range(1, ROUNDS + 1):
        named = {e["client"] for e in hist["rounds"][r]["rejected"]}
        assert named == culprits, (r, sorted(culprits - named))
        assert hist["rounds"][r]["metrics"] == ref["rounds"][r]["metrics"]
        assert hist["rounds"][r]["clients"] == ref["rounds"][r]["clients"]
    got = sorted((attacked / "models").glob("group_*.safetensors"))
    assert [p.name for p in got] == [p.name for p in sorted((reference / "models").glob("group_*.safetensors"))]
    for path in got:
        a, b = load_file(path), load_file(reference / "models" / path.name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), path.name
