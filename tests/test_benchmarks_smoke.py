"""Benchmarks run and write what docs/benchmarks.md is built from (figures are never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from federation import first_reach, value_at  # noqa: E402


def test_compute_matched_helpers_interpolate_between_evaluated_rounds():
    xs, ys = [0.0, 10.0, 20.0], [0.2, 0.6, 0.8]
    assert value_at(xs, ys, 5.0) == pytest.approx(0.4)
    assert value_at(xs, ys, 20.0) == pytest.approx(0.8)
    assert value_at(xs, ys, 25.0) != value_at(xs, ys, 25.0)  # NaN: past the end of the run
    assert first_reach(xs, ys, 0.7) == pytest.approx(15.0)
    assert first_reach(xs, ys, 0.1) == 0.0
    assert first_reach(xs, ys, 0.9) != first_reach(xs, ys, 0.9)  # NaN: never reached


def test_quick_recovery_benchmark_writes_a_report_run_all_can_render(tmp_path):
    out = tmp_path / "results" / "recovery"
    cmd = [sys.executable, "benchmarks/bench_recovery.py", "--quick", "--configs", "1", "--rounds", "2",
           "--split-round", "1", "--set", "local-steps=5", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "recovery.json").read_text())
    for key in ("benchmark", "date", "command", "machine", "versions", "config", "tables", "targets", "raw"):
        assert key in report, key
    assert report["benchmark"] == "recovery"
    assert {"cores", "memory_gib", "cpu"} <= set(report["machine"])
    assert {"python", "torch", "flwr", "ray", "fedmtl_commit"} <= set(report["versions"])
    assert "bench_recovery.py --quick" in report["command"]
    (run,) = report["raw"]["runs"]
    assert set(run["ari"]) >= {"lookahead", "cosine"}
    assert all(-1.0 <= v <= 1.0 for v in run["ari"].values())
    assert run["run_matches_offline"] is True  # the run's own split is the one re-computed from its history
    assert 0.0 <= run["pairs_measured"] <= 1.0 and run["affinity_seconds"] >= 0.0
    table = report["tables"][0]
    assert table["rows"] and len(table["rows"][0]) == len(table["columns"])
    assert (out / "recovery.table1.csv").read_text().count("\n") == len(table["rows"]) + 2

    doc = tmp_path / "benchmarks.md"
    done = subprocess.run([sys.executable, "benchmarks/run_all.py", "--render-only", "--results",
                           str(tmp_path / "results"), "--doc", str(doc)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = doc.read_text()
    assert "## 2. Grouping recovery" in text and "| task mix |" in text
    assert report["command"] in text
    assert "_No figures: no result (not run)._" in text  # e.g. quality: not run here, said so


def test_fusion_adapter_reads_bench_fusion_rows_against_the_issue_targets(tmp_path):
    """bench_fusion.py writes its own format; the report turns its rows into the two targets."""
    from adapters import machine_line, view

    def row(impl, agg, k, ratio, peak):
        return {"impl": impl, "aggregator": agg, "p": 1_000_000, "k": k, "fuse_gbps": 1.0, "numpy_gbps": 1.0,
                "ratio_numpy": ratio, "torch_gbps": 1.0, "peak_mb": peak, "update_mb": 4.0}

    rows = [row("streaming", "mean", 8, 1.2, 10.0), row("streaming", "mean", 128, 1.7, 12.0),
            row("streaming", "median", 8, 9.0, 10.0), row("streaming", "median", 128, 9.0, 500.0),
            {"impl": "harness", "aggregator": "none", "p": 1_000_000, "k": 8, "numpy_gbps": 1.0, "peak_mb": 5.0,
             "update_mb": 4.0}]
    (tmp_path / "fusion.png").write_bytes(b"png")
    out = view("fusion", {"rows": rows, "machine": {"cores": 2, "cpu": "x", "mem_gb": 25.3}}, tmp_path)
    targets = {t[0]: t for t in out["targets"]}
    speed = targets["streaming mean within 1.5x of a numpy sum"]
    assert speed[2] == "not met" and "1.70x" in speed[1]
    assert targets["peak memory does not grow linearly with K (mean fusers)"][2] == "met"
    robust = targets["peak memory does not grow linearly with K (robust fusers, replies spilled to disk)"]
    assert robust[2] == "not met" and "1.02x" in robust[1]  # (500 - 10) / 120 / 4 MB: every update held
    assert out["plots"] == ["fusion.png"]
    assert all(len(r) == len(t["columns"]) for t in out["tables"] for r in t["rows"])
    assert "2 cores (x); 23.6 GiB" in machine_line({"machine": {"cores": 2, "cpu": "x", "mem_gb": 25.3}})


def test_quality_reuse_matches_the_effective_config_so_a_changed_default_is_not_mixed_in(capsys):
    """`--reuse` joins earlier runs only where the whole effective run config is the same:
    a report made when a default differed (here `head-init`) is not reused; one without the
    effective config (older reports) is matched on its explicit keys, with a warning."""
    import argparse

    import bench_quality as q

    args = argparse.Namespace(capacity=1, quick=False, rounds=4, set=["split-round=2"], clients=None)
    clients, base = q.suite_setup("default", args)
    run = {"seed": 0, "curve": [], "wall": 1.0}

    def report(effective):
        raw = {"clients": clients, "config": base, "runs": {"mas2": [run]}}
        if effective is not None:
            raw["effective"] = effective
        return {"raw": {"default": raw}, "versions": {"fedmtl_commit": "abc"}, "date": "d"}

    same = q.effective_config(base)
    assert same["head-init"] == "shared" and "out" not in same and "data-root" not in same
    assert set(q.reusable_runs([report(same)], "default", clients, base)) == {("mas2", 0)}
    other = dict(same, **{"head-init": "independent"})
    assert q.reusable_runs([report(other)], "default", clients, base) == {}
    assert set(q.reusable_runs([report(None)], "default", clients, base)) == {("mas2", 0)}
    assert "explicit run-config keys only" in capsys.readouterr().out
    assert q.MODES["one-by-one"]["mode"] == "separate" and q.MODES["one-by-one"]["client-capacity"] > 64
