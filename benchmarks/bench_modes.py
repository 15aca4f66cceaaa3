"""Quality per unit of client compute for the four grouping modes, side by side in one run.

Usage: python benchmarks/bench_modes.py [--suite planted] [--clients 9] [--rounds 12] [--capacity 1]
Runs the real coordinator loop on an in-process grid (same ClientApp, same fusion; no Ray, so
the figures are pure training cost) for `separate`, `all-in-one`, `mas` and `dynamic`, and
prints final mean accuracy and loss, client seconds (training, affinity) and accuracy per
client-second. Under client capacity 1 `separate` must share clients between many groups, the
resource-constrained setting MAS targets.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.config import RunConfig  # noqa: E402
from coordinator.history import mean_accuracy  # noqa: E402
from coordinator.loop import Coordinator  # noqa: E402
from testbed.inprocess import InProcessGrid  # noqa: E402


def run_mode(mode: str, args: argparse.Namespace, out: Path) -> dict:
    cfg = RunConfig.from_dict({
        "suite": args.suite, "mode": mode, "rounds": args.rounds, "min-clients": args.clients,
        "client-capacity": args.capacity, "local-steps": args.local_steps, "lr": args.lr, "batch-size": 64,
        "split-round": args.split_round, "max-groups": args.max_groups, "regroup-every": 4, "regroup-rounds": 2,
        "affinity-every": 5 if mode != "separate" else 0, "out": str(out / mode), "plots": False, "seed": args.seed,
    })
    start = time.perf_counter()
    history = Coordinator(InProcessGrid(args.clients), cfg, log=lambda line: None).run()
    wall = time.perf_counter() - start
    last = history.rounds[-1]["metrics"]
    train = sum(r["compute"].get("train_seconds", 0.0) for r in history.rounds)
    aff = sum(r["compute"].get("affinity_seconds", 0.0) for r in history.rounds)
    loss = sum(m["loss"] for m in last.values() if m["loss"] is not None and math.isfinite(m["loss"])) / len(last)
    return {"mode": mode, "acc": mean_accuracy(last), "loss": loss, "train": train, "aff": aff, "wall": wall,
            "groups": history.rounds[-1]["groups"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="planted")
    ap.add_argument("--clients", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--capacity", type=int, default=1)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--split-round", type=int, default=3)
    ap.add_argument("--max-groups", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_mode(m, args, Path(tmp)) for m in ("separate", "all-in-one", "mas", "dynamic")]
    print(f"suite {args.suite}, {args.clients} clients, {args.rounds} rounds, capacity {args.capacity}")
    print(f"{'mode':<11} {'mean acc':>8} {'mean loss':>9} {'train s':>8} {'affinity s':>10} {'acc/client-s':>12}  final groups")
    for r in rows:
        spent = r["train"] + r["aff"]
        print(f"{r['mode']:<11} {r['acc']:8.3f} {r['loss']:9.3f} {r['train']:8.2f} {r['aff']:10.2f} "
              f"{r['acc'] / spent if spent else float('nan'):12.4f}  {r['groups']}")


if __name__ == "__main__":
    main()
