"""Combine clients' affinity measurements of one round, plainly or so that one client cannot dictate them.

Gradient summaries (`pool_gradients`), per task over the clients that reported it:
  * "mean": examples-weighted mean of the clients' mean gradients (and of their losses) - the
    mean gradient over every accumulated example, the least noisy estimate when all are honest;
  * "robust": every client's vector is first clipped to the MEDIAN norm among that task's
    reports (so no client buys influence with length), then reduced coordinate-wise by the
    median (3 or more clients) or the mean (1-2 clients: nothing to vote with); the loss is the
    median. Weights are ignored because example counts are the client's own claim.
  Breakdown: with k honest holders of a task, one hostile holder moves a coordinate-wise median
  by at most the spread of the honest values; with a single holder the task's row and column
  are that holder's word, but nothing else is (pairs of other tasks do not involve it), and
  its vector is clipped to the task's median norm (its own, then - validation's `max_norm`
  bounds it absolutely).

Virtual-step stats (`combine_virtual_stats`), per ordered pair:
  * "mean": the exact (sum, count) merge over all clients' measurements (today's behaviour);
  * "robust": each client's own mean first, then the median across the clients that measured
    the pair, so a client with many (or inflated) measurements still has one vote.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from strategies.affinity.reports import GradientReport
from strategies.affinity.stats import AffinityStats
from strategies.robust import trimmed_mean, unweighted_median

POOLINGS = ("mean", "robust")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"affinity pooling {pooling!r} is not one of {POOLINGS}")
    return pooling


@dataclass
class PooledGradients:
    """Per task of `tasks`: the pooled mean body gradient (row of `vectors`, NaN when no client
    reported the task), the pooled loss, and which clients went into it."""

    tasks: list[str]
    vectors: np.ndarray  # [n_tasks, dim] float64
    losses: np.ndarray  # [n_tasks] float64
    holders: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)  # robust: reports shortened per task

    def measured(self) -> np.ndarray:
        """Boolean [n_tasks]: which tasks have a pooled gradient."""
        return np.isfinite(self.losses)


def _reduce_robust(stacked: np.ndarray, trim_fraction: float) -> np.ndarray:
    t = torch.from_numpy(stacked)
    ones = torch.ones(t.shape[0], dtype=torch.float64)
    if t.shape[0] < 3:
        return stacked.mean(axis=0)
    if trim_fraction > 0:
        return trimmed_mean(t, ones, trim_fraction).numpy()
    return unweighted_median(t, ones).numpy()


def pool_gradients(
    reports: Sequence[GradientReport],
    tasks: Sequence[str],
    pooling: str = "mean",
    trim_fraction: float = 0.0,
) -> PooledGradients:
    """Pool validated reports per task (see the module docstring). Reports must share one dim.

    `trim_fraction` > 0 makes "robust" use a coordinate-wise trimmed mean instead of the median.
    Tasks outside `tasks` are ignored.
    """
    check_pooling(pooling)
    tasks = list(tasks)
    dims = {np.asarray(g).shape[0] for r in reports for g in r.grads.values()}
    if len(dims) > 1:
        raise ValueError(f"gradient summaries of different lengths {sorted(dims)}: validate them first")
    dim = dims.pop() if dims else 0
    vectors = np.full((len(tasks), dim), np.nan)
    losses = np.full(len(tasks), np.nan)
    out = PooledGradients(tasks, vectors, losses)
    for a, task in enumerate(tasks):
        mine = [r for r in reports if task in r.grads]
        if not mine:
            continue
        stacked = np.stack([np.asarray(r.grads[task], np.float64) for r in mine])
        task_losses = np.array([float(r.losses[task]) for r in mine])
        out.holders[task] = [r.client for r in mine]
        out.steps[task] = int(sum(int(r.steps[task]) for r in mine))
        out.examples[task] = int(sum(int(r.examples[task]) for r in mine))
        if pooling == "mean":
            w = np.array([float(r.examples[task]) for r in mine])
            w = w / w.sum() if w.sum() > 0 else np.full(len(mine), 1.0 / len(mine))
            vectors[a] = w @ stacked
            losses[a] = float(w @ task_losses)
        else:
            norms = np.linalg.norm(stacked, axis=1)
            cap = float(np.median(norms))
            scale = np.where(norms > cap, cap / np.where(norms > 0, norms, 1.0), 1.0)
            out.clipped[task] = int((norms > cap).sum())
            vectors[a] = _reduce_robust(stacked * scale[:, None], trim_fraction)
            losses[a] = float(np.median(task_losses))
    return out


@dataclass
class CombinedStats:
    """Virtual-step measurements of one signal combined over clients: the round's matrix (NaN =
    unmeasured), how many measurements and how many clients went into each pair."""

    tasks: list[str]
    matrix: np.ndarray
    counts: np.ndarray
    clients: np.ndarray

    def as_stats(self) -> AffinityStats:
        """As AffinityStats whose mean() is `matrix` (sums = matrix x counts), for code that wants stats."""
        sums = np.where(self.counts > 0, np.nan_to_num(self.matrix) * self.counts, 0.0)
        return AffinityStats(self.tasks, sums, self.counts)


def combine_virtual_stats(
    per_client: Sequence[AffinityStats],
    tasks: Sequence[str],
    pooling: str = "mean",
) -> CombinedStats:
    """Combine one signal's validated stats of several clients (see the module docstring)."""
    check_pooling(pooling)
    tasks = list(tasks)
    n = len(tasks)
    aligned = [s.reindexed(tasks) for s in per_client]
    counts = np.zeros((n, n), np.int64)
    clients = np.zeros((n, n), np.int64)
    for s in aligned:
        counts += s.counts
        clients += (s.counts > 0).astype(np.int64)
    if pooling == "mean":
        total = AffinityStats(tasks)
        for s in aligned:
            total.merge(s)
        matrix = total.mean()
    else:
        matrix = np.full((n, n), np.nan)
        if aligned:
            means = np.stack([s.mean() for s in aligned])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs are simply unmeasured
                matrix = np.nanmedian(means, axis=0)
    return CombinedStats(tasks, matrix, counts, clients)


def pool_virtual_signals(
    per_client: Sequence[Mapping[str, AffinityStats]],
    tasks: Sequence[str],
    pooling: str = "mean",
) -> dict[str, CombinedStats]:
    """`combine_virtual_stats` for every signal any client reported ({signal: stats} per client)."""
    signals = sorted({s for d in per_client for s in d})
    return {s: combine_virtual_stats([d[s] for d in per_client if s in d], tasks, pooling) for s in signals}
