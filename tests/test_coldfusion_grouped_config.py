"""Grouped ColD Fusion trains like plain ColD Fusion, and --reuse adds it to a seed that was run plain.

No model is built here: these check the run config handed to the round loop and the reuse rule.
"""

from dataclasses import replace

from coordinator.config import RunConfig
from experiments.coldfusion.command import reusable_plain
from experiments.coldfusion.config import PRESETS
from experiments.coldfusion.grouped import run_config

REDUCED = PRESETS["reduced"]


def test_grouped_contributors_train_with_the_plain_runs_settings(tmp_path):
    # Before the fix the round loop's default optimizer (SGD) was used: at lr 1e-4 SGD barely
    # moves MiniLM, so "grouped vs plain" compared two different trainings.
    cfg = replace(REDUCED, grouping="mas")
    rc = RunConfig.from_dict(run_config(cfg, 0, "suite.py:make_suite", tmp_path / "out"))
    assert rc.optimizer == cfg.optimizer == "adamw"
    assert (rc.lr, rc.batch_size, rc.local_steps) == (cfg.lr, cfg.batch_size, cfg.local_steps)
    assert rc.fusion == "uniform" and rc.rounds == cfg.iterations


def _plain_seed(cfg, seed=0) -> dict:
    return {"seed": seed, "config": cfg.fusion_key(), "eval": {"plain": {}}, "original": {}}


def test_reuse_adds_grouping_only_to_a_matching_plain_seed():
    plain = _plain_seed(REDUCED)
    grouped = replace(REDUCED, grouping="mas", split_round=3, max_groups=3)
    assert reusable_plain(plain, grouped)
    # a different fusion or evaluation setting: the plain part must be rerun
    assert not reusable_plain(plain, replace(grouped, local_steps=REDUCED.local_steps + 1))
    assert not reusable_plain(plain, replace(grouped, finetune_steps=REDUCED.finetune_steps + 1))
    # a seed that already has a grouped run is reused whole or rerun, never extended twice
    assert not reusable_plain({**plain, "grouped": {"mode": "mas"}}, grouped)
    assert not reusable_plain({"seed": 0, "config": REDUCED.fusion_key(), "eval": {}}, grouped)


def test_plain_key_ignores_only_grouping_settings():
    a, b = REDUCED.plain_key(), replace(REDUCED, grouping="dynamic", split_round=4, regroup_every=2).plain_key()
    assert a == b and "iterations" in a and "grouping" not in a
