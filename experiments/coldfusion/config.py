"""Every knob of the ColD Fusion experiment, and the named presets (`full`, `reduced`, `tiny`).

The paper (Don-Yehiya et al., ACL 2023): RoBERTa-base, 35 datasets, 30 iterations, 8
contributors per iteration, 5 seeds. Here: all-MiniLM-L6-v2, 6 contributor datasets, 4 held out,
sized for 2 CPU cores (see docs/coldfusion.md for what each reduction costs in quality).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from coordinator.config import AFFINITY_COVERAGES
from tasks.text.suite import HELD_OUT_TASKS, SEEN_TASKS, TextSuiteConfig

GROUPINGS = ("none", "mas", "dynamic")
# Fields only grouped ColD Fusion reads: plain results of a seed do not depend on them.
GROUPED_FIELDS = ("grouping", "split_round", "max_groups", "regroup_every", "affinity_coverage")


@dataclass(frozen=True)
class ColdFusionConfig:
    """One experiment: the datasets, the fusion iterations and the evaluation protocol."""

    # data
    seen: tuple[str, ...] = SEEN_TASKS
    held_out: tuple[str, ...] = HELD_OUT_TASKS
    max_length: int = 32
    train_per_task: int = 600
    test_per_task: int = 200
    data_seed: int = 0
    # ColD Fusion iterations: each samples `contributors` of the seen datasets, each contributor
    # finetunes the current body (and its own head) for `local_steps`, the repository averages.
    iterations: int = 8
    contributors: int = 3
    local_steps: int = 30
    batch_size: int = 16
    lr: float = 1e-4
    optimizer: str = "adamw"
    # evaluation
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_steps: int = 40
    fewshot_labels: int = 100
    fewshot_steps: int = 30
    probe_c: float = 10.0  # inverse L2 strength of the logistic-regression probe (see evaluate.probe_accuracy)
    curve_every: int = 2  # held-out probe of the fused body every N iterations (and at the end)
    # grouped ColD Fusion (through coordinator.loop.Coordinator); "none" = plain only
    grouping: str = "none"
    split_round: int = 2
    max_groups: int = 2
    regroup_every: int = 3
    # the undrawn datasets' holders in measuring rounds: measure-only probes, trainers, or absent
    affinity_coverage: str = "probe"
    device: str = "cpu"
    extra: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.contributors <= len(self.seen):
            raise ValueError(f"contributors = {self.contributors}: must be in 1..{len(self.seen)} (the seen datasets)")
        if self.iterations < 1 or self.local_steps < 1 or self.finetune_steps < 1 or self.fewshot_steps < 1:
            raise ValueError("iterations, local_steps, finetune_steps and fewshot_steps must be >= 1")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.affinity_coverage not in AFFINITY_COVERAGES:
            raise ValueError(f"affinity_coverage must be one of {AFFINITY_COVERAGES}, got {self.affinity_coverage!r}")
        if self.grouping != "none" and self.split_round >= self.iterations:
            raise ValueError(f"split_round ({self.split_round}) must be < iterations ({self.iterations}) to group")
        if self.fewshot_labels < 2 or self.curve_every < 1:
            raise ValueError("fewshot_labels >= 2 and curve_every >= 1 are required")

    def suite_config(self, partition: str = "one-per-client") -> TextSuiteConfig:
        """The text suite these datasets make (its trained tasks are the seen datasets)."""
        return TextSuiteConfig(
            name="text-coldfusion", tasks=self.seen, held_out=self.held_out, max_length=self.max_length,
            train_per_task=self.train_per_task, test_per_task=self.test_per_task, partition=partition,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def fusion_key(self) -> dict:
        """What a seed's results depend on (everything but the list of seeds)."""
        d = self.to_dict()
        d.pop("seeds")
        return d

    def plain_key(self) -> dict:
        """What a seed's plain ColD Fusion results (and the original's evaluation) depend on:
        `fusion_key` without the grouping settings, so `--reuse` can add grouped ColD Fusion to
        a seed that was run plain."""
        d = self.fusion_key()
        for name in GROUPED_FIELDS:
            d.pop(name)
        return d


PRESETS: dict[str, ColdFusionConfig] = {
    # 3 seeds of 8 iterations: ~27 min per seed at the rate measured on a shared 2-core machine
    # (docs/coldfusion.md, Budget), i.e. about 80 min there, about an hour or less unshared.
    "full": ColdFusionConfig(iterations=8, contributors=3, local_steps=20, train_per_task=400, test_per_task=200,
                             seeds=(0, 1, 2), finetune_steps=30, fewshot_steps=20, curve_every=2),
    # What docs/coldfusion.md reports when the machine is shared: fewer seeds and iterations.
    "reduced": ColdFusionConfig(iterations=6, contributors=3, local_steps=20, train_per_task=400, test_per_task=200,
                                seeds=(0, 1), finetune_steps=30, fewshot_steps=20, curve_every=2),
    # The test suite's configuration: seconds, not minutes.
    "tiny": ColdFusionConfig(seen=("rt_sentiment", "debate_party", "reuters_grain"), held_out=("uk_party",),
                             max_length=12, train_per_task=24, test_per_task=12, iterations=2, contributors=2,
                             local_steps=2, batch_size=8, seeds=(0,), finetune_steps=2, fewshot_labels=8,
                             fewshot_steps=2, curve_every=1, split_round=1, max_groups=2),
}
