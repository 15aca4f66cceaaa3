"""Plots people would rather look at than JSON: accuracy curves, affinity heatmaps, group timeline."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_plots(history: dict, out_dir: Path) -> list[Path]:
    """Write every plot the history supports; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_accuracy(history, out_dir / "accuracy.png"), plot_group_timeline(history, out_dir / "groups.png")]
    paths += plot_affinity_rounds(history, out_dir)
    return [p for p in paths if p is not None]


def plot_accuracy(history: dict, path: Path) -> Path:
    tasks, rounds = history["tasks"], history["rounds"]
    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(8, 5))
    for task in tasks:
        ys = [_num(r["metrics"].get(task, {}).get("accuracy")) for r in rounds]
        ax.plot(xs, ys, marker="o", markersize=3, label=task)
    means = [np.nanmean([_num(m.get("accuracy")) for m in r["metrics"].values()] or [np.nan]) for r in rounds]
    ax.plot(xs, means, color="black", linewidth=2.5, label="mean")
    ax.set(xlabel="round", ylabel="test accuracy", title="Per-task accuracy over rounds", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
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
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(tasks), 0.6 * len(tasks) + 0.8))
    finite = matrix[np.isfinite(matrix)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(matrix, cmap="RdBu", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.set(xlabel="j (task helped)", ylabel="i (task stepped)", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(v) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
