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
        ({"head-init": "random"}, "head-init = 'random': must be one of ('independent', 'shared')"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(values, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values, where="run.toml")
    assert fragment in str(err.value) and "run.toml" in str(err.value)


def test_ints_are_accepted_for_floats_and_round_trip():
    cfg = RunConfig.from_dict({"lr": 1, "rounds": 4})
    assert cfg.lr == 1.0 and RunConfig.from_dict(cfg.to_dict()) == cfg


def test_shared_head_init_starts_same_shaped_heads_equal_and_independent_keeps_them_apart():
    import torch

    from coordinator.groups import initial_model
    from tasks.registry import load_suite

    suite = load_suite("default")  # 10-class and 2-class heads
    body, shared = initial_model(suite, seed=3)
    body_ind, independent = initial_model(suite, seed=3, head_init="independent")
    assert all(torch.equal(body[k], body_ind[k]) for k in body)  # the body is the seed's either way
    by_shape: dict = {}
    for task in suite.task_names:
        key = tuple((k, tuple(v.shape)) for k, v in shared[task].items())
        by_shape.setdefault(key, []).append(task)
    assert len(by_shape) >= 2 and all(len(ts) >= 2 for ts in by_shape.values())
    for tasks in by_shape.values():
        first = tasks[0]
        for t in tasks[1:]:
            assert all(torch.equal(shared[t][k], shared[first][k]) for k in shared[t])
            assert not all(torch.equal(independent[t][k], independent[first][k]) for k in independent[t])
            assert shared[t]["weight"] is not shared[first]["weight"]  # copies: training one leaves the other
        assert all(torch.equal(shared[first][k], independent[first][k]) for k in shared[first])
