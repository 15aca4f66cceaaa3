"""User suites whose partition loader returns numpy task names: converted, or refused naming the loader."""

import numpy as np
import pytest

from tasks.suite import PartitionError, Suite, TaskData, TaskSpec, checked_partition

SUITE_FILE = '''
import numpy as np
from torch import nn
from tasks import Suite, TaskData, TaskSpec

def load_partition(partition_id, num_partitions, seed, data_root):
    rng = np.random.default_rng([seed, partition_id])
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    names = np.array(["alpha", "beta"])  # numpy strings, as np.unique or a DataFrame give them
    # one numpy name first and one plain str after it: Flower's ConfigRecord refused exactly this mix
    return {names[0]: TaskData(x[:30], y[:30], x[30:], y[30:]), "beta": TaskData(x[:30], 1 - y[:30], x[30:], 1 - y[30:])}

def make_suite():
    return Suite(name="numpy-names", tasks=[TaskSpec("alpha", 2), TaskSpec("beta", 2)],
                 make_body=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()), feature_dim=8,
                 load_partition=load_partition)
'''


def _data():
    x = np.zeros((4, 2), np.float32)
    return TaskData(x, np.zeros(4, np.int64), x, np.zeros(4, np.int64))


def test_numpy_task_names_become_plain_str():
    out = checked_partition({np.str_("a"): _data(), "b": _data()}, "s", lambda *a: None)
    assert [type(k) for k in out] == [str, str] and list(out) == ["a", "b"]


def my_loader(partition_id, num_partitions, seed, data_root):
    return {np.int64(3): _data()}


def test_non_string_task_names_are_refused_naming_the_loader():
    suite = Suite("bad", [TaskSpec("a", 2)], lambda: None, 2, my_loader)
    with pytest.raises(PartitionError, match=r"suite 'bad': load_partition \(.*my_loader\).*numpy\.int64.*must be strings"):
        suite.partition(0, 1, 0, "")
    with pytest.raises(PartitionError, match="expected tasks.TaskData"):
        checked_partition({"a": (1, 2)}, "bad", my_loader)


def test_client_with_numpy_task_names_joins_and_trains(tmp_path):
    from coordinator.config import RunConfig
    from coordinator.loop import Coordinator
    from testbed.inprocess import InProcessGrid

    path = tmp_path / "numpy_suite.py"
    path.write_text(SUITE_FILE)
    cfg = RunConfig.from_dict({"suite": f"{path}:make_suite", "rounds": 1, "min-clients": 2, "local-steps": 2,
                               "plots": False, "out": str(tmp_path / "run"), "min-clients-timeout": 20.0})
    coordinator = Coordinator(InProcessGrid(2), cfg, log=lambda line: None)
    history = coordinator.run()
    assert sorted(coordinator.clients[n].tasks == ["alpha", "beta"] for n in coordinator.clients) == [True, True]
    assert not history.rounds[-1]["errors"] and len(history.rounds[-1]["clients"]) == 2
