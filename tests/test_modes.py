"""Grouping modes on the real round loop (in-process grid): planted groups are recovered and stay put."""

import pytest

from coordinator.config import ConfigError, RunConfig
from coordinator.loop import Coordinator
from tasks.registry import load_suite
from testbed.inprocess import InProcessGrid

PLANTED = {"suite": "planted", "min-clients": 9, "local-steps": 30, "lr": 0.1, "batch-size": 64,
           "affinity-every": 5, "max-groups": 3, "plots": False}


def _run(tmp_path, clients=9, **cfg):
    config = RunConfig.from_dict(PLANTED | {"out": str(tmp_path), "min-clients": clients} | cfg)
    coordinator = Coordinator(InProcessGrid(clients), config, log=lambda line: None)
    return coordinator, coordinator.run()


def _canonical(groups):
    return sorted(sorted(g) for g in groups)


@pytest.mark.parametrize("signal", ["lookahead", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mas_recovers_planted_groups(tmp_path, signal, seed):
    coordinator, history = _run(tmp_path, mode="mas", rounds=4, **{"split-round": 3, "affinity-signal": signal, "seed": seed})
    planted = _canonical(load_suite("planted").planted_groups)
    assert _canonical(coordinator.grouping()) == planted
    assert _canonical(history.rounds[4]["groups"]) == planted
    assert history.rounds[3]["affinity"]["tracked"][signal]["tasks"] == coordinator.tasks
    # the split groups were initialised from the all-in-one weights and kept training
    assert all(g.rounds_trained == 1 for g in coordinator.groups)


def test_dynamic_converges_to_planted_groups_and_does_not_flap(tmp_path):
    coordinator, history = _run(tmp_path, mode="dynamic", rounds=14,
                                **{"split-round": 3, "regroup-every": 3, "regroup-rounds": 2})
    planted = _canonical(load_suite("planted").planted_groups)
    splits = [e for r in history.rounds for e in r["events"] if e.startswith("split into")]
    merges = [r["round"] for r in history.rounds for e in r["events"] if e.startswith("merged")]
    assert len(splits) == 3 and merges == [6, 11]
    split_rounds = [r for r in history.rounds if r["round"] in (4, 5, 6, 9, 10, 11, 14)]
    for r in split_rounds:  # every split phase trains exactly the planted groups
        assert _canonical(r["groups"]) == planted, r["round"]
    assert _canonical(coordinator.grouping()) == planted


def test_separate_and_all_in_one_group_counts_and_capacity(tmp_path):
    coordinator, history = _run(tmp_path / "sep", mode="separate", rounds=2, **{"client-capacity": 1})
    assert len(coordinator.groups) == 9 and all(len(g.tasks) == 1 for g in coordinator.groups)
    for entry in history.rounds[1:]:
        trained = [n for nodes in entry["assignments"].values() for n in nodes]
        assert len(trained) == len(set(trained)), "a client trained more than client-capacity groups"
    coordinator, _ = _run(tmp_path / "aio", mode="all-in-one", rounds=1)
    assert coordinator.grouping() == [coordinator.tasks]


def test_more_groups_than_tasks_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="max-groups"):
        _run(tmp_path, mode="mas", rounds=4, **{"split-round": 2, "max-groups": 12})
