"""GradientReport: one client's per-task body-gradient summaries for one round, and their wire form.

What a summary is: for each task the client trained, the MEAN body gradient over the first
`window_steps(affinity-steps, its tasks)` steps of its round (each step's gradient is already a batch mean), count-
sketched to d numbers with the round's seed (exact when the body has P <= d parameters), the
number of steps and examples behind it, and the mean training loss over those steps.

What it reveals, next to what the client's model update already reveals: the update is
theta_0 - theta_end, i.e. lr times the sum of ALL its steps' (momentum-filtered) gradients of
the SUM of its task losses, at full dimension P. A summary is one task's share of the first few
of those same steps, compressed to d << P random linear measurements. It therefore adds (a) the
split of the update's early part between the client's tasks, and (b) the mean loss per task
over those steps (the update leaks losses only indirectly). For a client holding one task the
summary is a noisier, compressed view of (the first part of) what its update already shows. It
contains no per-example gradient, and averaging over steps x batch examples (96-320 in the
default run) before sketching leaves less about any single example than one step's gradient.

Wire form (names in tasks/protocol.py): arrays "grad.<task>" (float32, 1-D, length d) in the
reply's ArrayRecord "affinity"; metrics "affinity-steps.<task>" (int), "affinity-examples.<task>"
(int), "affinity-loss.<task>" (float) and "affinity-sketch-seed" (int) in its MetricRecord.
`from_wire` only decodes (and raises on a malformed record); `validation.validate_gradient_report`
decides whether to trust it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Mapping

import numpy as np

from tasks import protocol as P


@dataclass
class GradientReport:
    """One client's per-task gradient summaries for one round (see the module docstring)."""

    client: str
    grads: dict[str, np.ndarray]
    steps: dict[str, int]
    examples: dict[str, int]
    losses: dict[str, float]
    seed: int | None = None
    extra: dict[str, object] = field(default_factory=dict)  # anything else decoded, for error messages
    group: int | None = None  # set by the coordinator (never read from the wire): the model it was measured on

    @property
    def tasks(self) -> list[str]:
        return list(self.grads)

    def to_wire(self) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
        """(arrays for the ArrayRecord `affinity`, metrics to merge into the reply's MetricRecord)."""
        arrays = {P.task_key(P.AFFINITY_GRAD, t): np.ascontiguousarray(g, dtype=np.float32) for t, g in self.grads.items()}
        metrics: dict[str, int | float] = {}
        for t in self.grads:
            metrics[P.task_key(P.AFFINITY_STEPS, t)] = int(self.steps[t])
            metrics[P.task_key(P.AFFINITY_EXAMPLES, t)] = int(self.examples[t])
            metrics[P.task_key(P.AFFINITY_LOSS, t)] = float(self.losses[t])
        if self.seed is not None:
            metrics[P.AFFINITY_SEED] = int(self.seed)
        return arrays, metrics

    @classmethod
    def from_wire(cls, arrays: Mapping[str, object], metrics: Mapping[str, object], client: str = "",
                  group: int | None = None) -> "GradientReport":
        """Decode the ArrayRecord `affinity` (as {key: numpy array}) and the reply's metrics.

        Raises ValueError naming the problem if an array key is not "grad.<task>", an array is
        not numeric, or a task's steps/examples/loss metric is missing or of the wrong type.
        Values are NOT range-checked here (that is `validate_gradient_report`'s job).
        """
        head = P.AFFINITY_GRAD + "."
        grads: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            task = key[len(head):] if key.startswith(head) else ""
            if not task or "." in task:
                raise ValueError(f"affinity array {key!r} is not named {head}<task>")
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"affinity array {key!r} has dtype {arr.dtype}, expected float32")
            grads[task] = arr
        steps, examples, losses = {}, {}, {}
        for task in grads:
            for prefix, out, kind in ((P.AFFINITY_STEPS, steps, Integral), (P.AFFINITY_EXAMPLES, examples, Integral),
                                      (P.AFFINITY_LOSS, losses, Real)):
                key = P.task_key(prefix, task)
                if key not in metrics:
                    raise ValueError(f"affinity summary of task {task!r} lacks metric {key!r}")
                value = metrics[key]
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise ValueError(f"metric {key!r} = {value!r} has type {type(value).__name__}")
                out[task] = value if kind is Integral else float(value)  # type: ignore[operator]
        strays = sorted(k for k in metrics for prefix in (P.AFFINITY_STEPS, P.AFFINITY_EXAMPLES, P.AFFINITY_LOSS)
                        if k.startswith(prefix + ".") and k[len(prefix) + 1:] not in grads)
        extra: dict[str, object] = {"stray-metrics": strays} if strays else {}
        seed = metrics.get(P.AFFINITY_SEED)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
            raise ValueError(f"metric {P.AFFINITY_SEED!r} = {seed!r} is not an int")
        return cls(client, grads, steps, examples, losses, None if seed is None else int(seed), extra, group)  # type: ignore[arg-type]


def has_gradient_report(arrays: Mapping[str, object] | None, metrics: Mapping[str, object]) -> bool:
    """True when a reply carries gradient summaries (an `affinity` ArrayRecord or its metrics)."""
    if arrays:
        return True
    prefixes = (P.AFFINITY_STEPS + ".", P.AFFINITY_EXAMPLES + ".", P.AFFINITY_LOSS + ".")
    return any(k.startswith(prefixes) for k in metrics)
