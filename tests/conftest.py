"""Shared test set-up: small thread counts (CI has 2 cores) and the repo on sys.path."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# Measured seconds per test file (`python tests/durations.py JUNIT.xml` rewrites it from a run with
# `--junitxml`); files it does not list are estimated from their tests (see `_file_seconds`).
DURATIONS = Path(__file__).with_name("durations.json")
SLOW_TEST_SECONDS = 60  # estimate for a `slow` test of a file not in DURATIONS; other tests: 1 s


def _file_of(item) -> str:  # noqa: ANN001 - a pytest item
    return item.nodeid.split("::", 1)[0]


def _file_seconds(items) -> dict[str, float]:  # noqa: ANN001 - pytest items
    try:
        measured = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        measured = {}
    estimate: dict[str, float] = {}
    for item in items:
        path = _file_of(item)
        estimate[path] = estimate.get(path, 0.0) + (SLOW_TEST_SECONDS if item.get_closest_marker("slow") else 1.0)
    return {path: float(measured.get(path, guess)) for path, guess in estimate.items()}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest's hook signature
    """Run the longest test files first (each file stays whole and in its own order).

    The suite runs on several workers a file at a time (`--dist loadfile`, pyproject's addopts),
    and xdist by default hands out the files with the MOST tests first, which leaves files of a
    few tests that start real federations (minutes each) for the end, run by one worker while
    the others idle. Longest first (by `durations.json`) keeps the workers busy to the end. The
    order must be the same on every worker: ties keep the collection order. (pyproject passes
    `--no-loadscope-reorder` so that xdist keeps this order.)
    """
    seconds = _file_seconds(items)
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(_file_of(item), i)
    items.sort(key=lambda item: (-seconds[_file_of(item)], first[_file_of(item)]))
