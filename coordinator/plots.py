"""Plots people would rather look at than JSON: accuracy curves, affinity heatmaps, group timeline."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from coordinator.history import mean_accuracy  # noqa: E402


def write_plots(history: dict, out_dir: Path) -> list[Path]:
    """Write every plot the history supports; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_accuracy(history, out_dir / "accuracy.png"),
        plot_accuracy_vs_compute(history, out_dir / "accuracy_vs_compute.png"),
        plot_group_timeline(history, out_dir / "groups.png"),
    ]
    paths += plot_affinity_rounds(history, out_dir)
    return [p for p in paths if p is not None]


def _evaluated(rounds: list[dict]) -> list[dict]:
    """The rounds that evaluated the models (`evaluate-every` may skip some)."""
    return [r for r in rounds if r.get("evaluated", True) and r.get("metrics")]


def plot_accuracy(history: dict, path: Path) -> Path:
    tasks, rounds = history["tasks"], _evaluated(history["rounds"])
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(8, 5))
    for task in tasks:
        ys = [_num(r["metrics"].get(task, {}).get("accuracy")) for r in rounds]
        ax.plot(xs, ys, marker="o", markersize=3, label=task)
    means = [mean_accuracy(r["metrics"]) for r in rounds]
    ax.plot(xs, means, color="black", linewidth=2.5, label="mean")
    ax.set(xlabel="round", ylabel="test accuracy", title="Per-task accuracy over rounds", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cumulative_compute(history: dict) -> list[float]:
    """Client seconds (training plus affinity measurement) spent up to and including each round."""
    total, out = 0.0, []
    for r in history["rounds"]:
        c = r.get("compute") or {}
        total += float(c.get("train_seconds", 0.0)) + float(c.get("affinity_seconds", 0.0))
        out.append(total)
    return out


def plot_accuracy_vs_compute(history: dict, path: Path) -> Path:
    """Mean accuracy against the client compute spent so far: how modes compare per unit of work."""
    spent_by_round = dict(zip((r["round"] for r in history["rounds"]), cumulative_compute(history)))
    rounds = _evaluated(history["rounds"])
    means = [mean_accuracy(r["metrics"]) for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    spent = [spent_by_round[r["round"]] for r in rounds]
    ax.plot(spent, means, marker="o", color="black")
    for r, x, y in zip(rounds, spent, means):
        if r["round"] % max(1, len(rounds) // 8) == 0:
            ax.annotate(str(r["round"]), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.set(xlabel="client compute so far (s, training + affinity)", ylabel="mean test accuracy",
           title="Accuracy per unit of client compute (labels: round)", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_group_timeline(history: dict, path: Path) -> Path:
    """One row per task, coloured by the group it trained in each round: splits and merges at a glance."""
    tasks, rounds = history["tasks"], history["rounds"]
    grid = np.full((len(tasks), len(rounds)), np.nan)
    for j, r in enumerate(rounds):
        for gi, group in enumerate(r["groups"]):
            for t in group:
                grid[tasks.index(t), j] = gi
    fig, ax = plt.subplots(figsize=(max(6, len(rounds) * 0.4), 0.4 * len(tasks) + 1.5))
    ax.imshow(grid, aspect="auto", cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_xticks(range(len(rounds)), [r["round"] for r in rounds], fontsize=7)
    ax.set(xlabel="round", title="Task groups over rounds (colour = group)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_affinity_rounds(history: dict, out_dir: Path) -> list[Path]:
    """A heatmap of the tracked affinity matrix for every round that measured one."""
    paths = []
    for r in history["rounds"]:
        tracked = (r.get("affinity") or {}).get("tracked") or {}
        for signal, data in tracked.items():
            matrix = np.array([[_num(v) for v in row] for row in data["matrix"]])
            name = f"affinity_round_{r['round']}.png" if signal == "lookahead" else f"affinity_{signal}_round_{r['round']}.png"
            paths.append(plot_matrix(matrix, data["tasks"], out_dir / name, f"{signal} affinity after round {r['round']}"))
    return paths


def plot_matrix(matrix: np.ndarray, tasks: list[str], path: Path, title: str) -> Path:
    """Heatmap of Z(i->j); the diagonal (self-affinity, ignored by grouping) is greyed out so the
    colour scale shows the cross-task entries, which decide the groups."""
    shown = matrix.astype(float).copy()
    np.fill_diagonal(shown, np.nan)
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(1.5 + 0.65 * n, 0.65 * n + 1.0))
    finite = shown[np.isfinite(shown)]
    bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu"].copy()
    cmap.set_bad("#dddddd")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=-bound, vmax=bound)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if i != j and np.isfinite(shown[i, j]):
                    ax.text(j, i, f"{shown[i, j]:.2g}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(n), tasks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), tasks, fontsize=7)
    ax.set(xlabel="j (task helped)", ylabel="i (task stepped)", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="affinity (grey: diagonal or not measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(v) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
