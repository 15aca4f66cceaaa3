"""Quality per unit of client compute: the grouping modes side by side on the same federation.

Usage:
  python benchmarks/bench_quality.py [--quick] [--suites default,planted[,text]] [--seeds 0,1,2]
         [--modes separate,one-by-one,all-in-one,mas2,mas3,dynamic] [--rounds R] [--clients N]
         [--capacity 1] [--target ACC] [--set KEY=VALUE ...] [--out DIR] [--reuse [REPORT ...]]

For every suite, mode and seed it runs one federation on the real round loop in this process
(`benchmarks/federation.py`: the real Coordinator and ClientApp on an in-process grid, clients
served one at a time on one core, so client seconds are comparable; no Ray, so dozens of runs
fit) and reports, over seeds (mean ± sample std):

* final per-task and mean test accuracy, total test loss (sum over tasks of the mean
  per-example loss), cumulative client compute (training + affinity-measurement seconds
  summed over clients, from the history's `compute`), task-batches trained (machine-
  independent), and the run's wall time;
* the compute-matched comparison: each mode's mean accuracy at the same client-compute budget
  (the smallest total any mode spent), and the client compute each mode needs to first reach a
  target accuracy (default: the lowest final mean accuracy of any mode, so every mode can);
* the published anchors side by side: MAS's "2x less training time than one-by-one" (compute
  to the target, `one-by-one` over `mas`; `separate` where one-by-one was not run) and "lower
  loss than all-in-one"; TAG's "10% lower loss than all tasks together";
* why a grouping mode wins or loses: per-task training received (task-batches per task) and
  the accuracy step at the split.

Modes: `separate`, `one-by-one`, `all-in-one`, `mas2`/`mas3` (mas with max-groups 2 / 3),
`dynamic` (max-groups 3). `separate` runs at the benchmark's client capacity (1 by default: a
client trains one of its single-task models a round, so it is the cheapest mode); `one-by-one`
is MAS's baseline, every task's own model trained by each of its holders every round
(`separate` with a capacity no client reaches). A plot per suite (mean accuracy against cumulative client compute, one curve
per mode; and against rounds) goes beside the JSON. Full size takes about an hour on 2 cores;
`--quick` (planted suite, 2 seeds, 5 rounds) a couple of minutes. `--reuse [REPORT ...]` keeps the runs
earlier reports (default: `--out`'s) made with the same federation and runs only the missing modes and
seeds, so a long benchmark grows a seed or a mode at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import benchlib as B
from federation import curve, first_reach, run_federation, value_at

from coordinator.commands.common import parse_value
from tasks.registry import builtin_data_root, load_suite

MODES: dict[str, dict[str, Any]] = {
    "separate": {"mode": "separate"},
    "one-by-one": {"mode": "separate", "client-capacity": 1024},  # every single-task model, every round
    "all-in-one": {"mode": "all-in-one"},
    "mas2": {"mode": "mas", "max-groups": 2},
    "mas3": {"mode": "mas", "max-groups": 3},
    "dynamic": {"mode": "dynamic", "max-groups": 3},
}

# The federation each suite is run on: the project's defaults where they work (default suite:
# `fedmtl simulate`'s own settings), the README's planted example otherwise.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"clients": 6, "config": {"rounds": 12}},
    "planted": {"clients": 9, "config": {"rounds": 12, "local-steps": 30, "lr": 0.1, "batch-size": 64,
                                         "affinity-every": 5}},
    "tiny": {"clients": 4, "config": {"rounds": 6}},
    # MiniLM on CPU: few short rounds; refine once the text suite has landed and been timed.
    "text": {"clients": 6, "config": {"rounds": 6, "local-steps": 10, "batch-size": 16, "affinity-every": 5}},
}
COMMON = {"client-capacity": 1, "split-round": 3, "regroup-every": 4, "regroup-rounds": 2}


def suite_setup(suite: str, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    preset = PRESETS.get(suite, {"clients": 6, "config": {"rounds": 12}})
    config = {"suite": suite, "data-root": builtin_data_root()} | COMMON | preset["config"]
    config["client-capacity"] = args.capacity
    if args.quick:
        config |= {"rounds": 5, "split-round": 2, "regroup-every": 1, "regroup-rounds": 1}
        if "local-steps" in config:
            config["local-steps"] = min(int(config["local-steps"]), 15)
    if args.rounds:
        config["rounds"] = args.rounds
    for item in args.set:
        key, _, text = item.partition("=")
        config[key.strip()] = parse_value(text.strip())
    return args.clients or preset["clients"], config


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A suite's run config without what only names this machine (the data folder's path)."""
    return {k: v for k, v in config.items() if k != "data-root"}


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """Every run-config key as the round loop will see it, defaults included (not the data
    folder or the output path): what decides whether an earlier run is the same federation
    even after a default changed (e.g. `head-init`)."""
    from coordinator.config import RunConfig  # noqa: PLC0415

    full = {k: v for k, v in RunConfig.from_dict(dict(config)).to_dict().items() if k not in ("data-root", "out")}
    return json.loads(json.dumps(full, default=str))  # as a report stores it (tuples become lists)


def reusable_runs(previous: list[dict[str, Any]], suite: str, clients: int,
                  base: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs of earlier reports (`--reuse`) made with exactly this suite's federation.

    A run is reused only where the clients and the whole effective run config (every key,
    defaults included, but the data path) are the same, so adding seeds or modes to a long
    benchmark (the text suite's runs take minutes each) never mixes federations, even across
    a change of a default; each reused run keeps the commit and date it was made at. Reports
    older than the effective config in them are matched on their explicit keys, with a
    warning: a default may have changed since they ran. Where several reports hold the same
    mode and seed, the first one's run is kept."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for report in previous:
        raw = report.get("raw", {}).get(suite)
        if not raw or raw.get("clients") != clients or _comparable(raw.get("config", {})) != _comparable(base):
            continue
        made = {"commit": report.get("versions", {}).get("fedmtl_commit"), "date": report.get("date")}
        if "effective" in raw:
            if raw["effective"] != effective_config(base):
                continue
        else:
            print(f"  {suite}: reusing runs made at {made['commit']} by their explicit run-config keys only "
                  "(the report predates the effective config): defaults that changed since are not checked",
                  flush=True)
        for mode, mode_runs in raw.get("runs", {}).items():
            for run in mode_runs:
                found.setdefault((mode, int(run["seed"])), {"made": made} | run)
    return found


def run_suite(suite: str, args: argparse.Namespace, work: Path,
              previous: list[dict[str, Any]] = ()) -> dict[str, Any]:
    clients, base = suite_setup(suite, args)
    reuse = reusable_runs(previous, suite, clients, base)
    runs: dict[str, list[dict[str, Any]]] = {}
    for mode in args.modes:
        for seed in args.seeds:
            if (mode, seed) in reuse:
                run = reuse[(mode, seed)]
                runs.setdefault(mode, []).append(run)
                print(f"  {suite:8} {mode:10} seed {seed}: reused (made at {run['made']['commit']}, "
                      f"{run['made']['date']})", flush=True)
                continue
            config = base | MODES[mode] | {"seed": seed}
            result = run_federation(config, clients, work / f"{suite}-{mode}-{seed}")
            points = curve(result)
            final = points[-1]
            run = {"seed": seed, "wall": result.wall, "curve": points, "final_groups": result.final_groups,
                   "task_batches_per_task": result.task_batches_per_task,
                   "events": [e for r in result.history["rounds"] for e in r.get("events", [])]}
            runs.setdefault(mode, []).append(run)
            print(f"  {suite:8} {mode:10} seed {seed}: mean acc {final['mean_accuracy']:.3f}, total loss "
                  f"{final['total_loss']:.3f}, client compute {final['compute']:.1f}s "
                  f"(affinity {final['affinity_seconds']:.1f}s), wall {result.wall:.0f}s, groups {result.final_groups}",
                  flush=True)
    return {"suite": suite, "clients": clients, "config": base, "effective": effective_config(base), "runs": runs}


# ----------------------------------------------------------------------------- analysis
def _final(run: dict[str, Any]) -> dict[str, Any]:
    return run["curve"][-1]


def _xs_ys(run: dict[str, Any], x: str = "compute") -> tuple[list[float], list[float]]:
    return [p[x] for p in run["curve"]], [p["mean_accuracy"] for p in run["curve"]]


def analyse(res: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Tables and headline numbers of one suite."""
    runs, suite = res["runs"], res["suite"]
    modes = list(runs)
    tasks = sorted(_final(runs[modes[0]][0])["accuracy"], key=lambda t: (len(t), t))
    summary = {}
    for mode, rs in runs.items():
        summary[mode] = {
            "acc": B.mean_std(_final(r)["mean_accuracy"] for r in rs),
            "loss": B.mean_std(_final(r)["total_loss"] for r in rs),
            "compute": B.mean_std(_final(r)["compute"] for r in rs),
            "affinity": B.mean_std(_final(r)["affinity_seconds"] for r in rs),
            "batches": B.mean_std(_final(r)["task_batches"] for r in rs),
            "wall": B.mean_std(r["wall"] for r in rs),
        }
    # Budgets: the smallest total of any run (every run has a value there), and the smallest total
    # of any run of the modes that train every task each round (separate spends far less).
    totals = {m: [_final(r)["compute"] for r in rs] for m, rs in runs.items()}
    budgets = [min(min(v) for v in totals.values())]
    rich = [min(v) for m, v in totals.items() if m != "separate"]
    if rich and min(rich) > budgets[0] * 1.05:
        budgets.append(min(rich))
    batch_budget = min(_final(r)["task_batches"] for rs in runs.values() for r in rs)
    finals = [s["acc"][0] for s in summary.values()]
    targets = [target] if target is not None else sorted({round(min(finals), 3), round(0.98 * max(finals), 3)})
    for mode, rs in runs.items():
        s = summary[mode]
        s["acc_at_budget"] = [B.mean_std(value_at(*_xs_ys(r), b) for r in rs) for b in budgets]
        s["acc_at_batch_budget"] = B.mean_std(value_at(*_xs_ys(r, "task_batches"), batch_budget) for r in rs)
        s["to_target"], s["reached"], s["rounds_to_target"] = [], [], []
        for t in targets:
            reach = [first_reach(*_xs_ys(r), t) for r in rs]
            s["to_target"].append(B.mean_std(reach))
            s["reached"].append(sum(math.isfinite(v) for v in reach))
            s["rounds_to_target"].append(B.mean_std(first_reach(*_xs_ys(r, "round"), t) for r in rs))
    n = len(next(iter(runs.values())))
    main = B.table(
        f"{suite}: final quality and cost ({res['clients']} clients, {res['config']['rounds']} rounds, "
        f"capacity {res['config']['client-capacity']}, {n} seeds; mean ± std)",
        ["mode", "mean acc", "total loss", "client compute s", "of it affinity s", "task-batches", "wall s",
         "final groups (seed 0)"],
        [[m, B.pm(_final(r)["mean_accuracy"] for r in rs), B.pm((_final(r)["total_loss"] for r in rs), 2),
          B.pm((_final(r)["compute"] for r in rs), 1), B.pm((_final(r)["affinity_seconds"] for r in rs), 1),
          f"{summary[m]['batches'][0]:,.0f}", B.pm((r["wall"] for r in rs), 0), _groups_text(rs[0]["final_groups"])]
         for m, rs in runs.items()],
        note="client compute = training + affinity-measurement seconds summed over clients (one core each); "
             "task-batches = forward+backward passes of one task's mini-batch.")
    per_task = B.table(
        f"{suite}: final per-task accuracy (mean ± std over seeds)",
        ["task", *modes],
        [[t, *[B.pm(_final(r)["accuracy"].get(t) for r in runs[m]) for m in modes]] for t in tasks])
    matched = B.table(
        f"{suite}: compute-matched comparison",
        ["mode", *[f"acc at {b:.1f} client-s" for b in budgets], f"acc at {batch_budget:,.0f} task-batches",
         *[f"client-s to acc {t:.3f} (seeds)" for t in targets], *[f"rounds to {t:.3f}" for t in targets]],
        [[m, *[_pm_pair(v, 3, "ran out") for v in s["acc_at_budget"]], _pm_pair(s["acc_at_batch_budget"], 3),
          *[f"{_pm_pair(v, 1)} ({k}/{n})" for v, k in zip(s["to_target"], s["reached"])],
          *[_pm_pair(v, 1) for v in s["rounds_to_target"]]] for m, s in summary.items()],
        note=f"budgets: the smallest client-compute total of any run ({budgets[0]:.1f} s)"
             + (f", and of any run but separate's ({budgets[1]:.1f} s)" if len(budgets) > 1 else "")
             + "; accuracy there: each run's mean-accuracy curve interpolated linearly between evaluated rounds "
               "(mean ± std over seeds; 'ran out' = the runs ended before that budget). Targets: the lowest final "
               "mean accuracy of any mode, and 98% of the highest; client-s and rounds to a target: where the curve "
               "first crosses it, mean over the seeds that reach it (count in brackets).")
    anchors = anchor_table(suite, summary)
    why = why_table(res, summary)
    return {"summary": summary, "budgets": budgets, "batch_budget": batch_budget, "targets": targets,
            "verdicts": anchor_verdicts(suite, summary),
            "tables": [main, per_task, matched, anchors, why]}


def _pm_pair(ms: tuple[float, float], digits: int, missing: str = "not reached") -> str:
    m, s = ms
    return missing if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _groups_text(groups: list[list[str]]) -> str:
    return " / ".join(",".join(g) for g in groups) if len(groups) <= 4 else f"{len(groups)} groups"


def _baseline(summary: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """MAS's "one-by-one" baseline: the `one-by-one` mode where it ran, else `separate`."""
    name = "one-by-one" if "one-by-one" in summary else "separate"
    return name, summary.get(name)


def anchor_verdicts(suite: str, summary: dict[str, Any]) -> list[list[str]]:
    """The anchors as [target, result, verdict] rows for the report's first page."""
    aio = summary.get("all-in-one")
    base_name, base = _baseline(summary)
    mas = {m: summary[m] for m in ("mas2", "mas3") if m in summary}
    rows = []
    if base and mas:
        ratios = {m: base["to_target"][0][0] / s["to_target"][0][0] for m, s in mas.items() if s["to_target"][0][0] > 0}
        text = ", ".join(f"{m} {v:.2f}x" for m, v in ratios.items()) or "not reached"
        rows.append([f"{suite}: MAS needs 2x less client compute than {base_name} to reach the lower target", text,
                     "met" if any(v >= 2 for v in ratios.values()) else "not met"])
    if aio:
        for label, bound in (("MAS: lower total loss than all-in-one", 0.0), ("TAG: 10% lower total loss than all-in-one", -10.0)):
            change = {m: (s["loss"][0] / aio["loss"][0] - 1) * 100 for m, s in summary.items()
                      if m in ("mas2", "mas3", "dynamic")}
            text = ", ".join(f"{m} {v:+.1f}%" for m, v in change.items())
            rows.append([f"{suite}: {label}", text, "met" if any(v < bound for v in change.values()) else "not met"])
    return rows


def anchor_table(suite: str, summary: dict[str, Any]) -> dict[str, Any]:
    rows = []
    aio = summary.get("all-in-one")
    base_name, base = _baseline(summary)
    for m in ("mas2", "mas3", "dynamic"):
        if m not in summary:
            continue
        s = summary[m]
        time_ratio = base["to_target"][0][0] / s["to_target"][0][0] if base and s["to_target"][0][0] > 0 else float("nan")
        total_ratio = base["compute"][0] / s["compute"][0] if base else float("nan")
        loss_vs = (s["loss"][0] / aio["loss"][0] - 1) * 100 if aio else float("nan")
        acc_vs = s["acc"][0] - aio["acc"][0] if aio else float("nan")
        rows.append([m, time_ratio, total_ratio, f"{loss_vs:+.1f}%", f"{acc_vs:+.3f}"])
    return B.table(
        f"{suite}: published anchors (MAS: 2x less training time than one-by-one, lower loss than all-in-one; "
        "TAG: 10% lower loss than all tasks together)",
        ["mode", f"{base_name}/mode client-s to the lower target", f"{base_name}/mode total client-s",
         "total loss vs all-in-one", "mean acc vs all-in-one"], rows,
        note=f"ratios > 1: the mode needs less compute than {base_name}; a negative loss change: lower loss than "
             "all-in-one.")


def why_table(res: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What each task was trained on, and the accuracy step at the split."""
    split = int(res["config"]["split-round"])
    rows = []
    for mode, rs in res["runs"].items():
        per_task = [sum(r["task_batches_per_task"].values()) / max(1, len(r["task_batches_per_task"])) for r in rs]
        step = []
        for r in rs:
            acc = {p["round"]: p["mean_accuracy"] for p in r["curve"]}
            if split in acc and split + 1 in acc and mode not in ("separate", "one-by-one", "all-in-one"):
                step.append(acc[split + 1] - acc[split])
        after = []
        for r in rs:
            pts = [p for p in r["curve"] if p["round"] > split]
            if len(pts) >= 2:
                after.append(pts[-1]["mean_accuracy"] - pts[0]["mean_accuracy"])
        rows.append([mode, B.mean_std(per_task)[0], B.pm(step) if step else "-", B.pm(after)])
    return B.table(
        f"{res['suite']}: what the modes trained (why one wins or loses)",
        ["mode", "task-batches per task (run)", f"mean acc change round {split}->{split + 1} (the split)",
         f"mean acc change after round {split + 1}"], rows,
        note="under client capacity 1, a split shares the same clients among the groups: each task is trained "
             "by fewer clients per round than all-in-one, for less compute per round.")


# ----------------------------------------------------------------------------- plot
def plot(res: dict[str, Any], analysis: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = dict(zip(MODES, ["tab:gray", "tab:purple", "tab:blue", "tab:orange", "tab:red", "tab:green"]))
    for mode, rs in res["runs"].items():
        col = colours.get(mode)
        k = min(len(r["curve"]) for r in rs)
        xs = [B.mean_std(r["curve"][i]["compute"] for r in rs)[0] for i in range(k)]
        ys = [B.mean_std(r["curve"][i]["mean_accuracy"] for r in rs) for i in range(k)]
        rounds = [rs[0]["curve"][i]["round"] for i in range(k)]
        for r in rs:
            ax.plot(*_xs_ys(r), color=col, alpha=0.25, linewidth=0.8)
        ax.plot(xs, [m for m, _ in ys], color=col, marker="o", markersize=3, linewidth=2, label=mode)
        ax2.errorbar(rounds, [m for m, _ in ys], yerr=[s for _, s in ys], color=col, marker="o", markersize=3,
                     capsize=2, label=mode)
    for i, b in enumerate(analysis["budgets"]):
        ax.axvline(b, color="black", linestyle=":", linewidth=1, label="compute budgets" if i == 0 else None)
    for i, t in enumerate(analysis["targets"]):
        ax.axhline(t, color="black", linestyle="--", linewidth=0.8, label="target accuracies" if i == 0 else None)
    lo = min(p["mean_accuracy"] for rs in res["runs"].values() for r in rs for p in r["curve"][1:] if p["mean_accuracy"] == p["mean_accuracy"])
    for a in (ax, ax2):
        a.set_ylim(max(0.0, lo - 0.05), 1.0)
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="lower right")
    ax.set(xlabel="cumulative client compute (s: training + affinity, summed over clients)",
           ylabel="mean test accuracy", title=f"{res['suite']}: accuracy per unit of client compute")
    ax2.set(xlabel="round", ylabel="mean test accuracy", title=f"{res['suite']}: accuracy over rounds (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="planted suite, seeds 0,1, 5 rounds")
    ap.add_argument("--suites", default=None, help="comma-separated (default: default,planted; quick: planted)")
    ap.add_argument("--seeds", default=None, help="comma-separated run seeds (default 0,1,2; quick 0,1)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {list(MODES)}")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--clients", type=int, default=None, help="default: per suite (default 6, planted 9)")
    ap.add_argument("--capacity", type=int, default=1, help="groups a client trains per round (client-capacity)")
    ap.add_argument("--target", type=float, default=None, help="target mean accuracy (default: lowest final)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run-config key")
    ap.add_argument("--out", type=Path, default=B.RESULTS / "quality")
    ap.add_argument("--reuse", nargs="*", type=Path, default=None, metavar="REPORT",
                    help="keep the runs of these quality.json reports (default: --out's) made with the same "
                         "federation; run only the rest")
    args = ap.parse_args(argv)
    args.suites = B.parse_list(args.suites or ("planted" if args.quick else "default,planted"))
    args.seeds = B.parse_list(args.seeds or ("0,1" if args.quick else "0,1,2"), int)
    args.modes = B.parse_list(args.modes)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    report = B.new_report("quality", "Quality per unit of client compute", {
        "suites": args.suites, "seeds": args.seeds, "modes": {m: MODES[m] for m in args.modes},
        "capacity": args.capacity, "quick": args.quick, "set": args.set, "driver": "in-process grid, serial clients"})
    previous = []
    if args.reuse is not None:
        paths = args.reuse or [p for p in [args.out / "quality.json"] if p.exists()]
        previous = [json.loads(p.read_text()) for p in paths]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedmtl-bench-quality-") as tmp:
        for suite in args.suites:
            try:
                load_suite(suite)
            except Exception as exc:  # noqa: BLE001 - e.g. the text suite before it lands, or its extra missing
                note = f"suite {suite!r} skipped: it cannot be loaded here ({type(exc).__name__}: {exc})"
                print(note, flush=True)
                report["notes"].append(note)
                continue
            res = run_suite(suite, args, Path(tmp), previous)
            analysis = analyse(res, args.target)
            for t in analysis["tables"]:
                B.print_table(t)
            report["tables"] += analysis["tables"]
            report["targets"] += analysis["verdicts"]
            name = f"quality_{suite}.png"
            plot(res, analysis, args.out / name)
            report["plots"].append(name)
            report["raw"][suite] = res | {"budgets": analysis["budgets"], "targets": analysis["targets"],
                                          "batch_budget": analysis["batch_budget"], "summary": analysis["summary"]}
    B.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
