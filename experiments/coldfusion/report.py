"""Turn per-seed results into ColD Fusion's kind of table, a CSV, a JSON summary and a plot.

Every number is an accuracy in points (0-100). A gain is fused minus original on the same seed
(paired); "mean ± sd" is over seeds (sample standard deviation; a single seed shows ± 0.0).
Averages are taken per seed over the datasets of a block, then over seeds.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

METRICS = ("probe", "finetune", "fewshot_probe", "fewshot_finetune")
LABELS = {"probe": "linear probe (frozen)", "finetune": "full finetune",
          "fewshot_probe": "few-shot probe", "fewshot_finetune": "few-shot finetune"}


def _ms(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float) * 100
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(values: list[float], signed: bool = False) -> str:
    m, s = _ms(values)
    return f"{m:+.1f} ± {s:.1f}" if signed else f"{m:.1f} ± {s:.1f}"


def rows(results: list[dict], method: str = "plain") -> list[dict]:
    """Flat rows (seed, dataset, split, metric, original, fused, gain) for the CSV."""
    out = []
    for r in results:
        if method not in r["eval"]:
            continue
        for task, fused in r["eval"][method].items():
            orig = r["original"][task]
            for metric in METRICS:
                if metric in fused:
                    out.append({"seed": r["seed"], "method": method, "dataset": task, "split": fused["split"], "metric": metric,
                                "original": orig[metric], "fused": fused[metric], "gain": fused[metric] - orig[metric]})
    return out


def summary(results: list[dict], method: str = "plain") -> dict:
    """{block: {metric: {"original", "fused", "gain": (mean, sd), "per_dataset": {...}, "wins": k, "n": n}}}."""
    flat = rows(results, method)
    out: dict = {}
    for split in ("seen", "held_out"):
        block: dict = {}
        for metric in METRICS:
            sel = [x for x in flat if x["split"] == split and x["metric"] == metric]
            if not sel:
                continue
            datasets = sorted({x["dataset"] for x in sel}, key=lambda d: [x["dataset"] for x in sel].index(d))
            seeds = sorted({x["seed"] for x in sel})
            per_dataset = {}
            for d in datasets:
                mine = [x for x in sel if x["dataset"] == d]
                per_dataset[d] = {k: _ms([x[k] for x in mine]) for k in ("original", "fused", "gain")}
            avg = {k: _ms([np.mean([x[k] for x in sel if x["seed"] == s]) / 1.0 for s in seeds]) for k in ("original", "fused", "gain")}
            block[metric] = {**avg, "per_dataset": per_dataset, "n": len(datasets), "seeds": len(seeds),
                             "wins": sum(1 for v in per_dataset.values() if v["gain"][0] > 0)}
        out[split] = block
    return out


def _table(results: list[dict], split: str, metrics: tuple[str, ...], method: str = "plain") -> str:
    names = {"plain": "ColD", "grouped": "grouped ColD"}
    header = ["dataset"]
    for m in metrics:
        header += [f"{LABELS[m]}: MiniLM", f"{names[method]}{'-Frozen' if 'probe' in m else ''}", "gain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    flat = [x for x in rows(results, method) if x["split"] == split]
    datasets = list(dict.fromkeys(x["dataset"] for x in flat))
    seeds = sorted({x["seed"] for x in flat})
    for d in [*datasets, "**average**"]:
        cells = [d]
        for m in metrics:
            if d == "**average**":
                sel = [x for x in flat if x["metric"] == m]
                vals = {k: [float(np.mean([x[k] for x in sel if x["seed"] == s])) for s in seeds] for k in ("original", "fused", "gain")}
            else:
                sel = [x for x in flat if x["metric"] == m and x["dataset"] == d]
                vals = {k: [x[k] for x in sel] for k in ("original", "fused", "gain")}
            cells += [_fmt(vals["original"]), _fmt(vals["fused"]), _fmt(vals["gain"], signed=True)] if sel else ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables_markdown(results: list[dict], method: str = "plain") -> str:
    """The seen, held-out and few-shot tables as markdown."""
    parts = [
        f"**Seen datasets** (each trained by its contributor during fusion), accuracy %, mean ± sd over {len(results)} seed(s):\n",
        _table(results, "seen", ("probe", "finetune"), method),
        "\n**Held-out datasets** (no contributor trained on them):\n",
        _table(results, "held_out", ("probe", "finetune"), method),
        f"\n**Held-out, few-shot** ({results[0]['config']['fewshot_labels']} training labels):\n",
        _table(results, "held_out", ("fewshot_probe", "fewshot_finetune"), method),
    ]
    return "\n".join(parts)


def curve(results: list[dict], metric: str = "probe") -> tuple[list[int], np.ndarray]:
    """Iterations and the per-seed mean held-out gain (points) at each: array [seeds, points]."""
    iterations = [p["iteration"] for p in results[0]["curve"]]
    gains = []
    for r in results:
        base = r["curve"][0][metric]
        gains.append([np.mean([p[metric][t] - base[t] for t in base]) * 100 for p in r["curve"]])
    return iterations, np.asarray(gains)


def figure():
    """A (figure, axes) pair for the report's plots (headless backend)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.subplots(figsize=(6.4, 4.0), dpi=110)


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` (PNG) and free it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curve(results: list[dict], path: Path) -> Path:
    """PNG: held-out gain of the fused body over iterations (probe and few-shot probe), mean ± sd over seeds."""
    fig, ax = figure()
    for metric, colour in (("probe", "tab:blue"), ("fewshot_probe", "tab:orange")):
        its, g = curve(results, metric)
        mean, sd = g.mean(0), g.std(0, ddof=1) if len(g) > 1 else np.zeros(g.shape[1])
        ax.plot(its, mean, marker="o", color=colour, label=f"{LABELS[metric]} (all train labels)" if metric == "probe"
                else f"{LABELS[metric]} ({results[0]['config']['fewshot_labels']} labels)")
        ax.fill_between(its, mean - sd, mean + sd, color=colour, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("ColD Fusion iteration")
    ax.set_ylabel("held-out gain over MiniLM (points)")
    ax.set_title(f"ColD-Frozen on {len(results[0]['curve'][0]['probe'])} held-out datasets, {len(results)} seed(s)")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def write_results(results: list[dict], out: Path) -> dict[str, Path]:
    """results.json (every seed, raw), results.csv (flat rows), summary.json, heldout_gain.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "summary": out / "summary.json",
             "plot": out / "heldout_gain.png"}
    paths["json"].write_text(json.dumps({"seeds": results}, indent=1) + "\n")
    flat = rows(results) + rows(results, "grouped")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["seed", "method", "dataset", "split", "metric", "original", "fused", "gain"])
    writer.writeheader()
    writer.writerows(flat)
    paths["csv"].write_text(buf.getvalue())
    summ = {"plain": summary(results)}
    if any("grouped" in r["eval"] for r in results):
        summ["grouped"] = summary(results, "grouped")
    paths["summary"].write_text(json.dumps(summ, indent=1) + "\n")
    plot_curve(results, paths["plot"])
    grouped = [r for r in results if "grouped" in r.get("eval", {})]
    if grouped:
        from experiments.coldfusion.report_grouped import plot_compute  # noqa: PLC0415

        made = plot_compute(grouped, out / "seen_per_compute.png")
        if made is not None:
            paths["compute_plot"] = made
    return paths
