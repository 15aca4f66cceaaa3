"""When to merge task groups and when to split them (MAS and its dynamic variant).

Pure bookkeeping over round numbers, so the phase of any round can be computed (and tested)
without running a federation:

* `all-in-one`: one group forever; `separate`: one group per task forever.
* `mas`: all tasks merged for rounds 1..S while affinity is measured; split after round S.
* `dynamic`: as `mas`, then in cycles of E split rounds followed by M merged re-measuring
  rounds: merge after round S+E, split again after round S+E+M, merge after S+2E+M, ...
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

    def action_after(self, round_: int) -> Action:
        """What to do once `round_` has finished: 'split', 'merge' or nothing."""
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

    def merged_during(self, round_: int) -> bool:
        """True if round `round_` trains all tasks in one group (affinity is measured then)."""
        if self.mode == "all-in-one":
            return True
        if self.mode == "separate":
            return False
        if round_ <= self.split_round:
            return True
        if self.mode == "mas":
            return False
        cycle = self.regroup_every + self.regroup_rounds
        offset = (round_ - self.split_round - 1) % cycle
        return offset >= self.regroup_every
