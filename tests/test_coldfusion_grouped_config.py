"""Grouped ColD Fusion trains like plain ColD Fusion, and --reuse adds it to a seed that was run plain.

No model is built here: these check the run config handed to the round loop and the reuse rule.
"""

from dataclasses import replace
from pathlib import Path

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


def _fake_grouped_seed(cfg, seed: int, plain: float, grouped: float) -> dict:
    """A seed result of the shape experiment.run_seed writes, with constant accuracies."""
    def evals(acc: float) -> dict:
        out = {t: {"split": "seen", "probe": acc, "finetune": acc} for t in cfg.seen}
        out |= {t: {"split": "held_out", "probe": acc, "finetune": acc, "fewshot_probe": acc, "fewshot_finetune": acc}
                for t in cfg.held_out}
        return out
    tasks, n = list(cfg.seen), len(cfg.seen)
    return {
        "seed": seed, "config": cfg.fusion_key(), "original": evals(0.5),
        "eval": {"plain": evals(plain), "grouped": evals(grouped)},
        "fusion": {"iterations": [{"iteration": i, "contributors": tasks[:3], "seconds": 10.0} for i in range(1, 7)]},
        "grouped": {
            "mode": "mas", "final_groups": [tasks[:2], tasks[2:]],
            "groups_per_round": [[tasks]] * 3 + [[tasks[:2], tasks[2:]]] * 4, "events": [],
            "train_seconds": 50.0, "affinity_seconds": 1.0, "client_trainings": 19,
            "affinity": {"lookahead": {"tasks": tasks, "matrix": [[None if i == j else 0.1 for j in range(n)] for i in range(n)]}},
            "affinity_signal": "lookahead", "affinity_coverage": {"same-client": 0, "cross-client": n * (n - 1), "never": 0},
            "affinity_measured_rounds": 2,
        },
    }


def test_grouped_report_compares_grouped_with_plain_on_the_same_seeds():
    from experiments.coldfusion.report_grouped import grouped_markdown

    cfg = replace(REDUCED, grouping="mas")
    text = grouped_markdown([_fake_grouped_seed(cfg, 0, 0.60, 0.62), _fake_grouped_seed(cfg, 1, 0.60, 0.64)], cfg)
    assert "rounds 0-2: {" + ", ".join(cfg.seen) + "}" in text
    assert f"cross-client {len(cfg.seen) * (len(cfg.seen) - 1)}" in text and "all pairs cross-client" in text
    # seen probe: MiniLM 50, plain 60, grouped 62 and 64 -> grouped - plain +3.0 ± 1.4
    assert "| seen | linear probe (frozen) | 50.0 ± 0.0 | 60.0 ± 0.0 | 63.0 ± 1.4 | +3.0 ± 1.4 |" in text
    assert "grouped 19 contributor trainings, 6080 examples" in text and "plain 18 trainings, 5760 examples" in text
    assert grouped_markdown([{"seed": 0, "eval": {"plain": {}}}], cfg) == ""


def test_report_only_mixes_plain_and_grouped_seeds_without_running(tmp_path):
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cfg = replace(REDUCED, grouping="mas")
    out = tmp_path / "out"
    out.mkdir()
    plain_seed = _fake_grouped_seed(cfg, 1, 0.60, 0.60)
    del plain_seed["grouped"], plain_seed["eval"]["grouped"]
    plain_seed["config"] = REDUCED.fusion_key()
    for r in (_fake_grouped_seed(cfg, 0, 0.60, 0.62), plain_seed):
        r["curve"] = [{"iteration": 0, "probe": {t: 0.5 for t in cfg.held_out}, "fewshot_probe": {t: 0.5 for t in cfg.held_out}}]
        r["fusion"] |= {"seconds_per_iteration": 10.0, "body_shift": 1.0}
        r["seconds"] = {"total": 60.0}
        (out / f"seed_{r['seed']}.json").write_text(json.dumps(r))
    proc = subprocess.run([sys.executable, "-m", "fedmtl.cli", "coldfusion", "--preset", "reduced", "--grouping", "mas",
                           "--seeds", "0,1", "--out", str(out), "--report-only", "--no-progress"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "mean ± sd over 2 seed(s)" in report and "seed(s) [0]" in report
    assert json.loads((out / "seed_1.json").read_text())["config"]["grouping"] == "none"  # nothing was rerun
    bad = subprocess.run([sys.executable, "-m", "fedmtl.cli", "coldfusion", "--preset", "reduced", "--grouping", "mas",
                          "--seeds", "0,2", "--out", str(out), "--report-only"], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "seed_2.json is missing" in bad.stderr + bad.stdout
