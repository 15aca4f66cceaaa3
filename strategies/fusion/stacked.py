"""The stacked reference fusion: every client's tensor stacked in float64, then reduced.

This is the plain, obviously-correct implementation the streaming fuser
(`strategies.fusion.streaming`) is tested against. It holds clients x parameters in float64, so
the round loop should not use it for large models; `fuse_states` is still the right tool for a
handful of states (e.g. merging group bodies).

The body is the mean of the fine-tuned bodies (`uniform`, as ColD Fusion does, or weighted by
each client's example count, as FedAvg does). A task's head is fused only over the clients that
trained that task; a task nobody trained this round keeps its previous head. Robust
alternatives to the mean (median, trimmed mean, clipping) plug in through `reduce`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from strategies.fusion.types import WEIGHTINGS, ClientUpdate, Reducer, State


def weighted_mean(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean along dim 0 in float64 (weights need not be normalised)."""
    w = weights / weights.sum()
    return torch.tensordot(w, stacked, dims=1)


weighted_mean.streaming = ("mean", {})  # type: ignore[attr-defined]  # how fuse_group streams it


def check_weights(weights: Sequence[float]) -> torch.Tensor:
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, non-negative and not all zero: {list(weights)}")
    return w


def fuse_states(states: Sequence[State], weights: Sequence[float], reduce: Reducer = weighted_mean) -> State:
    """Fuse same-keyed state dicts parameter by parameter.

    Computation is in float64; each output keeps the dtype and shape of the inputs. Integer
    buffers (e.g. a BatchNorm's `num_batches_tracked`) are taken from the first state rather
    than averaged. Keys are matched by name, so the states' key order does not matter.
    """
    if not states:
        raise ValueError("fuse_states needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = check_weights(weights)
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], start=1):
        if set(s.keys()) != set(keys):
            missing = set(keys) ^ set(s.keys())
            raise ValueError(f"state {i} has different keys from state 0: {sorted(missing)[:5]}")
    fused: State = {}
    for key in keys:
        ref = states[0][key]
        if not (ref.is_floating_point() or ref.is_complex()):
            fused[key] = ref.clone()
            continue
        stacked = torch.stack([s[key].detach().to(torch.float64) for s in states])
        fused[key] = reduce(stacked, w).to(ref.dtype).reshape(ref.shape)
    return fused


def body_weights(updates: Sequence[ClientUpdate], weighting: str) -> list[float]:
    return [1.0 if weighting == "uniform" else float(u.total_examples) for u in updates]


def head_weights(holders: Sequence[ClientUpdate], task: str, weighting: str) -> list[float]:
    """A head's weights; all-zero example counts fall back to uniform (every holder trained it)."""
    w = [1.0 if weighting == "uniform" else float(u.examples.get(task, 0)) for u in holders]
    return w if sum(w) > 0 else [1.0] * len(holders)


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"fusion weighting {weighting!r} is not one of {WEIGHTINGS}")


def fuse_group_stacked(
    previous_heads: dict[str, State],
    updates: Sequence[ClientUpdate],
    weighting: str = "uniform",
    reduce: Reducer = weighted_mean,
) -> tuple[State, dict[str, State]]:
    """Fuse one group's round by stacking (the reference): (new body, new heads for every task
    of `previous_heads`).

    `weighting="uniform"` gives every client the same weight for the body (ColD Fusion);
    `"examples"` weights the body by a client's total examples and each head by the client's
    examples of that task (FedAvg). Updates are reduced in the order given.
    """
    check_weighting(weighting)
    if not updates:
        raise ValueError("fuse_group needs at least one client update")
    body = fuse_states([u.body for u in updates], body_weights(updates, weighting), reduce)
    heads: dict[str, State] = {}
    for task, old in previous_heads.items():
        holders = [u for u in updates if task in u.heads]
        if not holders:
            heads[task] = {k: v.clone() for k, v in old.items()}
            continue
        heads[task] = fuse_states([u.heads[task] for u in holders], head_weights(holders, task, weighting), reduce)
    return body, heads
