"""Which clients train which task groups this round, under a per-client capacity.

Pure logic (no Flower): the coordinator passes the groups, the tasks each available client
holds, and the scheduler state from the previous round; it gets back an `Assignment` (client ->
{group index: tasks to train}) and the next state to store in its checkpoint.

Rules
  * A client is eligible for a group if it holds at least one of the group's tasks; it trains
    only the intersection. A client gets at most `capacity` groups per round.
  * Coverage first: one client per group, groups in priority order — overdue groups
    (rounds_since >= max_starve) first, then the longest-waiting, ties by a seeded shuffle —
    through augmenting paths (a b-matching). Processing groups in priority order with
    augmenting paths is the matroid greedy: it serves the largest possible number of groups and,
    among those, the highest-priority set, so a group is skipped only when capacity truly
    cannot cover it together with all more urgent ones. With enough capacity every active group
    is served every round; when capacity is short, longest-wait-first rotates the groups.
  * Fill: remaining capacity is dealt round-robin over the groups (same priority order) until
    each has about `fraction` of its eligible clients (max(1, round(fraction * eligible))).
  * Deterministic: all randomness comes from numpy's generator seeded with (seed, round).
A group is "active" if some available client is eligible for it; an inactive group cannot be
served and its wait keeps growing (reported in `Assignment.inactive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class SchedulerState:
    """Rounds since each group last trained (0 = trained last round), for the current groups.

    The groups are stored with the state so that a regrouping is detected and the counters
    restart instead of being applied to different groups. JSON-serialisable via to/from_dict.
    """

    groups: list[list[str]] = field(default_factory=list)
    rounds_since: list[int] = field(default_factory=list)

    @classmethod
    def fresh(cls, groups: Sequence[Sequence[str]]) -> "SchedulerState":
        return cls([list(g) for g in groups], [0] * len(groups))

    def matches(self, groups: Sequence[Sequence[str]]) -> bool:
        return [sorted(g) for g in self.groups] == [sorted(g) for g in groups]

    def to_dict(self) -> dict[str, object]:
        return {"groups": [list(g) for g in self.groups], "rounds_since": [int(r) for r in self.rounds_since]}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "SchedulerState":
        return cls([list(g) for g in d["groups"]], [int(r) for r in d["rounds_since"]])  # type: ignore[union-attr]


@dataclass
class Assignment:
    """One round's plan.

    clients: client id -> {group index: the tasks of that group the client holds (its work)}.
    members: group index -> client ids training it (sorted).
    unserved: active groups that got no client (capacity was short); inactive: groups no
    available client is eligible for. overdue: groups whose wait now exceeds max_starve
    (only possible when capacity or data ownership makes the bound infeasible).
    state: the scheduler state after this round (store it; pass it to the next call).
    """

    round: int
    clients: dict[int, dict[int, list[str]]]
    members: dict[int, list[int]]
    unserved: list[int]
    inactive: list[int]
    overdue: list[int]
    state: SchedulerState

    def tasks_for(self, client: int) -> dict[int, list[str]]:
        return self.clients.get(client, {})

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary (dict keys become strings in JSON; use ints again on load)."""
        return {
            "round": self.round,
            "clients": {str(c): {str(g): t for g, t in gs.items()} for c, gs in self.clients.items()},
            "members": {str(g): m for g, m in self.members.items()},
            "unserved": self.unserved, "inactive": self.inactive, "overdue": self.overdue,
            "state": self.state.to_dict(),
        }


def _eligibility(groups: Sequence[Sequence[str]], client_tasks: Mapping[int, Sequence[str]]) -> dict[int, list[int]]:
    """group index -> sorted clients holding at least one of its tasks."""
    held = {c: set(ts) for c, ts in client_tasks.items()}
    return {g: sorted(c for c, ts in held.items() if ts & set(group)) for g, group in enumerate(groups)}


def _priority(rounds_since: Sequence[int], max_starve: int, rng: np.random.Generator) -> list[int]:
    """Overdue first, then longest wait; a seeded shuffle breaks ties (no fixed favourite)."""
    shuffle = rng.permutation(len(rounds_since))
    tiebreak = {int(g): i for i, g in enumerate(shuffle)}
    return sorted(range(len(rounds_since)), key=lambda g: (rounds_since[g] < max_starve, -rounds_since[g], tiebreak[g]))


def _augment(group: int, eligible: dict[int, list[int]], order: dict[int, int], load: dict[int, list[int]], capacity: int, seen: set[int]) -> bool:
    """Kuhn's augmenting path for a b-matching: find a client for `group`, re-routing others.

    A free eligible client is taken first; otherwise a full client is freed by moving one of its
    groups elsewhere (recursively). Each client is visited at most once per call, and a group
    that was matched stays matched (only its client may change).
    """
    clients = sorted(eligible[group], key=order.__getitem__)
    for c in clients:
        if c not in seen and len(load[c]) < capacity:
            seen.add(c)
            load[c].append(group)
            return True
    for c in clients:
        if c in seen:
            continue
        seen.add(c)
        for other in list(load[c]):
            if _augment(other, eligible, order, load, capacity, seen):
                load[c].remove(other)
                load[c].append(group)
                return True
    return False


def _cover(priority: list[int], eligible: dict[int, list[int]], order: dict[int, int], capacity: int) -> dict[int, list[int]]:
    """client -> groups, one client per group where possible, higher priority first."""
    load: dict[int, list[int]] = {c: [] for c in order}
    for g in priority:
        if eligible[g]:
            _augment(g, eligible, order, load, capacity, set())
    return load


def _fill(priority: list[int], eligible: dict[int, list[int]], load: dict[int, list[int]], capacity: int, targets: dict[int, int], rng: np.random.Generator) -> None:
    """Deal spare capacity round-robin over groups until each reaches its target size."""
    members = {g: {c for c, gs in load.items() if g in gs} for g in eligible}
    pools = {g: [int(c) for c in rng.permutation(eligible[g])] if eligible[g] else [] for g in eligible}
    progress = True
    while progress:
        progress = False
        for g in priority:
            if len(members[g]) >= targets[g]:
                continue
            pick = next((c for c in pools[g] if c not in members[g] and len(load[c]) < capacity), None)
            if pick is not None:
                load[pick].append(g)
                members[g].add(pick)
                progress = True


def schedule_round(
    groups: Sequence[Sequence[str]],
    client_tasks: Mapping[int, Sequence[str]],
    capacity: int = 1,
    fraction: float = 1.0,
    seed: int = 0,
    round: int = 0,
    state: SchedulerState | None = None,
    max_starve: int = 2,
) -> Assignment:
    """Assign available clients (`client_tasks`: id -> tasks held) to groups for one round.

    `state` is the previous round's `Assignment.state` (None, or state for other groups, starts
    fresh). Returns the plan and the next state; inputs are not modified. See module docstring.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if max_starve < 0:
        raise ValueError(f"max_starve must be >= 0, got {max_starve}")
    if state is None or not state.matches(groups):
        state = SchedulerState.fresh(groups)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round) & 0xFFFFFFFF])
    eligible = _eligibility(groups, client_tasks)
    priority = _priority(state.rounds_since, max_starve, rng)
    order = {int(c): i for i, c in enumerate(rng.permutation(sorted(client_tasks)))} if client_tasks else {}
    load = _cover(priority, eligible, order, capacity)
    targets = {g: max(1, int(np.floor(fraction * len(e) + 0.5))) if e else 0 for g, e in eligible.items()}
    _fill(priority, eligible, load, capacity, targets, rng)
    return _assemble(groups, client_tasks, eligible, load, state, max_starve, round)


def _assemble(groups: Sequence[Sequence[str]], client_tasks: Mapping[int, Sequence[str]], eligible: dict[int, list[int]], load: dict[int, list[int]], state: SchedulerState, max_starve: int, round: int) -> Assignment:
    clients: dict[int, dict[int, list[str]]] = {}
    for c in sorted(load):
        if load[c]:
            held = set(client_tasks[c])
            clients[c] = {g: [t for t in groups[g] if t in held] for g in sorted(load[c])}
    members = {g: sorted(c for c, gs in clients.items() if g in gs) for g in range(len(groups))}
    inactive = [g for g in range(len(groups)) if not eligible[g]]
    unserved = [g for g in range(len(groups)) if eligible[g] and not members[g]]
    since = [0 if members[g] else state.rounds_since[g] + 1 for g in range(len(groups))]
    overdue = [g for g in range(len(groups)) if since[g] > max_starve]
    new_state = SchedulerState([list(g) for g in groups], since)
    return Assignment(int(round), clients, members, unserved, inactive, overdue, new_state)
