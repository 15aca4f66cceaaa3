"""The data every fusion path shares: a state dict, a reducer, one client's reply, the weightings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]
# reduce(stacked float64 tensor [n, *shape], weights float64 [n]) -> fused tensor [*shape]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WEIGHTINGS = ("uniform", "examples")


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
