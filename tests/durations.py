"""Rewrite tests/durations.json (seconds per test file) from a pytest `--junitxml` report.

Usage: python tests/durations.py report.xml   (e.g. after `pytest --junitxml=/tmp/suite.xml`)

tests/conftest.py runs the longest files first with it, so the workers finish together.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def file_seconds(report: Path) -> dict[str, int]:
    """Seconds per test file (setup, call and teardown of its tests), longest first."""
    per: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        package, module = case.get("classname", "").split(".")[:2]  # tests.test_x[.Class]
        per[f"{package}/{module}.py"] += float(case.get("time", 0.0))
    return {path: round(secs) for path, secs in sorted(per.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(__file__).with_name("durations.json")
    out.write_text(json.dumps(file_seconds(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {out}")
