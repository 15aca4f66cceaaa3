"""Shared test set-up: small thread counts (CI has 2 cores) and the repo on sys.path."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# Weight of a test when ordering files: a `slow` test costs about what this many others do.
SLOW_TEST_WEIGHT = 60


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest's hook signature
    """Run the heaviest test files first (each file stays whole and in its own order).

    The suite runs on 2 workers a file at a time (`--dist loadfile`, pyproject's addopts), and
    xdist by default hands out the files with the MOST tests first, which leaves one-test files
    that start real federations (minutes each) for the end, run by one worker while the other
    idles. Longest first keeps the two workers busy to the end. A file's weight is its test
    count with each `slow` test counted as SLOW_TEST_WEIGHT; the order must be the same on every
    worker, so ties keep the collection order. (pyproject passes `--no-loadscope-reorder`.)
    """
    weight: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        path = item.nodeid.split("::", 1)[0]
        weight[path] = weight.get(path, 0) + (SLOW_TEST_WEIGHT if item.get_closest_marker("slow") else 1)
        first.setdefault(path, i)
    items.sort(key=lambda item: (-weight[item.nodeid.split("::", 1)[0]], first[item.nodeid.split("::", 1)[0]]))
