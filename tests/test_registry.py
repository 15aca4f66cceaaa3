"""Users plug in their own suites: by file path, by module path; bad names fail with a clear reason."""

import textwrap

import pytest

from coordinator.config import RunConfig
from coordinator.loop import Coordinator
from tasks.registry import SuiteLoadError, load_suite
from testbed.inprocess import InProcessGrid

USER_SUITE = textwrap.dedent('''
    import numpy as np
    from torch import nn
    from tasks import Suite, TaskData, TaskSpec

    def load_partition(partition_id, num_partitions, seed, data_root):
        rng = np.random.default_rng([seed, partition_id])
        x = rng.standard_normal((200, 10)).astype(np.float32)
        def task(col, cut):
            y = (x[:, col] > cut).astype(np.int64)
            return TaskData(x[:160], y[:160], x[160:], y[160:])
        return {"sign": task(0, 0.0), "big": task(1, 1.0)}

    def make_suite():
        return Suite(name="mine", tasks=[TaskSpec("sign", 2), TaskSpec("big", 2)],
                     make_body=lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU()), feature_dim=32,
                     load_partition=load_partition)

    def not_a_suite():
        return 42
''')


def test_a_suite_from_a_file_trains_through_the_real_loop(tmp_path):
    path = tmp_path / "my_suite.py"
    path.write_text(USER_SUITE)
    spec = f"{path}:make_suite"
    assert load_suite(spec).task_names == ["sign", "big"]
    cfg = RunConfig.from_dict({"suite": spec, "rounds": 2, "min-clients": 2, "out": str(tmp_path / "out"),
                               "plots": False, "local-epochs": 3, "lr": 0.1})
    history = Coordinator(InProcessGrid(2), cfg, log=lambda line: None).run()
    assert history.rounds[-1]["metrics"]["sign"]["accuracy"] > 0.8


def test_module_path_suites_load():
    assert load_suite("tasks.images:make_tiny_suite").name == "tiny"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nonexistent", "expected a built-in name"),
        ("no_such_pkg.mod:make", "importing 'no_such_pkg.mod' failed"),
        ("tasks.images:nope", "has no callable 'nope'"),
        ("/does/not/exist.py:make", "does not exist"),
    ],
)
def test_bad_suite_names_say_what_is_wrong(spec, fragment):
    with pytest.raises(SuiteLoadError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_suite(spec)


def test_factory_returning_something_else_is_refused(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(USER_SUITE)
    with pytest.raises(SuiteLoadError, match="expected tasks.Suite"):
        load_suite(f"{path}:not_a_suite")
