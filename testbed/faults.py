"""Chaos testing: a ClientApp that misbehaves on purpose, for tests and benchmarks only.

The production ClientApp (`client.app`) carries no fault hooks. This module wraps the very same
handlers in a Flower *mod* that corrupts what chosen nodes send back, so tests and benchmarks
show that the coordinator survives it. Which node misbehaves, how and when comes from the node's
own config (as a SuperNode's `--node-config` would carry it):

    fault        crash | hang | nan | shape | huge | scale
    fault-round  only in this round (absent or 0: every round)
    hang-seconds how long `hang` sleeps (default 3600)

`crash` raises, `hang` sleeps past any sane timeout, `nan` poisons the body, `shape` sends a
wrongly shaped tensor, `huge` scales the update (new - received) by 1e6, `scale` multiplies it by
-10 (a poisoning attack). `parse_faults("0:crash,3:nan:2")` turns the compact spelling tests use
into per-partition node-config entries.
"""

from __future__ import annotations

import time

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import app as honest
from tasks import protocol as P
from testbed.hostile import reply_state

FAULT_KINDS = ("crash", "hang", "nan", "shape", "huge", "scale")


def parse_faults(spec: str) -> dict[int, dict[str, object]]:
    """"1:nan,3:crash:2" -> {1: {"fault": "nan"}, 3: {"fault": "crash", "fault-round": 2}} (node-config entries)."""
    faults: dict[int, dict[str, object]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[1] not in FAULT_KINDS or not parts[0].isdigit():
            raise ValueError(f"fault {item!r}: expected PARTITION:KIND[:ROUND] with KIND in {FAULT_KINDS}")
        entry: dict[str, object] = {"fault": parts[1]}
        if len(parts) == 3:
            entry["fault-round"] = int(parts[2])
        faults[int(parts[0])] = entry
    return faults


def corrupt(kind: str, state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state a faulty client of `kind` sends instead of `state` (trained from `reference`)."""
    body_keys = [k for k in state if k.startswith("body.") and state[k].is_floating_point()]
    state = dict(state)
    if kind == "nan":
        state[body_keys[0]] = torch.full_like(state[body_keys[0]], float("nan"))
    elif kind == "shape":
        state[body_keys[0]] = torch.zeros(3, 3)
    elif kind in ("huge", "scale"):
        factor = 1e6 if kind == "huge" else -10.0
        state = {k: (reference[k] + factor * (v - reference[k]) if k in body_keys else v) for k, v in state.items()}
    return state


def _fault_mod(msg: Message, context: Context, call_next) -> Message:
    """Misbehave on train messages as this node's config says; pass everything else through."""
    node = dict(context.node_config)
    kind = str(node.get("fault", "") or "")
    fault_round = int(node.get("fault-round", 0) or 0)
    this_round = int(dict(msg.content[P.CONFIG]).get("round", 0)) if P.CONFIG in msg.content else 0
    if not kind or msg.metadata.message_type != P.TRAIN or (fault_round and fault_round != this_round):
        return call_next(msg, context)
    if kind == "crash":
        raise RuntimeError(f"injected crash on partition {node.get('partition-id')}")
    reference = honest.received_state(msg)
    reply = call_next(msg, context)
    if kind == "hang":
        time.sleep(float(node.get("hang-seconds", 3600.0)))
        return reply
    if reply.has_error():
        return reply
    state = corrupt(kind, reply_state(reply, msg), reference)
    reply.content[P.MODEL] = honest.packed_update(state)
    return reply


app = ClientApp(mods=[_fault_mod])
app.query()(honest.query)
app.train()(honest.train)
app.evaluate()(honest.evaluate)
