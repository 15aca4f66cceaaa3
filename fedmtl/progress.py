"""How long commands show their progress: rich bars for people, JSON lines for scripts, or nothing.

Every long command takes `--quiet` (only its final line and errors) and `--json` (every stdout
line is one JSON object: `{"event": ...}`); otherwise it draws rich progress bars with rates and
time left when stdout is a terminal, and prints plain lines when it is not (logs, CI, pipes), as
it always has.

`RunReporter` turns the coordinator's lines (markers or human lines, see common/progress.py)
into a round bar; `TaskProgress` is a plain counted bar for other work (data preparation,
evaluation of several folders).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from common.progress import parse_line, parse_marker

MODES = ("auto", "rich", "plain", "quiet", "json")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="print only the final result line (and errors)")
    group.add_argument("--json", action="store_true", help="machine-readable output: one JSON object per line")
    group.add_argument("--progress", choices=MODES, default="auto", help=argparse.SUPPRESS)


def output_mode(args: argparse.Namespace, stream: TextIO | None = None) -> str:
    """`quiet`, `json`, `rich` (a terminal) or `plain`."""
    if getattr(args, "json", False):
        return "json"
    if getattr(args, "quiet", False):
        return "quiet"
    mode = getattr(args, "progress", "auto") or "auto"
    if mode != "auto":
        return mode
    stream = stream or sys.stdout
    return "rich" if stream.isatty() else "plain"


def json_line(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Print one JSON event line (NaN as null) and flush: scripts read it as it happens."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    print(json.dumps(clean({"event": event, **fields}), default=str), file=stream or sys.stdout, flush=True)


class RunReporter:
    """Progress of a federation from the coordinator's lines (`on_line`) and the command's own
    messages (`say`, `result`). Use as a context manager so the bar is closed on every exit."""

    def __init__(self, mode: str, rounds: int | None = None, title: str = "federation",
                 stream: TextIO | None = None, console: Any = None) -> None:
        self.mode = mode
        self.rounds = rounds
        self.title = title
        self.stream = stream or sys.stdout
        self.seen_rounds: set[int] = set()
        self.joined: list[str] = []
        self.last: dict[str, Any] | None = None
        self._progress = None
        self._task = None
        self._console = console
        self._first: tuple[float, int] | None = None  # (time, round) of the first round line

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> RunReporter:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            console = self._console or Console(file=self.stream)
            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("rounds"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.rounds, rate="", status="waiting for clients")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -------------------------------------------------------------- input
    def on_line(self, line: str) -> None:
        """One line of the coordinator's (or launcher's) output."""
        event = parse_line(line)
        is_marker = parse_marker(line) is not None
        if event is not None and event["event"] == "round":
            if event["round"] in self.seen_rounds:
                return  # the marker and the human line of one round
            self.seen_rounds.add(event["round"])
            self._round(event)
            if self.mode == "plain" and is_marker:
                self._plain(_round_text(event))
            elif self.mode == "plain":
                self._plain(line)
            return
        if event is not None and event["event"] == "joined":
            self.joined.append(event["client"])
        if self.mode == "json":
            if event is not None:
                json_line(event.pop("event"), self.stream, **event)
            else:
                json_line("log", self.stream, line=line)
        elif self.mode == "plain":
            if not is_marker:
                self._plain(line)
        elif self.mode == "rich":
            if is_marker:
                return
            if event is not None and event["event"] == "waiting":
                self._progress.update(self._task, status=f"waiting for clients: {event['joined']} of {event['needed']}")
            style = "dim" if line.startswith(("[launcher]", "  ")) else ""
            self._progress.console.print(line, style=style or None, markup=False, highlight=False)

    def say(self, text: str, **fields: Any) -> None:
        """A message of the command itself (start, paths); in JSON mode an event `info`."""
        if self.mode == "json":
            json_line("info", self.stream, message=text, **fields)
        elif self.mode == "rich" and self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            self._plain(text)

    def result(self, text: str, **fields: Any) -> None:
        """The command's final line: printed in every mode (JSON: event `result`)."""
        if self.mode == "json":
            json_line("result", self.stream, message=text, **fields)
        else:
            self.__exit__()
            print(text, file=self.stream, flush=True)

    # -------------------------------------------------------------- rendering
    def _round(self, event: dict[str, Any]) -> None:
        self.last = event
        if self.rounds is None and event.get("rounds"):
            self.rounds = int(event["rounds"])
        if self.mode == "json":
            fields = {k: v for k, v in event.items() if k != "event"}
            json_line("round", self.stream, **fields)
        elif self.mode == "rich":
            done = event["round"]
            if self._first is None:  # rate from the first round seen on: start-up time is not a round
                self._first = (time.monotonic(), done)
            t0, r0 = self._first
            rate = f"{(time.monotonic() - t0) / (done - r0):.1f}s/round" if done > r0 else ""
            acc = event.get("mean_accuracy")
            faults = event.get("dropped", 0) + event.get("rejected", 0) + event.get("errors", 0)
            status = (f"mean acc {acc:.3f}" if isinstance(acc, (int, float)) else "mean acc -") + \
                     f" | groups {event.get('groups', '?')} | clients {event.get('clients', '?')}" + \
                     (f" | {faults} faults" if faults else "")
            self._progress.update(self._task, total=self.rounds, completed=done, rate=rate, status=status)
            self._progress.console.print(_round_text(event), markup=False, highlight=False)

    def _plain(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _round_text(e: dict[str, Any]) -> str:
    """The human round line, for a round that arrived only as a marker."""
    faults = ""
    if e.get("dropped") or e.get("rejected") or e.get("errors"):
        faults = f" ({e.get('dropped', 0)} dropped, {e.get('rejected', 0)} rejected, {e.get('errors', 0)} failed)"
    acc = e.get("mean_accuracy")
    acc_text = f"{acc:.3f}" if isinstance(acc, (int, float)) else "nan"
    return (f"round {e['round']:>3}/{e.get('rounds', '?')} | groups {e.get('groups', '?')} | clients {e.get('clients', '?')}{faults} "
            f"| {float(e.get('seconds') or 0):6.1f}s | mean acc {acc_text}")


@contextmanager
def task_progress(mode: str, description: str, total: int, stream: TextIO | None = None) -> Iterator[Any]:
    """A counted bar for `total` steps; yields `advance(label)`. JSON mode prints a `progress`
    event per step, plain mode a line per step, quiet nothing."""
    stream = stream or sys.stdout
    if mode == "rich":
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TextColumn("left"),
                      TimeRemainingColumn(), console=Console(file=stream)) as progress:
            task = progress.add_task(description, total=total, label="")
            yield lambda label="": progress.update(task, advance=1, label=str(label))
        return
    count = [0]

    def advance(label: str = "") -> None:
        count[0] += 1
        if mode == "json":
            json_line("progress", stream, task=description, done=count[0], total=total, item=str(label))
        elif mode == "plain":
            print(f"  [{count[0]}/{total}] {label}", file=stream, flush=True)

    yield advance
