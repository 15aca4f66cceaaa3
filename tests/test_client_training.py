"""Local multi-task training really learns: every task's loss goes down on a client's own data."""

import pytest
import torch

from client.training import TrainConfig, evaluate_multitask, train_multitask
from tasks.registry import load_suite
from tasks.suite import TaskData


def _on_train_split(data: dict[str, TaskData]) -> dict[str, TaskData]:
    """The same data with the train split as the evaluation split: the loss training minimises."""
    return {t: TaskData(d.x_train, d.y_train, d.x_train, d.y_train) for t, d in data.items()}


def test_local_training_reduces_every_task_loss():
    suite = load_suite("tiny")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)
    assert len(tasks) >= 2
    model = suite.build_model(tasks, seed=0)
    before = evaluate_multitask(model, _on_train_split(data), tasks)
    result = train_multitask(model, data, tasks, TrainConfig(local_epochs=3, batch_size=32, lr=0.05, seed=1, affinity_method="virtual-step", affinity_every=5))
    after = evaluate_multitask(model, _on_train_split(data), tasks)
    for t in tasks:
        assert after[t]["loss"] < before[t]["loss"], (t, before[t], after[t])
        assert result.examples[t] == data[t].num_train
    # affinity was measured on the side, with its cost reported separately
    assert result.lookahead is not None and result.lookahead.counts.sum() > 0
    assert result.affinity_seconds > 0 and result.train_seconds > 0


def test_training_is_deterministic_for_a_seed():
    suite = load_suite("tiny")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)
    states = []
    for _ in range(2):
        model = suite.build_model(tasks, seed=0)
        train_multitask(model, data, tasks, TrainConfig(local_steps=5, seed=7))
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_training_refuses_tasks_without_data():
    suite = load_suite("tiny")
    data = suite.load_partition(0, 1, 0, "")
    model = suite.build_model(seed=0)
    with pytest.raises(ValueError, match="not_a_task"):
        train_multitask(model, data, ["not_a_task"], TrainConfig())
