"""Where a ClientApp message's time goes, written by the client itself (benchmarks and tests only).

When the environment variable `FEDMTL_CLIENT_TIMING` names a file, the ClientApp's `timing_mod`
appends one JSON line per message it handles:

    {"type": "train", "group": "round-3.group-1", "run": 7, "node": 123, "pid": 4711,
     "host": "...", "ray_node": null, "created": t0, "process_start": t1, "enter": t2, "exit": t3,
     "compute": 1.23}

All times are Unix seconds. `created` is when the coordinator built the message (Flower's
metadata, the coordinator's clock), `process_start` when the process handling it started (a
fresh `flwr-clientapp`, a forked child of fedmtl's fork server, or a simulation's Ray actor),
`enter`/`exit` bracket the handler, `compute` is the client compute the reply reports
(training plus affinity measurement seconds, or evaluation seconds). `ray_node` is the Ray node id when the ClientApp runs in a Ray worker (simulation).
Without the variable the mod does nothing but call the handler. One `write` per line on a file
opened for appending, so concurrent client processes do not interleave lines.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from flwr.app import Context, Message

from tasks import protocol as P

TIMING_ENV = "FEDMTL_CLIENT_TIMING"

_PROCESS_START: float | None = None


def process_start_time() -> float:
    """Unix time this process started (a forked child: when it was forked), from /proc, to about
    10 ms: its start in clock ticks since boot, against the uptime read now (/proc/stat's boot
    time has whole seconds only)."""
    global _PROCESS_START
    if _PROCESS_START is None:
        try:
            with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            now = time.time()
            with open("/proc/uptime", encoding="ascii") as f:
                uptime = float(f.read().split()[0])
            _PROCESS_START = now - uptime + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            _PROCESS_START = time.time()
    return _PROCESS_START


def _ray_node() -> str | None:
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - best effort
        return None
    return None


def _compute(reply: Message) -> float | None:
    """The client compute the reply reports: training plus affinity measurement (plus the scoring
    of the received model, when the train message asked for it), or evaluation."""
    if reply.has_error() or P.METRICS not in reply.content:
        return None
    metrics = reply.content[P.METRICS]
    if P.TRAIN_SECONDS in metrics:
        scored = reply.content[P.EVALUATION] if P.EVALUATION in reply.content else {}
        return (float(metrics[P.TRAIN_SECONDS]) + float(metrics.get(P.AFFINITY_SECONDS, 0.0))  # type: ignore[arg-type]
                + float(scored.get(P.EVAL_SECONDS, 0.0)))  # type: ignore[union-attr, arg-type]
    if P.EVAL_SECONDS in metrics:
        return float(metrics[P.EVAL_SECONDS])  # type: ignore[arg-type]
    return None


def timing_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower ClientApp mod: call the handler; with `FEDMTL_CLIENT_TIMING` set, record its timing."""
    path = os.environ.get(TIMING_ENV)
    if not path:
        return call_next(msg, context)
    enter = time.time()
    reply = call_next(msg, context)
    record = {
        "type": msg.metadata.message_type, "group": msg.metadata.group_id, "run": msg.metadata.run_id,
        "node": context.node_id, "name": str(dict(context.node_config).get("name", "")),
        "partition": dict(context.node_config).get("partition-id"),
        "pid": os.getpid(), "host": socket.gethostname(), "ray_node": _ray_node(),
        "created": msg.metadata.created_at, "process_start": process_start_time(),
        "enter": enter, "exit": time.time(), "compute": _compute(reply), "error": reply.has_error(),
    }
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return reply
