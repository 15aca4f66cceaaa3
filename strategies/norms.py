"""How far an update moved from the model it started from: the one L2 norm every check and clip uses."""

from __future__ import annotations

import math

import torch

State = dict[str, torch.Tensor]


def squared_distance(reference: State, state: State) -> float:
    """Sum of squared differences (state - reference) over the floating-point entries of
    `reference`, in float64. Integer buffers (e.g. BatchNorm's step counter) do not count.
    Call it on states whose keys and shapes were already checked."""
    total = torch.zeros((), dtype=torch.float64)
    for key, ref in reference.items():
        if ref.is_floating_point():
            delta = state[key].detach().to(torch.float64) - ref.detach().to(torch.float64)
            total += delta.pow(2).sum()
    return float(total)


def distance(reference: State, state: State) -> float:
    """L2 norm of (state - reference) over the floating-point entries."""
    return math.sqrt(squared_distance(reference, state))
