"""ColD-Fusion style fusion of client updates into the shared model.

The body is the mean of the fine-tuned bodies (`uniform`, as ColD Fusion does, or weighted by
each client's example count, as FedAvg does). A task's head is fused only over the clients that
trained that task; a task nobody trained this round keeps its previous head. Robust
alternatives to the mean (median, trimmed mean, clipping) plug in through `reduce`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

State = dict[str, torch.Tensor]
# reduce(stacked float64 tensor [n, *shape], weights float64 [n]) -> fused tensor [*shape]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WEIGHTINGS = ("uniform", "examples")


def weighted_mean(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Exact weighted mean along dim 0 (weights need not be normalised)."""
    w = weights / weights.sum()
    return torch.tensordot(w, stacked, dims=1)


def fuse_states(states: Sequence[State], weights: Sequence[float], reduce: Reducer = weighted_mean) -> State:
    """Fuse same-keyed state dicts parameter by parameter.

    Computation is in float64 so the result does not depend on summation order more than
    necessary; each output keeps the dtype and shape of the inputs. Integer buffers (e.g. a
    BatchNorm's `num_batches_tracked`) are taken from the first state rather than averaged.
    """
    if not states:
        raise ValueError("fuse_states needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, non-negative and not all zero: {list(weights)}")
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], start=1):
        if list(s.keys()) != keys:
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


@dataclass
class ClientUpdate:
    """What one client sent back for one group: its fine-tuned body, the heads it trained, its example counts."""

    node_id: int
    body: State
    heads: dict[str, State]
    examples: dict[str, int]

    @property
    def total_examples(self) -> int:
        return int(sum(self.examples.values()))


def fuse_group(
    previous_heads: dict[str, State],
    updates: Sequence[ClientUpdate],
    weighting: str = "uniform",
    reduce: Reducer = weighted_mean,
) -> tuple[State, dict[str, State]]:
    """Fuse one group's round: returns (new body, new heads for every task of `previous_heads`).

    `weighting="uniform"` gives every client the same weight for the body (ColD Fusion);
    `"examples"` weights the body by a client's total examples and each head by the client's
    examples of that task (FedAvg).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"fusion weighting {weighting!r} is not one of {WEIGHTINGS}")
    if not updates:
        raise ValueError("fuse_group needs at least one client update")
    body_w = [1.0 if weighting == "uniform" else float(u.total_examples) for u in updates]
    body = fuse_states([u.body for u in updates], body_w, reduce)
    heads: dict[str, State] = {}
    for task, old in previous_heads.items():
        holders = [u for u in updates if task in u.heads]
        if not holders:
            heads[task] = {k: v.clone() for k, v in old.items()}
            continue
        head_w = [1.0 if weighting == "uniform" else float(u.examples.get(task, 0)) for u in holders]
        if sum(head_w) <= 0:
            head_w = [1.0] * len(holders)
        heads[task] = fuse_states([u.heads[task] for u in holders], head_w, reduce)
    return body, heads


class GroupFusion:
    """One group's round of fusion, fed one client update at a time as replies arrive.

    Interim implementation: holds the updates and fuses them with `fuse_group` in a fixed order
    (by `order`, the client's name), so results do not depend on arrival order.
    """

    def __init__(self, reference_body: State, reference_heads: dict[str, State], weighting: str = "uniform",
                 aggregator: str = "mean", trim_fraction: float = 0.2, clip_norm: float = 0.0) -> None:
        from strategies.robust import make_reducer

        self.reference_body = reference_body
        self.reference_heads = reference_heads
        self.weighting = weighting
        self.reducer = make_reducer(aggregator, **({"trim_fraction": trim_fraction} if aggregator == "trimmed-mean" else {}))
        self.clip_norm = clip_norm
        self._updates: list[tuple[str, ClientUpdate]] = []

    @property
    def count(self) -> int:
        return len(self._updates)

    def add(self, update: ClientUpdate, order: str = "") -> None:
        if self.clip_norm > 0:
            update = self._clip(update)
        body = {k: update.body[k] for k in self.reference_body}
        heads = {t: {k: h[k] for k in self.reference_heads[t]} for t, h in update.heads.items()}
        self._updates.append((order, ClientUpdate(update.node_id, body, heads, dict(update.examples))))

    def _clip(self, u: ClientUpdate) -> ClientUpdate:
        from strategies.robust import clip_update
        from tasks.models import join_state, split_state

        ref = join_state(self.reference_body, {t: self.reference_heads[t] for t in u.heads})
        body, heads = split_state(clip_update(ref, join_state(u.body, u.heads), self.clip_norm))
        return ClientUpdate(u.node_id, body, heads, u.examples)

    def result(self) -> tuple[State, dict[str, State]]:
        updates = [u for _, u in sorted(self._updates, key=lambda item: item[0])]
        return fuse_group(self.reference_heads, updates, self.weighting, self.reducer)
