"""The `fedmtl` command: simulate a federation, run a coordinator, join as a client, prepare data,
and use what a run produced (predict, evaluate, dashboard).

Each subcommand lives with the side that runs it: `coordinator.commands` (simulate, coordinator,
certs, keys), `client.commands` (client, prepare-data), `fedmtl.commands` (predict, evaluate,
dashboard) and `experiments` (coldfusion). This file only wires them into one argparse parser
and turns known errors into one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from client.commands import client, prepare_data
from coordinator.commands import certs, coordinator, keys, simulate
from coordinator.config import ConfigError
from experiments.coldfusion import command as coldfusion
from fedmtl.commands import dashboard, evaluate, predict

COMMANDS = (simulate, coordinator, client, prepare_data, certs, keys, predict, evaluate, dashboard, coldfusion)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmtl",
        description="Federated multi-task training on Flower: ColD-Fusion rounds, task affinity, merge-and-split groups.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"fedmtl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedmtl {args.command}: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
