"""`fedmtl dashboard RUN_DIR`: a live web page of a running or finished federation.

It reads the run folder (history.jsonl while the run goes on, history.json after) and shows
per-task accuracy curves, the task-group timeline, the latest affinity matrix with its
measurement coverage, the clients that joined, dropped or were rejected, and the round
progress; the page updates by itself every few seconds. Read-only, and bound to 127.0.0.1
unless --host says otherwise; any other address needs --token (or FEDMTL_DASHBOARD_TOKEN),
and the page must then be opened with ?token=... (the printed URL has it).

`fedmtl simulate --dashboard` and `fedmtl coordinator --dashboard` start the same page beside
the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8765


def add_dashboard_options(parser: argparse.ArgumentParser, flag: bool = True) -> None:
    """--dashboard-host/--dashboard-port/--dashboard-token (and --dashboard) for run commands."""
    if flag:
        parser.add_argument("--dashboard", action="store_true", help="serve the live dashboard of this run while it runs")
    parser.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    parser.add_argument("--dashboard-port", type=int, default=DEFAULT_PORT, help=f"dashboard port (default {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument("--dashboard-token", default=None, help="token the page must carry (required off loopback)")


def start_for_run(args: argparse.Namespace, out: Path) -> Any:
    """Start the dashboard thread of a run command if --dashboard was given; returns it or None."""
    if not getattr(args, "dashboard", False):
        return None
    from fedmtl.dashboard.server import DashboardError, DashboardServer

    try:
        return DashboardServer(out, args.dashboard_host, args.dashboard_port, args.dashboard_token).start()
    except DashboardError as exc:
        raise ValueError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve a live web dashboard of a run folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's output folder (it may not exist yet)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--token", default=None, help="require this token (required when --host is not loopback)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between the page's updates (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmtl.dashboard.server import DashboardError, DashboardServer

    try:
        server = DashboardServer(args.run_dir.resolve(), args.host, args.port, args.token, poll_ms=int(args.poll * 1000))
    except DashboardError as exc:
        raise ValueError(str(exc)) from None
    print(f"fedmtl dashboard: {args.run_dir.resolve()} at {server.url} (read-only; Ctrl-C stops it)", flush=True)
    server.serve_forever()
    return 0
