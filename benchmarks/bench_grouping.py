"""Grouping search speed: fedmtl's search against exhaustive enumeration of set partitions.

Usage: python benchmarks/bench_grouping.py [--quick] [--tasks 8-16] [--groups 2-4]
           [--budget 30] [--max-partitions 3000000] [--dp-max 14] [--repeats 3] [--out DIR]

For n tasks and at most B groups, on two kinds of affinity matrix (`random`: i.i.d. normal, the
hard case; `planted`: B blocks of related tasks plus noise, what a federation measures when
groups exist), it times, on the same matrix and objective (the MAS objective of
`strategies/grouping.py`):

* `best_grouping` as the coordinator calls it: the exact dynamic programme over subsets for
  n <= 12; above, every bipartition at B = 2 (exact) and a deterministic local search at B >= 3
  (cold = first call for that n, which builds the cached subset-pair table; warm = a later call);
* the exact DP forced beyond 12 (`exact_limit = n`) up to `--dp-max` tasks (memory grows as 3^n:
  the peak is measured with tracemalloc in a separate call);
* `brute_force_grouping`: every set partition into at most B groups enumerated and scored
  (`strategies.grouping.set_partitions`; the way the MAS reference searches). It is run only
  where its estimated time (partitions x the per-partition cost measured here) fits `--budget`
  seconds and the partitions fit `--max-partitions` (it keeps every scored partition in memory);
  skipped cells say so with the estimate.

and checks the answers agree (the same partition, the same objective) wherever two methods ran.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from functools import lru_cache
from pathlib import Path
from typing import Any

import benchlib as B
import numpy as np

from strategies.grouping import EXACT_LIMIT, _split_pairs, best_grouping, brute_force_grouping


@lru_cache(maxsize=None)
def stirling2(n: int, k: int) -> int:
    if n == k:
        return 1
    if k == 0 or k > n:
        return 0
    return k * stirling2(n - 1, k) + stirling2(n - 1, k - 1)


def partitions(n: int, b: int) -> int:
    """Set partitions of n tasks into at most b groups."""
    return sum(stirling2(n, k) for k in range(1, min(b, n) + 1))


def matrix(kind: str, n: int, b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([n, b, seed])
    if kind == "random":
        return rng.normal(size=(n, n))
    block = rng.permutation(np.arange(n) % b)
    same = block[:, None] == block[None, :]
    return np.where(same, 0.5, -0.2) + 0.15 * rng.normal(size=(n, n))


def timed(fn, *args, repeats: int = 1, **kwargs) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def calibrate() -> float:
    """Seconds per partition of `brute_force_grouping` on this machine (n = 9, B = 3)."""
    z = matrix("random", 9, 3)
    t, _ = timed(brute_force_grouping, z, 3, repeats=2)
    return t / partitions(9, 3)


def cell(n: int, b: int, kind: str, args: argparse.Namespace, per_partition: float) -> dict[str, Any]:
    z = matrix(kind, n, b)
    res: dict[str, Any] = {"n": n, "B": b, "kind": kind, "partitions": partitions(n, b)}
    _split_pairs.cache_clear()
    res["search_cold"], g = timed(best_grouping, z, b)
    res["search_warm"], g = timed(best_grouping, z, b, repeats=args.repeats)
    res["search_method"] = "exact DP" if n <= EXACT_LIMIT else "exact bipartitions" if g.exact else "local search"
    res["search"] = g.to_dict()
    exact = g if n <= EXACT_LIMIT else None
    if n > EXACT_LIMIT and n <= args.dp_max:
        _split_pairs.cache_clear()
        res["dp_cold"], exact = timed(best_grouping, z, b, exact_limit=n)
        res["dp_warm"], exact = timed(best_grouping, z, b, exact_limit=n, repeats=max(1, args.repeats - 1))
        _split_pairs.cache_clear()
        tracemalloc.start()
        best_grouping(z, b, exact_limit=n)
        res["dp_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _split_pairs.cache_clear()
        res["dp"] = exact.to_dict()
    elif n <= EXACT_LIMIT:
        res["dp_cold"], res["dp_warm"] = res["search_cold"], res["search_warm"]
    est = res["partitions"] * per_partition
    res["brute_estimate"] = est
    brute = None
    if est <= args.budget and res["partitions"] <= args.max_partitions:
        res["brute"], brute = timed(brute_force_grouping, z, b)
        res["brute_result"] = brute.to_dict()
    else:
        why = f"est. {est:,.0f} s > budget {args.budget:g} s" if est > args.budget else \
            f"{res['partitions']:,} partitions > memory cap {args.max_partitions:,}"
        res["brute_skipped"] = why
    tol = 1e-9 * max(1.0, float(np.abs(z).max()))

    def same(a, b_) -> bool:
        return a.groups == b_.groups and abs(a.score - b_.score) <= tol

    res["exact_vs_brute"] = same(exact, brute) if exact is not None and brute is not None else None
    res["search_vs_reference"] = (same(g, brute) if brute is not None else
                                  same(g, exact) if exact is not None and exact is not g else None)
    ref = brute or exact
    res["search_gap"] = (ref.score - g.score) if ref is not None else None
    return res


def heuristic_check(ns: list[int], seeds: int, budget: float, per_partition: float, dp_max: int = 14) -> dict[str, Any]:
    """How often best_grouping above n = 12 finds the optimum at B = 2 (where brute force is cheap,
    2^(n-1) partitions), on `seeds` random matrices per n: it scores every bipartition there now
    (the local search it used before missed 1-2 in 20); and at B = 3, where it is the local
    search, against the exact DP forced up to `dp_max`."""
    rows, detail = [], []

    def against(n: int, b: int, reference: str, optimum) -> None:  # noqa: ANN001 - optimum(z) -> Grouping
        hits, gaps = 0, []
        for seed in range(1, seeds + 1):
            z = matrix("random", n, b, seed)
            g, ref = best_grouping(z, b), optimum(z)
            gap = ref.score - g.score
            hits += gap <= 1e-9 * max(1.0, float(np.abs(z).max()))
            gaps.append(gap)
            detail.append({"n": n, "B": b, "seed": seed, "gap": gap, "search": g.to_dict(), reference: ref.to_dict()})
        rows.append([n, b, f"{hits}/{seeds}", max(gaps), B.mean_std(gaps)[0]])

    for n in [n for n in ns if n > EXACT_LIMIT and partitions(n, 2) * per_partition * seeds <= 4 * budget]:
        against(n, 2, "brute", lambda z: brute_force_grouping(z, 2))
    # At B = 3 the search above n = 12 is the local search: against the forced DP where it fits.
    for n in [n for n in ns if EXACT_LIMIT < n <= dp_max]:
        against(n, 3, "dp", lambda z, n=n: best_grouping(z, 3, exact_limit=n))
        _split_pairs.cache_clear()
    return {"table": B.table(f"best_grouping (n > {EXACT_LIMIT}) against the optimum, random matrices (B = 2: brute "
                             "force; B = 3: the forced exact DP)",
                             ["n", "B", "optimal", "largest objective gap", "mean gap"], rows,
                             note="the objective is the mean per-task score; a gap is the optimum minus what "
                                  "best_grouping found."), "detail": detail}


def _speedup(r: dict[str, Any]) -> float | None:
    return r["brute"] / r["dp_warm"] if "brute" in r and r.get("dp_warm") else None


def _verdict(ok: int, total: int) -> str:
    """'met' only when something was checked and all of it agreed."""
    return "not run" if total == 0 else ("met" if ok == total else "not met")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n 8-10, B 2-3, 2 s brute-force budget")
    ap.add_argument("--tasks", default=None, help="range of n, e.g. 8-16 (default; quick 8-10)")
    ap.add_argument("--groups", default=None, help="range of B, e.g. 2-4 (default; quick 2-3)")
    ap.add_argument("--kinds", default="random,planted")
    ap.add_argument("--budget", type=float, default=None, help="seconds allowed per brute-force cell (default 30, quick 2)")
    ap.add_argument("--max-partitions", type=int, default=3_000_000, help="brute force keeps every partition in memory")
    ap.add_argument("--dp-max", type=int, default=14, help="largest n for the forced exact DP (3^n memory)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heuristic-seeds", type=int, default=None,
                    help="random matrices per n for the optimality check above n = 12 (B = 2 against brute "
                         "force, B = 3 against the forced exact DP; default 20, quick 0)")
    ap.add_argument("--out", type=Path, default=B.RESULTS / "grouping")
    args = ap.parse_args(argv)

    def rng(text: str) -> list[int]:
        lo, _, hi = text.partition("-")
        return list(range(int(lo), int(hi or lo) + 1))

    ns = rng(args.tasks or ("8-10" if args.quick else "8-16"))
    bs = rng(args.groups or ("2-3" if args.quick else "2-4"))
    args.budget = args.budget if args.budget is not None else (2.0 if args.quick else 30.0)
    kinds = B.parse_list(args.kinds)
    report = B.new_report("grouping", "Grouping search speed: exact search vs exhaustive enumeration", {
        "tasks": ns, "groups": bs, "kinds": kinds, "budget_s": args.budget, "max_partitions": args.max_partitions,
        "dp_max": args.dp_max, "exact_limit": EXACT_LIMIT, "repeats": args.repeats, "quick": args.quick})
    per_partition = calibrate()
    print(f"brute force: {per_partition * 1e6:.1f} µs per partition on this machine", flush=True)
    results = []
    for kind in kinds:
        for n in ns:
            for b in bs:
                r = cell(n, b, kind, args, per_partition)
                results.append(r)
                print(f"  {kind:7} n={n:2} B={b}: {r['search_method']} {r['search_warm'] * 1e3:.1f} ms"
                      + (f", exact DP {r['dp_warm'] * 1e3:.1f} ms" if r.get("dp_warm") is not None else "")
                      + (f", brute {r['brute']:.2f} s" if "brute" in r else f", brute skipped ({r['brute_skipped']})")
                      + f", agree {r['search_vs_reference']}", flush=True)
    rows = []
    for r in results:
        rows.append([r["kind"], r["n"], r["B"], f"{r['partitions']:,}", r["search_method"], r["search_cold"] * 1e3,
                     r["search_warm"] * 1e3, None if r.get("dp_cold") is None else r["dp_cold"] * 1e3,
                     None if r.get("dp_warm") is None else r["dp_warm"] * 1e3,
                     None if "dp_peak_bytes" not in r else r["dp_peak_bytes"] / 2**20,
                     r["brute"] if "brute" in r else f"skipped ({r['brute_skipped']})", _speedup(r),
                     r["exact_vs_brute"], r["search_vs_reference"]])
    main_t = B.table(
        f"Grouping search: at most B groups, MAS objective (brute-force budget {args.budget:g} s per cell, "
        f"{per_partition * 1e6:.1f} µs per partition here)",
        ["matrix", "n", "B", "partitions", "best_grouping", "cold ms", "warm ms", "exact DP cold ms", "exact DP warm ms",
         "DP peak MiB", "brute force s", "brute / exact DP", "exact = brute", "best_grouping = reference"], rows,
        note="best_grouping is exact (DP) for n <= 12; above, exact for B = 2 (every bipartition) and a local search "
             "for B >= 3; 'exact DP' beyond 12 forces the DP "
             "(exact_limit = n). Reference for agreement: brute force where it ran, else the forced DP; "
             "'-' = nothing to compare with.")
    checked = [r for r in results if r["exact_vs_brute"] is not None]
    heur = [r for r in results if r["n"] > EXACT_LIMIT and r["search_vs_reference"] is not None]
    summary = B.table("Agreement", ["check", "result"], [
        ["exact search = brute force (same partition and objective)",
         f"{sum(r['exact_vs_brute'] for r in checked)}/{len(checked)} cells"],
        ["best_grouping above n = 12 (bipartitions at B = 2, local search at B >= 3) = exact answer", f"{sum(r['search_vs_reference'] for r in heur)}/{len(heur)} cells; "
         f"largest objective gap {max((r['search_gap'] for r in heur), default=0.0):.2e}"],
        ["brute force skipped (over budget or memory cap)", f"{sum('brute_skipped' in r for r in results)} cells"]])
    report["tables"] = [main_t, summary]
    seeds = args.heuristic_seeds if args.heuristic_seeds is not None else (0 if args.quick else 20)
    if seeds:
        check = heuristic_check(ns, seeds, args.budget, per_partition, args.dp_max)
        report["tables"].append(check["table"])
        report["raw"]["heuristic_check"] = check["detail"]
    for t in report["tables"]:
        B.print_table(t)
    agree = sum(r["exact_vs_brute"] for r in checked)
    heur_ok = sum(r["search_vs_reference"] for r in heur)
    report["targets"] = [["fedmtl's search above n = 12 (bipartitions at B = 2, local search at B >= 3) gives the exact answer", f"{heur_ok}/{len(heur)} cells",
                          _verdict(heur_ok, len(heur))],
                         ["exact search gives brute force's answer", f"{agree}/{len(checked)} cells (n up to "
                          f"{max((r['n'] for r in checked), default=0)})", _verdict(agree, len(checked))]]
    report["raw"] |= {"per_partition_s": per_partition, "cells": results}
    B.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
