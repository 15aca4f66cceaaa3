"""The affinity run config keys: defaults, validation, and what mas/dynamic need."""

from __future__ import annotations

import pytest

from coordinator.config import ConfigError, RunConfig


def test_defaults_measure_gradients() -> None:
    cfg = RunConfig()
    assert (cfg.affinity_method, cfg.affinity_steps, cfg.affinity_sketch_dim, cfg.affinity_pooling) == ("gradients", 10, 2048, "mean")
    RunConfig.from_dict({"mode": "mas", "rounds": 6, "affinity-every": 0})  # gradients do not need affinity-every


@pytest.mark.parametrize("values, fragment", [
    ({"affinity-method": "magic"}, "affinity-method = 'magic'"),
    ({"affinity-pooling": "vote"}, "affinity-pooling = 'vote'"),
    ({"affinity-sketch-dim": 0}, "affinity-sketch-dim = 0"),
    ({"affinity-steps": -1}, "affinity-steps = -1"),
    ({"affinity-sketch-seed": -3}, "affinity-sketch-seed = -3"),
    ({"mode": "mas", "rounds": 6, "affinity-method": "none"}, "affinity-method = 'none'"),
    ({"mode": "mas", "rounds": 6, "affinity-steps": 0}, "affinity-steps = 0"),
    ({"mode": "dynamic", "rounds": 9, "affinity-method": "virtual-step", "affinity-every": 0}, "affinity-every = 0"),
    ({"mode": "mas", "rounds": 6, "affinity-method": "both", "affinity-every": 0}, "affinity-every = 0"),
])
def test_bad_affinity_values_are_refused(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values)
    assert fragment in str(err.value)


def test_none_is_fine_where_nothing_reads_affinity() -> None:
    assert RunConfig.from_dict({"affinity-method": "none", "affinity-steps": 0}).affinity_method == "none"
