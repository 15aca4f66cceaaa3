"""What a stranger's large and slow requests cost the coordinator, and whether rounds keep pace.

Usage: python benchmarks/bench_gateway.py [--mb 8] [--rounds 4] [--attackers 3] [--insecure]
                                          [--baseline-gateway SRC_DIR]

Starts, on 127.0.0.1, a real `flower-superlink` (TLS + SuperNode authentication, loopback), the
Fleet gateway in front of it (as `fedmtl coordinator` runs it: authorized-keys folder, default
limits) and one registered `flower-supernode`, then runs a small Flower app twice: each round the
ServerApp sends the SuperNode an `--mb` MB array and gets it back (a model-sized round trip).
The first run is undisturbed; then strangers attack with no run going (the memory the attack
itself costs); during the second run they attack again: `--attackers` threads act as strangers without
a registered key: they upload 60 MB bodies (declared and chunked), hold slowloris connections
(partial headers, reopened whenever the gateway drops them) and flood small requests. Prints the gateway's and the SuperLink's resident memory (before, peak during, after)
and the round times of both runs. `--insecure` runs the same without TLS and authentication
(then every stranger is a client as far as the coordinator can tell: only the size, concurrency
and time limits hold). `--baseline-gateway DIR` runs the gateway of another fedmtl checkout
instead (e.g. `git worktree add /tmp/old ff74ca2`: the gateway before the limits), with its own
command line, for before/after figures.

Nothing is asserted; the figures go to docs/security.md. Run it under the CPU lock.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.flwr_cli import FlwrCli  # noqa: E402
from launch.gateway import GatewayConfig  # noqa: E402
from launch.processes import ENV_TAG, free_port  # noqa: E402
from launch.security import create_ca, create_client_keypair, create_server_cert  # noqa: E402
from launch.service import GatewayProcess  # noqa: E402
from launch.superlink import SuperLinkConfig, SuperLinkProcess, TlsFiles  # noqa: E402
from launch.supernode import SuperNodeConfig, SuperNodeProcess  # noqa: E402
from testbed.flower_app import write_flower_app  # noqa: E402

_SERVER = """\
import json, time
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    deadline = time.time() + 120
    nodes = list(grid.get_node_ids())
    while not nodes and time.time() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    arr = np.random.default_rng(0).random(int(float(rc["mb"]) * 2**20 / 4), dtype=np.float32)
    times = []
    for r in range(int(rc["rounds"])):
        t0 = time.time()
        msgs = [Message(RecordDict({"m": ArrayRecord({"w": Array(arr)})}), dst_node_id=n, message_type="train")
                for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=300))
        ok = sum(1 for x in replies if not x.has_error()
                 and np.array_equal(x.content["m"]["w"].numpy(), arr))
        times.append({"round": r + 1, "seconds": time.time() - t0, "ok": ok})
        with open(rc["out"], "w") as f:
            json.dump(times, f)
"""
_CLIENT = """\
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"m": msg.content["m"]}), reply_to=msg)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """Peak RSS of some processes while it runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {k: 0.0 for k in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for k, pid in self.pids.items():
                try:
                    self.peak[k] = max(self.peak[k], rss_mib(pid))
                except OSError:
                    pass
            self.stop.wait(0.1)


class Stranger(threading.Thread):
    """One attacker without a registered key, cycling through large, slow and many requests."""

    def __init__(self, host: str, port: int, tls: bool, stop: threading.Event, stats: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.tls, self.stop, self.stats = host, port, tls, stop, stats
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE  # a stranger does not care who answers

    def _sock(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=10)
        return self.ctx.wrap_socket(raw, server_hostname=self.host) if self.tls else raw

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _upload(self, chunked: bool) -> None:
        size = 60 * 1024 * 1024
        head = (b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: coord\r\n"
                + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n".encode()))
        block = b"\0" * 65536
        frame = b"10000\r\n" + block + b"\r\n" if chunked else block
        sent = 0
        s = self._sock()
        try:
            s.sendall(head)
            while sent < size and not self.stop.is_set():
                s.sendall(frame)
                sent += len(block)
        except OSError:
            pass
        finally:
            s.close()
        self._count("upload_bytes_accepted", sent)
        self._count("uploads")

    def _slowloris(self, n: int = 20) -> None:
        socks = []
        for _ in range(n):
            try:
                s = self._sock()
                s.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: coord\r\n")
                socks.append(s)
            except OSError:
                self._count("slowloris_refused")
        t0 = time.monotonic()
        while socks and time.monotonic() - t0 < 15 and not self.stop.is_set():
            for s in list(socks):
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    socks.remove(s)
                    self._count("slowloris_dropped")
            time.sleep(0.5)
        for s in socks:
            s.close()
        self._count("slowloris")

    def _flood(self, n: int = 200) -> None:
        for _ in range(n):
            try:
                s = self._sock()
                s.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: coord\r\nContent-Length: 2\r\n\r\nxx")
                s.recv(1024)
                s.close()
                self._count("flood")
            except OSError:
                self._count("flood_failed")

    def run(self) -> None:
        while not self.stop.is_set():
            for act in (lambda: self._upload(False), lambda: self._upload(True), self._slowloris, self._flood):
                if self.stop.is_set():
                    return
                try:
                    act()
                except OSError:
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=8.0, help="array size sent each way per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--attackers", type=int, default=3)
    ap.add_argument("--attack-seconds", type=float, default=30.0, help="length of the attack without a run")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--baseline-gateway", default=None, metavar="SRC_DIR",
                    help="run the gateway of this (older) fedmtl checkout, for a before/after comparison")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedmtl-bench-gw-"))
    app = root / "gwbench"
    write_flower_app(app, "gwbench", {"gwbench/server.py": _SERVER, "gwbench/client.py": _CLIENT},
                     "gwbench.server:app", "gwbench.client:app", {"mb": 8.0, "rounds": 4, "out": ""})
    keys = root / "authorized"
    keys.mkdir()
    tls = None
    if not args.insecure:
        pki = root / "pki"
        srv = create_server_cert(create_ca(pki), pki, [], [])
        tls = TlsFiles(srv.cert_path, srv.key_path, srv.ca_cert_path)
        kp = create_client_keypair(root / "client", "site-a")
        (keys / "site-a.pub").write_bytes(kp.public_key_path.read_bytes())
    link = SuperLinkProcess(SuperLinkConfig(run_dir=root / "link", tls=tls, enable_supernode_auth=tls is not None))
    gw_port = free_port()
    node = gateway = None
    try:
        link.start()
        gateway = GatewayProcess(GatewayConfig(
            listen=f"127.0.0.1:{gw_port}", upstream=link.address, insecure=tls is None,
            ssl_certfile=str(tls.certfile) if tls else None, ssl_keyfile=str(tls.keyfile) if tls else None,
            upstream_ca_certfile=str(tls.ca_certfile) if tls else None,
            authorized_keys=str(keys) if tls else None), root / "gateway.log", link.tag)
        if args.baseline_gateway:  # an older checkout's gateway, started with its own flags
            base = Path(args.baseline_gateway).resolve()
            cmd = [sys.executable, "-m", "launch.gateway", "--listen", f"127.0.0.1:{gw_port}",
                   "--upstream", link.address]
            cmd += (["--insecure"] if tls is None else
                    ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile),
                     "--upstream-ca-certfile", str(tls.ca_certfile)])
            with open(root / "gateway.log", "ab") as log:
                gateway.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                                                env={**os.environ, "PYTHONPATH": str(base), ENV_TAG: link.tag},
                                                start_new_session=True)
            deadline = time.monotonic() + 30
            while "Uvicorn running" not in (root / "gateway.log").read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            gateway.start()
        cli = FlwrCli(link.flwr_home, link.connection("bench"), env={ENV_TAG: link.tag})
        cli.write_connection()
        if tls is not None:
            cli.register_supernode(kp.public_key_path, name="site-a")
        node = SuperNodeProcess(SuperNodeConfig(
            superlink=f"127.0.0.1:{gw_port}", data_dir=root, name="site-a", work_dir=root / "node",
            private_key=kp.private_key_path if tls else None, root_certificates=tls.ca_certfile if tls else None,
            insecure=tls is None, max_wait_s=120))
        node.start()
        pids = {"gateway": gateway.proc.pid, "superlink": link.proc.pid}  # type: ignore[union-attr]

        def one_run(label: str, attack: bool) -> dict:
            out = root / f"{label}.json"
            before = {k: rss_mib(p) for k, p in pids.items()}
            sampler = Sampler(pids)
            sampler.start()
            stop = threading.Event()
            stats: dict[str, int] = {}
            strangers = [Stranger("127.0.0.1", gw_port, tls is not None, stop, stats)
                         for _ in range(args.attackers if attack else 0)]
            for s in strangers:
                s.start()
            t0 = time.monotonic()
            run_id = cli.submit_run(app, {"mb": args.mb, "rounds": args.rounds, "out": str(out)}, stream=False,
                                    files_dir=root)
            while not cli.run_status(run_id).startswith("finished") and time.monotonic() - t0 < 600:
                time.sleep(1.0)
            status = cli.run_status(run_id)
            stop.set()
            for s in strangers:
                s.join(timeout=30)
            time.sleep(1.0)
            sampler.stop.set()
            sampler.join()
            after = {k: rss_mib(p) for k, p in pids.items()}
            rounds = json.loads(out.read_text()) if out.exists() else []
            return {"label": label, "status": status, "before": before, "peak": sampler.peak, "after": after,
                    "rounds": rounds, "stats": stats, "seconds": time.monotonic() - t0}

        def attack_only(seconds: float) -> dict:
            before = {k: rss_mib(p) for k, p in pids.items()}
            sampler = Sampler(pids)
            sampler.start()
            stop = threading.Event()
            stats: dict[str, int] = {}
            strangers = [Stranger("127.0.0.1", gw_port, tls is not None, stop, stats) for _ in range(args.attackers)]
            for s in strangers:
                s.start()
            time.sleep(seconds)
            stop.set()
            for s in strangers:
                s.join(timeout=30)
            time.sleep(1.0)
            sampler.stop.set()
            sampler.join()
            after = {k: rss_mib(p) for k, p in pids.items()}
            return {"label": "attack alone", "status": f"{seconds:.0f}s, no run", "before": before,
                    "peak": sampler.peak, "after": after, "rounds": [], "stats": stats}

        results = [one_run("undisturbed", False), attack_only(args.attack_seconds), one_run("under attack", True)]
    finally:
        if node is not None:
            node.stop()
        if gateway is not None:
            gateway.stop()
        link.stop()
    mode = "INSECURE (no TLS, no authentication)" if args.insecure else "TLS + SuperNode authentication"
    if args.baseline_gateway:
        mode += f"; gateway of {args.baseline_gateway}"
    print(f"gateway benchmark: {mode}; {args.mb:g} MB each way per round, {args.rounds} rounds, "
          f"{args.attackers} stranger threads during the second run")
    print(f"{'run':<13} {'status':<19} {'gateway MiB before/peak/after':>31} {'SuperLink MiB before/peak/after':>33}"
          f"  round seconds")
    for r in results:
        g = f"{r['before']['gateway']:.0f} / {r['peak']['gateway']:.0f} / {r['after']['gateway']:.0f}"
        s = f"{r['before']['superlink']:.0f} / {r['peak']['superlink']:.0f} / {r['after']['superlink']:.0f}"
        secs = ", ".join(f"{x['seconds']:.1f}" + ("" if x["ok"] == 1 else "!") for x in r["rounds"])
        print(f"{r['label']:<13} {r['status']:<19} {g:>31} {s:>33}  {secs}")
    for r in results[1:]:
        print(f"stranger activity ({r['label']}):", json.dumps(r["stats"], sort_keys=True))
    gw_log = (root / "gateway.log").read_text(errors="replace")
    print(f"gateway log: {gw_log.count('Refused ')} refusal lines "
          f"({gw_log.count('not logged one by one')} summary lines); {root / 'gateway.log'}")


if __name__ == "__main__":
    main()
