"""Schedule: which client trains which group this round (capacity, data ownership, no starvation).

The algorithm is `strategies.scheduler.schedule_round`; this step feeds it the round's pool of
clients and turns its plan into work items. Scheduler ids are positions in the name-sorted pool:
stable across a resume, unlike Flower node ids, so a resumed run schedules as an uninterrupted
one. When the run samples (`fraction` < 1), a group none of the drawn clients can train gets
one known client that can, so no group starves because of the draw; in rounds that measure
affinity, so does every task of a merged group (as a measure-only probe by default), so no pair
the split reads goes unmeasured.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.config import RunConfig
from coordinator.discovery import draw_order
from coordinator.state import ClientInfo, RoundOutcome, TaskGroup
from strategies.scheduler import SchedulerState, schedule_round


@dataclass
class Work:
    """One (client, group) pair of the round: train `tasks` (the group's tasks the client holds),
    or, as a `probe`, only measure their gradient summaries at the group's model."""

    node: int
    group: TaskGroup
    tasks: list[str]
    probe: bool = False


def with_coverage(groups: list[TaskGroup], pool: dict[int, ClientInfo], known: dict[int, ClientInfo],
                  seed: int, round_: int) -> dict[int, ClientInfo]:
    """`pool` plus, for each group no pooled client can train, the first known client (in the
    round's draw order) that can."""
    return pool | _cover(pool, known, [tuple(g.tasks) for g in groups], seed, round_)


def task_coverage(groups: list[TaskGroup], pool: dict[int, ClientInfo], known: dict[int, ClientInfo],
                  seed: int, round_: int) -> dict[int, ClientInfo]:
    """For a round that measures affinity: one known client outside `pool` for every task of a
    group with two or more tasks that no pooled client holds, so that every pair a split reads
    is measured even when a round samples a few of many one-dataset contributors (ColD Fusion's
    setting). The loop asks them to probe or to train (`affinity-coverage`)."""
    needs = [(t,) for g in groups if len(g.tasks) > 1 for t in g.tasks]
    return _cover(pool, known, needs, seed, round_)


def _cover(pool: dict[int, ClientInfo], known: dict[int, ClientInfo], needs: list[tuple[str, ...]],
           seed: int, round_: int) -> dict[int, ClientInfo]:
    """The clients added so that each task set in `needs` has a holder in the pool (when one is known)."""
    added: dict[int, ClientInfo] = {}
    for tasks in needs:
        if any(set(c.tasks) & set(tasks) for c in (pool | added).values()):
            continue
        able = [n for n, c in known.items() if n not in pool and n not in added and set(c.tasks) & set(tasks)]
        if able:
            pick = min(able, key=lambda n: draw_order(seed, round_, f"cover/{known[n].name}"))
            added[pick] = known[pick]
    return added


def probes(groups: list[TaskGroup], clients: dict[int, ClientInfo]) -> list[Work]:
    """Measure-only work items: each client in `clients` probes every merged group it holds tasks of."""
    return [Work(node, g, [t for t in g.tasks if t in info.tasks], probe=True)
            for node, info in sorted(clients.items(), key=lambda kv: kv[1].name)
            for g in groups if len(g.tasks) > 1 and set(g.tasks) & set(info.tasks)]


def assign(groups: list[TaskGroup], pool: dict[int, ClientInfo], cfg: RunConfig, round_: int,
           state: SchedulerState, outcome: RoundOutcome) -> tuple[list[Work], SchedulerState]:
    """The round's work items and the scheduler state to keep. With a sampled pool every drawn
    client is used (up to capacity); with the whole federation, `fraction` of each group's
    eligible clients."""
    names = sorted(info.name for info in pool.values())
    node_of = {info.name: node for node, info in pool.items()}
    client_tasks = {i: pool[node_of[name]].tasks for i, name in enumerate(names)}
    plan = schedule_round(
        [g.tasks for g in groups], client_tasks, cfg.client_capacity, 1.0 if cfg.fraction < 1 else cfg.fraction,
        seed=cfg.seed, round=round_, state=state, max_starve=cfg.max_starve,
    )
    for gi in plan.unserved + plan.inactive:
        outcome.events.append(f"group {groups[gi].gid} got no client this round")
    work = [Work(node_of[names[c]], groups[gi], tasks) for c, gis in sorted(plan.clients.items()) for gi, tasks in gis.items()]
    return work, plan.state
