"""Grouping recovery: does affinity-based splitting find task groups that are really there?

Usage:
  python benchmarks/bench_recovery.py [--quick] [--seeds 0,1,2] [--rounds 12] [--split-round 3]
         [--signal lookahead] [--affinity-method gradients|virtual-step|both] [--affinity-steps N]
         [--affinity-sketch-dim D] [--configs N] [--holdings all,some,one] [--clients-per-task K]
         [--set KEY=VALUE ...] [--out DIR]

Planted suites (`tasks/planted.py`, built by name through `testbed/planted_mix.py`) at several
levels of relatedness (`variation`: how far each task's teacher strays from its group's) and
label noise, with 6 to 12 tasks in 2 to 4 groups, and clients holding all tasks, some (half)
or one task each. Each configuration and seed (the seed is both the teacher seed, so every
seed is a different task mix, and the run seed) runs `mas` on the real round loop in this
process (`benchmarks/federation.py`): `split-round` merged rounds measuring affinity, the
split, then training the groups to `rounds`, with `max-groups` = the planted number of groups.

Reported per configuration (mean ± std over seeds, and the worst seed):
* adjusted Rand index (sklearn) between the planted grouping and the grouping the MAS search
  picks from each tracked affinity signal at the split (every signal the clients report is
  scored from the same run; the run itself splits on `--signal`, and its own split is checked
  against the offline re-computation);
* the share of ordered task pairs that were measured at all;
* the measurement's client compute as a share of the run's training compute (whole run, and
  in the merged measuring rounds alone).
Targets (issue #10): ARI 1.0 where groups are clearly planted; measurement <= 10% of training.

The cross-client affinity keys (`affinity-method`, `affinity-steps`, `affinity-sketch-dim`)
are passed through when given; a checkout without them says so and stops.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib as B
import numpy as np
from federation import run_federation
from sklearn.metrics import adjusted_rand_score

from coordinator.commands.common import parse_value
from coordinator.config import RunConfig
from strategies.affinity import SIGNALS
from strategies.grouping import best_grouping
from tasks.registry import load_suite
from testbed.planted_mix import suite_name

BASE = {"mode": "mas", "local-steps": 30, "lr": 0.1, "batch-size": 64, "client-capacity": 1}
DEFAULT_EVERY = RunConfig().affinity_every  # the project's default measurement period (steps)
HOLDINGS = ("all", "some", "one")


@dataclass(frozen=True)
class Mix:
    """One planted task mix: groups x tasks per group, relatedness, label noise, holdings."""

    num_groups: int
    tasks_per_group: int
    variation: float
    label_noise: float
    holdings: str  # all | some (half the tasks) | one

    @property
    def tasks(self) -> int:
        return self.num_groups * self.tasks_per_group

    @property
    def tasks_per_client(self) -> int:
        return {"all": self.tasks, "some": math.ceil(self.tasks / 2), "one": 1}[self.holdings]

    @property
    def clear(self) -> bool:
        """Clearly planted: related tasks within a group, little label noise (whatever clients hold)."""
        return self.variation <= 0.3 and self.label_noise <= 0.05

    def label(self) -> str:
        return (f"{self.tasks} tasks ({self.num_groups}x{self.tasks_per_group}), var {self.variation:g}, "
                f"noise {self.label_noise:g}, holds {self.holdings} ({self.tasks_per_client})")

    def suite(self, seed: int) -> str:
        return suite_name(num_groups=self.num_groups, tasks_per_group=self.tasks_per_group, variation=self.variation,
                          label_noise=self.label_noise, tasks_per_client=self.tasks_per_client, teacher_seed=seed)


def full_mixes() -> list[Mix]:
    mixes = [Mix(3, 3, v, n, "some") for n in (0.05, 0.3) for v in (0.1, 0.3, 0.6, 1.0)]
    mixes += [Mix(2, 3, 0.3, 0.05, "some"), Mix(3, 4, 0.3, 0.05, "some"), Mix(4, 3, 0.3, 0.05, "some")]
    mixes += [Mix(3, 3, 0.3, 0.05, h) for h in ("all", "one")]
    mixes += [Mix(4, 3, 0.3, 0.05, h) for h in ("all", "one")]
    return list(dict.fromkeys(mixes))


def quick_mixes() -> list[Mix]:
    return [Mix(2, 3, 0.3, 0.05, "some"), Mix(3, 3, 0.3, 0.05, "all"), Mix(3, 3, 0.3, 0.05, "one")]


def _method_label(args: argparse.Namespace) -> str:
    """How the runs measured: the method (the run config's default unless given) and its period/budget."""
    cfg = RunConfig()
    method = args.extra.get("affinity-method", getattr(cfg, "affinity_method", "virtual-step"))
    if method == "virtual-step":
        return f"affinity-method virtual-step, affinity-every {args.every}"
    steps = args.extra.get("affinity-steps", getattr(cfg, "affinity_steps", None))
    return f"affinity-method {method}, affinity-steps {steps}" + (
        f", affinity-every {args.every} (virtual step)" if method == "both" else "")


def labels_of(groups: list[list[str]], tasks: list[str]) -> list[int]:
    where = {t: i for i, g in enumerate(groups) for t in g}
    return [where[t] for t in tasks]


def run_mix(mix: Mix, seed: int, args: argparse.Namespace, work: Path, setting: tuple[str, Any] | None = None
            ) -> dict[str, Any]:
    """One mas run on one task mix; `setting` (key, value) overrides one run-config key (the sweep)."""
    suite = mix.suite(seed)
    planted = load_suite(suite).planted_groups
    tasks = load_suite(suite).task_names
    config = BASE | {"suite": suite, "seed": seed, "rounds": args.rounds, "split-round": args.split_round,
                     "max-groups": mix.num_groups, "affinity-signal": args.signal, "affinity-every": args.every} | args.extra
    if setting is not None:
        config[setting[0]] = setting[1]
    tag = f"{setting[0]}={setting[1]}" if setting else "main"
    res = run_federation(config, mix.tasks * args.clients_per_task, work / f"{mix.tasks}-{mix.holdings}-{seed}-{tag}")
    rounds = {r["round"]: r for r in res.history["rounds"]}
    split_round = args.split_round
    tracked = (rounds[split_round].get("affinity") or {}).get("tracked") or {}
    truth = labels_of(planted, tasks)
    ari, found = {}, {}
    # Every signal the clients report, and the built-in ones even when nothing was measured: an
    # unmeasured matrix (all pairs unknown) is what the split then sees.
    for signal in dict.fromkeys([*SIGNALS, *tracked]):
        data = tracked.get(signal) or {"tasks": tasks, "matrix": [[None] * len(tasks) for _ in tasks]}
        m = np.array([[np.nan if v is None else v for v in row] for row in data["matrix"]], dtype=float)
        grouping = best_grouping(m, mix.num_groups, data["tasks"]).as_lists()
        found[signal] = grouping
        ari[signal] = adjusted_rand_score(truth, labels_of(grouping, tasks))
    run_groups = rounds[split_round + 1]["groups"] if split_round + 1 in rounds else []
    pairs = ((rounds[split_round].get("affinity") or {}).get("coverage") or {}).get("pairs") or []
    # Coverage over the whole merged phase: a pair counts once measured in any merged round.
    measured = set()
    for r in range(1, split_round + 1):
        for ti, tj, how, count in ((rounds.get(r, {}).get("affinity") or {}).get("coverage") or {}).get("pairs") or []:
            if how != "never" and count > 0:
                measured.add((ti, tj))
    n_pairs = len(tasks) * (len(tasks) - 1)
    comp = [r.get("compute") or {} for r in res.history["rounds"]]
    train = sum(c.get("train_seconds", 0.0) for c in comp)
    aff = sum(c.get("affinity_seconds", 0.0) for c in comp)
    merged = [rounds[r].get("compute") or {} for r in range(1, split_round + 1) if r in rounds]
    m_train = sum(c.get("train_seconds", 0.0) for c in merged)
    m_aff = sum(c.get("affinity_seconds", 0.0) for c in merged)
    out = {
        "mix": asdict(mix), "seed": seed, "setting": list(setting) if setting else None,
        "affinity_every": config["affinity-every"], "suite": suite, "planted": planted, "found": found, "ari": ari,
        "run_split": run_groups, "run_ari": adjusted_rand_score(truth, labels_of(run_groups, tasks)) if run_groups else None,
        "run_matches_offline": bool(run_groups) and _canon(run_groups) == _canon(found.get(args.signal, [])),
        "pairs_measured": len(measured) / n_pairs if n_pairs else float("nan"), "pairs_coverage_split_round": len(pairs),
        "affinity_share": aff / train if train else float("nan"),
        "affinity_share_merged": m_aff / m_train if m_train else float("nan"),
        "train_seconds": train, "affinity_seconds": aff, "wall": res.wall,
    }
    print(f"  {mix.label()}, seed {seed}{', ' + tag if setting else ''}: ARI " + ", ".join(f"{s} {v:.2f}" for s, v in ari.items())
          + f" | pairs measured {out['pairs_measured']:.0%} | affinity {out['affinity_share']:.1%} of training "
          f"({out['affinity_share_merged']:.0%} in merged rounds) | {res.wall:.0f}s", flush=True)
    return out


def _canon(groups: list[list[str]]) -> list[list[str]]:
    return sorted(sorted(g) for g in groups)


def sweep_table(sweep: list[dict[str, Any]], signals: list[str], key: str) -> dict[str, Any]:
    """ARI and measurement cost as one measurement setting changes (same mixes and seeds)."""
    rows = []
    keys = sorted({(Mix(**r["mix"]), r["setting"][1]) for r in sweep}, key=lambda k: (k[0].tasks, k[1]))
    for mix, value in keys:
        rs = [r for r in sweep if Mix(**r["mix"]) == mix and r["setting"][1] == value]
        rows.append([mix.label(), value, *[B.pm((r["ari"].get(s) for r in rs), 2) for s in signals],
                     B.pm((r["affinity_share"] * 100 for r in rs), 1), B.pm((r["affinity_share_merged"] * 100 for r in rs), 0)])
    return B.table(f"Measurement setting sweep: ARI against cost ({key})",
                   ["task mix", key, *[f"ARI {s}" for s in signals], "measurement % of training (run)",
                    "% in merged rounds"], rows,
                   note="affinity-every: training steps between measurements (the virtual-step/lookahead method).")


def summarise(results: list[dict[str, Any]], signals: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    by_mix: dict[Mix, list[dict[str, Any]]] = {}
    for r in results:
        by_mix.setdefault(Mix(**r["mix"]), []).append(r)
    rows = []
    for mix, rs in by_mix.items():
        cells = []
        for s in signals:
            vals = [r["ari"].get(s) for r in rs]
            cells.append(f"{B.pm(vals, 2)} (min {min(B.finite(vals), default=float('nan')):.2f})")
        rows.append([mix.label(), "yes" if mix.clear else "no", *cells,
                     f"{sum(r['run_matches_offline'] for r in rs)}/{len(rs)}",
                     B.pm((r["pairs_measured"] for r in rs), 2), B.pm((r["affinity_share"] * 100 for r in rs), 1),
                     B.pm((r["affinity_share_merged"] * 100 for r in rs), 0)])
    main = B.table(
        f"Recovered grouping vs planted (ARI; mean ± std over {len(args.seeds)} task mixes/seeds, min = worst seed); "
        f"mas, split after round {args.split_round} of {args.rounds}, run split on {args.signal!r}, "
        f"{_method_label(args)}",
        ["task mix", "clearly planted (var <= 0.3, noise <= 0.05)", *[f"ARI {s}" for s in signals], "run split = offline", "pairs measured",
         "measurement % of training (run)", "% in merged rounds"], rows,
        note="pairs measured: share of ordered task pairs some client measured in the merged rounds. "
             "measurement %: affinity-measurement client seconds / training client seconds.")
    target_rows = []
    for label, holds in (("clients hold all or some tasks", ("all", "some")),
                         ("clients hold one task each (needs cross-client affinity)", ("one",))):
        clear = [r for r in results if Mix(**r["mix"]).clear and r["mix"]["holdings"] in holds]
        if not clear:
            continue
        for s in signals:
            perfect = sum(1 for r in clear if r["ari"].get(s) is not None and r["ari"][s] >= 1 - 1e-9)
            target_rows.append([f"ARI 1.0 where groups are clearly planted, {label} ({s})",
                                f"{perfect}/{len(clear)} runs (mean ARI {B.mean_std(r['ari'].get(s) for r in clear)[0]:.2f})",
                                "met" if perfect == len(clear) else "not met"])
    shares = [r["affinity_share"] for r in results if math.isfinite(r["affinity_share"])]
    under = sum(v <= 0.10 for v in shares)
    target_rows.append(["measurement <= 10% of training compute (whole run)", f"{under}/{len(shares)} runs "
                        f"(median {B.median(shares):.1%}, max {max(shares, default=float('nan')):.1%})",
                        "met" if shares and under == len(shares) else "not met"])
    targets = B.table("Recovery targets", ["target", "result", "verdict"], target_rows)
    by_hold = []
    for h in HOLDINGS:
        rs = [r for r in results if r["mix"]["holdings"] == h]
        if rs:
            by_hold.append([h, len(rs), *[B.pm((r["ari"].get(s) for r in rs), 2) for s in signals],
                            B.pm((r["pairs_measured"] for r in rs), 2)])
    holds = B.table("ARI by what clients hold (all configurations)", ["clients hold", "runs",
                                                                      *[f"ARI {s}" for s in signals], "pairs measured"],
                    by_hold)
    return [main, targets, holds], target_rows


def plot(results: list[dict[str, Any]], signals: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ["-", "--", ":", "-."]
    for si, s in enumerate(signals):
        for noise, colour in zip(sorted({r["mix"]["label_noise"] for r in results}), ["tab:blue", "tab:red", "tab:green"]):
            rs = [r for r in results if r["mix"]["label_noise"] == noise and r["mix"]["holdings"] == "some"
                  and r["mix"]["num_groups"] == 3 and r["mix"]["tasks_per_group"] == 3]
            vs = sorted({r["mix"]["variation"] for r in rs})
            if len(vs) < 2:
                continue
            ys = [B.mean_std(r["ari"].get(s) for r in rs if r["mix"]["variation"] == v) for v in vs]
            ax.errorbar(vs, [m for m, _ in ys], yerr=[sd for _, sd in ys], linestyle=styles[si % 4], color=colour,
                        marker="o", capsize=2, label=f"{s}, label noise {noise:g}")
    ax.set(xlabel="within-group variation of the planted teachers (higher = less related)", ylabel="ARI",
           title="9 tasks in 3 groups, clients hold half: ARI vs relatedness", ylim=(-0.1, 1.05))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    groups = sorted({(r["mix"]["num_groups"], r["mix"]["tasks_per_group"], r["mix"]["holdings"]) for r in results
                     if r["mix"]["variation"] == 0.3 and r["mix"]["label_noise"] == 0.05},
                    key=lambda g: (g[0] * g[1], g[0], HOLDINGS.index(g[2])))
    width = 0.8 / max(1, len(signals))
    for si, s in enumerate(signals):
        ys = [B.mean_std(r["ari"].get(s) for r in results if (r["mix"]["num_groups"], r["mix"]["tasks_per_group"],
                                                               r["mix"]["holdings"]) == g
                         and r["mix"]["variation"] == 0.3 and r["mix"]["label_noise"] == 0.05) for g in groups]
        ax2.bar(np.arange(len(groups)) + si * width, [m for m, _ in ys], width, yerr=[sd for _, sd in ys], capsize=2,
                label=s)
    ax2.set_xticks(np.arange(len(groups)) + width * (len(signals) - 1) / 2,
                   [f"{a * b} tasks\n{a}x{b}\nhold {h}" for a, b, h in groups], fontsize=7)
    ax2.set(ylabel="ARI", title="clear mixes (var 0.3, noise 0.05): by size and holdings", ylim=(-0.1, 1.05))
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 mixes, 1 seed, 4 rounds")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick 0)")
    ap.add_argument("--rounds", type=int, default=None, help="default 12 (quick 4)")
    ap.add_argument("--split-round", type=int, default=None, help="default 3 (quick 2)")
    ap.add_argument("--signal", default="lookahead", help="affinity-signal the runs split on")
    ap.add_argument("--every", type=int, default=DEFAULT_EVERY,
                    help=f"affinity-every: training steps between measurements (default: the project's, {DEFAULT_EVERY})")
    ap.add_argument("--sweep", default=None, help="values of --sweep-key for the cost/quality sweep on two mixes "
                                                  "(default 2,5,10,20; quick and --configs: none; '' = none)")
    ap.add_argument("--sweep-key", default="affinity-every",
                    help="run-config key the sweep varies (e.g. affinity-steps for the gradients method)")
    ap.add_argument("--affinity-method", default=None, help="cross-client affinity: gradients, virtual-step or both")
    ap.add_argument("--affinity-steps", type=int, default=None)
    ap.add_argument("--affinity-sketch-dim", type=int, default=None)
    ap.add_argument("--configs", type=int, default=None, help="only the first N task mixes")
    ap.add_argument("--holdings", default=",".join(HOLDINGS),
                    help=f"only the mixes whose clients hold these (comma-separated of {', '.join(HOLDINGS)})")
    ap.add_argument("--clients-per-task", type=int, default=1,
                    help="clients = this x the number of tasks (default 1; with 'one', the holders of each task)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run-config key")
    ap.add_argument("--out", type=Path, default=B.RESULTS / "recovery")
    args = ap.parse_args(argv)
    args.seeds = B.parse_list(args.seeds or ("0" if args.quick else "0,1,2"), int)
    args.rounds = args.rounds or (4 if args.quick else 12)
    args.split_round = args.split_round or min(2 if args.quick else 3, args.rounds - 1)
    args.extra = {}
    for key in ("affinity-method", "affinity-steps", "affinity-sketch-dim"):
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            if key not in RunConfig.keys():
                ap.error(f"--{key}: this checkout's run config has no {key!r} key (cross-client affinity is not "
                         "merged here); run without it")
            args.extra[key] = value
    for item in args.set:
        key, _, text = item.partition("=")
        args.extra[key.strip()] = parse_value(text.strip())
    if args.quick:
        args.extra.setdefault("local-steps", 15)
    mixes = quick_mixes() if args.quick else full_mixes()
    holdings = B.parse_list(args.holdings, str)
    if not set(holdings) <= set(HOLDINGS) or args.clients_per_task < 1:
        ap.error(f"--holdings must name some of {HOLDINGS}, --clients-per-task must be >= 1")
    mixes = [m for m in mixes if m.holdings in holdings]
    mixes = mixes[: args.configs] if args.configs else mixes
    report = B.new_report("recovery", "Grouping recovery on planted task mixes", {
        "mixes": [asdict(m) | {"tasks_per_client": m.tasks_per_client} for m in mixes], "seeds": args.seeds,
        "rounds": args.rounds, "split_round": args.split_round, "signal": args.signal, "affinity_every": args.every,
        "clients_per_task": args.clients_per_task,
        "run_config": BASE | args.extra, "driver": "in-process grid, serial clients", "quick": args.quick})
    sweep_values = [parse_value(v) for v in B.parse_list(args.sweep if args.sweep is not None else
                                                         ("" if args.quick or args.configs else "2,5,10,20"))]
    if sweep_values and args.sweep_key not in RunConfig.keys():
        ap.error(f"--sweep-key {args.sweep_key!r} is not a run-config key here")
    sweep_mixes = [Mix(3, 3, 0.3, 0.05, "some"), Mix(4, 3, 0.3, 0.05, "some")] if sweep_values else []
    report["config"]["sweep"] = {"key": args.sweep_key, "values": sweep_values, "mixes": [asdict(m) for m in sweep_mixes]}
    results, sweep = [], []
    with tempfile.TemporaryDirectory(prefix="fedmtl-bench-recovery-") as tmp:
        for mix in mixes:
            for seed in args.seeds:
                results.append(run_mix(mix, seed, args, Path(tmp)))
        main_value = (BASE | {"affinity-every": args.every} | args.extra).get(args.sweep_key)
        for mix in sweep_mixes:
            for value in sweep_values:
                for seed in args.seeds:
                    done = [r for r in results if Mix(**r["mix"]) == mix and r["seed"] == seed and value == main_value]
                    sweep.append(done[0] | {"setting": [args.sweep_key, value]} if done
                                 else run_mix(mix, seed, args, Path(tmp), (args.sweep_key, value)))
    signals = sorted({s for r in results for s in r["ari"]}, key=lambda s: (s != args.signal, s))
    tables, report["targets"] = summarise(results, signals, args)
    if sweep:
        tables.append(sweep_table(sweep, signals, args.sweep_key))
    for t in tables:
        B.print_table(t)
    report["tables"] = tables
    report["raw"] = {"runs": results, "sweep": sweep, "signals": signals}
    args.out.mkdir(parents=True, exist_ok=True)
    if len(results) > 1:
        plot(results, signals, args.out / "recovery.png")
        report["plots"].append("recovery.png")
    B.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
