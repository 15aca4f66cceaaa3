"""Regroup: split the merged group by affinity, or merge the groups to measure affinity again.

`GroupState` is the federation's task groups and everything regrouping needs to remember:
the next group id, the grouping before the last merge (for hysteresis) and, for `dynamic`
mode, what each group had learned when it was merged (`stash`).

Why the stash: a dynamic run merges its groups now and then only to re-measure affinity. When
the re-split finds the same grouping again (or hysteresis keeps it), throwing the groups'
specialised bodies away for the merged one would undo what each group learned. So a group whose
task set comes back resumes from its own pre-merge body plus what the merged phase added to
the merged body (task arithmetic: body_g + (merged_now - merged_at_merge)), with the heads as
the merged phase trained them. A task set that is new starts from the merged body (MAS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.affinity import AffinityBook
from coordinator.groups import merge_groups, split_groups
from coordinator.state import RoundOutcome, TaskGroup
from strategies.fusion import State
from strategies.grouping import best_grouping, should_regroup


@dataclass
class GroupState:
    groups: list[TaskGroup]
    next_gid: int
    previous_grouping: list[list[str]] | None = None
    stash: dict[tuple[str, ...], State] = field(default_factory=dict)  # task set -> body before the merge
    merged_at: State | None = None  # the merged body right after the merge

    def grouping(self) -> list[list[str]]:
        return [list(g.tasks) for g in self.groups]


def split(state: GroupState, affinity: AffinityBook, max_groups: int, margin: float, tasks: list[str],
          outcome: RoundOutcome, log: Callable[[str], None]) -> None:
    """Replace the merged group by the best grouping under the tracked affinity."""
    unmeasured, pairs = affinity.unmeasured_pairs()
    if unmeasured:
        note = (f"affinity: {unmeasured} of {pairs} ordered task pairs were never measured; "
                "the grouping search counts them as 0")
        outcome.events.append(note)
        log(f"  {note}")
    matrix = affinity.matrix()
    proposal = best_grouping(matrix, max_groups, tasks)
    grouping = proposal.as_lists()
    previous = state.previous_grouping
    if previous is not None and not should_regroup(previous, grouping, matrix, margin, tasks):
        if _canonical(previous) != _canonical(grouping):
            outcome.events.append(f"kept grouping {previous} (new one not better by {margin})")
        grouping = previous
    merged = state.groups[0]
    groups = split_groups(merged.body, merged.heads, grouping, state.next_gid)
    resumed = []
    for g in groups:
        before = state.stash.get(tuple(sorted(g.tasks)))
        if before is not None and state.merged_at is not None:
            g.body = {k: before[k] + (merged.body[k] - state.merged_at[k]) if before[k].is_floating_point() else before[k].clone()
                      for k in before}
            resumed.append(g.gid)
    state.groups = groups
    state.next_gid += len(groups)
    state.stash, state.merged_at = {}, None
    outcome.events.append(f"split into {grouping} (score {proposal.score:.4g})")
    if resumed:
        outcome.events.append(f"groups {resumed} resume from their own bodies before the merge")
    log(f"  split into {len(grouping)} groups: {grouping}")


def merge(state: GroupState, affinity: AffinityBook, tasks: list[str], outcome: RoundOutcome,
          log: Callable[[str], None]) -> None:
    """Fuse the groups into one to re-measure affinity; remember what each group had learned."""
    state.previous_grouping = state.grouping()
    state.stash = {tuple(sorted(g.tasks)): {k: v.clone() for k, v in g.body.items()} for g in state.groups}
    merged = merge_groups(state.groups, state.next_gid, tasks)
    state.merged_at = {k: v.clone() for k, v in merged.body.items()}
    state.groups = [merged]
    state.next_gid += 1
    affinity.reset()
    outcome.events.append("merged all groups to re-measure affinity")
    log("  merged all groups to re-measure affinity")


def _canonical(grouping: list[list[str]]) -> list[list[str]]:
    return sorted(sorted(g) for g in grouping)
