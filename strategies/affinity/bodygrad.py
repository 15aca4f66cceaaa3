"""Per-task loss and gradient with respect to the SHARED body of a `MultiTaskModel`.

Both exact signals (lookahead, cosine) start here. Gradients come from `torch.autograd.grad`,
which returns them instead of accumulating into `.grad`, so measuring never leaves gradients
on the model; buffers are cloned so a training-mode forward (BatchNorm statistics) never
changes the model either.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def body_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The body's parameters (live, requiring grad) and private copies of its buffers."""
    params = {k: p for k, p in model.body.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in model.body.named_buffers()}
    return params, buffers


def trainable_body_names(model: nn.Module) -> list[str]:
    """Names of the body parameters a gradient is taken for, in `named_parameters` order.

    This order defines the flat body-gradient vector that clients sketch, so every client
    building the same suite's model agrees on it.
    """
    names = [k for k, p in model.body.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model's body has no trainable parameters: affinity is undefined")
    return names


def task_loss(
    model: nn.Module,
    body_params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    task: str,
    batch: Batch,
    loss_fn: LossFn,
) -> torch.Tensor:
    """Task loss with the body evaluated at `body_params` (a functional call) and the live head."""
    x, y = batch
    features = functional_call(model.body, {**body_params, **buffers}, (x,))
    return loss_fn(model.heads[task](features), y)


def body_grads(
    model: nn.Module,
    batches: Mapping[str, Batch],
    loss_fn: LossFn,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, ...]], list[str]]:
    """Per task: its loss at the current body and its gradient w.r.t. the body's parameters.

    Parameters that a task's loss does not reach get a zero gradient.
    """
    params, buffers = body_state(model)
    names = trainable_body_names(model)
    losses: dict[str, torch.Tensor] = {}
    grads: dict[str, tuple[torch.Tensor, ...]] = {}
    for task, batch in batches.items():
        loss = task_loss(model, params, buffers, task, batch, loss_fn)
        g = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        grads[task] = tuple(torch.zeros_like(params[k]) if gi is None else gi.detach() for k, gi in zip(names, g))
        losses[task] = loss.detach()
    return losses, grads, names


def check_batches(model: nn.Module, batches: Mapping[str, Batch]) -> None:
    """Raise unless there is at least one batch and every batch's task has a head."""
    if not batches:
        raise ValueError("affinity needs at least one task batch")
    missing = [t for t in batches if t not in model.heads]
    if missing:
        raise KeyError(f"model has no heads for tasks {missing}; heads are {list(model.heads.keys())}")
