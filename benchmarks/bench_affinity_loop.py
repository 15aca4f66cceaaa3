"""Planted recovery through the real round loop, both signals, several seeds and holdings.

Usage: python benchmarks/bench_affinity_loop.py [--steps 10] [--seeds 5]

The real `Coordinator` on an in-process grid (testbed/planted_loop.py's `planted_mas`: mode mas,
8 planted tasks in groups of 3+3+2, 8 clients, 3 measured merged rounds, 30 local steps, batch
64, lr 0.1, affinity-method gradients). Both signals are read from the same measurements (the
history keeps both tracked matrices). Prints ARI per run and the failures per signal, and the
measurement's share of client training seconds.
"""

import argparse
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from strategies.grouping import best_grouping  # noqa: E402
from testbed.affinity_harness import grouping_ari  # noqa: E402
from testbed.planted_loop import HOLDINGS, planted_mas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="affinity-steps")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    fails = {"lookahead": 0, "cosine": 0}
    shares = []
    for case in HOLDINGS:
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as d:
                suite, h = planted_mas(pathlib.Path(d), case, seed, **{"affinity-steps": args.steps})
            r = h.rounds
            train = sum(x["compute"]["train_seconds"] for x in r[1:])
            share = sum(x["compute"]["affinity_seconds"] for x in r[1:]) / train
            shares.append(share)
            out = []
            for s in ("lookahead", "cosine"):
                m = np.array(r[3]["affinity"]["tracked"][s]["matrix"], dtype=float)
                ari = grouping_ari(suite.planted_groups, best_grouping(m, 3, suite.task_names).as_lists(), suite.task_names)
                fails[s] += ari < 1.0
                out.append(f"{s} {ari:.2f}")
            print(f"holding {case:4s} ({HOLDINGS[case]} tasks) seed {seed}", *out, f"share {share:.3f}", flush=True)
    runs = len(HOLDINGS) * args.seeds
    print(f"affinity-steps {args.steps}: runs {runs}, ARI < 1: {fails}; measurement share max {max(shares):.3f}")


if __name__ == "__main__":
    main()
