"""What every benchmark shares: the machine and versions it ran on, its result file, its tables.

A benchmark's result is one JSON document (`write_report`), so `benchmarks/run_all.py` can put
it in docs/benchmarks.md without re-running anything:

    {"benchmark": "quality", "title": ..., "date": ..., "command": "python benchmarks/...",
     "machine": {...}, "versions": {...}, "config": {...},
     "tables": [{"title", "columns", "rows", "note"}], "targets": [[target, result, verdict]],
     "plots": ["quality_default.png", ...],
     "notes": [...], "raw": {...}}

`targets` are [target, result, verdict] rows (collected on the report's first page); `plots` are
file names relative to the JSON file's folder. Tables hold display-ready values
(numbers are rounded when printed, not in the file). Benchmarks print the same tables.

Also here: a sampler of the memory of a whole process family (a simulation is a dozen
processes: SuperLink, SuperExec, flwr-simulation, Ray's daemons and workers), read from /proc
so nothing beyond the standard library is needed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.atomic import write_json_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"  # default output of a benchmark run (git-ignored)


# ----------------------------------------------------------------------------- where it ran
def machine_info() -> dict[str, Any]:
    """Cores (all, and usable by this process), memory, CPU model, OS, load when it started."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        total_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:"))
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gib"] = None
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def git_commit() -> str | None:
    """The fedmtl checkout's commit, with `+dirty` when it has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+dirty" if dirty else "")) or None


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for mod in ("torch", "flwr", "ray", "numpy", "sklearn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is reported as such
            out[mod] = None
    try:
        from importlib.metadata import version

        out["fedmtl"] = version("fedmtl")
    except Exception:  # noqa: BLE001
        out["fedmtl"] = None
    out["fedmtl_commit"] = git_commit()
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """How to re-run this benchmark from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else argv[0]
    return shlex.join(["python", shown, *argv[1:]])


def new_report(benchmark: str, title: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": benchmark, "title": title,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(), "machine": machine_info(), "versions": versions(), "config": config,
        "tables": [], "targets": [], "plots": [], "notes": [], "raw": {},
    }


def write_report(report: dict[str, Any], out: Path) -> Path:
    """`<out>/<benchmark>.json` (strict JSON: NaN is written as null) and one CSV per table
    (`<benchmark>.table<k>.csv`)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['benchmark']}.json"
    report["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    write_json_atomic(path, report)
    for old in out.glob(f"{report['benchmark']}.table*.csv"):
        old.unlink()
    for k, t in enumerate(report.get("tables", []), start=1):
        with open(out / f"{report['benchmark']}.table{k}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([f"# {t['title']}"])
            writer.writerow(t["columns"])
            for row in t["rows"]:
                writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in row])
    print(f"\nwrote {path}", flush=True)
    return path


# ----------------------------------------------------------------------------- tables
def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], note: str = "") -> dict[str, Any]:
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "note": note}


def fmt(value: Any, digits: int = 3) -> str:
    """A cell as people read it: None/NaN as '-', floats rounded to `digits` significant places
    after the point (large values keep their integer part)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return " ".join(fmt(v, digits) for v in value)
    return str(value)


def print_table(t: dict[str, Any]) -> None:
    cells = [[fmt(v) for v in row] for row in t["rows"]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(t["columns"])]
    print(f"\n{t['title']}")
    print("  ".join(c.ljust(w) for c, w in zip(t["columns"], widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if t.get("note"):
        print(t["note"])
    sys.stdout.flush()


def markdown_table(t: dict[str, Any]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(esc(fmt(v)) for v in row) + " |" for row in t["rows"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- statistics
def finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN when there are none; std 0 for one)."""
    v = finite(values)
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def pm(values: Iterable[float | None], digits: int = 3) -> str:
    """'mean ± std' of the finite values."""
    m, s = mean_std(values)
    return "-" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def median(values: Iterable[float | None]) -> float:
    v = finite(values)
    return statistics.median(v) if v else float("nan")


def parse_list(text: str, kind: Callable[[str], Any] = str) -> list[Any]:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------- process memory
def _read_kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class FamilyMemorySampler:
    """Samples, every `interval` s, the summed memory of a process and everything it started.

    Members: the descendants of `root_pid` plus, once one of them carries fedmtl's launch marker
    (`FEDMTL_LAUNCH_TAG`), that family as `launch.processes.ProcessFamily` finds it (Flower's
    SuperExec children run in sessions of their own and are re-parented to init; Ray's daemons
    and workers stay in those sessions). Two sums per sample: RSS (what `ps` shows; shared pages
    such as torch's libraries count once per process) and PSS (shared pages split between the
    processes sharing them: the honest total). `on_sample(rss_bytes, pss_bytes)` may stop the run
    (a memory guard)."""

    def __init__(self, root_pid: int, interval: float = 0.5,
                 on_sample: Callable[[int, int], None] | None = None) -> None:
        from launch.processes import ENV_TAG, ProcessFamily

        self.root = root_pid
        self.interval = interval
        self.on_sample = on_sample
        self._env_tag = ENV_TAG.encode() + b"="
        self._family_cls = ProcessFamily
        self._family = None
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (t, rss, pss, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> "FamilyMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _descendants(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(name))
        out, todo = set(), [self.root]
        while todo:
            pid = todo.pop()
            if pid in out:
                continue
            out.add(pid)
            todo += children.get(pid, [])
        return out

    def _find_tag(self, pids: set[int]) -> None:
        for pid in pids:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(self._env_tag):
                    self._family = self._family_cls(item[len(self._env_tag):].decode())
                    return

    def members(self) -> set[int]:
        pids = self._descendants()
        if self._family is None:
            self._find_tag(pids)
        if self._family is not None:
            pids |= self._family.scan(roots=[self.root])
        return pids

    def sample(self) -> tuple[int, int, int]:
        pids = self.members()
        rss = sum(_read_kb(f"/proc/{p}/status", "VmRSS:") for p in pids) * 1024
        pss = sum(_read_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) * 1024
        return rss, pss, len(pids)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss, pss, n = self.sample()
            self.samples.append((time.monotonic() - self._t0, rss, pss, n))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, n)
            if self.on_sample is not None:
                self.on_sample(rss, pss)
            self._stop.wait(self.interval)


GIB = 2**30
