"""Time the exact MAS grouping search against brute-force enumeration of set partitions.

Usage: python benchmarks/bench_grouping.py [--max-groups B] [--repeats R]
Prints, for n = 6..10, the time of `best_grouping` (cold: first call for that n, which builds
the cached subset-pair table; warm: a later call) and of `brute_force_grouping` side by side,
with their ratio and a check that both chose the same partition; then `best_grouping` alone
for n = 11 and 12, where brute force (Bell(12) = 4,213,597 partitions) is impractical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies.grouping import _split_pairs, best_grouping, brute_force_grouping  # noqa: E402


def _timed(fn, *args, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-groups", type=int, default=0, help="0: no limit (max_groups = n)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'n':>3} {'B':>3} {'dp cold s':>10} {'dp warm s':>10} {'brute s':>9} {'brute/dp':>9}  same")
    for n in range(6, 13):
        z = np.random.default_rng(n).normal(size=(n, n))
        b = args.max_groups or n
        _split_pairs.cache_clear()
        cold, _ = _timed(best_grouping, z, b)
        warm, dp = _timed(best_grouping, z, b, repeats=args.repeats)
        if n <= 10:
            brute, bf = _timed(brute_force_grouping, z, b)
            same = dp.groups == bf.groups  # type: ignore[union-attr]
            print(f"{n:>3} {b:>3} {cold:>10.4f} {warm:>10.4f} {brute:>9.3f} {brute / warm:>9.0f}  {same}")
        else:
            print(f"{n:>3} {b:>3} {cold:>10.4f} {warm:>10.4f} {'-':>9} {'-':>9}  -")


if __name__ == "__main__":
    main()
