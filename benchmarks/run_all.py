"""Run every benchmark and write docs/benchmarks.md (tables, plots, machine, versions, commands).

Usage:
  python benchmarks/run_all.py [--quick] [--only quality,scale] [--skip deployment]
         [--results DIR] [--doc FILE] [--render-only] [--args NAME="--flag value ..."]

Full size (`flock /tmp/fedmtl-cpu.lock python benchmarks/run_all.py` on a shared machine) takes
hours on 2 cores and writes results to docs/benchmarks/results/<name>/ (JSON, CSV, PNG) and the
report to docs/benchmarks.md. `--quick` runs every benchmark at its smoke size into
benchmarks/results/quick/ (git-ignored) and writes its report there, so the committed figures
are only replaced by a full run. `--render-only` rebuilds the report from results already on
disk (e.g. after running one benchmark by hand with `--out docs/benchmarks/results/<name>`).

Benchmarks owned elsewhere (fusion, deployment, affinity) are run when their script exists
(with `--quick`/`--out` when they accept them) and skipped otherwise; their JSON is shown as
tables when it uses this folder's format (`benchlib.write_report`), else as the numbers it holds,
with the last lines they printed. Text between `<!-- keep:NAME -->` and `<!-- /keep:NAME -->`
in the existing report (findings written by people) is carried over into the new one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adapters as A
import benchlib as B

HERE = Path(__file__).resolve().parent
DOCS = B.REPO / "docs"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    title: str
    claim: str
    ours: bool = True  # written in this folder's result format
    quick_args: tuple[str, ...] = ()  # with --quick, when the script has no --quick but takes these flags


BENCHES = [  # in the order of issue #10
    Bench("quality", "bench_quality.py", "1. Quality per unit of client compute",
          "MAS: 2x less training time than one-by-one and lower loss than all-in-one; TAG: 10% lower loss than all "
          "tasks together."),
    Bench("recovery", "bench_recovery.py", "2. Grouping recovery",
          "ARI 1.0 where groups are clearly planted; measurement at most 10% of training compute."),
    Bench("overhead", "bench_overhead.py", "3. Framework overhead", "At most 1.10x plain Flower."),
    Bench("fusion", "bench_fusion.py", "4. Fusion throughput and memory",
          "The mean within 1.5x of a numpy sum; peak memory not linear in K.", ours=False),
    Bench("scale", "bench_scale.py", "5. Scale",
          "10,000 clients fit in 24 GiB on 2 cores; a round's time follows the sampled clients."),
    Bench("deployment", "bench_deployment.py", "6. Deployment round overhead", "At most 2 s a round.", ours=False),
    Bench("grouping", "bench_grouping.py", "7. Grouping search speed",
          "The exact search gives brute force's answers, much faster."),
    Bench("affinity", "bench_affinity.py", "8. Affinity measurement cost",
          "Measurement at most 10% of client training compute.", ours=False, quick_args=("--skip", "sketch,exact,mas")),
]
RUN_ORDER = ["grouping", "recovery", "quality", "overhead", "fusion", "affinity", "deployment", "scale"]


# ----------------------------------------------------------------------------- running
def accepted_flags(script: Path) -> set[str]:
    try:
        text = subprocess.run([sys.executable, str(script), "--help"], cwd=B.REPO, capture_output=True, text=True,
                              timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


def run_bench(bench: Bench, out: Path, quick: bool, extra: list[str], timeout: float) -> dict[str, Any]:
    script = HERE / bench.script
    if not script.is_file():
        print(f"[run_all] {bench.name}: {script.relative_to(B.REPO)} is not in this checkout: skipped", flush=True)
        return {"name": bench.name, "status": "missing"}
    flags = accepted_flags(script)
    cmd = [sys.executable, str(script)]
    if quick and "--quick" in flags:
        cmd.append("--quick")
    elif quick and bench.quick_args and bench.quick_args[0] in flags:
        cmd += list(bench.quick_args)
    if "--out" in flags:  # relative to the repository (the commands shown in the report are re-runnable there)
        cmd += ["--out", os.path.relpath(out, B.REPO) if out.resolve().is_relative_to(B.REPO) else str(out)]
    cmd += extra
    shown = shlex.join(["python", str(script.relative_to(B.REPO)), *cmd[2:]]).replace(str(B.REPO) + os.sep, "")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[run_all] {bench.name}: {shown}", flush=True)
    start, started = time.perf_counter(), _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=B.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        print(f"  | {line}", end="", flush=True)
        if time.perf_counter() - start > timeout:
            proc.terminate()
            lines.append(f"[run_all] stopped after {timeout:.0f}s")
            break
    rc = proc.wait()
    (out / "stdout.txt").write_text("\n".join(lines) + "\n")
    record = {"name": bench.name, "status": "ok" if rc == 0 else f"exit {rc}", "command": shown, "started": started,
              "seconds": round(time.perf_counter() - start, 1), "rc": rc, "fedmtl_commit": B.git_commit(),
              "machine": B.machine_info(), "versions": B.versions()}
    (out / "run_all.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"[run_all] {bench.name}: {record['status']} in {record['seconds']:.0f}s", flush=True)
    return record


# ----------------------------------------------------------------------------- rendering
def newest_json(folder: Path, name: str) -> Path | None:
    own = folder / f"{name}.json"
    if own.is_file():
        return own
    found = sorted((p for p in folder.glob("*.json") if p.name != "run_all.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def keep_blocks(doc: Path) -> dict[str, str]:
    if not doc.is_file():
        return {}
    return dict(re.findall(r"<!-- keep:(\S+) -->\n(.*?)<!-- /keep:\1 -->", doc.read_text(), flags=re.S))


def _rel(path: Path, doc: Path) -> str:
    return os.path.relpath(path, doc.parent).replace(os.sep, "/")


def _where(data: dict[str, Any], rec: dict[str, Any]) -> str:
    """Where-it-ran line: the result's own machine/versions, else what run_all recorded beside it."""
    merged = dict(rec)
    for key in ("machine", "versions"):
        merged[key] = (rec.get(key) or {}) | (data.get(key) or {})
    if rec.get("fedmtl_commit") and not (merged["versions"] or {}).get("fedmtl_commit"):
        merged["versions"]["fedmtl_commit"] = rec["fedmtl_commit"]
    return A.machine_line(merged)


def result_lines(bench: Bench, path: Path, folder: Path, rec: dict[str, Any], doc: Path) -> tuple[list[str], list]:
    """One result file as markdown (where it came from, its tables and plots), and its target rows."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        data = {"value": data}
    command = data.get("command") or rec.get("command", "?")
    date = data.get("date") or rec.get("started", "?")
    finished = data.get("finished")
    took = f" ({rec['seconds']:.0f} s under run_all)" if rec.get("seconds") else ""
    sec = [f"Command: `{command}`  ", f"Date: {date}{' to ' + finished if finished else ''}{took}  ",
           f"Ran on: {_where(data, rec)}  ", f"Result: [{path.name}]({_rel(path, doc)})", ""]
    view = ({"tables": data.get("tables") or [], "targets": data.get("targets") or [], "plots": data.get("plots") or []}
            if bench.ours else A.view(bench.name, data, folder))
    for note in [*(data.get("notes") or []), *view.get("notes", [])]:
        sec += [f"> {note}", ""]
    for t in view["tables"]:
        sec += [f"**{t['title']}**" if t.get("title") else "", "", B.markdown_table(t), ""]
        if t.get("note"):
            sec += [f"_{t['note']}_", ""]
    for plot in view["plots"]:
        if (path.parent / plot).is_file():
            sec += [f"![{plot}]({_rel(path.parent / plot, doc)})", ""]
    if not bench.ours and (folder / "stdout.txt").is_file():
        sec += stdout_lines(folder, 40)
    return sec, list(view["targets"])


def stdout_lines(folder: Path, n: int) -> list[str]:
    return ["What it printed (last lines):", "", "```", *(folder / "stdout.txt").read_text().splitlines()[-n:],
            "```", ""]


def render(results: Path, doc: Path, records: dict[str, dict[str, Any]], quick: bool, command: str) -> str:
    kept = keep_blocks(doc)
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    out = ["# Benchmarks", "",
           f"Generated by `{command}` on {now}{' (quick sizes: smoke figures, not the full ones)' if quick else ''}.",
           "Every figure below comes from the result files beside this page (JSON with every number, CSV per table, "
           "PNG plots); each section names the exact command that produced it, when, and on what. Benchmarks print "
           "figures; tests never assert timings. Machine speed matters for seconds, so comparisons are made side by "
           "side in one run and reported as ratios where possible.", ""]
    out += ["## Machine and versions", "", B.markdown_table(B.table("", ["", ""], [
        [k, v] for k, v in {**{f"machine: {k}": v for k, v in B.machine_info().items() if k != "load_average"},
                            **{f"version: {k}": v for k, v in B.versions().items()}}.items()])), "",
            "(of the machine rendering this page; each section says what its run saw)", ""]
    if "intro" in kept:
        out += ["<!-- keep:intro -->", kept["intro"].rstrip("\n"), "<!-- /keep:intro -->", ""]
    targets: list[list[Any]] = []
    sections: list[str] = []
    commands: list[str] = []
    for bench in BENCHES:
        folder = results / bench.name
        rec = records.get(bench.name) or _read_record(folder)
        path = newest_json(folder, bench.name) if folder.is_dir() else None
        sec = [f"## {bench.title}", "", f"Claim / target: {bench.claim}", ""]
        sec += _kept(kept, bench.name, always=True)
        if path is None:
            status = rec.get("status", "not run")
            if status == "missing":
                sec += ["_No figures: its script is not in this checkout yet (owned by another change)._", ""]
            elif status == "ok" and (folder / "stdout.txt").is_file():  # a script that prints, writes no file
                sec += [f"Command: `{rec.get('command')}`  ", f"Date: {rec.get('started')} ({rec.get('seconds', 0):.0f} s)  ",
                        f"Ran on: {_where({}, rec)}", "", *stdout_lines(folder, 60)]
                commands.append(rec.get("command", ""))
            else:
                sec += [f"_No figures: no result ({status})._", ""]
                if (folder / "stdout.txt").is_file():
                    sec += stdout_lines(folder, 25)
            sections.append("\n".join(sec + _see_also(bench, doc)))
            continue
        lines, rows = result_lines(bench, path, folder, rec, doc)
        sec += lines
        targets += [[bench.title, *row] for row in rows]
        commands.append(_command_of(path, rec))
        for variant in sorted(results.glob(f"{bench.name}-*")):
            vpath = newest_json(variant, bench.name)
            if vpath is None:
                continue
            suffix = variant.name[len(bench.name) + 1:]
            vrec = _read_record(variant)
            sec += [f"### Variant: {suffix}", "", *_kept(kept, f"{bench.name}-{suffix}")]
            lines, rows = result_lines(bench, vpath, variant, vrec, doc)
            sec += lines
            targets += [[f"{bench.title} ({suffix})", *row] for row in rows]
            commands.append(_command_of(vpath, vrec))
        sections.append("\n".join(sec + _see_also(bench, doc)))
    if targets:
        out += ["## Targets at a glance", "", B.markdown_table(B.table("", ["benchmark", "target", "result", "verdict"],
                                                                        targets)), ""]
    out += ["## Reproduce", "", "The commands that produced the figures on this page (from the repository root; "
            "on a shared machine wrap each in `flock /tmp/fedmtl-cpu.lock`):", "", "```bash",
            *[c for c in commands if c],
            "python benchmarks/run_all.py --render-only   # rebuild this page from the results on disk",
            "```", "", "Everything at once, at the benchmarks' default sizes (hours on 2 cores): "
            "`python benchmarks/run_all.py`; smoke sizes (minutes): `python benchmarks/run_all.py --quick`.", ""]
    return "\n".join(out + sections)


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / "run_all.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _command_of(path: Path, rec: dict[str, Any]) -> str:
    data = json.loads(path.read_text())
    command = (data.get("command") if isinstance(data, dict) else None) or rec.get("command", "")
    return command.replace(str(B.REPO) + os.sep, "").replace(sys.executable, "python")


def _kept(kept: dict[str, str], name: str, always: bool = False) -> list[str]:
    """A findings block carried over from the existing page (an empty one for each benchmark, to fill in)."""
    if name not in kept and not always:
        return []
    return [f"<!-- keep:{name} -->", *([kept[name].rstrip("\n")] if kept.get(name, "").strip() else []),
            f"<!-- /keep:{name} -->", ""]


def _see_also(bench: Bench, doc: Path) -> list[str]:
    return [f"See also [{other.name}]({_rel(other, doc)})." for other in sorted(DOCS.glob(f"*{bench.name}*.md"))
            if other.resolve() != doc.resolve()] + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every benchmark at its smoke size")
    ap.add_argument("--only", default="", help="comma-separated benchmark names to run")
    ap.add_argument("--skip", default="", help="comma-separated benchmark names not to run")
    ap.add_argument("--results", type=Path, default=None,
                    help="results folder (default docs/benchmarks/results; quick: benchmarks/results/quick)")
    ap.add_argument("--doc", type=Path, default=None, help="report file (default docs/benchmarks.md; quick: "
                                                           "<results>/benchmarks.md)")
    ap.add_argument("--render-only", action="store_true", help="run nothing; rebuild the report from the results")
    ap.add_argument("--args", action="append", default=[], metavar='NAME="FLAGS"', help="extra flags for one benchmark")
    ap.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds one benchmark may take")
    args = ap.parse_args(argv)
    results = args.results or (B.RESULTS / "quick" if args.quick else DOCS / "benchmarks" / "results")
    doc = args.doc or (results / "benchmarks.md" if args.quick else DOCS / "benchmarks.md")
    names = {b.name for b in BENCHES}
    only, skip = set(B.parse_list(args.only)), set(B.parse_list(args.skip))
    bad = (only | skip) - names
    if bad:
        ap.error(f"unknown benchmarks {sorted(bad)}; known: {sorted(names)}")
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, flags = item.partition("=")
        extra[name.strip()] = shlex.split(flags)
    records: dict[str, dict[str, Any]] = {}
    if not args.render_only:
        by_name = {b.name: b for b in BENCHES}
        for name in RUN_ORDER:
            if (only and name not in only) or name in skip:
                continue
            records[name] = run_bench(by_name[name], results / name, args.quick, extra.get(name, []), args.timeout)
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = render(results, doc, records, args.quick, B.command_line())
    doc.write_text(text)
    print(f"[run_all] wrote {doc}", flush=True)
    failed = [n for n, r in records.items() if r.get("status") not in ("ok", "missing")]
    if failed:
        print(f"[run_all] failed: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
