"""Progress people and scripts can read: marker lines, the coordinator's human lines and the
reporters' modes. A real `fedmtl simulate --json --dashboard` is parsed line by line in
tests/test_simulation.py (its short simulation)."""

import io
import json
from pathlib import Path

from common.progress import marker_line, parse_line, parse_marker, round_event
from fedmtl.progress import RunReporter, task_progress

ROOT = Path(__file__).resolve().parent.parent
HUMAN = [
    "[launcher] SuperLink on 127.0.0.1:1234 (log x); RAY_ADDRESS=local",
    "  joined: partition-1 (node 4132988749913284986, cpu) tasks fashion_class:640, fashion_tops:640",
    "  waiting for clients: 1 of 2 joined (40s left of min-clients-timeout)",
    "round   0/2 | groups 1 | clients 0 |    0.8s | mean acc 0.334",
    "round   1/2 | groups 1 | clients 6 (1 dropped, 2 rejected, 0 failed) |    8.6s | mean acc 0.449",
    "  split into 2 groups: [['a'], ['b']]",
    "round   2/2 | groups 2 | clients 6 |    9.6s | mean acc nan",
    "done: 2 rounds, results in /tmp/x",
]


def test_human_lines_and_markers_parse_to_the_same_events():
    events = [parse_line(line) for line in HUMAN]
    assert events[0] is None and events[5] is None
    assert events[1] == {"event": "joined", "client": "partition-1", "node": 4132988749913284986,
                         "tasks": ["fashion_class", "fashion_tops"]}
    assert events[2] == {"event": "waiting", "joined": 1, "needed": 2}
    assert events[4] | {} == {"event": "round", "round": 1, "rounds": 2, "groups": 1, "clients": 6, "dropped": 1,
                              "rejected": 2, "errors": 0, "seconds": 8.6, "mean_accuracy": 0.449}
    assert events[6]["mean_accuracy"] is None and events[7] == {"event": "done", "rounds": 2, "out": "/tmp/x"}
    entry = {"round": 1, "groups": [["a", "b"]], "metrics": {"a": {"accuracy": 0.4}, "b": {"accuracy": float("nan")}},
             "clients": ["c0", "c1"], "dropped": [{}], "rejected": [], "errors": [], "seconds": 1.23456, "evaluated": True}
    line = marker_line("round", **round_event(entry, rounds=5))
    assert line.startswith("@fedmtl {") and "NaN" not in line
    assert parse_line(line) == parse_marker(line) == {
        "event": "round", "round": 1, "rounds": 5, "groups": 1, "clients": 2, "dropped": 1, "rejected": 0,
        "errors": 0, "seconds": 1.235, "mean_accuracy": 0.4, "evaluated": True}
    assert parse_marker("@fedmtl {not json") is None


def _feed(mode, lines, **kw):
    out = io.StringIO()
    with RunReporter(mode, rounds=2, stream=out, **kw) as report:
        for line in lines:
            report.on_line(line)
        report.result("finished", status="ok")
    return out.getvalue()


def test_json_mode_every_line_parses_and_markers_win_over_duplicates():
    marker = marker_line("round", round=1, rounds=2, groups=1, clients=6, dropped=1, rejected=2, errors=0,
                         seconds=8.6, mean_accuracy=0.449)
    text = _feed("json", HUMAN[:4] + [marker] + HUMAN[4:])
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["round"] for e in events if e["event"] == "round"] == [0, 1, 2]  # round 1 once
    assert {e["event"] for e in events} == {"log", "joined", "waiting", "round", "done", "result"}
    assert events[-1] == {"event": "result", "message": "finished", "status": "ok"}


def test_plain_quiet_and_rich_modes():
    marker = marker_line("round", round=2, rounds=2, groups=1, clients=3, dropped=0, rejected=0, errors=0,
                         seconds=1.0, mean_accuracy=0.5)
    plain = _feed("plain", [HUMAN[3], marker])
    assert HUMAN[3] in plain and "@fedmtl" not in plain and "round   2/2 | groups 1 | clients 3 |" in plain
    assert _feed("quiet", HUMAN) == "finished\n"
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    assert _feed("rich", HUMAN, console=console) == "finished\n"
    shown = screen.getvalue()
    assert "2/2" in shown and "rounds" in shown and "mean acc" in shown and "s/round" in shown
    assert "joined: partition-1" in shown and "round   1/2 | groups 1 | clients 6 (1 dropped" in shown
    steps = io.StringIO()
    with task_progress("json", "folders", 2, stream=steps) as advance:
        advance("a")
        advance("b")
    assert [json.loads(line)["done"] for line in steps.getvalue().splitlines()] == [1, 2]
