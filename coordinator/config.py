"""The run configuration: every knob of a federation, validated before any training starts.

Flower hands the ServerApp a flat dict (`context.run_config`, from `[tool.flwr.app.config]`
plus `--run-config` overrides); keys use dashes. `RunConfig.from_dict` maps them onto this
dataclass and rejects unknown keys, wrong types and impossible values with a message naming
the key, so a typo fails in the first second instead of after hours of training.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from typing import Any

from strategies.affinity import METHODS as AFFINITY_METHODS
from strategies.affinity import POOLINGS as AFFINITY_POOLINGS
from strategies.affinity import SIGNALS as AFFINITY_SIGNALS
from strategies.affinity import measures_gradients, measures_virtual_step

MODES = ("all-in-one", "separate", "mas", "dynamic")
FUSIONS = ("uniform", "examples")
AGGREGATORS = ("mean", "median", "trimmed-mean")
AFFINITY_AVERAGES = ("mean", "window", "ema")
AFFINITY_COVERAGES = ("probe", "train", "none")  # coordinator/schedule.py: task_coverage
OPTIMIZERS = ("sgd", "adamw")
HEAD_INITS = ("independent", "shared")  # coordinator/groups.py: initial_model
TRACKING_BACKENDS = ("tensorboard", "mlflow")  # coordinator/tracking.py implements them


class ConfigError(ValueError):
    """A run config key with a wrong name, type or value."""


@dataclass
class RunConfig:
    """All run options; the field `local_epochs` is the config key `local-epochs`, and so on."""

    # what to train
    suite: str = "default"
    data_root: str = ""  # where built-in suites find their data files ("" = inside the package)
    data_seed: int = 0  # how simulated clients partition the suite's data
    mode: str = "all-in-one"
    # rounds and clients
    rounds: int = 10
    fraction: float = 1.0  # 1: every client; < 1: this share of the connected clients, drawn each round
    min_clients: int = 2  # wait for this many clients before round 1
    min_clients_timeout: float = 300.0
    client_capacity: int = 1  # groups a client trains per round
    max_starve: int = 2  # a group waits at most this many rounds for clients
    # local training
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw" (pretrained transformers, lr ~1e-4)
    device: str = "auto"
    seed: int = 0
    head_init: str = "shared"  # heads of the same shape start from the same weights ("independent": each its own)
    # fusion
    fusion: str = "uniform"
    aggregator: str = "mean"
    trim_fraction: float = 0.2
    clip_norm: float = 0.0  # 0 = no clipping of client updates
    # affinity and grouping
    affinity_method: str = "gradients"  # gradients (every pair, cross-client) | virtual-step (exact TAG) | both | none
    affinity_steps: int = 10  # gradients: task-step budget; a client with T tasks accumulates its first ceil(N/T) steps
    affinity_sketch_dim: int = 2048  # gradients: count-sketch size (the exact gradient when the body is smaller)
    affinity_sketch_seed: int = 0  # gradients: base seed of the per-round sketches
    affinity_pooling: str = "mean"  # across clients: mean (examples-weighted) | robust (median-norm clip + median)
    affinity_every: int = 10  # virtual-step: measure every k-th step
    affinity_batch_size: int = 0  # virtual-step: 0 = the training batch; larger = less noisy measurements
    affinity_signal: str = "cosine"  # the split reads: cosine (default: steadiest on planted suites) or lookahead (TAG)
    affinity_monitor: bool = False  # also measure in rounds no split reads (any mode)
    # sampled rounds that measure: a holder of every undrawn task of a merged group is added as a
    # probe (gradient summaries only, no training: the default), as a trainer ("train"), or not at all
    affinity_coverage: str = "probe"
    affinity_average: str = "mean"  # over measured rounds: mean (MAS), window (last N) or ema
    affinity_window: int = 5
    affinity_ema: float = 0.5
    split_round: int = 3
    max_groups: int = 3
    regroup_every: int = 4
    regroup_rounds: int = 2  # merged rounds spent re-measuring affinity in dynamic mode
    regroup_margin: float = 0.01
    # reliability
    round_timeout: float = 600.0
    quorum: float = 0.5  # share of a group's sampled clients whose valid replies complete its round
    max_retries: int = 1
    max_update_norm: float = 0.0  # 0 = no bound
    max_update_ratio: float = 10.0  # refuse updates longer than this times the model's own norm (0 = off)
    max_examples: int = 1_000_000  # per task and client: larger declared counts are refused
    # identity: path of the client registry (node id -> registered name; coordinator/client_registry.py),
    # "" = none (simulation, --insecure): clients are known by the names they report
    client_registry: str = ""
    # evaluation
    evaluate_every: int = 1  # rounds between evaluations (round 0 and the last round always)
    fraction_evaluate: float = 1.0  # share of the connected clients that evaluate
    evaluate_data: str = ""  # a held-out data folder (client format) the coordinator scores too
    # the round's evaluation travels with the next round's train messages (one message a round
    # instead of two; scored by the clients that train next, on the groups they train)
    evaluate_in_train: bool = False
    # outputs
    out: str = "runs/latest"
    checkpoint_keep: int = 2
    resume: bool = False
    plots: bool = True
    tracking: str = ""  # "" or a comma list of tensorboard, mlflow (coordinator/tracking.py)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "run config") -> "RunConfig":
        """Build and validate from a dash-keyed dict; unknown keys and bad values raise ConfigError."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ConfigError(f"{where}: unknown key {key!r}{hint}")
            kwargs[known[key].name] = _coerce(key, value, known[key].type, where)
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def validate(self, where: str = "run config") -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: {key} = {getattr(self, key.replace('-', '_'))!r}: {why}")

        need(self.mode in MODES, "mode", f"must be one of {MODES}")
        need(self.fusion in FUSIONS, "fusion", f"must be one of {FUSIONS}")
        need(self.aggregator in AGGREGATORS, "aggregator", f"must be one of {AGGREGATORS}")
        need(self.affinity_signal in AFFINITY_SIGNALS, "affinity-signal", f"must be one of {AFFINITY_SIGNALS}")
        need(self.affinity_method in AFFINITY_METHODS, "affinity-method", f"must be one of {AFFINITY_METHODS}")
        need(self.affinity_pooling in AFFINITY_POOLINGS, "affinity-pooling", f"must be one of {AFFINITY_POOLINGS}")
        need(self.affinity_steps >= 0, "affinity-steps", "must be >= 0")
        need(1 <= self.affinity_sketch_dim <= 1 << 20, "affinity-sketch-dim", "must be in [1, 1048576]")
        need(self.affinity_sketch_seed >= 0, "affinity-sketch-seed", "must be >= 0")
        need(self.affinity_coverage in AFFINITY_COVERAGES, "affinity-coverage", f"must be one of {AFFINITY_COVERAGES}")
        need(self.affinity_average in AFFINITY_AVERAGES, "affinity-average", f"must be one of {AFFINITY_AVERAGES}")
        need(self.rounds >= 1, "rounds", "must be >= 1")
        need(0.0 < self.fraction <= 1.0, "fraction", "must be in (0, 1]")
        need(self.min_clients >= 1, "min-clients", "must be >= 1")
        need(self.client_capacity >= 1, "client-capacity", "must be >= 1")
        need(self.max_starve >= 0, "max-starve", "must be >= 0")
        need(self.local_epochs >= 1 or self.local_steps >= 1, "local-epochs", "must be >= 1 unless local-steps is set")
        need(self.local_steps >= 0, "local-steps", "must be >= 0")
        need(self.batch_size >= 1, "batch-size", "must be >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.head_init in HEAD_INITS, "head-init", f"must be one of {HEAD_INITS}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device", "must be auto, cpu or cuda[:N]")
        need(0.0 <= self.trim_fraction < 0.5, "trim-fraction", "must be in [0, 0.5)")
        need(self.clip_norm >= 0, "clip-norm", "must be >= 0 (0 disables clipping)")
        need(self.affinity_every >= 0, "affinity-every", "must be >= 0 (0 disables measurement)")
        need(self.affinity_batch_size >= 0, "affinity-batch-size", "must be >= 0 (0 = the training batch)")
        need(self.affinity_window >= 1, "affinity-window", "must be >= 1")
        need(0.0 < self.affinity_ema <= 1.0, "affinity-ema", "must be in (0, 1]")
        need(self.split_round >= 1, "split-round", "must be >= 1")
        need(self.max_groups >= 1, "max-groups", "must be >= 1")
        need(self.regroup_every >= 1, "regroup-every", "must be >= 1")
        need(self.regroup_rounds >= 1, "regroup-rounds", "must be >= 1")
        need(self.regroup_margin >= 0, "regroup-margin", "must be >= 0")
        need(self.round_timeout > 0, "round-timeout", "must be > 0 seconds")
        need(0.0 < self.quorum <= 1.0, "quorum", "must be in (0, 1]")
        need(self.max_retries >= 0, "max-retries", "must be >= 0")
        need(self.max_update_norm >= 0, "max-update-norm", "must be >= 0 (0 = no bound)")
        need(self.max_update_ratio >= 0, "max-update-ratio", "must be >= 0 (0 = no bound)")
        need(1 <= self.max_examples <= 2**31 - 1, "max-examples", "must be in [1, 2^31)")
        need(self.evaluate_every >= 1, "evaluate-every", "must be >= 1")
        need(0.0 < self.fraction_evaluate <= 1.0, "fraction-evaluate", "must be in (0, 1]")
        need(self.checkpoint_keep >= 1, "checkpoint-keep", "must be >= 1")
        need(_tracking_ok(self.tracking), "tracking", f"must be '' or a comma list of {TRACKING_BACKENDS}")
        if self.mode in ("mas", "dynamic"):
            need(self.split_round < self.rounds, "split-round", f"must be < rounds ({self.rounds}) in mode {self.mode!r}")
            need(self.affinity_method != "none", "affinity-method", f"must not be 'none' in mode {self.mode!r}: it needs affinity")
            if measures_virtual_step(self.affinity_method):
                need(self.affinity_every >= 1, "affinity-every", f"must be >= 1 in mode {self.mode!r} with affinity-method {self.affinity_method!r}")
            if measures_gradients(self.affinity_method):
                need(self.affinity_steps >= 1, "affinity-steps", f"must be >= 1 in mode {self.mode!r} with affinity-method {self.affinity_method!r}")

    def validate_against_suite(self, task_names: list[str], where: str = "run config") -> None:
        """Checks that need the suite: e.g. more groups than tasks is impossible."""
        if self.mode in ("mas", "dynamic") and self.max_groups > len(task_names):
            raise ConfigError(
                f"{where}: max-groups = {self.max_groups} but suite {self.suite!r} has only {len(task_names)} tasks"
            )


def _tracking_ok(spec: str) -> bool:
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    return names == ["none"] or all(n in TRACKING_BACKENDS for n in names)


def _coerce(key: str, value: Any, annotation: Any, where: str) -> Any:
    """Accept TOML/CLI values of the right kind; ints are fine where floats are expected."""
    kind = {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} = {value!r} has type {type(value).__name__}, expected {kind.__name__}")
    return value
