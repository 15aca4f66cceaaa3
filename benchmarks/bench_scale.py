"""Scale: 10 to 10,000 simulated clients, 10 sampled per round, on the real simulation engine.

Usage: python benchmarks/bench_scale.py [--quick] [--sizes 10,100,1000,10000] [--sample 10]
           [--rounds 5] [--suite planted] [--memory-guard-gib 16] [--timeout 3600] [--out DIR]

For each federation size N it runs `python -m fedmtl.cli simulate --clients N --fraction S/N
--set fraction-evaluate=S/N --rounds R` (all-in-one, the suite's small model; planted: an MLP
body of a few hundred parameters, so the figures are the framework's, not training's) as a
fresh process on Flower's simulation engine (private SuperLink, Ray, one CPU per client) and
reports:

* start-up: launch to the round-0 line (SuperLink, Ray, N SuperNodes registered, the first
  clients met, round 0 evaluated), with the time to the ServerApp's first line;
* seconds per round (the history's `seconds`, rounds 1..R; and between round lines), and how
  many clients trained per round;
* peak memory of the whole simulation: every process of the run (the command, SuperLink,
  SuperExec, flwr-simulation, Ray's daemons and workers), summed and sampled every 0.5 s:
  PSS (shared pages split between the processes sharing them: what the machine really holds)
  and RSS (shared pages counted in every process, as `ps` adds up);
* memory per idle client: the growth of peak PSS per extra client between sizes.
Targets (issue #10): 10,000 clients fit in 24 GiB on 2 cores; a round's time follows the
sampled clients, not the federation's size (10 of 1000 within 2x of 10 of 10).

A size that fails is reported with where it failed (the output's last lines) and the next
sizes still run; `--memory-guard-gib` stops a run whose PSS passes it (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib as B

from launch.simulation_main import PUMP_ENV  # noqa: E402 - benchlib puts the repo on sys.path

ROUND_LINE = re.compile(r"^round\s+(\d+)/(\d+)\s+\|")
SERVERAPP_LINE = re.compile(r"^fedmtl: suite ")
SUBMITTED = re.compile(r"^\[launcher\] run \d+ submitted")


def run_size(n: int, args: argparse.Namespace, work: Path, pump: str = "fedmtl") -> dict[str, Any]:
    """One `fedmtl simulate` of `n` clients; `pump="flower"` runs Flower's own message pump
    (launch/simulation_main.py) for the side-by-side table."""
    out = work / f"n{n}-{pump}"
    frac = min(1.0, args.sample / n)
    cmd = [sys.executable, "-m", "fedmtl.cli", "simulate", "--suite", args.suite, "--clients", str(n),
           "--rounds", str(args.rounds), "--mode", "all-in-one", "--fraction", repr(frac),
           "--set", f"fraction-evaluate={frac!r}", "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if pump == "flower":
        env[PUMP_ENV] = "flower"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=B.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    marks: dict[str, float] = {}
    rounds: dict[int, float] = {}
    tail: list[str] = []
    guard = {"tripped": None}
    memory_at: dict[str, int] = {}

    def on_sample(rss: int, pss: int) -> None:
        if pss > args.memory_guard_gib * B.GIB and guard["tripped"] is None:
            guard["tripped"] = pss
            os.killpg(proc.pid, signal.SIGTERM)

    sampler = B.FamilyMemorySampler(proc.pid, interval=0.5, on_sample=on_sample)
    timer = threading.Timer(args.timeout, lambda: os.killpg(proc.pid, signal.SIGTERM))
    timer.start()
    assert proc.stdout is not None
    with sampler:
        for line in proc.stdout:
            now = time.perf_counter() - start
            line = line.rstrip("\n")
            tail = (tail + [line])[-30:]
            if SUBMITTED.search(line):
                marks.setdefault("submitted", now)
            if SERVERAPP_LINE.search(line):
                marks.setdefault("serverapp", now)
            m = ROUND_LINE.search(line)
            if m:
                rounds.setdefault(int(m.group(1)), now)
                if int(m.group(1)) == 0:
                    memory_at["round0_pss"] = sampler.sample()[1]
        rc = proc.wait()
    timer.cancel()
    wall = time.perf_counter() - start
    res: dict[str, Any] = {
        "clients": n, "pump": pump, "fraction": frac, "rc": rc, "wall": wall, "marks": marks, "round_lines": rounds,
        "peak_pss": sampler.peak_pss, "peak_rss": sampler.peak_rss, "peak_processes": sampler.peak_processes,
        "round0_pss": memory_at.get("round0_pss"), "memory_samples": sampler.samples[:: max(1, len(sampler.samples) // 400)],
        "guard_tripped_at": guard["tripped"], "tail": tail,
    }
    res["startup"] = rounds.get(0)
    ordered = [rounds[r] for r in sorted(rounds)]
    res["line_round_seconds"] = [b - a for a, b in zip(ordered, ordered[1:])]
    hist = out / "history.jsonl"
    if hist.is_file():
        from coordinator.history import read_history

        h = read_history(out)
        rs = [r for r in h["rounds"] if r["round"] >= 1]
        res["round_seconds"] = [r.get("seconds") for r in rs]
        res["trained_per_round"] = [len(r.get("clients") or []) for r in rs]
        res["timing"] = {p: B.median((r.get("timing") or {}).get(p, 0.0) for r in rs)
                         for p in ("discovery", "schedule", "train", "fuse", "affinity", "evaluate", "regroup", "record")}
        res["round0_seconds"] = h["rounds"][0].get("seconds") if h["rounds"] else None
    res["ok"] = rc == 0 and len([r for r in rounds if r >= 1]) == args.rounds
    if not res["ok"]:
        where = "memory guard" if guard["tripped"] else ("timeout" if wall >= args.timeout else "the run")
        res["failure"] = f"{where}: exit {rc}; last lines: " + " | ".join(tail[-8:])
    gib = B.GIB
    print(f"  N={n:>6} ({pump} pump): {'ok' if res['ok'] else 'FAILED'}, start-up {res['startup'] or float('nan'):.1f}s, "
          f"s/round {B.median(res.get('round_seconds') or []):.2f}, peak PSS {res['peak_pss'] / gib:.2f} GiB "
          f"(RSS {res['peak_rss'] / gib:.2f} GiB, {res['peak_processes']} processes), wall {wall:.0f}s", flush=True)
    if not res["ok"]:
        print("    " + res["failure"], flush=True)
    return res


def tables(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    gib = B.GIB
    base = next((r for r in results if r["ok"]), None)
    rows = []
    for r in results:
        per_client = float("nan")
        if base is not None and r["ok"] and r["clients"] > base["clients"]:
            per_client = (r["peak_pss"] - base["peak_pss"]) / (r["clients"] - base["clients"]) / 1024
        rows.append([r["clients"], "ok" if r["ok"] else "failed", r["startup"], r["marks"].get("serverapp"),
                     B.median(r.get("round_seconds") or []), B.median(r["line_round_seconds"]),
                     B.median(r.get("trained_per_round") or []), r["peak_pss"] / gib, r["peak_rss"] / gib,
                     r["peak_processes"], per_client])
    main = B.table(
        f"Scale: {args.sample} clients sampled per round (fraction and fraction-evaluate {args.sample}/N), "
        f"{args.rounds} rounds, suite {args.suite}, all-in-one, `fedmtl simulate` on Ray",
        ["clients N", "status", "start-up s", "to ServerApp s", "s/round (history)", "s/round (lines)",
         "trained/round", "peak PSS GiB", "peak RSS GiB", "processes", "KiB PSS per extra client"], rows,
        note="start-up: launch to the round-0 line; KiB per extra client: peak PSS growth from the smallest size, "
             "per added client.")
    verdicts = []
    big = [r for r in results if r["clients"] >= 10000]
    if big:
        r = big[0]
        fits = r["ok"] and r["peak_pss"] < 24 * gib
        verdicts.append([f"{r['clients']:,} clients fit in 24 GiB on {B.machine_info()['usable_cores']} cores",
                         f"peak PSS {r['peak_pss'] / gib:.2f} GiB (RSS {r['peak_rss'] / gib:.2f})" if r["ok"]
                         else r.get("failure", "failed"), "met" if fits else "not met"])
    small = next((r for r in results if r["clients"] == args.sample and r["ok"]), None)
    for r in results:
        if small is not None and r["ok"] and r["clients"] > args.sample:
            ratio = B.median(r["round_seconds"]) / B.median(small["round_seconds"])
            verdicts.append([f"round time: {args.sample} of {r['clients']} within 2x of {args.sample} of {args.sample}",
                             f"{ratio:.2f}x", "met" if ratio <= 2 else "not met"])
    phases = B.table("fedmtl's per-round step split (median seconds, rounds 1..R)",
                     ["clients N", "discovery", "schedule", "train", "fuse", "evaluate", "round (history)"],
                     [[r["clients"], *[(r.get("timing") or {}).get(p) for p in
                                       ("discovery", "schedule", "train", "fuse", "evaluate")],
                       B.median(r.get("round_seconds") or [])]
                      for r in results if r.get("timing")],
                     note="discovery: drawing the round's clients and asking the ones not met yet what they hold.")
    return [main, B.table("Scale targets", ["target", "result", "verdict"], verdicts), phases], verdicts


def pump_table(results: list[dict[str, Any]], flower: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per round with fedmtl's message pump and with Flower's, run one after the other."""
    ours = {r["clients"]: r for r in results}
    rows = []
    for f in flower:
        r = ours[f["clients"]]
        a, b = B.median(r.get("round_seconds") or []), B.median(f.get("round_seconds") or [])
        rows.append([f["clients"], a, b, b / a if r["ok"] and f["ok"] else None, r["startup"], f["startup"]])
    return B.table("Simulation message pump: fedmtl's (nodes with a message waiting) against Flower's (every "
                   "node, every sweep), same size, one after the other",
                   ["clients N", "s/round fedmtl pump", "s/round Flower pump", "Flower / fedmtl",
                    "start-up s fedmtl", "start-up s Flower"], rows,
                   note="median over rounds 1..R of the history's round seconds.")


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r["ok"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = [r["clients"] for r in ok]
    ax.plot(ns, [r["startup"] for r in ok], marker="o", label="start-up (s)")
    ax.plot(ns, [B.median(r["round_seconds"]) for r in ok], marker="s", label="seconds per round")
    ax.set(xscale="log", xlabel="simulated clients N (10 sampled per round)", ylabel="seconds",
           title="Time: start-up and rounds")
    ax2.plot(ns, [r["peak_pss"] / B.GIB for r in ok], marker="o", label="peak PSS (all processes)")
    ax2.plot(ns, [r["peak_rss"] / B.GIB for r in ok], marker="s", linestyle="--", label="peak RSS sum")
    ax2.set(xscale="log", xlabel="simulated clients N", ylabel="GiB", title="Memory of the whole simulation")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 10,100, 2 rounds")
    ap.add_argument("--sizes", default=None, help="comma-separated (default 10,100,1000,10000)")
    ap.add_argument("--sample", type=int, default=10, help="clients sampled per round")
    ap.add_argument("--rounds", type=int, default=None, help="default 5 (quick 2)")
    ap.add_argument("--suite", default="planted")
    ap.add_argument("--memory-guard-gib", type=float, default=16.0, help="stop a run whose summed PSS passes this")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds one size may take")
    ap.add_argument("--out", type=Path, default=B.RESULTS / "scale")
    ap.add_argument("--compare-pump", default="", metavar="SIZES",
                    help="at these sizes also run Flower's own simulation message pump, side by side "
                         "(comma-separated, e.g. 10,10000; launch/simulation_main.py)")
    args = ap.parse_args(argv)
    sizes = B.parse_list(args.sizes or ("10,100" if args.quick else "10,100,1000,10000"), int)
    args.rounds = args.rounds or (2 if args.quick else 5)
    report = B.new_report("scale", "Scale: simulated clients on one machine", {
        "sizes": sizes, "sample": args.sample, "rounds": args.rounds, "suite": args.suite,
        "memory_guard_gib": args.memory_guard_gib, "quick": args.quick})
    results, flower = [], []
    compare = B.parse_list(args.compare_pump, int) if args.compare_pump else []
    with tempfile.TemporaryDirectory(prefix="fedmtl-bench-scale-") as tmp:
        for n in sizes:
            results.append(run_size(n, args, Path(tmp)))
            if n in compare:
                flower.append(run_size(n, args, Path(tmp), pump="flower"))
    report["tables"], report["targets"] = tables(results, args)
    if flower:
        report["tables"].append(pump_table(results, flower))
    for t in report["tables"]:
        B.print_table(t)
    report["raw"] = {"sizes": results, "flower_pump": flower}
    args.out.mkdir(parents=True, exist_ok=True)
    if sum(r["ok"] for r in results) >= 2:
        plot(results, args.out / "scale.png")
        report["plots"].append("scale.png")
    B.write_report(report, args.out)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
