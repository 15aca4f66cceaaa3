"""Checkpoint and resume on the real round loop: a resumed run ends where an uninterrupted one does."""

import json

import pytest
import torch

from coordinator.config import ConfigError, RunConfig
from coordinator.loop import Coordinator
from testbed.inprocess import InProcessGrid

BASE = {"suite": "tiny", "mode": "mas", "split-round": 2, "max-groups": 2, "min-clients": 4, "plots": False,
        "local-steps": 6, "affinity-every": 3, "seed": 3}


def _run(out, rounds, resume=False):
    cfg = RunConfig.from_dict(BASE | {"rounds": rounds, "out": str(out), "resume": resume})
    coordinator = Coordinator(InProcessGrid(4, first_node_id=5000 if resume else 1001), cfg, log=lambda line: None)
    coordinator.run()
    return coordinator


def _final(coordinator):
    return {g.gid: g.tensors() for g in coordinator.groups}, coordinator.grouping()


def test_resumed_run_matches_uninterrupted_run_bitwise(tmp_path):
    full = _run(tmp_path / "full", rounds=4)
    _run(tmp_path / "cut", rounds=3)  # "killed" after round 3: the checkpoint of round 3 is what survives
    resumed = _run(tmp_path / "cut", rounds=4, resume=True)  # other node ids, as after a real restart
    (full_models, full_groups), (res_models, res_groups) = _final(full), _final(resumed)
    assert full_groups == res_groups and len(full_groups) == 2
    assert full_models.keys() == res_models.keys()
    for gid in full_models:
        for k, v in full_models[gid].items():
            assert torch.equal(v, res_models[gid][k]), (gid, k)
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_res = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["metrics"] for r in h_full["rounds"]] == [r["metrics"] for r in h_res["rounds"]]
    assert [r["groups"] for r in h_full["rounds"]] == [r["groups"] for r in h_res["rounds"]]


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
    _run(tmp_path, rounds=3)
    ckpts = sorted((tmp_path / "checkpoints").glob("round_*"))
    newest = ckpts[-1]
    victim = next(newest.glob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:100])
    logs = []
    cfg = RunConfig.from_dict(BASE | {"rounds": 3, "out": str(tmp_path), "resume": True})
    coordinator = Coordinator(InProcessGrid(4), cfg, log=logs.append)
    assert coordinator._resume() == int(ckpts[-2].name.split("_")[1])


def test_resume_refuses_a_different_suite_or_seed(tmp_path):
    _run(tmp_path, rounds=3)
    cfg = RunConfig.from_dict(BASE | {"rounds": 4, "out": str(tmp_path), "resume": True, "seed": 99})
    with pytest.raises(ConfigError, match="seed"):
        Coordinator(InProcessGrid(4), cfg, log=lambda line: None).run()
