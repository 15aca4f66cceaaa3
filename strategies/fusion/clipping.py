"""Update clipping: scale (state - reference) down to a maximum L2 norm, direction kept.

Lives beside the fusers (the streaming fuser clips each reply as it arrives);
`strategies.robust` re-exports it for the round loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from strategies.fusion.types import State
from strategies.norms import distance


def _float_keys(reference: State) -> list[str]:
    return [k for k, v in reference.items() if v.is_floating_point()]


def check_same_keys(reference: State, state: State) -> None:
    if set(reference) != set(state):
        diff = sorted(set(reference) ^ set(state))
        raise ValueError(f"state keys differ from the reference: {diff[:5]}")
    for key, ref in reference.items():
        if state[key].shape != ref.shape:
            raise ValueError(f"{key}: shape {tuple(state[key].shape)} differs from reference {tuple(ref.shape)}")


def update_norm(reference: State, state: State) -> float:
    """L2 norm of (state - reference) over the floating-point parameters, in float64."""
    check_same_keys(reference, state)
    return distance(reference, state)


def _check_max_norm(max_norm: float) -> None:
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and > 0, got {max_norm!r}")


def scale_update(reference: State, state: State, scale: float) -> State:
    """reference + scale * (state - reference) for the float parameters (float64 math, input dtype)."""
    out: State = dict(state)
    for key in _float_keys(reference):
        ref = reference[key].detach().to(torch.float64)
        delta = state[key].detach().to(torch.float64) - ref
        out[key] = (ref + delta * scale).to(state[key].dtype)
    return out


def clip_update(reference: State, state: State, max_norm: float) -> State:
    """Scale (state - reference) down to L2 norm `max_norm` if it is longer; direction is kept.

    Only floating-point parameters are clipped; integer buffers are passed through. A state
    within the bound is returned unchanged (same tensors), so clipping never perturbs it.
    """
    _check_max_norm(max_norm)
    norm = update_norm(reference, state)
    if not math.isfinite(norm):
        raise ValueError("update has non-finite values; reject it (strategies.validation) instead of clipping")
    if norm <= max_norm:
        return dict(state)
    return scale_update(reference, state, max_norm / norm)


def clip_updates(reference: State, states: Sequence[State], max_norm: float) -> list[State]:
    """Clip every client's update to L2 norm <= max_norm, so no single client can move the model far."""
    return [clip_update(reference, s, max_norm) for s in states]


def clip_parts(references: Sequence[State], parts: Sequence[State], max_norm: float) -> list[State]:
    """Clip several states (a body and the heads a client trained) as ONE update: the norm spans
    all of them, the same scale applies to each. The norm is summed over the parts in the order
    given (as `clip_update` on their concatenation would), so pass them in a canonical order
    (body, then heads in the reference's task order)."""
    if len(references) != len(parts):
        raise ValueError(f"{len(references)} references but {len(parts)} parts")
    joined_ref = {(i, k): v for i, ref in enumerate(references) for k, v in ref.items()}
    joined = {}
    for i, (ref, part) in enumerate(zip(references, parts)):
        check_same_keys(ref, part)
        joined.update({(i, k): part[k] for k in ref})
    clipped = clip_update(joined_ref, joined, max_norm)  # type: ignore[arg-type]
    return [{k: clipped[(i, k)] for k in part} for i, part in enumerate(parts)]
