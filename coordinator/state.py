"""What the coordinator knows between rounds: the clients, the task groups and their weights,
and what one round did."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strategies.fusion import State


@dataclass
class ClientInfo:
    """A client as it described itself when it joined (its data stays on its disk).

    `train_examples` / `test_examples` are what it declared then, already bounded by the run's
    `max-examples`; later replies are checked against them.
    """

    node_id: int
    name: str
    tasks: list[str]
    train_examples: dict[str, int]
    test_examples: dict[str, int]
    device: str = "cpu"


@dataclass
class TaskGroup:
    """A set of tasks trained together: one shared body and one head per task.

    `version` counts weight changes, so a message record built from the weights can be reused
    until they change (see `coordinator.messaging.Outbox`).
    """

    gid: int
    tasks: list[str]
    body: State
    heads: dict[str, State]
    rounds_trained: int = 0
    version: int = 0

    def state_for(self, tasks: list[str]) -> State:
        """The state dict a client needs to train or evaluate `tasks` of this group."""
        state = {f"body.{k}": v for k, v in self.body.items()}
        for t in tasks:
            state.update({f"heads.{t}.{k}": v for k, v in self.heads[t].items()})
        return state

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors files (contiguous CPU copies)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_for(self.tasks).items()}

    def set_weights(self, body: State, heads: dict[str, State]) -> None:
        self.body, self.heads = body, {t: heads[t] for t in self.tasks}
        self.version += 1


@dataclass
class RoundOutcome:
    """Everything one round did, kept for the history and the progress line."""

    round: int
    groups: list[list[str]]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluated: bool = False
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)  # on the operator's data
    clients: list[str] = field(default_factory=list)
    assignments: dict[str, list[str]] = field(default_factory=dict)
    compute: dict[str, object] = field(default_factory=dict)
    affinity: dict[str, object] = field(default_factory=dict)
    joined: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def reject(self, node: int, client: str, group: int | None, reasons: list[str], kind: str) -> None:
        """A reply that was refused: recorded with who sent it, for which group, and why."""
        self.rejected.append({"node": node, "client": client, "group": group, "kind": kind, "reasons": reasons})
