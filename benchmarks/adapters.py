"""Views of result files that other changes' benchmarks write in their own formats.

`run_all.py` renders this folder's reports (`benchlib.write_report`) as they are. Benchmarks
owned elsewhere (fusion, deployment, affinity) write what suits them; an adapter here turns one
such document into the same shape (tables, targets, plots, where-it-ran) so docs/benchmarks.md
shows their figures against the issue's targets, without touching their scripts. A benchmark
without an adapter is shown generically (`generic_view`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib as B


def _scalars(d: dict[str, Any], prefix: str = "", depth: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth > 1:
            out |= _scalars(v, f"{prefix}{k}.", depth - 1)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def generic_view(data: Any, folder: Path) -> dict[str, Any]:
    """Tables from a JSON document in another format: its top-level numbers, and every dict of
    records or list of records as rows (scalar fields, up to two levels deep); every PNG beside it."""
    view: dict[str, Any] = {"tables": [], "targets": [], "plots": sorted(p.name for p in folder.glob("*.png"))}
    if not isinstance(data, dict):
        return view
    if isinstance(data.get("tables"), list) and all(isinstance(t, dict) and "rows" in t for t in data["tables"]):
        view["tables"] = data["tables"]
        view["targets"] = data.get("targets") or []
        return view
    skip = {"machine", "versions", "command", "date"}
    top = {k: v for k, v in data.items() if k not in skip and (isinstance(v, (int, float, bool)) or
                                                               (isinstance(v, str) and len(v) < 200))}
    if top:
        view["tables"].append(B.table("settings and headline numbers", ["key", "value"], [[k, v] for k, v in top.items()]))
    for key, value in data.items():
        records: list[tuple[str, dict]] = []
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            records = list(value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            records = [(str(i), v) for i, v in enumerate(value)]
        if key in skip or not records:
            continue
        flat = [(name, _scalars(rec)) for name, rec in records[:40]]
        cols = list(dict.fromkeys(c for _, f in flat for c in f))[:12]
        if cols:
            view["tables"].append(B.table(key, [key, *cols], [[name, *[f.get(c) for c in cols]] for name, f in flat]))
    return view


# ----------------------------------------------------------------------------- fusion (bench_fusion.py)
def fusion_view(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """bench_fusion.py's rows as throughput and memory tables, and the issue's two targets:
    the streaming mean within 1.5x of a plain numpy sum (worst cell), and peak memory that does
    not grow linearly with K (growth per extra update against one update's size)."""
    rows = [r for r in data.get("rows", []) if isinstance(r, dict)]
    fused = [r for r in rows if r.get("impl") != "harness"]
    tables = [B.table(
        "Fusion throughput: GB/s of update data fused (K x P x 4 bytes / seconds in add + result), against a plain "
        "in-place numpy float32 sum of the same arrays in the same loop",
        ["P", "K", "impl", "aggregator", "GB/s", "numpy GB/s", "x numpy", "torch GB/s", "peak MB", "one update MB"],
        [[r["p"], r["k"], r["impl"], r["aggregator"], r.get("fuse_gbps"), r.get("numpy_gbps"), r.get("ratio_numpy"),
          r.get("torch_gbps"), r.get("peak_mb"), r.get("update_mb")] for r in fused],
        note="x numpy = fuser seconds / numpy-sum seconds (target for the mean: <= 1.5). peak MB = peak RSS above "
             "the start of the fusion, including the harness (one generated update plus the baselines' accumulators)."
             " Robust reducers (median, trimmed-mean) spill replies to disk, so their RSS stays flat.")]
    growth_rows, slopes = [], []
    for (impl, agg) in sorted({(r["impl"], r["aggregator"]) for r in rows}):
        for p in sorted({r["p"] for r in rows}):
            sel = sorted((r for r in rows if (r["impl"], r["aggregator"], r["p"]) == (impl, agg, p)),
                         key=lambda r: r["k"])
            if len(sel) < 2:
                continue
            lo, hi = sel[0], sel[-1]
            slope = (hi["peak_mb"] - lo["peak_mb"]) / (hi["k"] - lo["k"])
            share = slope / hi["update_mb"] if hi.get("update_mb") else float("nan")
            growth_rows.append([impl, agg, p, f"{lo['k']} -> {hi['k']}", lo["peak_mb"], hi["peak_mb"], slope, share])
            if impl == "streaming":
                slopes.append((agg, p, share))
    tables.append(B.table(
        "Coordinator peak memory as K grows", ["impl", "aggregator", "P", "K", "peak MB at smallest K",
                                               "peak MB at largest K", "MB per extra update", "x one update"],
        growth_rows, note="x one update = growth per extra update / one update's size: 1.0 is memory linear in K "
                          "(every update held, as the stacked reference does), ~0 is flat."))
    means = [r for r in fused if r["impl"] == "streaming" and r["aggregator"] == "mean" and r.get("ratio_numpy")]
    targets = []
    if means:
        worst = max(means, key=lambda r: r["ratio_numpy"])
        big = [r for r in means if r["p"] == max(m["p"] for m in means)]
        targets.append(["streaming mean within 1.5x of a numpy sum",
                        f"worst {worst['ratio_numpy']:.2f}x (P {worst['p']:,}, K {worst['k']}); at P {big[0]['p']:,}: "
                        + ", ".join(f"K {r['k']} {r['ratio_numpy']:.2f}x" for r in big),
                        "met" if worst["ratio_numpy"] <= 1.5 else "not met"])
    for label, family in (("mean fusers", ("mean", "mean-examples", "mean-uncertified")),
                          ("robust fusers, replies spilled to disk", ("median", "trimmed-mean"))):
        sel = [s for s in slopes if s[0] in family]
        if sel:
            worst_share = max(sel, key=lambda s: s[2])
            targets.append([f"peak memory does not grow linearly with K ({label})",
                            f"worst growth {worst_share[2]:.2f}x one update per extra update ({worst_share[0]}, "
                            f"P {worst_share[1]:,})", "met" if worst_share[2] < 0.25 else "not met"])
    return {"tables": tables, "targets": targets, "plots": sorted(p.name for p in folder.glob("*.png"))}


# ----------------------------------------------------------------------------- deployment (bench_deployment.py)
def deployment_view(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """bench_deployment.py's variants: seconds per round beyond the clients' own compute and where
    a message's time goes; the target (at most 2 s a round) per variant."""
    out = generic_view(data, folder)
    variants = data.get("variants") or {}
    rows, split_rows, targets = [], [], []
    for name, v in variants.items():
        summ = (v or {}).get("summary") or {}
        if not summ:
            rows.append([name, (v or {}).get("error") or "no summary", *[None] * 5])
            continue
        rows.append([name, summ.get("rounds"), summ.get("round_seconds"), summ.get("critical_compute"),
                     summ.get("overhead"), summ.get("overhead_vs_sum"), summ.get("coord_gap")])
        per = summ.get("per_message") or {}
        split_rows.append([name, *[per.get(k) for k in ("deliver", "download", "launch", "startup", "handler", "reply")]])
        if isinstance(summ.get("overhead"), (int, float)):
            targets.append([f"deployed round overhead at most 2 s ({name})", f"{summ['overhead']:.2f} s a round",
                            "met" if summ["overhead"] <= 2.0 else "not met"])
    if rows:
        out["tables"] = [B.table("Deployed rounds: seconds per round beyond the clients' own compute",
                                 ["variant", "rounds", "round s", "critical client compute s", "overhead s",
                                  "round - summed training s", "coordinator gaps s"], rows),
                         B.table("Where a message's time goes (mean seconds per message)",
                                 ["variant", "deliver", "download", "launch", "startup", "handler", "reply"],
                                 split_rows)] + out["tables"]
    out["targets"] = targets
    return out


ADAPTERS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {"fusion": fusion_view,
                                                                          "deployment": deployment_view}


def view(name: str, data: Any, folder: Path) -> dict[str, Any]:
    """The tables, targets and plots of benchmark `name`'s result document."""
    adapter = ADAPTERS.get(name)
    if adapter is not None and isinstance(data, dict):
        try:
            return adapter(data, folder)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a format change: fall back, say so
            out = generic_view(data, folder)
            out["notes"] = [f"(the {name} adapter could not read this file: {exc!r}; shown generically)"]
            return out
    return generic_view(data, folder)


def machine_line(data: dict[str, Any]) -> str:
    """Where a run ran, from this folder's `machine`/`versions` or another script's own keys."""
    m, v = data.get("machine") or {}, data.get("versions") or {}
    cores = m.get("cores") or m.get("cpus")
    usable = m.get("usable_cores")
    mem = m.get("memory_gib") or (round(m["mem_gb"] * 1e9 / 2**30, 1) if m.get("mem_gb") else None)
    parts = [f"{f'{usable} of ' if usable else ''}{cores} cores ({m.get('cpu')})" if cores else None,
             f"{mem} GiB" if mem else None,
             ("load " + " ".join(f"{x:.2f}" for x in load) + " at start") if (load := m.get("load_average") or
                                                                               m.get("load_avg")) else None]
    vers = {k: v.get(k, m.get(k)) for k in ("python", "torch", "flwr", "ray", "numpy")}
    parts += [", ".join(f"{k} {x}" for k, x in vers.items() if x)]
    if v.get("fedmtl_commit") or m.get("commit"):
        parts.append(f"fedmtl {v.get('fedmtl_commit') or m.get('commit')}")
    return "; ".join(p for p in parts if p) or "(not recorded)"
