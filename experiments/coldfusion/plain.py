"""Plain ColD Fusion: contributors finetune the shared body on their own dataset, the repository averages.

Iteration i (Don-Yehiya et al., 2023): sample `contributors` of the seen datasets; each
contributor loads the current body and ITS OWN head (kept across iterations: the head belongs
to the contributor's dataset), finetunes both on its dataset with fedmtl's client trainer
(`client.training.train_multitask`), and sends them back; the repository fuses with fedmtl's
fusion (`strategies.fusion.fuse_group`, uniform weights): the body is the plain mean, each head
is fused over the contributors that trained it (here: the one holder of that dataset).
Data never moves; only weights do. Everything is deterministic in the seed.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from client.training import TrainConfig, train_multitask
from strategies.fusion import ClientUpdate, State, fuse_group
from tasks.models import join_state, split_state
from tasks.partition import stable_rng
from tasks.suite import Suite, TaskData

# on_iteration(iteration, body, heads): called after each fusion (iteration 0 = the start).
IterationHook = Callable[[int, State, dict[str, State]], None]


@dataclass
class FusionRun:
    """What a ColD Fusion run produced: the final body and heads, and what each iteration did."""

    body: State
    heads: dict[str, State]
    iterations: list[dict] = field(default_factory=list)

    @property
    def seconds_per_iteration(self) -> float:
        done = [it["seconds"] for it in self.iterations]
        return sum(done) / len(done) if done else 0.0


def contributors_of(iteration: int, datasets: list[str], k: int, seed: int) -> list[str]:
    """The datasets whose contributors take part in `iteration` (k of them, without replacement)."""
    rng = stable_rng(seed, "coldfusion/contributors", iteration)
    picked = rng.choice(len(datasets), size=k, replace=False)
    return [datasets[i] for i in sorted(picked)]


def initial_state(suite: Suite, seed: int) -> tuple[State, dict[str, State]]:
    """The pretrained body and a fresh head (seeded) for every contributor's dataset."""
    model = suite.build_model(seed=seed)
    return split_state({k: v.detach().clone() for k, v in model.state_dict().items()})


def finetune_contributor(suite: Suite, body: State, head: State, task: str, data: TaskData, cfg: TrainConfig,
                         node_id: int = 0) -> tuple[ClientUpdate, float]:
    """One contributor's turn: load the shared body and its head, finetune, return the update and its mean loss."""
    model = suite.build_model([task])
    model.load_state_dict(join_state(body, {task: head}), strict=True)
    result = train_multitask(model, {task: data}, [task], cfg)
    new_body, new_heads = split_state({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return ClientUpdate(node_id=node_id, body=new_body, heads=new_heads, examples=dict(result.examples)), result.mean_loss[task]


def run_plain(
    suite: Suite,
    data: dict[str, TaskData],
    iterations: int,
    contributors: int,
    train: TrainConfig,
    seed: int,
    on_contributor: Callable[[int, str], None] | None = None,
    on_iteration: IterationHook | None = None,
) -> FusionRun:
    """Run `iterations` of finetune-then-fuse over the datasets in `data` (one contributor each)."""
    datasets = list(data)
    body, heads = initial_state(suite, seed)
    heads = {t: heads[t] for t in datasets}
    if on_iteration:
        on_iteration(0, body, heads)
    run = FusionRun(body, heads)
    for it in range(1, iterations + 1):
        t0 = time.perf_counter()
        chosen = contributors_of(it, datasets, contributors, seed)
        updates, losses = [], {}
        for node, task in enumerate(chosen):
            cfg = replace(train, seed=zlib.crc32(f"{seed}/{it}/{task}".encode()))
            update, loss = finetune_contributor(suite, body, heads[task], task, data[task], cfg, node_id=node)
            updates.append(update)
            losses[task] = loss
            if on_contributor:
                on_contributor(it, task)
        body, heads = fuse_group(heads, updates, weighting="uniform")
        run.body, run.heads = body, heads
        run.iterations.append({"iteration": it, "contributors": chosen, "train_loss": losses,
                               "seconds": time.perf_counter() - t0})
        if on_iteration:
            on_iteration(it, body, heads)
    return run


def body_distance(a: State, b: State) -> float:
    """L2 distance between two bodies (how far fusion moved the pretrained weights)."""
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point())))
