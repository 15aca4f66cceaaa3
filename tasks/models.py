"""Model building blocks: a small CNN body, and the body-plus-heads multi-task model.

State dict keys are `body.<param>` and `heads.<task>.<param>`; fusion, validation and
checkpoints rely on that naming to tell the shared body from per-task heads.
"""

from __future__ import annotations

import torch
from torch import nn

BODY_PREFIX = "body."
HEAD_PREFIX = "heads."


class SmallCNN(nn.Module):
    """Two conv blocks and a projection: ~110k parameters, trains in seconds on a CPU core."""

    def __init__(self, in_channels: int = 1, feature_dim: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(),
            nn.Linear(64 * 9, feature_dim), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class MLPBody(nn.Module):
    """A narrow MLP body for vector inputs (synthetic suites)."""

    def __init__(self, in_features: int, hidden: int = 64, feature_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiTaskModel(nn.Module):
    """A shared body and one head per task; `forward(x, task)` gives that task's logits."""

    def __init__(self, body: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.body = body
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.body(x))

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Split a multi-task state dict into (body params, {task: head params}), prefixes stripped."""
    body: dict[str, torch.Tensor] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(BODY_PREFIX):
            body[key[len(BODY_PREFIX):]] = value
        elif key.startswith(HEAD_PREFIX):
            task, _, param = key[len(HEAD_PREFIX):].partition(".")
            heads.setdefault(task, {})[param] = value
        else:
            raise KeyError(f"state dict key {key!r} is neither body.* nor heads.<task>.*")
    return body, heads


def join_state(body: dict[str, torch.Tensor], heads: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of `split_state`."""
    state = {BODY_PREFIX + k: v for k, v in body.items()}
    for task, params in heads.items():
        state.update({f"{HEAD_PREFIX}{task}.{k}": v for k, v in params.items()})
    return state
