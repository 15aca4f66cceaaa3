"""Poisoned clients (2 of 10 send their update scaled by -10): robust fusion keeps the model useful."""

import pytest

from coordinator.config import RunConfig
from coordinator.history import mean_accuracy
from coordinator.loop import Coordinator
from testbed.inprocess import InProcessGrid

BASE = {"suite": "planted", "rounds": 8, "min-clients": 10, "local-steps": 20, "lr": 0.1, "affinity-every": 0, "plots": False}
POISON = "0:scale,1:scale"  # partitions 0 and 1 send their update scaled by -10 (testbed.faults)


def _final_accuracy(tmp_path, name, faults: str = "", **extra) -> float:
    cfg = RunConfig.from_dict(BASE | extra | {"out": str(tmp_path / name)})
    history = Coordinator(InProcessGrid(10, faults=faults), cfg, log=lambda line: None).run()
    return mean_accuracy(history.rounds[-1]["metrics"])


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _final_accuracy(tmp_path_factory.mktemp("clean"), "clean")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """The plain mean with the two poisoned clients."""
    return _final_accuracy(tmp_path_factory.mktemp("poisoned"), "mean", faults=POISON)


def test_plain_averaging_is_wrecked_by_poisoned_clients(clean, poisoned):
    assert poisoned < clean - 0.2, (poisoned, clean)


@pytest.mark.parametrize("aggregator", [{"aggregator": "median"}, {"aggregator": "trimmed-mean", "trim-fraction": 0.2}])
def test_median_and_trimmed_mean_stay_close_to_the_clean_run(tmp_path, clean, poisoned, aggregator):
    """Robust fusion under the attack keeps most of the clean accuracy: measured 0.05-0.09 below
    the clean run over seeds 0-1 and both head inits, where the plain mean loses more than 0.2."""
    robust = _final_accuracy(tmp_path, aggregator["aggregator"], faults=POISON, **aggregator)
    assert robust > clean - 0.1, (robust, clean)
    assert robust > poisoned + 0.1, (robust, poisoned)


def test_norm_clipping_limits_the_damage(tmp_path, poisoned):
    clipped = _final_accuracy(tmp_path, "clip", faults=POISON, **{"clip-norm": 1.0})
    assert clipped > poisoned + 0.1, (clipped, poisoned)
