"""`fedmtl simulate --ray-address` on a real two-node Ray cluster, and the GPU/data plumbing.

* ``slow``: a Ray head and a second Ray node (`ray start --block`, each its own raylet with 1
  CPU; the second one labelled with a custom resource), both on 127.0.0.1; a 4-client
  simulation joins the cluster. Every ClientApp writes a timing record with its Ray node id
  (client/timing.py; each node's workers write their own file) and both nodes must have run
  clients. The cluster is always torn down, and only it (never `ray stop`, which would kill
  every Ray on the machine), and Ray's default `ray_current_cluster` file is never written.
* unit: `--num-gpus` reaches Flower's federation config, `device=auto` picks CUDA when present
  (there is no GPU here: `torch.cuda.is_available` is faked), and a client whose package copy has
  no data files finds the installed ones (as on a cluster node).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.timing import TIMING_ENV
from fedmtl import cli
from launch.simulation import SimulationResources
from testbed.ray_cluster import LocalRayCluster, RayNode, ray_bin

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _cluster_nodes(address: str) -> list[dict[str, Any]]:
    """Node ids and resources, asked of the cluster by a short-lived driver."""
    probe = ("import json, ray\n"
             f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
             "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']}"
             " for n in ray.nodes()]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_simulation_on_a_two_node_ray_cluster_runs_clients_on_both(tmp_path: Path) -> None:
    if ray_bin() is None:
        pytest.skip("ray is not installed here")
    default_marker = Path("/tmp/ray/ray_current_cluster")
    marker_before = default_marker.read_text() if default_marker.exists() else None
    timing = {name: tmp_path / f"{name}.jsonl" for name in ("head", "node2")}
    cluster = LocalRayCluster([RayNode(1, {"head": 1}, {TIMING_ENV: str(timing["head"])}),
                               RayNode(1, {"node2": 1}, {TIMING_ENV: str(timing["node2"])})])
    out = tmp_path / "out"
    try:
        cluster.start()
        nodes = _cluster_nodes(cluster.address)
        assert len([n for n in nodes if n["alive"]]) == 2, nodes
        by_resource = {next(k for k in ("head", "node2") if k in n["resources"]): n["id"] for n in nodes}
        log = tmp_path / "simulate.log"
        with open(log, "wb") as f:
            proc = subprocess.run([sys.executable, "-m", "fedmtl.cli", "simulate", "--suite", "tiny", "--clients", "4",
                                   "--rounds", "1", "--mode", "all-in-one", "--local-steps", "2", "--ray-address",
                                   cluster.address, "--num-cpus", "1", "--out", out, "--set", "plots=false",
                                   "--timeout", "400"],
                                  cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=480)
        text = log.read_text(errors="replace")
        assert proc.returncode == 0, text[-4000:] + cluster.log_text()
        assert f"RAY_ADDRESS={cluster.address}" in text
    finally:
        left = cluster.stop()
    assert not left, f"Ray processes survived the teardown: {sorted(left)}"
    # every record carries the Ray node its worker ran on: each node ran clients, and each file
    # holds only the node its raylet started
    for name, path in timing.items():
        assert path.is_file(), f"no ClientApp ran on the {name} node"
        records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        assert records and {r["ray_node"] for r in records} == {by_resource[name]}, (name, records[:3], by_resource)
        print(f"{name} node {by_resource[name][:12]}: {len(records)} messages "
              f"({sorted({r['type'] for r in records})}) in pids {sorted({r['pid'] for r in records})}")
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1] and len(history["rounds"][1]["clients"]) == 4
    now = default_marker.read_text() if default_marker.exists() else None
    assert now == marker_before, "the cluster wrote Ray's default ray_current_cluster file"


# --------------------------------------------------------------------------- unit: GPU share, device, data
def test_num_gpus_reaches_the_federation_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from coordinator.commands import simulate

    seen: dict[str, Any] = {}

    def fake_run(**kwargs: Any) -> str:
        seen.update(kwargs)
        return "finished:completed"

    monkeypatch.setattr(simulate, "run_simulation_app", fake_run)
    assert cli.main(["simulate", "--suite", "tiny", "--clients", "4", "--num-gpus", "0.25", "--rounds", "1",
                     "--out", str(tmp_path / "a")]) == 0
    assert seen["num_gpus_per_client"] == 0.25 and seen["ray_address"] is None
    assert seen["run_config"]["data-root"]  # a private Ray: this machine's data path
    fed = SimulationResources(seen["num_cpus_per_client"], seen["num_gpus_per_client"]).federation_config(4)
    assert fed["client-resources-num-gpus"] == 0.25 and fed["client-resources-num-cpus"] == 1
    assert cli.main(["simulate", "--suite", "tiny", "--clients", "4", "--num-gpus", "1", "--rounds", "1",
                     "--ray-address", "10.0.0.5:6379", "--out", str(tmp_path / "b")]) == 0
    assert seen["ray_address"] == "10.0.0.5:6379" and seen["num_gpus_per_client"] == 1.0
    assert seen["run_config"].get("data-root", "") == ""  # each cluster node finds its own install's data


def test_device_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from client.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu").type == "cpu"
    from coordinator.config import RunConfig

    assert RunConfig().device == "auto"  # the default run config trains on a GPU where there is one


def test_a_package_copy_without_data_files_finds_the_installed_ones(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import images

    installed = tmp_path / "site" / "tasks" / "data"
    (installed / "fashion-mnist").mkdir(parents=True)
    (installed / images.FASHION_SAMPLE_FILES[0]).write_bytes(b"")
    monkeypatch.setattr(images, "PACKAGE_DATA_ROOT", tmp_path / "fab" / "tasks" / "data")  # the FAB copy: no data
    monkeypatch.setattr(sys, "path", [str(tmp_path / "elsewhere"), str(tmp_path / "site")])
    monkeypatch.setattr(sys, "meta_path", [m for m in sys.meta_path if "editable" not in repr(m).lower()])
    assert images.resolve_data_root("") == installed
    explicit = tmp_path / "shared"
    explicit.mkdir()
    assert images.resolve_data_root(str(explicit)) == explicit  # an explicit root is used as given
