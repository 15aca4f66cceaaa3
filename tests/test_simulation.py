"""Real federations on Flower's simulation engine (Ray), driven through the `fedmtl` CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator.history import read_history

pytestmark = pytest.mark.slow

FEDMTL = [sys.executable, "-m", "fedmtl.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _simulate(out: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    cmd = FEDMTL + ["simulate", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _history(out: Path) -> dict:
    return read_history(out)  # history.jsonl while the run goes on, history.json once it ended


def test_short_simulation_learns_every_task_streams_json_and_serves_a_live_dashboard(tmp_path):
    """One real run checks the results on disk, the `--json` stream (every stdout line one JSON
    object) and the dashboard answering while the run goes on."""
    out = tmp_path / "run"
    cmd = FEDMTL + ["simulate", "--suite", "tiny", "--clients", "4", "--rounds", "3", "--local-epochs", "3",
                    "--seed", "0", "--out", str(out), "--json", "--dashboard", "--dashboard-port", "0",
                    "--timeout", "400"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events, url, seen_live = [], None, None
    try:
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            url = event.get("dashboard") or url
            if event["event"] == "round" and event["round"] == 1 and url:
                seen_live = httpx.get(url + "api/run", timeout=10).json()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [0, 1, 2, 3] and all(e["rounds"] == 3 for e in rounds)
    assert [e["event"] for e in events if e["event"] == "joined"] == ["joined"] * 4
    assert events[-1]["event"] == "result" and events[-1]["status"] == "finished:completed"
    assert seen_live is not None and seen_live["run"]["last_round"] >= 1

    h = _history(out)
    assert [r["round"] for r in h["rounds"]] == [0, 1, 2, 3]
    assert len(h["tasks"]) >= 4
    for r in h["rounds"]:
        assert set(r) >= {"round", "groups", "metrics", "clients"}
        assert sorted(t for g in r["groups"] for t in g) == sorted(h["tasks"])
        assert set(r["metrics"]) == set(h["tasks"])
        assert all(set(m) >= {"accuracy", "loss"} for m in r["metrics"].values())
    assert h["rounds"][0]["clients"] == [] and all(len(r["clients"]) == 4 for r in h["rounds"][1:])
    first, last = h["rounds"][0]["metrics"], h["rounds"][-1]["metrics"]
    for task in h["tasks"]:
        assert last[task]["accuracy"] > first[task]["accuracy"], task
    assert rounds[-1]["mean_accuracy"] == pytest.approx(
        sum(m["accuracy"] for m in last.values()) / len(h["tasks"]), abs=1e-3)
    assert (out / "plots" / "accuracy.png").stat().st_size > 1000
    assert (out / "models" / "group_0.safetensors").is_file()


def test_bad_option_fails_fast_with_the_key_named(tmp_path):
    started = time.monotonic()
    proc = _simulate(tmp_path, "--set", "fraction=2.0", timeout=60)
    assert proc.returncode == 2 and "fraction = 2.0" in proc.stderr
    proc = _simulate(tmp_path, "--suite", "no_such_module:make", timeout=60)
    assert proc.returncode == 2 and "importing 'no_such_module' failed" in proc.stderr
    proc = _simulate(tmp_path, "--mode", "mas", "--max-groups", "9", timeout=60)
    assert proc.returncode == 2 and "max-groups = 9 but suite 'default' has only 8 tasks" in proc.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "history.jsonl").exists()  # nothing started


def _wait_for_round(out: Path, round_: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if max(r["round"] for r in _history(out)["rounds"]) >= round_:
                return
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            pass
        assert proc.poll() is None, "simulation ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError(f"round {round_} not reached in {timeout}s")


def test_mas_recovers_the_planted_groups_and_a_sigkilled_run_resumes_to_the_same_results(tmp_path):
    """The uninterrupted run checks MAS through the CLI (it recovers the planted groups); a second
    run of the same command is SIGKILLed before the split and resumed, and must match it, split included."""
    args = ["--suite", "planted", "--clients", "9", "--mode", "mas", "--split-round", "3", "--max-groups", "3",
            "--rounds", "4", "--local-steps", "30", "--lr", "0.1", "--batch-size", "64", "--seed", "5"]
    full = _simulate(tmp_path / "full", *args)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    from tasks.registry import load_suite

    planted = sorted(sorted(g) for g in load_suite("planted").planted_groups)
    h_full = _history(tmp_path / "full")
    assert sorted(sorted(g) for g in h_full["rounds"][4]["groups"]) == planted
    assert "split into 3 groups" in full.stdout
    plots = tmp_path / "full" / "plots"
    assert (plots / "affinity_round_3.png").is_file() and (plots / "groups.png").is_file()

    out = tmp_path / "cut"
    proc = subprocess.Popen(FEDMTL + ["simulate", "--out", str(out), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_round(out, 2, proc, timeout=300)  # before the split (end of round 3): resume restores affinity
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and everything in its session die at once
        proc.wait()
    time.sleep(2)  # the launcher's reaper cleans up the orphaned SuperLink
    assert max(r["round"] for r in _history(out)["rounds"]) < 4

    resumed = _simulate(out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    h_res = _history(out)
    assert [r["round"] for r in h_res["rounds"]] == [0, 1, 2, 3, 4]
    assert [r["groups"] for r in h_full["rounds"]] == [r["groups"] for r in h_res["rounds"]]
    for a, b in zip(h_full["rounds"], h_res["rounds"]):
        for task, m in a["metrics"].items():
            assert b["metrics"][task]["accuracy"] == pytest.approx(m["accuracy"], abs=1e-9)
            assert b["metrics"][task]["loss"] == pytest.approx(m["loss"], rel=1e-6)
