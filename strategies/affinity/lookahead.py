"""Exact TAG lookahead affinity (Fifty et al. 2021) on one client's batches: the virtual step.

    Z(i->j) = 1 - L_j(theta') / L_j(theta),  theta' = theta_body - lr * grad_body L_i

One virtual SGD step on the shared body with task i's loss only (heads fixed); positive means
"a step on i helps j". It needs both tasks on the same client, so it only ever measures
same-client pairs; `strategies.affinity.firstorder` gives the cross-client estimate.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from strategies.affinity.bodygrad import Batch, LossFn, body_grads, body_state, check_batches, task_loss
from strategies.affinity.cosine import cosine_from_grads, gradient_cosine
from strategies.affinity.names import SIGNALS

# A base loss at or below this is "already solved": the lookahead ratio is undefined there.
MIN_BASE_LOSS = 1e-12


def lookahead_affinity(
    model: nn.Module,
    batches: Mapping[str, Batch],
    lr: float,
    loss_fn: LossFn = F.cross_entropy,
    weight_decay: float = 0.0,
) -> np.ndarray:
    """TAG lookahead affinity matrix Z[i, j] = Z(i->j), tasks in the order of `list(batches)`.

    Each task j is evaluated on its own batch `batches[j]` (clients hold different samples per
    task). The virtual step moves only the shared body: theta' = theta - lr * (g_i + wd * theta),
    heads stay fixed. The diagonal (self-affinity) is kept; grouping ignores it.

    Entries whose base loss L_j(theta) is (numerically) zero are NaN: the ratio is undefined,
    and `AffinityStats.add` skips non-finite entries rather than counting them.
    The model is never modified: the virtual steps are functional calls on new tensors, buffers
    are cloned, and no `.grad` is written. Costs one backward per task and, per source task, one
    body forward over all tasks' batches at once (n*n forwards when input shapes differ).
    """
    check_batches(model, batches)
    base, grads, names = body_grads(model, batches, loss_fn)
    return lookahead_from_grads(model, batches, base, grads, names, lr, loss_fn, weight_decay)


def measure_both(
    model: nn.Module,
    batches: Mapping[str, Batch],
    lr: float,
    loss_fn: LossFn = F.cross_entropy,
    weight_decay: float = 0.0,
) -> dict[str, np.ndarray]:
    """Both signals from ONE set of per-task gradients: {"lookahead": Z, "cosine": C}.

    What a client measures every k-th step of a virtual-step round; sharing the backward passes
    makes the cosine signal nearly free next to the lookahead one.
    """
    check_batches(model, batches)
    base, grads, names = body_grads(model, batches, loss_fn)
    return {
        "lookahead": lookahead_from_grads(model, batches, base, grads, names, lr, loss_fn, weight_decay),
        "cosine": cosine_from_grads(grads, list(batches)),
    }


def lookahead_from_grads(
    model: nn.Module,
    batches: Mapping[str, Batch],
    base: Mapping[str, torch.Tensor],
    grads: Mapping[str, tuple[torch.Tensor, ...]],
    names: list[str],
    lr: float,
    loss_fn: LossFn,
    weight_decay: float,
) -> np.ndarray:
    """The lookahead matrix given each task's base loss and body gradient (see `lookahead_affinity`)."""
    tasks = list(batches)
    params, buffers = body_state(model)
    out = np.full((len(tasks), len(tasks)), np.nan, dtype=np.float64)
    shapes = {tuple(x.shape[1:]) for x, _ in batches.values()}
    stacked = torch.cat([x for x, _ in batches.values()]) if len(shapes) == 1 else None
    sizes = [len(x) for x, _ in batches.values()]
    with torch.no_grad():
        for a, src in enumerate(tasks):
            stepped = dict(params)
            for k, g in zip(names, grads[src]):
                p = params[k].detach()
                stepped[k] = p - lr * (g + weight_decay * p)
            if stacked is not None:  # one body forward for every target task's batch
                features = functional_call(model.body, {**stepped, **buffers}, (stacked,)).split(sizes)
            for b, dst in enumerate(tasks):
                l0 = float(base[dst])
                if not math.isfinite(l0) or l0 <= MIN_BASE_LOSS:
                    continue
                if stacked is not None:
                    l1 = float(loss_fn(model.heads[dst](features[b]), batches[dst][1]))
                else:
                    l1 = float(task_loss(model, stepped, buffers, dst, batches[dst], loss_fn))
                out[a, b] = 1.0 - l1 / l0
    return out


def measure_affinity(
    model: nn.Module,
    batches: Mapping[str, Batch],
    signal: str = "lookahead",
    lr: float = 0.05,
    loss_fn: LossFn = F.cross_entropy,
) -> np.ndarray:
    """Dispatch on the signal name ("lookahead" or "cosine"), so callers can take it from config."""
    if signal == "lookahead":
        return lookahead_affinity(model, batches, lr, loss_fn)
    if signal == "cosine":
        return gradient_cosine(model, batches, loss_fn)
    raise ValueError(f"affinity signal {signal!r} is not one of {SIGNALS}")
