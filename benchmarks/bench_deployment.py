"""Deployment round overhead: seconds a deployed round spends beyond the clients' own compute.

Usage: python benchmarks/bench_deployment.py [--quick] [--clients 2] [--rounds 5]
           [--variants flower,poll,fedmtl] [--out benchmarks/results/deployment]

Runs the documented quick start for real, once per variant, side by side in one invocation: a
`fedmtl coordinator` (TLS, client keys, Fleet gateway) and `--clients` `fedmtl client`
processes on 127.0.0.1, tiny suite, MAS splitting into 2 groups after round 2. Variants:

    flower   what Flower does by default: Flower's SuperExec and a fresh `flwr-clientapp` per
             message (`--executor flower`), its 1 s task poll, no pull hold at the gateway
             (idle SuperNodes look for messages every 3 s)
    poll     Flower's processes with the polls tuned: task poll 0.05 s, the gateway holds empty
             pulls (`--pull-hold 20`)
    fedmtl   fedmtl's defaults: the fork server (`--executor fork`: woken by the SuperNode's log,
             0.5 s task poll otherwise) and the gateway's pull hold
    one-message  fedmtl's defaults plus `--set evaluate-in-train=true`: a round's evaluation
             travels with the next round's train messages, so a client gets one message a round
             instead of two (the last round, and a round a split follows, still evaluate apart)
    one-message-0.5  one-message with Flower's own 0.5 s reply poll (`--reply-poll 0.5`; the
             others but flower and poll use fedmtl's 0.02 s, launch/supernode_main.py)
    one-message-db  one-message with the messages' objects in the SuperLink's database, as
             Flower keeps them (`fedmtl coordinator --objects database`; flower and poll do the
             same; the others keep them in memory, launch/superlink_main.py)
    one-message-unpack  one-message with every ClientApp unpacking and re-hashing the app bundle,
             as Flower's runtime does (`FEDMTL_UNPACK_EVERY_TASK=1`; the others unpack it once
             a node, launch/clientapp_forkserver.py `install_once`)

Per round it reads `history.json` (`seconds`, `compute.train_seconds`) and the clients' own
per-message timing (`FEDMTL_CLIENT_TIMING`, see client/timing.py), and reports

    overhead  = round seconds - critical client compute (the busiest client's training,
                affinity and evaluation seconds in that round: clients run in parallel)
    vs. sum   = round seconds - compute.train_seconds - compute.affinity_seconds (training
                summed over clients, as the issue first estimated it; evaluation not counted)

and where a message's time goes (mean per message, from the clients' timing and the
timestamps of their SuperNode's log lines):

    deliver   coordinator built the message (or, if it queued behind this client's previous
              message, that one's reply was sent) -> the SuperNode logged "Receiving": the
              ServerApp's push, the SuperNode's idle poll
    download  "Receiving" -> "Received successfully": the SuperNode downloads the message's
              objects (one request per tensor, 2 at a time; waits for objects not uploaded yet)
    launch    "Received successfully" -> the ClientApp process started (task poll, spawn)
    startup   process start -> handler entered (imports, FAB install, app load, task input)
    handler   handler time that is not compute (data folder, model build, serialization)
    reply     handler left -> the SuperNode logged "Sent successfully" (it looks for the reply,
              and for each of its objects, every --reply-poll s; the upload)
    coord     per round: the gaps between a phase's last reply sent and the next messages'
              creation, summed (the coordinator's reply poll and its own work: fusion,
              history, checkpoint)

It prints a table and writes JSON (machine, versions, command, per-round figures) to
`--out/deployment-<date>.json`. `--quick`: 2 clients, 2 rounds, variants flower and fedmtl.
Figures depend on the machine and its load: compare variants from one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from client.timing import TIMING_ENV  # noqa: E402
from launch.clientapp_forkserver import UNPACK_ENV  # noqa: E402
from launch.processes import free_port  # noqa: E402

FEDMTL = [sys.executable, "-m", "fedmtl.cli"]

VARIANTS: dict[str, dict[str, Any]] = {
    "flower": {"executor": "flower", "task_poll": 1.0, "pull_hold": 0.0, "evaluate_in_train": False,
               "reply_poll": 0.5, "objects": "database"},
    "poll": {"executor": "flower", "task_poll": 0.05, "pull_hold": 20.0, "evaluate_in_train": False,
             "reply_poll": 0.5, "objects": "database"},
    "fedmtl": {"executor": "fork", "task_poll": None, "pull_hold": 20.0, "evaluate_in_train": False,
               "reply_poll": None},
    "one-message": {"executor": "fork", "task_poll": None, "pull_hold": 20.0, "evaluate_in_train": True,
                    "reply_poll": None},
    "one-message-0.5": {"executor": "fork", "task_poll": None, "pull_hold": 20.0, "evaluate_in_train": True,
                        "reply_poll": 0.5},
    # Flower's object store: the messages' objects in the SuperLink's database (fedmtl: in memory)
    "one-message-db": {"executor": "fork", "task_poll": None, "pull_hold": 20.0, "evaluate_in_train": True,
                       "reply_poll": None, "objects": "database"},
    # every ClientApp unpacks and re-hashes the app bundle, as Flower's runtime does (fedmtl: once a node)
    "one-message-unpack": {"executor": "fork", "task_poll": None, "pull_hold": 20.0, "evaluate_in_train": True,
                           "reply_poll": None, "client_env": {UNPACK_ENV: "1"}},
}


# --------------------------------------------------------------------------- processes
def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def run_fedmtl(*args: Any, log: Path | None = None, timeout: float = 120) -> None:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        subprocess.run([*FEDMTL, *map(str, args)], check=True, cwd=REPO, env=_env(), stdout=out,
                       stderr=subprocess.STDOUT, timeout=timeout)
    finally:
        if log:
            out.close()


@dataclass
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def start(name: str, args: list[Any], log: Path, env: dict[str, str] | None = None) -> Started:
    with open(log, "wb") as f:
        p = subprocess.Popen([*FEDMTL, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                             env=_env(env), start_new_session=True)
    return Started(name, p, log)


def stop(procs: list[Started], grace: float = 20.0) -> None:
    """SIGTERM (every fedmtl command stops what it started), then SIGKILL each session."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def leftovers(text: str) -> list[int]:
    """Live processes whose command line or environment mentions `text`."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rfind(")") + 2:].split()[0] == "Z":
                continue
            blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(pid)
    return found


class LineStamper:
    """Timestamps the lines appended to a log file (polled every 20 ms) that contain a needle."""

    def __init__(self, path: Path, needles: tuple[str, ...]) -> None:
        self.path, self.needles = path, needles
        self.events: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset, buf = 0, b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                data = b""
            now = time.time()
            if data:
                offset += len(data)
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    for needle in self.needles:
                        if needle in line:
                            self.events.append((now, needle))
            self._stop.wait(0.02)

    def close(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.events


# --------------------------------------------------------------------------- one variant
@dataclass
class Setup:
    root: Path
    data: Path
    keys: Path
    clients: int


def prepare(root: Path, clients: int) -> Setup:
    data, keys = root / "data", root / "keys"
    run_fedmtl("prepare-data", "--suite", "tiny", "--clients", clients, "--out", data)
    run_fedmtl("keys", "create", *[f"client_{i}" for i in range(clients)], "--out", f"{keys}/{{name}}")
    return Setup(root, data, keys, clients)


@dataclass
class VariantResult:
    name: str
    settings: dict[str, Any]
    wall: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    timing: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def run_variant(name: str, setup: Setup, rounds: int, timeout: float) -> VariantResult:
    settings = VARIANTS[name]
    result = VariantResult(name, dict(settings))
    vroot = setup.root / name
    run, tls = vroot / "run", vroot / "run" / "tls"
    vroot.mkdir(parents=True)
    run_fedmtl("certs", "--out", tls, "--host", "127.0.0.1", "--copy-ca-to", vroot / "public")
    run_fedmtl("keys", "register", *[setup.keys / f"client_{i}" / f"client_{i}.pub" for i in range(setup.clients)],
               "--run-dir", run)
    timing_file = vroot / "timing.jsonl"
    port = free_port()
    procs: list[Started] = []
    stampers: list[LineStamper] = []
    t0 = time.monotonic()
    try:
        coord = start("coordinator", ["coordinator", run, "--host", "127.0.0.1", "--port", port,
                                      "--min-clients", setup.clients, "--suite", "tiny", "--mode", "mas",
                                      "--rounds", rounds, "--split-round", min(2, rounds - 1), "--max-groups", 2,
                                      "--set", "plots=false", "--pull-hold", settings["pull_hold"],
                                      "--objects", settings.get("objects", "memory"),
                                      "--set", f"evaluate-in-train={str(settings['evaluate_in_train']).lower()}"],
                      vroot / "coordinator.log")
        procs.append(coord)
        # clients start once the coordinator has registered their keys and submitted its run
        deadline = time.monotonic() + 180
        while "submitted" not in coord.log.read_text(errors="replace"):
            if coord.popen.poll() is not None or time.monotonic() > deadline:
                result.error = "the coordinator did not submit its run; log ends:\n" + \
                    coord.log.read_text(errors="replace")[-3000:]
                return result
            time.sleep(0.3)
        t0 = time.monotonic()
        for i in range(setup.clients):
            work = vroot / f"work_{i}"
            work.mkdir()
            (work / "supernode.log").touch()
            stampers.append(LineStamper(work / "supernode.log", ("Receiving:", "Received successfully",
                                                                 "Sent successfully")))
            procs.append(start(f"client_{i}", [
                "client", "--coordinator", f"127.0.0.1:{port}", "--data", setup.data / f"client_{i}",
                "--key", setup.keys / f"client_{i}" / f"client_{i}.key", "--ca", vroot / "public" / "ca.crt",
                "--work-dir", work, "--max-wait", 60, "--executor", settings["executor"],
                *(["--task-poll", settings["task_poll"]] if settings["task_poll"] is not None else []),
                *(["--reply-poll", settings["reply_poll"]] if settings["reply_poll"] is not None else [])],
                vroot / f"client_{i}.log",
                env={TIMING_ENV: str(timing_file), **settings.get("client_env", {})}))
        rc = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = coord.popen.poll()
            dead = [p for p in procs[1:] if p.popen.poll() is not None]
            if rc is not None or dead:
                if rc is None:
                    result.error = f"{dead[0].name} exited; its log ends:\n" + dead[0].log.read_text(errors="replace")[-3000:]
                break
            time.sleep(0.5)
        result.wall = time.monotonic() - t0
        if rc != 0 and not result.error:
            result.error = f"coordinator exit {rc}; log ends:\n" + coord.log.read_text(errors="replace")[-3000:]
    finally:
        stop(procs)
        events = [s.close() for s in stampers]
    left = leftovers(str(vroot))
    if left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        result.error += f"\nprocesses left behind and killed: {left}"
    if result.error:
        return result
    history = json.loads((run / "history.json").read_text())
    records = [json.loads(ln) for ln in timing_file.read_text().splitlines() if ln.strip()]
    result.messages = _messages(records, events)
    result.rounds = _rounds(history, result.messages)
    result.timing = [r.get("timing") for r in history["rounds"] if r.get("timing")]
    return result


def _round_of(group: str) -> int | None:
    """The round a message belongs to, from its Flower group id (train `round-R.group-G`, eval `eval-R`)."""
    if group.startswith("round-"):
        return int(group.split(".")[0][len("round-"):])
    if group.startswith("eval-"):
        return int(group[len("eval-"):])
    return None


def _messages(records: list[dict[str, Any]], events: list[list[tuple[float, str]]]) -> list[dict[str, Any]]:
    """Per message: its timing record joined with its client's SuperNode "Receiving"/"Sent" stamps
    (a SuperNode handles one message at a time, so the n-th record goes with the n-th stamps)."""
    by_client: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_client.setdefault(rec["name"], []).append(rec)
    out = []
    for i, name in enumerate(sorted(by_client)):
        recs = sorted(by_client[name], key=lambda r: r["enter"])
        stamps = events[i] if i < len(events) else []
        received = [t for t, what in stamps if what == "Receiving:"]
        downloaded = [t for t, what in stamps if what == "Received successfully"]
        sent = [t for t, what in stamps if what == "Sent successfully"]
        for k, rec in enumerate(recs):
            m = dict(rec, round=_round_of(rec["group"]), received=received[k] if k < len(received) else None,
                     downloaded=downloaded[k] if k < len(downloaded) else None,
                     sent=sent[k] if k < len(sent) else None,
                     # a message queued behind this client's previous one waits for it, not for a poll
                     ready=max(rec["created"], sent[k - 1]) if 0 < k <= len(sent) else rec["created"])
            out.append(m)
    return out


def _rounds(history: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    by_round: dict[int, list[dict[str, Any]]] = {}
    for m in messages:
        if m["round"] is not None:
            by_round.setdefault(m["round"], []).append(m)
    for entry in history["rounds"]:
        r = entry["round"]
        if r < 1:
            continue
        msgs = by_round.get(r, [])
        per_client: dict[str, float] = {}
        for m in msgs:
            per_client[m["name"]] = per_client.get(m["name"], 0.0) + (m["compute"] or 0.0)
        critical = max(per_client.values(), default=0.0)
        # the coordinator's gaps: from a phase's last reply sent to the next phase's first message
        phases: dict[str, list[dict[str, Any]]] = {}
        for m in msgs:
            phases.setdefault("train" if m["type"].startswith("train") else m["type"], []).append(m)
        coord_gap = 0.0
        train, evaluate = phases.get("train", []), phases.get("evaluate", [])
        if train and evaluate and all(m["sent"] for m in train):
            coord_gap += max(0.0, min(m["created"] for m in evaluate) - max(m["sent"] for m in train))
        nxt = by_round.get(r + 1, [])
        if evaluate and nxt and all(m["sent"] for m in evaluate):
            coord_gap += max(0.0, min(m["created"] for m in nxt) - max(m["sent"] for m in evaluate))
        seconds = float(entry["seconds"])
        # the full period, from this round's first train message to the next round's: includes
        # the end-of-round work (history, checkpoint) that `seconds` stops short of
        starts = [m["created"] for m in msgs if m["type"].startswith("train")]
        next_starts = [m["created"] for m in nxt if m["type"].startswith("train")]
        period = min(next_starts) - min(starts) if starts and next_starts else None
        compute = entry.get("compute", {})
        train_sum = float(compute.get("train_seconds", 0.0)) + float(compute.get("affinity_seconds", 0.0))
        rows.append({"round": r, "seconds": seconds, "train_seconds": train_sum, "critical_compute": critical,
                     "overhead": seconds - critical, "overhead_vs_sum": seconds - train_sum,
                     "messages": len(msgs), "groups": len(entry["groups"]), "period": period,
                     # the last round has no next round: its end-of-round gap is unknown
                     "coord_gap": coord_gap if nxt else None})
    return rows


def breakdown(messages: list[dict[str, Any]]) -> dict[str, float]:
    parts: dict[str, list[float]] = {k: [] for k in ("deliver", "download", "launch", "startup", "handler", "reply")}
    for m in messages:
        if m["round"] is None:
            continue
        if m["received"] is not None:
            parts["deliver"].append(m["received"] - m["ready"])
        if m["received"] is not None and m["downloaded"] is not None:
            parts["download"].append(m["downloaded"] - m["received"])
            parts["launch"].append(m["process_start"] - m["downloaded"])
        parts["startup"].append(m["enter"] - m["process_start"])
        parts["handler"].append(m["exit"] - m["enter"] - (m["compute"] or 0.0))
        if m["sent"] is not None:
            parts["reply"].append(m["sent"] - m["exit"])
    return {k: statistics.fmean(v) if v else float("nan") for k, v in parts.items()}


def summary(res: VariantResult) -> dict[str, Any]:
    rows = res.rounds
    mean = lambda key: statistics.fmean(r[key] for r in rows) if rows else float("nan")  # noqa: E731
    gaps = [r["coord_gap"] for r in rows if r["coord_gap"] is not None]
    periods = [r["period"] for r in rows if r["period"] is not None]
    return {"rounds": len(rows), "wall": res.wall, "round_seconds": mean("seconds"),
            "critical_compute": mean("critical_compute"), "overhead": mean("overhead"),
            "overhead_vs_sum": mean("overhead_vs_sum"), "messages_per_round": mean("messages"),
            "coord_gap": statistics.fmean(gaps) if gaps else float("nan"),
            "period": statistics.fmean(periods) if periods else float("nan"), "per_message": breakdown(res.messages)}


# --------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for mod in ("flwr", "torch", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def print_table(results: list[VariantResult]) -> None:
    print()
    print(f"{'variant':8} {'rounds':>6} {'s/round':>8} {'period':>7} {'compute':>8} {'overhead':>9} {'vs sum':>7} "
          f"{'msgs':>5} | {'deliver':>7} {'downl.':>6} {'launch':>6} {'startup':>7} {'handler':>7} {'reply':>6} | "
          f"{'coord':>6}")
    for res in results:
        if res.error:
            print(f"{res.name:8} FAILED: {res.error.splitlines()[0]}")
            continue
        s = summary(res)
        pm = s["per_message"]
        print(f"{res.name:8} {s['rounds']:6d} {s['round_seconds']:8.2f} {s['period']:7.2f} {s['critical_compute']:8.2f} "
              f"{s['overhead']:9.2f} {s['overhead_vs_sum']:7.2f} {s['messages_per_round']:5.1f} | "
              f"{pm['deliver']:7.2f} {pm['download']:6.2f} {pm['launch']:6.2f} {pm['startup']:7.2f} {pm['handler']:7.2f} "
              f"{pm['reply']:6.2f} | {s['coord_gap']:6.2f}")
    print("\ns/round: history's round seconds; period: first train message to the next round's (rounds with a next);"
          "\noverhead = s/round - busiest client's compute (mean over rounds >= 1); vs sum = s/round - training summed"
          " over clients.\nper-message columns: mean seconds per message; coord: per round.")
    for res in results:
        if res.error or not res.rounds:
            continue
        print(f"\n{res.name}: per round (s): " + ", ".join(
            f"r{r['round']} {r['seconds']:.1f} (compute {r['critical_compute']:.1f}, {r['messages']} msgs)"
            for r in res.rounds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 clients, 2 rounds, variants flower and fedmtl")
    ap.add_argument("--clients", type=int, default=None, help="fedmtl client processes (2-3; default 2)")
    ap.add_argument("--rounds", type=int, default=None, help="training rounds (default 5, quick 2)")
    ap.add_argument("--variants", default=None, help=f"comma-separated, from {list(VARIANTS)} (default all; quick "
                                                     "flower,fedmtl)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one variant may take")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deployment")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = ap.parse_args(argv)
    clients = args.clients or 2
    rounds = args.rounds or (2 if args.quick else 5)
    variants = (args.variants or ("flower,fedmtl" if args.quick else ",".join(VARIANTS))).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not 1 <= clients <= 8 or rounds < 2:
        ap.error(f"unknown variants {unknown}" if unknown else "--clients 1..8, --rounds >= 2")
    root = Path(tempfile.mkdtemp(prefix="fedmtl-bench-deploy-"))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"bench_deployment: {clients} clients, {rounds} rounds, tiny suite, variants {variants}; work in {root}",
          flush=True)
    setup = prepare(root, clients)
    results = []
    for name in variants:
        print(f"  running {name} {VARIANTS[name]} ...", flush=True)
        res = run_variant(name, setup, rounds, args.timeout)
        if res.error:
            print(f"  {name} FAILED: {res.error}", flush=True)
        else:
            s = summary(res)
            print(f"  {name}: {s['round_seconds']:.2f} s/round, overhead {s['overhead']:.2f} s/round "
                  f"(wall {res.wall:.0f}s)", flush=True)
        results.append(res)
    print_table(results)
    report = {
        "benchmark": "deployment round overhead", "date": started, "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(), "clients": clients, "rounds": rounds, "suite": "tiny",
        "variants": {r.name: {"settings": r.settings, "error": r.error, "summary": summary(r) if not r.error else None,
                              "rounds": r.rounds, "messages": r.messages, "coordinator_timing": r.timing}
                     for r in results},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"deployment-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")
    if args.keep:
        print(f"run folders kept in {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
