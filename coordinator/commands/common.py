"""Options shared by `simulate` and `coordinator`: everything that ends up in the run config."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.config import MODES, RunConfig
from coordinator.tracking import check_available
from tasks.registry import load_suite

# CLI flag -> run config key, for the options people change most; everything else via --set.
COMMON_FLAGS: dict[str, tuple[str, type, str]] = {
    "--suite": ("suite", str, "task suite: a built-in name (default, tiny, planted), 'module:function' or 'file.py:function'"),
    "--mode": ("mode", str, f"grouping mode: {', '.join(MODES)}"),
    "--rounds": ("rounds", int, "number of federated rounds"),
    "--fraction": ("fraction", float, "share of eligible clients sampled per group and round"),
    "--local-epochs": ("local-epochs", int, "local epochs per round"),
    "--local-steps": ("local-steps", int, "local steps per round (overrides --local-epochs when > 0)"),
    "--lr": ("lr", float, "client learning rate"),
    "--batch-size": ("batch-size", int, "client batch size per task"),
    "--seed": ("seed", int, "run seed (model init, sampling, client batches)"),
    "--fusion": ("fusion", str, "body fusion weighting: uniform (ColD Fusion) or examples (FedAvg)"),
    "--aggregator": ("aggregator", str, "mean, median or trimmed-mean"),
    "--split-round": ("split-round", int, "mas/dynamic: rounds trained all-in-one before the first split"),
    "--max-groups": ("max-groups", int, "mas/dynamic: at most this many task groups"),
    "--regroup-every": ("regroup-every", int, "dynamic: split rounds between merges"),
    "--client-capacity": ("client-capacity", int, "groups a client trains per round"),
    "--round-timeout": ("round-timeout", float, "seconds to wait for replies each round"),
    "--device": ("device", str, "client device: auto, cpu or cuda"),
}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    for flag, (key, kind, help_text) in COMMON_FLAGS.items():
        parser.add_argument(flag, dest=key.replace("-", "_"), type=kind, default=None, help=help_text)
    parser.add_argument("--config", type=Path, help="TOML file of run config keys (see README); flags override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run config key, e.g. --set quorum=0.6")
    parser.add_argument("--out", type=Path, default=None, help="output directory (history, models, plots, checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output folder that holds another run's checkpoints (they are deleted)")


def parse_value(text: str) -> Any:
    """A --set value as TOML would read it; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def run_config_from_args(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge defaults < the suite's own defaults < --config file < flags < --set, then validate
    (raises ConfigError). A suite's defaults (`Suite.defaults`, e.g. AdamW and a small learning
    rate for a pretrained transformer) apply to every key the user did not set."""
    values: dict[str, Any] = {}
    if args.config:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config}: no such file")
        try:
            values.update(tomllib.loads(args.config.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config {args.config}: not valid TOML: {exc}") from None
    for key, _kind, _help in COMMON_FLAGS.values():
        value = getattr(args, key.replace("-", "_"))
        if value is not None:
            values[key] = value
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = parse_value(text.strip())
    if args.out is not None:
        values["out"] = str(args.out.resolve())
    if args.resume:
        values["resume"] = True
    where = f"config file {args.config}" if args.config else "options"
    # Load the suite here, in the launching process, so a bad suite fails before anything starts.
    suite = load_suite(str(values.get("suite", defaults.get("suite", RunConfig.suite))))
    values = dict(defaults) | {k: v for k, v in suite.defaults.items() if k in RunConfig.keys()} | values
    cfg = RunConfig.from_dict(values, where=where)
    cfg.validate_against_suite(suite.task_names, where=where)
    check_available(cfg.tracking)  # a missing TensorBoard / MLflow fails now, naming the extra
    return cfg.to_dict()


def check_output_folder(out: Path, config: dict[str, Any], overwrite: bool,
                        say: Callable[[str], None] = print) -> None:
    """Before anything starts: a fresh run must not silently delete another run's checkpoints, and
    a resumed run must fit its checkpoint (same suite, seeds, mode and grouping settings, models
    that fit the suite). Raises ValueError with what to do; `--overwrite` clears old checkpoints."""
    from coordinator.checkpoint import (  # noqa: PLC0415 - torch import, only for these commands
        CHECKPOINT_DIR,
        CheckpointError,
        clear_checkpoints,
        fresh_run_problem,
        load_compatible_checkpoint,
    )

    if config.get("resume"):
        if overwrite:
            raise ValueError("--resume continues the run in the output folder, --overwrite replaces it: pick one")
        try:
            load_compatible_checkpoint(Path(out) / CHECKPOINT_DIR, config, load_suite(str(config["suite"])))
        except CheckpointError as exc:
            raise ValueError(str(exc)) from None
        return
    problem = fresh_run_problem(out)
    if problem is None:
        return
    if not overwrite:
        raise ValueError(problem)
    removed = clear_checkpoints(out)
    say(f"--overwrite: removed {removed} checkpoint(s) of the previous run in {out}")
