"""Creating, splitting and merging task groups (the weights side of merge-and-split)."""

from __future__ import annotations

from coordinator.config import HEAD_INITS
from coordinator.state import TaskGroup
from strategies.fusion import fuse_states
from tasks.models import split_state
from tasks.suite import Suite


def initial_model(suite: Suite, seed: int, head_init: str = "shared") -> tuple[dict, dict]:
    """(body, heads) of a freshly initialised model with every task's head, deterministic in seed.

    `head_init="shared"`: every head starts as a copy of the first head of its shape (in task
    order). Why: a task's body gradient goes through its head, so with independent random heads
    two related tasks push the body in unrelated directions until their heads have learnt to
    read the same features, and gradient affinity measured early (one task per client, before
    a split) sees little. From the same head, related tasks' labels give aligned body gradients
    from the first step, and independent ones uncorrelated gradients (docs/benchmarks.md,
    "Grouping recovery").
    """
    model = suite.build_model(seed=seed)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    body, heads = split_state(state)
    if head_init == "shared":
        first: dict[tuple, dict] = {}
        for task in suite.task_names:
            shape = tuple((k, tuple(v.shape), v.dtype) for k, v in heads[task].items())
            heads[task] = {k: v.clone() for k, v in first.setdefault(shape, heads[task]).items()}
    elif head_init not in HEAD_INITS:
        raise ValueError(f"head_init={head_init!r}: must be one of {HEAD_INITS}")
    return body, heads


def split_groups(body: dict, heads: dict, grouping: list[list[str]], first_gid: int) -> list[TaskGroup]:
    """One group per task set, each starting from the shared body and its tasks' heads (MAS)."""
    return [
        TaskGroup(
            gid=first_gid + i,
            tasks=list(tasks),
            body={k: v.clone() for k, v in body.items()},
            heads={t: {k: v.clone() for k, v in heads[t].items()} for t in tasks},
        )
        for i, tasks in enumerate(grouping)
    ]


def merge_groups(groups: list[TaskGroup], gid: int, task_order: list[str]) -> TaskGroup:
    """Fuse group bodies into one, weighted by how many tasks each group carries; heads are kept."""
    body = fuse_states([g.body for g in groups], [float(len(g.tasks)) for g in groups])
    heads = {t: h for g in groups for t, h in g.heads.items()}
    tasks = [t for t in task_order if t in heads]
    return TaskGroup(gid=gid, tasks=tasks, body=body, heads={t: heads[t] for t in tasks})
