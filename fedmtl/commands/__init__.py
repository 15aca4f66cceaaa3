"""Commands that use what a run produced: predict, evaluate, dashboard."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from fedmtl.progress import json_line


def load_for_command(args: argparse.Namespace, mode: str) -> Any:
    """`load_run` for a command: its warnings (e.g. no best models in an old run) become notes,
    or `warning` events in JSON mode, instead of Python warning text."""
    from fedmtl.load import load_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_run(args.run_dir, args.which, suite=args.suite, device=args.device)
    for w in caught:
        if mode == "json":
            json_line("warning", message=str(w.message))
        elif mode != "quiet":
            print(f"note: {w.message}", flush=True)
    return loaded
