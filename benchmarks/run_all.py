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
          "Measurement at most 10% of client training compute.", ours=False),
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
    if "--out" in flags:
        cmd += ["--out", str(out)]
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
              "seconds": round(time.perf_counter() - start, 1), "rc": rc}
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


def _scalars(d: dict[str, Any], prefix: str = "", depth: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth > 1:
            out |= _scalars(v, f"{prefix}{k}.", depth - 1)
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def foreign_tables(data: Any) -> list[dict[str, Any]]:
    """Tables from a JSON document in another format: its top-level numbers, and every dict of
    records or list of records as rows (scalar fields, up to two levels deep)."""
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("tables"), list) and all(isinstance(t, dict) and "rows" in t for t in data["tables"]):
        return data["tables"]
    skip = {"machine", "versions"}
    tables = []
    top = {k: v for k, v in data.items() if k not in skip and (isinstance(v, (int, float, bool)) or
                                                               (isinstance(v, str) and len(v) < 200))}
    if top:
        tables.append(B.table("settings and headline numbers", ["key", "value"], [[k, v] for k, v in top.items()]))
    for key, value in data.items():
        records: list[tuple[str, dict]] = []
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            records = list(value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            records = [(str(i), v) for i, v in enumerate(value)]
        if key in skip or not records:
            continue
        flat = [(name, _scalars(rec)) for name, rec in records[:40]]
        cols = list(dict.fromkeys(c for _, f in flat for c in f))[:12]
        if cols:
            tables.append(B.table(key, [key, *cols], [[name, *[f.get(c) for c in cols]] for name, f in flat]))
    return tables


def keep_blocks(doc: Path) -> dict[str, str]:
    if not doc.is_file():
        return {}
    return dict(re.findall(r"<!-- keep:(\S+) -->\n(.*?)<!-- /keep:\1 -->", doc.read_text(), flags=re.S))


def _rel(path: Path, doc: Path) -> str:
    return os.path.relpath(path, doc.parent).replace(os.sep, "/")


def _machine_line(report: dict[str, Any]) -> str:
    m, v = report.get("machine") or {}, report.get("versions") or {}
    return (f"{m.get('usable_cores')} of {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_gib')} GiB, load "
            f"{' '.join(str(x) for x in m.get('load_average', []))} at start; python {v.get('python')}, torch "
            f"{v.get('torch')}, flwr {v.get('flwr')}, ray {v.get('ray')}; fedmtl {v.get('fedmtl_commit')}")


def result_lines(bench: Bench, path: Path, folder: Path, rec: dict[str, Any], doc: Path) -> list[str]:
    """One result file as markdown: where it came from, its tables and plots."""
    sec: list[str] = []
    data = json.loads(path.read_text())
    if bench.ours or "command" in data:
        sec += [f"Command: `{data.get('command', rec.get('command', '?'))}`  ", f"Date: {data.get('date', '?')}"
                f"{' to ' + data['finished'] if data.get('finished') else ''}  ",
                f"Ran on: {_machine_line(data)}  ", f"Result: [{path.name}]({_rel(path, doc)})", ""]
    elif rec:
        sec += [f"Command: `{rec.get('command')}`  ", f"Date: {rec.get('started')}  ",
                f"Result: [{path.name}]({_rel(path, doc)})", ""]
    for note in data.get("notes", []) if isinstance(data, dict) else []:
        sec += [f"> {note}", ""]
    tables = data.get("tables") if bench.ours else foreign_tables(data)
    for t in tables or []:
        sec += [f"**{t['title']}**" if t.get("title") else "", "", B.markdown_table(t), ""]
        if t.get("note"):
            sec += [f"_{t['note']}_", ""]
    for plot in data.get("plots", []) if isinstance(data, dict) else []:
        if (path.parent / plot).is_file():
            sec += [f"![{plot}]({_rel(path.parent / plot, doc)})", ""]
    if not bench.ours and (folder / "stdout.txt").is_file():
        sec += ["What it printed (last lines):", "", "```",
                *(folder / "stdout.txt").read_text().splitlines()[-40:], "```", ""]
    return sec


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
    for bench in BENCHES:
        folder = results / bench.name
        rec = records.get(bench.name) or (json.loads((folder / "run_all.json").read_text())
                                          if (folder / "run_all.json").is_file() else {})
        path = newest_json(folder, bench.name) if folder.is_dir() else None
        sec = [f"## {bench.title}", "", f"Claim / target: {bench.claim}", ""]
        sec += ([f"<!-- keep:{bench.name} -->", kept[bench.name].rstrip("\n"), f"<!-- /keep:{bench.name} -->", ""]
                if bench.name in kept else [f"<!-- keep:{bench.name} -->", f"<!-- /keep:{bench.name} -->", ""])
        if path is None:
            status = rec.get("status", "not run")
            why = ("its script is not in this checkout yet (owned by another change)" if status == "missing"
                   else f"no result ({status})")
            sec += [f"_No figures: {why}._", ""]
            if (folder / "stdout.txt").is_file():
                sec += ["Last output lines:", "", "```", *(folder / "stdout.txt").read_text().splitlines()[-25:], "```", ""]
            sections.append("\n".join(sec))
            continue
        sec += result_lines(bench, path, folder, rec, doc)
        for variant in sorted(results.glob(f"{bench.name}-*")):
            vpath = newest_json(variant, bench.name)
            if vpath is not None:
                suffix = variant.name[len(bench.name) + 1:]
                sec += [f"### Variant: {suffix}", ""]
                if f"{bench.name}-{suffix}" in kept:
                    sec += [f"<!-- keep:{bench.name}-{suffix} -->", kept[f"{bench.name}-{suffix}"].rstrip("\n"),
                            f"<!-- /keep:{bench.name}-{suffix} -->", ""]
                sec += result_lines(bench, vpath, variant, {}, doc)
        for other in sorted(DOCS.glob(f"*{bench.name}*.md")):
            if other.resolve() != doc.resolve():
                sec += [f"See also [{other.name}]({_rel(other, doc)}).", ""]
        data = json.loads(path.read_text())
        for row in (data.get("targets") or []) if isinstance(data, dict) else []:
            targets.append([bench.title, *row])
        sections.append("\n".join(sec))
    if targets:
        out += ["## Targets at a glance", "", B.markdown_table(B.table("", ["benchmark", "target", "result", "verdict"],
                                                                        targets)), ""]
    out += ["## Reproduce", "", "```bash",
            "# everything, full size (hours on 2 cores); --quick for the smoke sizes",
            "python benchmarks/run_all.py",
            *[f"python benchmarks/{b.script} --out docs/benchmarks/results/{b.name}" for b in BENCHES
              if (HERE / b.script).is_file()],
            "python benchmarks/run_all.py --render-only   # rebuild this page from the results", "```", ""]
    return "\n".join(out + sections)


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
