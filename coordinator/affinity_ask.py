"""What a train message asks a client to measure, and what its reply may therefore carry.

One `AffinityAsk` per group and round, built by `coordinator.affinity.AffinityBook.ask`: it
becomes the message's measurement settings (`to_config`) and is what the reply is checked
against (`coordinator.replies.read_train`): a reply may only carry the measurements it was asked
for, summaries exactly `dim` long, echoing this round's sketch `seed`, with counts its steps allow.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.affinity import measures_gradients, measures_virtual_step
from tasks import protocol as P


@dataclass(frozen=True)
class AffinityAsk:
    """The measurement settings of one group's train messages in one round."""

    method: str = "none"  # strategies.affinity.METHODS
    steps: int = 0  # gradients: task-step budget (strategies.affinity.window_steps)
    sketch_dim: int = 0  # gradients: the sketch size sent (clients use min(P, sketch_dim))
    dim: int = 0  # gradients: the summary length a reply must have, min(P, sketch_dim)
    seed: int = 0  # gradients: this round's sketch seed
    every: int = 0  # virtual-step: one measurement every `every` steps
    probe_batch_size: int = 0  # virtual-step: 0 = the training batch
    batch_size: int = 0  # the training batch: bounds the examples behind a summary

    @property
    def gradients(self) -> bool:
        return measures_gradients(self.method) and self.steps > 0

    @property
    def virtual_step(self) -> bool:
        return measures_virtual_step(self.method) and self.every > 0

    def to_config(self) -> dict:
        """The train message's ConfigRecord entries (tasks/protocol.py names)."""
        if not (self.gradients or self.virtual_step):
            return {P.CFG_AFFINITY_METHOD: "none", P.CFG_AFFINITY_EVERY: 0}
        return {
            P.CFG_AFFINITY_METHOD: self.method,
            P.CFG_AFFINITY_STEPS: self.steps,
            P.CFG_AFFINITY_SKETCH_DIM: self.sketch_dim,
            P.CFG_AFFINITY_SKETCH_SEED: self.seed,
            P.CFG_AFFINITY_EVERY: self.every if self.virtual_step else 0,
            P.CFG_AFFINITY_BATCH_SIZE: self.probe_batch_size,
        }


NOTHING = AffinityAsk()
