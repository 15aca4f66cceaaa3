"""Run config: the Flower app config declares every key with RunConfig's defaults; bad input is named."""

import tomllib
from pathlib import Path

import pytest

from coordinator.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_every_run_config_key_with_its_default():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_dict()


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"roundz": 3}, "unknown key 'roundz' (did you mean rounds"),
        ({"rounds": "ten"}, "rounds = 'ten' has type str, expected int"),
        ({"fraction": 1.5}, "fraction = 1.5"),
        ({"client-capacity": 0}, "client-capacity = 0"),
        ({"mode": "mixed"}, "mode = 'mixed'"),
        ({"aggregator": "avg"}, "aggregator = 'avg'"),
        ({"mode": "mas", "rounds": 3, "split-round": 3}, "split-round = 3"),
        ({"quorum": 0}, "quorum = 0"),
        ({"lr": -1.0}, "lr = -1.0"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values, where="run.toml")
    assert fragment in str(err.value) and "run.toml" in str(err.value)


def test_ints_are_accepted_for_floats_and_round_trip():
    cfg = RunConfig.from_dict({"lr": 1, "rounds": 4})
    assert cfg.lr == 1.0 and RunConfig.from_dict(cfg.to_dict()) == cfg
