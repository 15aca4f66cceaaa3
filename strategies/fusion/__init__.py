"""Fusing client replies into a group's model: streaming (`GroupFusion`) and the stacked reference.

* `GroupFusion` (streaming.py): one per group and round; `add` each valid reply as it arrives,
  then `result()`. A float32 mean folded in a fixed order (bitwise the same for every arrival
  order); robust reducers in parameter chunks.
* `fuse_group` (streaming.py): the same from a list of updates.
* `fuse_states` / `fuse_group_stacked` (stacked.py): the stacked float64 reference.
* `ordered_sum.py`, `reply_store.py`, `chunked.py`, `clipping.py`: the pieces.
"""

from strategies.fusion.stacked import fuse_group_stacked, fuse_states, weighted_mean
from strategies.fusion.streaming import (
    AGGREGATORS,
    GroupFusion,
    StreamFusion,
    fuse_group,
)
from strategies.fusion.types import WEIGHTINGS, ClientUpdate, Reducer, State

__all__ = [
    "AGGREGATORS",
    "WEIGHTINGS",
    "ClientUpdate",
    "GroupFusion",
    "Reducer",
    "State",
    "StreamFusion",
    "fuse_group",
    "fuse_group_stacked",
    "fuse_states",
    "weighted_mean",
]
