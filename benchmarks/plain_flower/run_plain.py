"""Run the plain-Flower FedAvg app on fedmtl's simulation launcher (the same engine `fedmtl
simulate` uses: a private SuperLink in simulation mode, Ray), and print its lines.

Usage: python benchmarks/plain_flower/run_plain.py --clients 6 --rounds 5 [--suite default]
           [--local-epochs 1] [--local-steps 0] [--batch-size 32] [--lr 0.05] [--seed 0] --out DIR

The app imports fedmtl's `tasks` and `client` packages (same model, data and training); they
are put on PYTHONPATH from this checkout, so every Ray worker runs this checkout's code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent
REPO = APP.parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--suite", default="default")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--local-steps", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPU cores reserved per simulated client")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    sys.path.insert(0, str(REPO))
    from launch.simulation import SimulationFailed, run_simulation_app
    from tasks.registry import builtin_data_root

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = {"suite": args.suite, "data-root": builtin_data_root(), "num-server-rounds": args.rounds,
              "local-epochs": args.local_epochs, "local-steps": args.local_steps, "batch-size": args.batch_size,
              "lr": args.lr, "seed": args.seed, "min-nodes": args.clients, "out": str(out)}
    print(f"plain-fedavg: {args.clients} clients, suite {args.suite!r}, {args.rounds} rounds -> {out}", flush=True)
    try:
        status = run_simulation_app(app_dir=APP, run_dir=out / ".flower", run_config=config, num_supernodes=args.clients,
                                    num_cpus_per_client=args.num_cpus, on_line=lambda line: print(line, flush=True))
    except SimulationFailed as exc:
        print(f"plain-fedavg: the run failed: {exc}", flush=True)
        return 1
    print(f"plain-fedavg: {status}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
