"""Pair coverage in sampled rounds: measure-only probes against training the added holders.

Usage: python benchmarks/bench_affinity_coverage.py [--seeds 3] [--fraction 0.25] [--out DIR]

ColD Fusion's setting on the planted suite (testbed/planted_loop.py's `planted_mas`, case
"one"): 8 tasks in groups of 3+3+2, 8 clients holding ONE task each, `fraction` of them drawn a
round, 3 measured merged rounds of 30 local steps, then the MAS split. Side by side per seed,
`affinity-coverage`:

* `probe` (default): the undrawn tasks' holders send gradient summaries only;
* `train`: they train as well (and are fused);
* `none`: only the drawn clients measure.

Prints, per mode and seed, the ARI of the recovered grouping, the contributor trainings and
probes of the measuring rounds, their client steps (a probe's gradient window counts as steps),
their client seconds (training plus measurement) and measurement as a share of training seconds; writes coverage.json to --out.
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from strategies.affinity.summaries import window_steps  # noqa: E402
from testbed.affinity_harness import grouping_ari  # noqa: E402
from testbed.planted_loop import planted_mas  # noqa: E402

MODES = ("probe", "train", "none")
LOCAL_STEPS = 30  # planted_mas's local steps
AFFINITY_STEPS = 10  # the run config's default budget


def run(mode: str, seed: int, fraction: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        suite, history = planted_mas(pathlib.Path(d), "one", seed, fraction=fraction,
                                     **{"min-clients": 8, "affinity-coverage": mode})
    rounds = history.rounds
    measuring = [r for r in rounds[1:] if r.get("affinity")]
    trainings = sum(len(r["clients"]) for r in measuring)
    probes = sum(len(r["compute"].get("probes", [])) for r in measuring)
    train_s = sum(r["compute"]["train_seconds"] for r in measuring)
    return {
        "mode": mode, "seed": seed,
        "ari": grouping_ari(suite.planted_groups, rounds[-1]["groups"], suite.task_names),
        "measuring_rounds": len(measuring), "trainings": trainings, "probes": probes,
        "client_steps": trainings * LOCAL_STEPS + probes * window_steps(AFFINITY_STEPS, 1),
        "client_seconds": train_s + sum(r["compute"]["affinity_seconds"] for r in measuring),
        "affinity_share": sum(r["compute"]["affinity_seconds"] for r in measuring) / train_s if train_s else float("nan"),
        "never_measured_pairs": measuring[-1]["affinity"]["coverage"]["summary"]["never"] if measuring else None,
        "groups": rounds[-1]["groups"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_affinity_coverage"))
    args = ap.parse_args()
    runs = []
    for seed in range(args.seeds):
        for mode in MODES:
            r = run(mode, seed, args.fraction)
            runs.append(r)
            print(f"  {mode:5} seed {seed}: ARI {r['ari']:+.2f}, {r['trainings']} trainings + {r['probes']} probes "
                  f"= {r['client_steps']} client steps in the measuring rounds, pairs never measured "
                  f"{r['never_measured_pairs']}, {r['client_seconds']:.2f} client s (measurement {100 * r['affinity_share']:.0f}% "
                  "of training s)", flush=True)
    print("\n| affinity-coverage | ARI (mean, seeds at 1.0) | trainings | probes | client steps | client s | measurement / training s |")
    print("|---|---|---|---|---|---|---|")
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        aris = [r["ari"] for r in mine]
        print(f"| {mode} | {np.mean(aris):+.2f} ({sum(a == 1.0 for a in aris)}/{len(aris)}) | "
              f"{np.mean([r['trainings'] for r in mine]):.0f} | {np.mean([r['probes'] for r in mine]):.0f} | "
              f"{np.mean([r['client_steps'] for r in mine]):.0f} | {np.mean([r['client_seconds'] for r in mine]):.2f} | "
              f"{100 * np.mean([r['affinity_share'] for r in mine]):.0f}% |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps({"fraction": args.fraction, "runs": runs}, indent=1) + "\n")
    print(f"\nwrote {args.out / 'coverage.json'}")


if __name__ == "__main__":
    main()
