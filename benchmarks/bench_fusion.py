"""Fusion throughput and coordinator memory: the streaming fuser against a plain sum of the same arrays.

Usage: python benchmarks/bench_fusion.py [--quick] [--out DIR] [--ks 8,32,128] [--ps 1000000,10000000]
       [--aggregators mean,...] [--packed] [--warm] [--repeats N]

For every P (parameters per update) and K (updates), each aggregator fuses K updates that are
generated one at a time (reference + noise, float32) and dropped after `add`, as the round loop
would. Side by side, on the same arrays in the same loop, the benchmark times a plain in-place
float32 numpy sum (`np.add(acc, x, out=acc)`, one thread) and a torch in-place sum (`add_`, torch's
default threads); the three take turns going first, update by update. Figures:
  GB/s      update bytes (K x P x 4) / seconds spent in add() + result()
  x numpy   fuser seconds / numpy-sum seconds (the target for the mean is <= 1.5)
  peak MB   the process's peak RSS during the fusion minus its RSS before the first update
            (reset with /proc/self/clear_refs), so it includes the harness: one generated
            update and the baseline accumulators; the "harness" rows measure that alone.
Each configuration runs in a fresh process so peaks do not leak between them; with
--repeats N it runs N times (N fresh processes) and the row shown is the run with the median
"x numpy" (all N ratios are kept in the JSON as `ratio_numpy_runs`): a fusion of 8 x 4 MB
takes milliseconds, and one run's figure swings with whatever else the machine does. `stacked` rows
run the old stacked float64 reference (`fuse_group_stacked`, holding every update) where it
fits in --stacked-limit-gb. Robust reducers spill replies to a temporary folder (--spill), so
their RSS stays flat; in RAM they would hold K x P x 4 bytes.
Writes fusion.json and fusion.png to --out (default benchmarks/results/fusion/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AGGREGATORS = ["mean", "mean-examples", "median", "trimmed-mean"]
STACKED = ["mean", "median", "trimmed-mean"]
TASKS = ("a", "b")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _shapes(p: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """A body of four weight matrices with biases (~98% of p) and two heads (~1% of p each)."""
    head = max(2, p // 100)
    width = 1000
    rows = max(1, (p - 2 * head) // (4 * width) - 1)
    body: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        body[f"layer{i}.weight"] = (rows, width)
        body[f"layer{i}.bias"] = (width,)
    body["norm.weight"] = (max(1, p - 2 * head - 4 * (rows + 1) * width),)
    heads = {"weight": (max(1, head - 10),), "bias": (10,)}
    return body, heads


def _child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from strategies.fusion import ClientUpdate, GroupFusion, fuse_group_stacked
    from strategies.robust import make_reducer
    from tasks.packing import pack, unpack

    p, k, agg, impl = args.p, args.k, args.aggregator, args.impl
    body_shapes, head_shapes = _shapes(p)
    g = torch.Generator().manual_seed(0)
    ref_body = {n: torch.randn(s, generator=g) * 0.05 for n, s in body_shapes.items()}
    ref_heads = {t: {n: torch.randn(s, generator=g) * 0.05 for n, s in head_shapes.items()} for t in TASKS}
    total = sum(v.numel() for v in ref_body.values()) + sum(v.numel() for h in ref_heads.values() for v in h.values())
    weighting = "examples" if agg == "mean-examples" else "uniform"
    aggregator = agg if agg in ("median", "trimmed-mean") else "mean"
    spill = tempfile.mkdtemp(prefix="fusion-spill-", dir=args.spill) if args.spill and aggregator != "mean" else None

    def make_update(i: int) -> ClientUpdate:
        gi = torch.Generator().manual_seed(1000 + i)
        body = {n: v + 0.01 * torch.randn(v.shape, generator=gi) for n, v in ref_body.items()}
        heads = {t: {n: v + 0.01 * torch.randn(v.shape, generator=gi) for n, v in h.items()} for t, h in ref_heads.items()}
        examples = {t: int(100 + (i * 7919) % 4900) for t in TASKS}
        if args.packed:  # as the coordinator receives them: views of one flat array per model part
            body = unpack(*pack(body))
            heads = {t: unpack(*pack(h)) for t, h in heads.items()}
        return ClientUpdate(i, body, heads, examples)

    base_np = {f"body.{n}": np.zeros(v.numel(), np.float32) for n, v in ref_body.items()}
    base_np.update({f"{t}.{n}": np.zeros(v.numel(), np.float32) for t, h in ref_heads.items() for n, v in h.items()})
    base_t = {key: torch.from_numpy(np.zeros_like(a)) for key, a in base_np.items()}

    def flat(u: ClientUpdate) -> dict[str, np.ndarray]:
        out = {f"body.{n}": v.reshape(-1).numpy() for n, v in u.body.items()}
        out.update({f"{t}.{n}": v.reshape(-1).numpy() for t, h in u.heads.items() for n, v in h.items()})
        return out

    def numpy_sum(u: ClientUpdate) -> float:
        arrays = flat(u)
        t0 = time.perf_counter()
        for key, a in arrays.items():
            np.add(base_np[key], a, out=base_np[key])
        return time.perf_counter() - t0

    def torch_sum(u: ClientUpdate) -> float:
        arrays = {key: torch.from_numpy(a) for key, a in flat(u).items()}
        t0 = time.perf_counter()
        for key, a in arrays.items():
            base_t[key].add_(a)
        return time.perf_counter() - t0

    if impl == "streaming" and args.warm:
        # One untimed round first, as a coordinator has fused rounds before this one: a fresh
        # fuser's accumulators page-fault their memory in on first use, and later rounds reuse
        # the memory earlier rounds freed. The baselines' accumulators are warmed the same way.
        warm = GroupFusion(ref_body, ref_heads, weighting, aggregator, trim_fraction=0.2, spill_dir=spill)
        warm.expect(["warm0", "warm1"])
        for i in range(2):
            u = make_update(k + i)
            numpy_sum(u)
            torch_sum(u)
            warm.add(u, key=f"warm{i}")
        warm.result()
        warm.close()
        del warm, u
        for a in base_np.values():
            a[:] = 0
        for t in base_t.values():
            t.zero_()

    fusion = None
    if impl == "streaming":
        fusion = GroupFusion(ref_body, ref_heads, weighting, aggregator, trim_fraction=0.2, spill_dir=spill)
        fusion.expect([f"client{i:05d}" for i in range(k)])  # the order replies were sent in
    held: list[ClientUpdate] = []
    rss0 = _status("VmRSS")
    _reset_peak()
    t_np = t_torch = t_fuse = 0.0

    def fuse_add(u: ClientUpdate, i: int) -> float:
        if impl == "stacked":
            held.append(u)
        if impl != "streaming":
            return 0.0
        t0 = time.perf_counter()
        fusion.add(u, key=f"client{i:05d}")  # type: ignore[union-attr]
        return time.perf_counter() - t0

    for i in range(k):
        u = make_update(i)
        # The three take turns going first: a freshly generated update is hot in cache for
        # whoever reads it first, and each add evicts part of the others' accumulators.
        order = ("numpy", "torch", "fuse")[i % 3:] + ("numpy", "torch", "fuse")[:i % 3]
        for who in order:
            if who == "numpy":
                t_np += numpy_sum(u)
            elif who == "torch":
                t_torch += torch_sum(u)
            else:
                t_fuse += fuse_add(u, i)
        del u
    if impl == "streaming":
        t0 = time.perf_counter()
        fusion.result()  # type: ignore[union-attr]
        t_fuse += time.perf_counter() - t0
        fusion.close()  # type: ignore[union-attr]
    elif impl == "stacked":
        reduce = make_reducer(aggregator, **({"trim_fraction": 0.2} if aggregator == "trimmed-mean" else {}))
        t0 = time.perf_counter()
        fuse_group_stacked(ref_heads, held, weighting, reduce)
        t_fuse = time.perf_counter() - t0
    peak = _status("VmHWM") - rss0
    if spill:
        import shutil
        shutil.rmtree(spill, ignore_errors=True)
    data_gb = k * total * 4 / 1e9
    return {
        "impl": impl, "aggregator": agg, "p": total, "k": k, "data_gb": data_gb,
        "fuse_s": t_fuse, "numpy_s": t_np, "torch_s": t_torch,
        "fuse_gbps": data_gb / t_fuse if t_fuse else None, "numpy_gbps": data_gb / t_np, "torch_gbps": data_gb / t_torch,
        "ratio_numpy": t_fuse / t_np if t_fuse else None, "ratio_torch": t_fuse / t_torch if t_fuse else None,
        "peak_mb": peak / 1e6, "update_mb": total * 4 / 1e6, "spilled": bool(spill), "warm": bool(args.warm), "packed": bool(args.packed),
        "torch_threads": torch.get_num_threads(),
    }


def _machine() -> dict:
    import numpy as np
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = _status_file("/proc/meminfo", "MemTotal")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "platform": platform.platform()}


def _status_file(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _run_one(p: int, k: int, agg: str, impl: str, spill: str | None, warm: bool = False,
             packed: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--p", str(p), "--k", str(k), "--aggregator", agg, "--impl", impl]
    if warm:
        cmd += ["--warm"]
    if packed:
        cmd += ["--packed"]
    if spill:
        cmd += ["--spill", spill]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """The run with the median fuser/numpy ratio (the harness: the median numpy time), with
    every run's ratio beside it."""
    key = "ratio_numpy" if runs[0]["ratio_numpy"] is not None else "numpy_s"
    ranked = sorted(runs, key=lambda r: r[key])
    row = dict(ranked[(len(ranked) - 1) // 2])
    row["repeats"] = len(runs)
    row["ratio_numpy_runs"] = [r["ratio_numpy"] for r in runs]
    return row


def _table(rows: list[dict]) -> str:
    head = f"{'impl':9} {'aggregator':17} {'P':>9} {'K':>4} {'GB/s':>7} {'numpy GB/s':>10} {'x numpy':>8} {'torch GB/s':>10} {'x torch':>8} {'peak MB':>8} {'upd MB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(v, spec):
            width = int("".join(c for c in spec.split(".")[0] if c.isdigit()))
            return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)
        lines.append(
            f"{r['impl']:9} {r['aggregator']:17} {r['p']:>9} {r['k']:>4} {f(r['fuse_gbps'], '>7.2f')} {r['numpy_gbps']:>10.2f} "
            f"{f(r['ratio_numpy'], '>8.2f')} {r['torch_gbps']:>10.2f} {f(r['ratio_torch'], '>8.2f')} {r['peak_mb']:>8.0f} "
            f"{r['update_mb']:>7.0f}")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted({r["p"] for r in rows})
    fig, axes = plt.subplots(2, len(ps), figsize=(6 * len(ps), 8), squeeze=False)
    for j, p in enumerate(ps):
        for impl, agg in sorted({(r["impl"], r["aggregator"]) for r in rows if r["p"] == p}):
            sel = sorted((r for r in rows if r["p"] == p and r["impl"] == impl and r["aggregator"] == agg), key=lambda r: r["k"])
            label = f"{agg} ({impl})"
            style = "--" if impl == "stacked" else "-"
            if impl != "harness":
                axes[0][j].plot([r["k"] for r in sel], [r["ratio_numpy"] for r in sel], style, marker="o", label=label)
            axes[1][j].plot([r["k"] for r in sel], [r["peak_mb"] for r in sel], style, marker="o", label=label)
        axes[0][j].axhline(1.5, color="grey", lw=0.8, ls=":")
        axes[0][j].set(xscale="log", yscale="log", xlabel="updates K", ylabel="seconds / numpy-sum seconds", title=f"P = {p:,}: time vs plain sum")
        axes[1][j].set(xscale="log", xlabel="updates K", ylabel="peak RSS above start (MB)", title=f"P = {p:,}: coordinator peak memory")
        axes[1][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: P = 100k, K in 2, 8")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fusion"))
    parser.add_argument("--ks", default="8,32,128")
    parser.add_argument("--ps", default="1000000,10000000")
    parser.add_argument("--aggregators", default=",".join(AGGREGATORS))
    parser.add_argument("--stacked-limit-gb", type=float, default=4.0, help="run the stacked reference only below this estimated peak")
    parser.add_argument("--spill", default=tempfile.gettempdir(), help="folder for robust reducers' spilled replies ('' = keep in RAM)")
    parser.add_argument("--warm", action="store_true",
                        help="time a process's second fusion (after an untimed one), as in a coordinator's later rounds")
    parser.add_argument("--packed", action="store_true",
                        help="updates as the coordinator receives them: each reply's body and heads unpacked from one "
                             "flat array (tasks/packing.py), so a reply's tensors lie back to back in memory")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each configuration this many times (fresh processes) and keep the median run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--p", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--aggregator", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="streaming", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    ks = [2, 8] if args.quick else [int(x) for x in args.ks.split(",")]
    ps = [100_000] if args.quick else [int(float(x)) for x in args.ps.split(",")]
    aggs = args.aggregators.split(",")
    rows = []
    started = time.time()
    for p in ps:
        for k in ks:
            plan = [("harness", "none")] + [("streaming", a) for a in aggs]
            if k * p * 12 / 1e9 <= args.stacked_limit_gb:
                plan += [("stacked", a) for a in STACKED if a in aggs]
            for impl, agg in plan:
                row = _median_run([_run_one(p, k, agg, impl, args.spill or None, args.warm, args.packed)
                                   for _ in range(max(1, args.repeats))])
                rows.append(row)
                print(_table([row]).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/bench_fusion.py"] + sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(), "seconds": round(time.time() - started, 1), "rows": rows,
    }
    (out / "fusion.json").write_text(json.dumps(doc, indent=1))
    _plot(rows, out / "fusion.png")
    print()
    print(_table(rows))
    print(f"\nwrote {out / 'fusion.json'} and {out / 'fusion.png'}")


if __name__ == "__main__":
    main()
