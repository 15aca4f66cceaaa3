"""`fedmtl prepare-data`: write per-client data folders of a built-in suite, to try a multi-machine run."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.folder import prepare_client_dirs
from fedmtl.progress import add_output_options, json_line, output_mode, task_progress
from tasks.registry import builtin_data_root, load_suite


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="write one private data folder per client from a suite",
                       description=__doc__)
    p.add_argument("--suite", default="default", help="suite to cut into client folders (default: default)")
    p.add_argument("--clients", type=int, required=True, help="number of client folders")
    p.add_argument("--out", type=Path, required=True, help="parent folder; writes OUT/client_0 ... OUT/client_{N-1}")
    p.add_argument("--seed", type=int, default=0, help="partition seed")
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.clients < 1:
        raise ValueError(f"--clients = {args.clients}: must be >= 1")
    mode = output_mode(args)
    suite = load_suite(args.suite)
    with task_progress(mode, "client folders", args.clients) as advance:
        dirs = prepare_client_dirs(suite, args.clients, args.out, args.seed, builtin_data_root(), on_written=advance)
    message = f"wrote {len(dirs)} client folders for suite {suite.name!r} under {args.out}"
    if mode == "json":
        json_line("result", message=message, suite=suite.name, folders=[str(d) for d in dirs])
    else:
        print(message)
    return 0
