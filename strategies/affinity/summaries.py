"""Client side of gradient-based affinity: per-task body gradients accumulated during training.

A client training tasks with the SUM of their losses already runs one forward per task; taking
each task's backward separately (`torch.autograd.grad` on that task's loss) yields the same
total gradient (summed in task order, so equal to the joint backward up to float rounding)
plus each task's own body gradient, for free. `TaskGradients` sums those over the round's first
`max_steps` steps - near the model the round started from, the model every client of the round
shares, which is what makes gradients of different clients comparable - and at the end sketches
each task's mean gradient with the round's seed into a `GradientReport`.

Memory: one float32 copy of the body per task while accumulating (freed by `report`).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from strategies.affinity.bodygrad import trainable_body_names
from strategies.affinity.reports import GradientReport
from strategies.affinity.sketch import CountSketch


def window_steps(affinity_steps: int, num_tasks: int, steps: int | None = None) -> int:
    """How many of its first steps a client holding `num_tasks` tasks (in the group) accumulates.

    `affinity-steps` is a budget of TASK-steps: ceil(affinity_steps / num_tasks) steps, at least
    one (and at most `steps`, the steps it runs). Why: a step moves the body along the SUM of the
    client's task gradients, so a client training 8 tasks drifts from the round's model about 8
    times as fast as one training a single task, and gradients averaged over a drifting model
    mix in how the model changed (measured: 8-task clients over 10 steps misgrouped 1-2 of 6
    planted seeds, related tasks' mean gradients turning anti-correlated by the third round).
    Per-task sample size stays about the same either way: a task has ~T times more holders when
    clients hold T tasks each, so holders x window x batch is roughly constant.
    """
    if affinity_steps < 1 or num_tasks < 1:
        return 0
    k = -(-int(affinity_steps) // int(num_tasks))
    return k if steps is None else min(k, int(steps))


def body_num_params(model: nn.Module) -> int:
    """P: entries of the flat body gradient that is sketched (trainable body parameters)."""
    params = dict(model.body.named_parameters())
    return sum(int(params[k].numel()) for k in trainable_body_names(model))


class TaskGradients:
    """Sums of each task's body gradient over the first `max_steps` training steps of a round."""

    def __init__(self, model: nn.Module, tasks: Sequence[str], max_steps: int) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        params = dict(model.body.named_parameters())
        self.params = [params[k] for k in trainable_body_names(model)]
        self.max_steps = int(max_steps)
        self.tasks = list(tasks)
        self._sums: dict[str, list[torch.Tensor]] | None = {
            t: [torch.zeros_like(p, dtype=torch.float32) for p in self.params] for t in self.tasks
        }
        self.steps = {t: 0 for t in self.tasks}
        self.examples = {t: 0 for t in self.tasks}
        self.loss_sums = {t: 0.0 for t in self.tasks}
        self.seconds = 0.0  # time spent accumulating and sketching (what measuring adds to training)

    def wants(self, step: int) -> bool:
        """Whether training step `step` (0-based) is inside the accumulation window."""
        return self._sums is not None and step < self.max_steps

    def add(self, task: str, body_grads: Sequence[torch.Tensor | None], loss: float, examples: int) -> None:
        """Fold in one step of one task: its body gradients (None = not reached) and batch-mean loss."""
        if self._sums is None:
            raise RuntimeError("gradients were already reported")
        t0 = time.perf_counter()
        for acc, g in zip(self._sums[task], body_grads):
            if g is not None:
                acc.add_(g.detach())
        self.steps[task] += 1
        self.examples[task] += int(examples)
        self.loss_sums[task] += float(loss)
        self.seconds += time.perf_counter() - t0

    def report(self, sketch_dim: int, seed: int, client: str = "") -> GradientReport:
        """Sketch each task's MEAN gradient (tasks with at least one step) and free the sums."""
        if self._sums is None:
            raise RuntimeError("gradients were already reported")
        t0 = time.perf_counter()
        tasks = [t for t in self.tasks if self.steps[t] > 0]
        grads: dict[str, np.ndarray] = {}
        if tasks:
            sketch = CountSketch(sum(int(p.numel()) for p in self.params), sketch_dim, seed)
            means = [[s / self.steps[t] for s in self._sums[t]] for t in tasks]
            sketched = sketch.sketch(means).cpu().numpy()
            grads = {t: sketched[i].copy() for i, t in enumerate(tasks)}
        self._sums = None
        self.seconds += time.perf_counter() - t0
        return GradientReport(
            client=client,
            grads=grads,
            steps={t: self.steps[t] for t in tasks},
            examples={t: self.examples[t] for t in tasks},
            losses={t: self.loss_sums[t] / self.steps[t] for t in tasks},
            seed=int(seed),
        )
