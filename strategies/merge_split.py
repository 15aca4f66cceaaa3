"""When to merge task groups, when to split them, and which rounds measure affinity (MAS and its
dynamic variant).

Pure bookkeeping over round numbers, so the phase of any round can be computed (and tested)
without running a federation:

* `all-in-one`: one group forever; `separate`: one group per task forever.
* `mas`: all tasks merged for rounds 1..S while affinity is measured; split after round S.
* `dynamic`: as `mas`, then in cycles of E split rounds followed by M merged re-measuring
  rounds: merge after round S+E, split again after round S+E+M, merge after S+2E+M, ...

Nothing happens after the final round, and a merge is planned only if its re-measuring rounds
and at least one round of training the new groups still fit before the end: a run never ends
on merged, untrained or half-measured models. The rounds whose measurements a split reads are
the merged rounds before it (`measures`); other rounds measure nothing unless monitoring is
asked for explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["split", "merge"] | None


@dataclass(frozen=True)
class MergeSplitPlan:
    mode: str
    split_round: int = 3
    regroup_every: int = 4
    regroup_rounds: int = 2
    rounds: int | None = None  # the run's last round; None = unbounded (for tests of the cycle)

    def _scheduled(self, round_: int) -> Action:
        if self.mode not in ("mas", "dynamic") or round_ < self.split_round:
            return None
        if round_ == self.split_round:
            return "split"
        if self.mode == "mas":
            return None
        cycle = self.regroup_every + self.regroup_rounds
        offset = (round_ - self.split_round) % cycle
        if offset == self.regroup_every:
            return "merge"
        if offset == 0:
            return "split"
        return None

    def action_after(self, round_: int) -> Action:
        """What to do once `round_` has finished: 'split', 'merge' or nothing."""
        action = self._scheduled(round_)
        if self.rounds is not None:
            if round_ >= self.rounds:
                return None
            if action == "merge" and round_ + self.regroup_rounds >= self.rounds:
                return None  # no room to re-measure, re-split and train the new groups
        return action

    def merged_during(self, round_: int) -> bool:
        """True if round `round_` trains all tasks in one group."""
        if self.mode == "all-in-one":
            return True
        if self.mode == "separate":
            return False
        if round_ <= self.split_round:
            return True
        if self.mode == "mas":
            return False
        # merged since the last merge that actually happened, until the split that ends it
        r = round_ - 1
        while r > self.split_round:
            action = self.action_after(r)
            if action == "merge":
                return True
            if action == "split":
                return False
            r -= 1
        return False

    def measures(self, round_: int) -> bool:
        """True if a later split reads this round's affinity (the merged rounds before a split)."""
        if self.mode not in ("mas", "dynamic") or not self.merged_during(round_):
            return False
        last = self.rounds if self.rounds is not None else round_ + self.split_round + self.regroup_rounds
        for r in range(round_, last + 1):
            action = self.action_after(r)
            if action is not None:
                return action == "split"
        return False
