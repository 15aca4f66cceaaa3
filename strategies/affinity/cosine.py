"""Gradient cosine between tasks: cos(g_i, g_j) of their body gradients (TAG's cheaper baseline).

Two entry points: `gradient_cosine` measures it on one client's batches (exact gradients), and
`cosine_matrix` computes it from any stack of vectors (exact or sketched pooled gradients).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from strategies.affinity.bodygrad import Batch, LossFn, body_grads, check_batches


def cosine_matrix(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    """C[i, j] = cos(v_i, v_j) for the rows of `vectors` (float64); NaN where a row is all zero."""
    flat = torch.as_tensor(vectors).to(torch.float64)
    norms = flat.norm(dim=1)
    gram = flat @ flat.T
    denom = torch.outer(norms, norms)
    cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.nan)
    return cos.clamp(-1.0, 1.0).cpu().numpy()


def cosine_from_grads(grads: Mapping[str, tuple[torch.Tensor, ...]], tasks: list[str]) -> np.ndarray:
    """Cosine matrix of per-task gradients given as tuples of per-parameter tensors."""
    return cosine_matrix(torch.stack([torch.cat([g.reshape(-1) for g in grads[t]]).to(torch.float64) for t in tasks]))


def gradient_cosine(
    model: nn.Module,
    batches: Mapping[str, Batch],
    loss_fn: LossFn = F.cross_entropy,
) -> np.ndarray:
    """Cosine similarity of the tasks' body gradients, C[i, j] = cos(g_i, g_j) (symmetric).

    A task whose body gradient is exactly zero has NaN affinities (direction undefined). Leaves
    the model and its `.grad` fields untouched.
    """
    check_batches(model, batches)
    _, grads, _ = body_grads(model, batches, loss_fn)
    return cosine_from_grads(grads, list(batches))
