"""Evaluation that travels with training (`evaluate-in-train`) on the real round loop: the same
metrics and models as separate evaluate messages, half the messages, and an exact resume when a
run dies while a round waits for its scores."""

import json

import pytest
import torch

from coordinator.config import RunConfig
from coordinator.loop import Coordinator
from tasks import protocol as P
from testbed.inprocess import InProcessGrid

# Two groups after round 1; every client trains both (capacity 2), so the clients that score a
# round's models with their next training are the clients an evaluate message would ask.
BASE = {"suite": "tiny", "mode": "mas", "split-round": 1, "max-groups": 2, "client-capacity": 2, "min-clients": 4,
        "plots": False, "local-steps": 3, "affinity-every": 1, "seed": 5, "rounds": 4, "checkpoint-keep": 10}
IN_TRAIN = {"evaluate-in-train": True}


def _run(out, grid=None, **overrides):
    cfg = RunConfig.from_dict(BASE | {"out": str(out)} | overrides)
    grid = grid or InProcessGrid(4)
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    coordinator.run()
    return coordinator, grid, json.loads((out / "history.json").read_text())


def _models(coordinator):
    return {g.gid: g.tensors() for g in coordinator.groups}


def _assert_same_models(a, b):
    assert a.keys() == b.keys()
    for gid in a:
        assert a[gid].keys() == b[gid].keys()
        for k in a[gid]:
            assert torch.equal(a[gid][k], b[gid][k]), (gid, k)


def _count(grid, kind):
    return sum(m.metadata.message_type == kind for m in grid.sent)


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("separate"))


@pytest.fixture(scope="module")
def in_train(tmp_path_factory):
    out = tmp_path_factory.mktemp("in_train")
    return (out, *_run(out, **IN_TRAIN))


def test_same_metrics_and_models_as_evaluate_messages_with_fewer_messages(separate, in_train):
    ref, ref_grid, ref_history = separate
    out, got, grid, history = in_train
    assert [r["metrics"] for r in history["rounds"]] == [r["metrics"] for r in ref_history["rounds"]]
    assert [r["groups"] for r in history["rounds"]] == [r["groups"] for r in ref_history["rounds"]]
    assert len(history["rounds"][-1]["groups"]) == 2
    _assert_same_models(_models(got), _models(ref))
    # Rounds 0, 2 and 3 ride on the next round's training; round 1 (a split follows) and round 4
    # (the last) are evaluated by evaluate messages.
    deferred = [r["round"] for r in history["rounds"] if any("evaluated by round" in e for e in r["events"])]
    assert deferred == [0, 2, 3]
    assert _count(grid, P.TRAIN) == _count(ref_grid, P.TRAIN)
    assert _count(ref_grid, P.EVALUATE) == 5 * 4 and _count(grid, P.EVALUATE) == 2 * 4
    asked = [m for m in grid.sent if m.metadata.message_type == P.TRAIN and m.content[P.CONFIG].get(P.EVALUATE_FIRST)]
    assert {int(m.content[P.CONFIG]["round"]) for m in asked} == {1, 3, 4}
    best = json.loads((out / "models" / "index.json").read_text())["best"]
    ref_best = json.loads((ref.out / "models" / "index.json").read_text())["best"]
    assert best["round"] == ref_best["round"] and best["mean_accuracy"] == ref_best["mean_accuracy"]


class DiesInRound(InProcessGrid):
    """The coordinator's process dies (an exception out of the grid) when it sends round N's
    training: with `evaluate-in-train`, round N-1 is then still waiting for its scores."""

    def __init__(self, num_nodes: int, round_: int) -> None:
        super().__init__(num_nodes)
        self.round_ = round_

    def push_messages(self, messages):
        messages = list(messages)
        if any(m.metadata.message_type == P.TRAIN and int(m.content[P.CONFIG]["round"]) == self.round_ for m in messages):
            raise RuntimeError(f"killed while sending round {self.round_}'s training")
        return super().push_messages(messages)


def test_a_run_killed_while_a_round_waits_for_its_scores_resumes_exactly(tmp_path, in_train):
    full_out, full, _, full_history = in_train
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path, grid=DiesInRound(4, round_=4), **IN_TRAIN)
    # Round 3 waited for round 4's scores: nothing of it was written. The newest checkpoint is
    # round 2's, written while round 3 trained, with the state round 2 ended with: the very state
    # of the uninterrupted run's round-2 checkpoint (paths and timings aside, and the global RNG,
    # which the in-process clients' threads re-seed in whatever order).
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("round_*"))][-1] == "round_00002"
    full_state, cut_state = (json.loads((out / "checkpoints" / "round_00002" / "state.json").read_text())
                             for out in (full_out, tmp_path))
    same = ("scheduler", "trackers", "groups", "next_gid", "previous_grouping", "stash", "best")
    assert {k: cut_state[k] for k in same} == {k: full_state[k] for k in same}
    resumed, _, history = _run(tmp_path, grid=InProcessGrid(4, first_node_id=7000), resume=True, **IN_TRAIN)
    _assert_same_models(_models(resumed), _models(full))
    assert [r["metrics"] for r in history["rounds"]] == [r["metrics"] for r in full_history["rounds"]]
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3, 4]


def test_a_round_nobody_scores_with_training_is_evaluated_by_evaluate_messages(tmp_path, separate):
    """Every client fails round 3's training: round 2's models, held for scores that never come,
    are evaluated by evaluate messages instead, and get the metrics they get without the option."""
    _, _, ref_history = separate
    crash = ",".join(f"{i}:crash:3" for i in range(4))
    _, grid, history = _run(tmp_path, grid=InProcessGrid(4, faults=crash), **IN_TRAIN)
    r2 = history["rounds"][2]
    assert any("evaluated by evaluate messages" in e for e in r2["events"]), r2["events"]
    assert r2["metrics"] == ref_history["rounds"][2]["metrics"]
    assert {int(m.content[P.CONFIG]["round"]) for m in grid.sent if m.metadata.message_type == P.EVALUATE} == {1, 2, 4}
