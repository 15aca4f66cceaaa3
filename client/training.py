"""Local multi-task training and evaluation: plain torch, no Flower.

One step draws a batch from every task the client holds in the group and minimises the SUM of
the task losses (MAS's all-in-one objective). Affinity is measured only when the coordinator's
train config asks for it (`affinity_method`), in one or both of two ways:

* "gradients": during the round's first ceil(`affinity_steps` / number of tasks) steps
  (`strategies.affinity.summaries.window_steps`) each task's loss is
  backpropagated separately (the forwards are separate anyway), so each task's body gradient
  comes for free and the trained weights are bitwise those of the joint backward (the per-task
  gradients are summed in the engine's own order; tests/test_affinity_gradients.py checks it);
  the tasks' mean gradients are count-sketched at the end into a `GradientReport`. Works with
  ONE task per client.
* "virtual-step": every `affinity_every` steps, exact TAG lookahead and gradient cosine between
  the client's tasks on the same batches (needs two tasks on the client).

`measure_gradients` is the probe (`measure_only`): the same gradient window taken at the received
model, with no optimizer step, for a client asked only so that its task's pairs get measured.

Measurement time is kept apart from training time so the coordinator can report its cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from strategies.affinity import AffinityStats, measure_both
from strategies.affinity.names import check_method, measures_gradients, measures_virtual_step
from strategies.affinity.reports import GradientReport
from strategies.affinity.summaries import TaskGradients, window_steps
from tasks.models import MultiTaskModel
from tasks.suite import TaskData


@dataclass
class TrainConfig:
    """How a client trains one group for one round (sent by the coordinator in the message config)."""

    local_epochs: int = 1
    local_steps: int = 0  # > 0 overrides epochs: exactly this many multi-task steps
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw" (pretrained transformers; lr ~1e-4)
    seed: int = 0
    affinity_method: str = "none"  # gradients | virtual-step | both | none (strategies.affinity.METHODS)
    affinity_every: int = 0  # virtual-step: measure every k-th step (0 = never)
    affinity_batch_size: int = 0  # virtual-step: > batch_size measures on larger batches of their own
    affinity_steps: int = 10  # gradients: task-step budget; accumulate over the first ceil(N / tasks) steps
    affinity_sketch_dim: int = 2048  # gradients: sketch size (exact gradient when the body is smaller)
    affinity_sketch_seed: int = 0  # gradients: the round's sketch seed, the same for every client
    measure_only: bool = False  # a probe: gradient summaries at the received model, no training
    device: str = "cpu"


@dataclass
class TrainResult:
    """What local training produced, besides the updated weights."""

    examples: dict[str, int]
    mean_loss: dict[str, float]
    steps: int
    train_seconds: float
    affinity_seconds: float = 0.0
    lookahead: AffinityStats | None = None
    cosine: AffinityStats | None = None
    gradients: GradientReport | None = None


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def as_inputs(x, device: torch.device) -> torch.Tensor:
    """A batch of inputs as the body expects it: floats as float32 (images, vectors), integers as
    int64 (token ids of text suites)."""
    t = torch.as_tensor(x)
    dtype = torch.float32 if t.is_floating_point() else torch.long
    return t.to(device=device, dtype=dtype)


class _TaskStream:
    """Endless shuffled mini-batches of one task's training data, already on the device."""

    def __init__(self, data: TaskData, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        self.x = as_inputs(data.x_train, device)
        self.y = torch.as_tensor(data.y_train, dtype=torch.long, device=device)
        self.batch_size = min(batch_size, len(self.y))
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.y), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos : self._pos + self.batch_size].to(self.x.device)
        self._pos += self.batch_size
        return self.x[idx], self.y[idx]


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (small bodies trained from scratch) or AdamW (pretrained transformers,
    which SGD finetunes poorly in few steps). Frozen parameters (requires_grad False) are skipped."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer {cfg.optimizer!r} is not one of {OPTIMIZERS}")


def train_multitask(model: MultiTaskModel, data: dict[str, TaskData], tasks: list[str], cfg: TrainConfig) -> TrainResult:
    """Fine-tune `model` in place on `tasks` (each must be in `data` and have a head)."""
    if not tasks:
        raise ValueError("train_multitask needs at least one task")
    missing = [t for t in tasks if t not in data or t not in model.heads]
    if missing:
        raise ValueError(f"tasks {missing} have no local data or no head in the received model")
    method = check_method(cfg.affinity_method)
    if cfg.measure_only:
        return measure_gradients(model, data, tasks, cfg)
    device = resolve_device(cfg.device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    streams = {t: _TaskStream(data[t], cfg.batch_size, generator, device) for t in tasks}
    steps = cfg.local_steps if cfg.local_steps > 0 else cfg.local_epochs * max(s.batches_per_epoch for s in streams.values())
    optimizer = make_optimizer(model, cfg)
    measure = measures_virtual_step(method) and cfg.affinity_every > 0 and len(tasks) >= 2
    probe_streams = streams
    if measure and cfg.affinity_batch_size > cfg.batch_size:
        probe_gen = torch.Generator().manual_seed(cfg.seed + 1)
        probe_streams = {t: _TaskStream(data[t], cfg.affinity_batch_size, probe_gen, device) for t in tasks}
    lookahead = AffinityStats(list(tasks)) if measure else None
    cosine = AffinityStats(list(tasks)) if measure else None
    accumulate = measures_gradients(method) and cfg.affinity_steps > 0
    window = window_steps(cfg.affinity_steps, len(tasks), steps)
    grads = TaskGradients(model, tasks, window) if accumulate and window > 0 else None
    report: GradientReport | None = None
    loss_sums = {t: 0.0 for t in tasks}
    affinity_seconds = 0.0
    start = time.perf_counter()
    for step in range(steps):
        batches = {t: streams[t].next() for t in tasks}
        if measure and step % cfg.affinity_every == 0:
            t0 = time.perf_counter()
            probe = batches if probe_streams is streams else {t: probe_streams[t].next() for t in tasks}
            signals = measure_both(model, probe, lr=cfg.lr)
            lookahead.add(signals["lookahead"])
            cosine.add(signals["cosine"])
            affinity_seconds += time.perf_counter() - t0
        optimizer.zero_grad(set_to_none=True)
        losses = {t: F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()}
        if grads is not None and grads.wants(step):
            _per_task_backward(model, losses, grads, {t: len(y) for t, (_, y) in batches.items()})
            if step == grads.max_steps - 1:  # window over: sketch now and free the sums
                report = grads.report(cfg.affinity_sketch_dim, cfg.affinity_sketch_seed)
        else:
            torch.stack(list(losses.values())).sum().backward()
        optimizer.step()
        for t, loss in losses.items():
            loss_sums[t] += float(loss.detach())
    if grads is not None:
        if report is None:  # steps == 0
            report = grads.report(cfg.affinity_sketch_dim, cfg.affinity_sketch_seed)
        affinity_seconds += grads.seconds
    elapsed = time.perf_counter() - start
    return TrainResult(
        examples={t: data[t].num_train for t in tasks},
        mean_loss={t: loss_sums[t] / max(steps, 1) for t in tasks},
        steps=steps,
        train_seconds=elapsed - affinity_seconds,
        affinity_seconds=affinity_seconds,
        lookahead=lookahead,
        cosine=cosine,
        gradients=report,
    )


def measure_gradients(model: MultiTaskModel, data: dict[str, TaskData], tasks: list[str], cfg: TrainConfig) -> TrainResult:
    """A probe: each task's body-gradient summary over the window a training client with these
    tasks would accumulate (`window_steps`), all taken at the received model; no optimizer step.

    Why: with one dataset per client and a few clients sampled a round (ColD Fusion's setting),
    a task whose holder was not drawn has no pair measured. Asking its holder to train as well
    costs a whole local training; a probe costs `window` forward-backward passes and leaves the
    round's fusion to the clients that were drawn. The weights are left as received (dropout
    stays on, as in the training window, so the summaries are taken the same way).
    """
    if not (measures_gradients(check_method(cfg.affinity_method)) and cfg.affinity_steps > 0):
        raise ValueError(f"a measure-only message must ask for gradient summaries (affinity-method "
                         f"{cfg.affinity_method!r}, affinity-steps {cfg.affinity_steps})")
    device = resolve_device(cfg.device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    streams = {t: _TaskStream(data[t], cfg.batch_size, generator, device) for t in tasks}
    window = window_steps(cfg.affinity_steps, len(tasks))
    grads = TaskGradients(model, tasks, window)
    loss_sums = {t: 0.0 for t in tasks}
    start = time.perf_counter()
    for _ in range(window):
        batches = {t: streams[t].next() for t in tasks}
        model.zero_grad(set_to_none=True)
        losses = {t: F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()}
        _per_task_backward(model, losses, grads, {t: len(y) for t, (_, y) in batches.items()})
        for t, loss in losses.items():
            loss_sums[t] += float(loss.detach())
    model.zero_grad(set_to_none=True)
    report = grads.report(cfg.affinity_sketch_dim, cfg.affinity_sketch_seed)
    return TrainResult(
        examples={t: data[t].num_train for t in tasks},
        mean_loss={t: loss_sums[t] / window for t in tasks},
        steps=window,
        train_seconds=0.0,
        affinity_seconds=time.perf_counter() - start,
        gradients=report,
    )


def _per_task_backward(model: MultiTaskModel, losses: dict[str, torch.Tensor], grads: TaskGradients,
                       examples: dict[str, int]) -> None:
    """Backpropagate each task's loss on its own and set `.grad` to their sum (in task order).

    The sum's gradient is the sum of the per-task gradients, so the optimizer sees the same step
    as after `sum(losses).backward()`. Tasks are taken in REVERSE order because that is the order
    in which the autograd engine adds the branches of the joint backward (latest-created first):
    then the two are bitwise identical (measured on CPU, torch 2.x; another engine order would
    differ by float rounding only). On the way each task's body gradient goes into `grads`.
    """
    body = grads.params
    for task in reversed(list(losses)):
        loss = losses[task]
        head = [p for p in model.heads[task].parameters() if p.requires_grad]
        g = torch.autograd.grad(loss, body + head, allow_unused=True)
        grads.add(task, g[: len(body)], float(loss.detach()), examples[task])
        for p, gi in zip(body + head, g):
            if gi is None:
                continue
            if p.grad is None:
                p.grad = gi
            else:
                p.grad += gi


@torch.no_grad()
def evaluate_multitask(
    model: MultiTaskModel, data: dict[str, TaskData], tasks: list[str], batch_size: int = 256, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """Accuracy, mean loss and example count of each task on the client's own test split."""
    dev = resolve_device(device)
    model.to(dev).eval()
    results: dict[str, dict[str, float]] = {}
    for task in tasks:
        d = data[task]
        correct, loss_sum, n = 0, 0.0, d.num_test
        for i in range(0, n, batch_size):
            x = as_inputs(d.x_test[i : i + batch_size], dev)
            y = torch.as_tensor(d.y_test[i : i + batch_size], dtype=torch.long, device=dev)
            logits = model(x, task)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        results[task] = {
            "accuracy": correct / n if n else float("nan"),
            "loss": loss_sum / n if n else float("nan"),
            "examples": float(n),
        }
    return results
