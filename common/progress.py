"""The coordinator's progress as lines a program can read, and the parser the CLI uses.

The coordinator's log reaches the `fedmtl` command as plain text lines (through Flower's log
stream in a simulation or a deployment), so progress travels as text too. A *marker line* is
one JSON object after a fixed prefix, on a line of its own:

    @fedmtl {"event":"round","round":3,"rounds":15,"groups":2,"clients":6,"dropped":0,"rejected":1,"errors":0,"seconds":8.6,"mean_accuracy":0.647}

Events: `round` (as above; `evaluated` when known), `joined` (`client`, `node`, `tasks`),
`waiting` (`joined`, `needed`), `done` (`rounds`, `out`). NaN is written as null. The CLI shows
markers as progress bars or JSON and never prints them raw. It also reads the human lines the
coordinator prints today (`round   3/15 | groups 2 | clients 6 (0 dropped, 1 rejected, 0
failed) |    8.6s | mean acc 0.647`, `  joined: NAME (node N, cpu) tasks ...`, `done: ...`), so
either form drives the same progress. Pure standard library: the ServerApp imports it too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MARKER = "@fedmtl "

_ROUND = re.compile(
    r"^round\s+(?P<round>\d+)/(?P<rounds>\d+) \| groups (?P<groups>\d+) \| clients (?P<clients>\d+)"
    r"(?: \((?P<dropped>\d+) dropped, (?P<rejected>\d+) rejected, (?P<errors>\d+) failed\))?"
    r" \|\s*(?P<seconds>[\d.]+)s \| mean acc (?P<acc>\S+)"
)
_JOINED = re.compile(r"^\s*joined: (?P<client>\S+) \(node (?P<node>\d+)(?:, [^)]*)?\)(?: tasks (?P<tasks>.*))?$")
_WAITING = re.compile(r"^\s*waiting for clients: (?P<joined>\d+) of (?P<needed>\d+) joined")
_DONE = re.compile(r"^done: (?P<rounds>\d+) rounds, results in (?P<out>.+)$")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def marker_line(event: str, **fields: Any) -> str:
    """One marker line: `@fedmtl {"event": ..., ...}` (compact JSON, NaN as null)."""
    return MARKER + json.dumps(_clean({"event": event, **fields}), separators=(",", ":"), allow_nan=False)


def round_event(entry: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The fields of a `round` marker from one history round entry (see PLAN's output format)."""
    accs = [m.get("accuracy") for m in (entry.get("metrics") or {}).values()]
    accs = [a for a in accs if isinstance(a, (int, float)) and math.isfinite(a)]
    fields = {
        "round": int(entry["round"]), "rounds": int(rounds), "groups": len(entry.get("groups") or []),
        "clients": len(entry.get("clients") or []), "dropped": len(entry.get("dropped") or []),
        "rejected": len(entry.get("rejected") or []), "errors": len(entry.get("errors") or []),
        "seconds": round(float(entry.get("seconds") or 0.0), 3),
        "mean_accuracy": sum(accs) / len(accs) if accs else None,
    }
    if "evaluated" in entry:
        fields["evaluated"] = bool(entry["evaluated"])
    return fields


def parse_marker(line: str) -> dict[str, Any] | None:
    """The event of a marker line, or None for any other line (also a malformed marker)."""
    stripped = line.strip()
    if not stripped.startswith(MARKER):
        return None
    try:
        event = json.loads(stripped[len(MARKER):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def parse_line(line: str) -> dict[str, Any] | None:
    """An event from a marker line or from one of the coordinator's human progress lines."""
    event = parse_marker(line)
    if event is not None:
        return event
    text = line.rstrip()
    m = _ROUND.match(text)
    if m:
        acc = m["acc"]
        return {
            "event": "round", "round": int(m["round"]), "rounds": int(m["rounds"]), "groups": int(m["groups"]),
            "clients": int(m["clients"]), "dropped": int(m["dropped"] or 0), "rejected": int(m["rejected"] or 0),
            "errors": int(m["errors"] or 0), "seconds": float(m["seconds"]),
            "mean_accuracy": None if acc == "nan" else float(acc),
        }
    m = _JOINED.match(text)
    if m:
        tasks = [t.split(":")[0] for t in (m["tasks"] or "").split(", ") if t]
        return {"event": "joined", "client": m["client"], "node": int(m["node"]), "tasks": tasks}
    m = _WAITING.match(text)
    if m:
        return {"event": "waiting", "joined": int(m["joined"]), "needed": int(m["needed"])}
    m = _DONE.match(text)
    if m:
        return {"event": "done", "rounds": int(m["rounds"]), "out": m["out"]}
    return None
