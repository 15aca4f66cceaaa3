"""Deliberate faults for chaos testing a federation (off unless the run config names them).

The run config key `faults` ("PARTITION:KIND[:ROUND],..."), forwarded in every train message,
makes the named simulated clients misbehave so tests and demos can show that the coordinator
survives them: `crash` raises, `hang` sleeps past any sane timeout, `nan` poisons the body,
`shape` sends a wrongly shaped tensor, `huge` scales the update (new - received) by 1e6, `scale` multiplies
the update by -10 (a poisoning attack). With ROUND, the fault fires only in that round.
"""

from __future__ import annotations

import time

import torch
from flwr.app import Context

FAULT_KINDS = ("crash", "hang", "nan", "shape", "huge", "scale")


def parse_faults(spec: str) -> dict[int, tuple[str, int | None]]:
    """Parse "1:nan,3:crash:2" into {1: ("nan", None), 3: ("crash", 2)}."""
    faults: dict[int, tuple[str, int | None]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[1] not in FAULT_KINDS:
            raise ValueError(f"fault {item!r}: expected PARTITION:KIND[:ROUND] with KIND in {FAULT_KINDS}")
        faults[int(parts[0])] = (parts[1], int(parts[2]) if len(parts) == 3 else None)
    return faults


def apply_fault(cfg: dict, context: Context, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], metrics: dict):
    """Return (state, metrics), corrupted as the run's fault plan says for this client and round."""
    spec = str(cfg.get("faults", "") or "")
    if not spec:
        return state, metrics
    partition = context.node_config.get("partition-id")
    plan = parse_faults(spec).get(int(partition)) if partition is not None else None
    if plan is None or (plan[1] is not None and plan[1] != int(cfg.get("round", 0))):
        return state, metrics
    kind = plan[0]
    body_keys = [k for k in state if k.startswith("body.") and state[k].is_floating_point()]
    if kind == "crash":
        raise RuntimeError(f"injected crash on partition {partition}")
    if kind == "hang":
        time.sleep(float(cfg.get("hang-seconds", 3600)))
    elif kind == "nan":
        state[body_keys[0]] = torch.full_like(state[body_keys[0]], float("nan"))
    elif kind == "shape":
        state[body_keys[0]] = torch.zeros(3, 3)
    elif kind in ("huge", "scale"):
        factor = 1e6 if kind == "huge" else -10.0
        state = {k: (reference[k] + factor * (v - reference[k]) if k in body_keys else v) for k, v in state.items()}
    return state, metrics
