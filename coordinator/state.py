"""What the coordinator knows between rounds: the clients, the task groups and their weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.fusion import State


@dataclass
class ClientInfo:
    """A client as it described itself in its query reply (its data stays on its disk)."""

    node_id: int
    name: str
    tasks: list[str]
    train_examples: dict[str, int]
    test_examples: dict[str, int]
    device: str = "cpu"


@dataclass
class TaskGroup:
    """A set of tasks trained together: one shared body and one head per task."""

    gid: int
    tasks: list[str]
    body: State
    heads: dict[str, State]
    rounds_trained: int = 0

    def state_for(self, tasks: list[str]) -> State:
        """The state dict a client needs to train or evaluate `tasks` of this group."""
        state = {f"body.{k}": v for k, v in self.body.items()}
        for t in tasks:
            state.update({f"heads.{t}.{k}": v for k, v in self.heads[t].items()})
        return state

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors files (contiguous CPU copies)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_for(self.tasks).items()}


@dataclass
class RoundOutcome:
    """Everything one round did, kept for the history and the progress line."""

    round: int
    groups: list[list[str]]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    clients: list[int] = field(default_factory=list)
    assignments: dict[str, list[int]] = field(default_factory=dict)
    compute: dict[str, object] = field(default_factory=dict)
    affinity: dict[str, object] = field(default_factory=dict)
    dropped: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
