"""Client side of gradient affinity: per-task body gradients are each task's own autograd, training
is unchanged bit for bit, and the report is the sketched mean gradient."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from client.training import TrainConfig, _per_task_backward, train_multitask
from strategies.affinity import CountSketch, TaskGradients, body_num_params
from tasks.planted import make_planted_suite
from tasks.registry import load_suite


def _batches(suite, data, tasks, n=32):
    return {t: (torch.as_tensor(data[t].x_train[:n]).float(), torch.as_tensor(data[t].y_train[:n]).long()) for t in tasks}


def test_per_task_gradients_equal_autograd_of_each_loss_and_the_sum_equals_joint_backward() -> None:
    suite = load_suite("tiny")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)
    model = suite.build_model(tasks, seed=0)
    batches = _batches(suite, data, tasks)
    body = [p for p in model.body.parameters()]
    want = {}
    for t, (x, y) in batches.items():
        want[t] = torch.autograd.grad(F.cross_entropy(model(x, t), y), body)
    model.zero_grad(set_to_none=True)
    sum(F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()).backward()
    joint = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    acc = TaskGradients(model, tasks, max_steps=1)
    losses = {t: F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()}
    _per_task_backward(model, losses, acc, {t: 32 for t in tasks})
    for t in tasks:
        for got, exp in zip(acc._sums[t], want[t]):
            torch.testing.assert_close(got, exp, rtol=0, atol=0)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, joint[n]), n  # bitwise: summed in the engine's own order
    report = acc.report(sketch_dim=64, seed=3)
    assert report.steps == {t: 1 for t in tasks} and report.examples == {t: 32 for t in tasks}
    sk = CountSketch(body_num_params(model), 64, 3)
    for t in tasks:
        np.testing.assert_allclose(report.grads[t], sk.sketch([list(want[t])])[0].numpy(), rtol=1e-5, atol=1e-7)
        assert abs(report.losses[t] - float(losses[t].detach())) < 1e-6


def test_training_with_gradient_summaries_is_bitwise_the_same() -> None:
    for name in ("tiny", "planted"):
        suite = load_suite(name)
        data = suite.load_partition(0, 1, 0, "")
        tasks = sorted(data)
        states = {}
        for method in ("none", "gradients"):
            model = suite.build_model(tasks, seed=0)
            budget = 8 * len(tasks)  # task-steps: 8 steps for each client here
            res = train_multitask(model, data, tasks, TrainConfig(local_steps=12, seed=5, affinity_method=method, affinity_steps=budget))
            states[method] = model.state_dict()
            if method == "gradients":
                assert res.gradients is not None and res.gradients.steps == {t: 8 for t in tasks}
                assert res.affinity_seconds > 0
            else:
                assert res.gradients is None and res.lookahead is None
        for k in states["none"]:
            assert torch.equal(states["none"][k], states["gradients"][k]), (name, k)


def test_one_task_client_reports_its_exact_mean_gradient_when_the_body_is_small() -> None:
    suite = make_planted_suite(tasks_per_client=1, hidden=8, feature_dim=4)
    data = suite.load_partition(2, 9, 0, "")
    (task,) = data
    model = suite.build_model([task], seed=0)
    p = body_num_params(model)
    res = train_multitask(model, data, [task], TrainConfig(local_steps=6, batch_size=16, seed=1,
                                                           affinity_method="gradients", affinity_steps=4, affinity_sketch_dim=4096))
    rep = res.gradients
    assert rep.tasks == [task] and rep.grads[task].shape == (p,) and rep.grads[task].dtype == np.float32
    assert rep.steps[task] == 4 and rep.examples[task] == 64 and rep.losses[task] > 0  # one task: 4 task-steps = 4 steps
    # nothing virtual-step with one task, and "both" adds the virtual step only with >= 2 tasks
    assert res.lookahead is None


def test_both_measures_both_ways_and_none_measures_nothing() -> None:
    suite = load_suite("planted")
    data = suite.load_partition(0, 4, 0, "")
    tasks = sorted(data)
    model = suite.build_model(tasks, seed=0)
    res = train_multitask(model, data, tasks, TrainConfig(local_steps=10, seed=2, affinity_method="both", affinity_every=5,
                                                          affinity_steps=3, affinity_sketch_dim=128))
    assert res.lookahead is not None and res.lookahead.counts[0, 1] == 2
    assert res.gradients is not None and set(res.gradients.tasks) == set(tasks)
    assert all(g.shape == (128,) for g in res.gradients.grads.values())


def test_window_is_a_task_step_budget() -> None:
    from strategies.affinity import window_steps

    assert [window_steps(10, t) for t in (1, 2, 3, 4, 8, 20)] == [10, 5, 4, 3, 2, 1]
    assert window_steps(10, 1, steps=6) == 6 and window_steps(0, 3) == 0
    suite = load_suite("tiny")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)  # 4 tasks: budget 10 -> the first 3 steps
    res = train_multitask(suite.build_model(tasks, seed=0), data, tasks,
                          TrainConfig(local_steps=6, batch_size=16, seed=1, affinity_method="gradients", affinity_steps=10))
    assert res.gradients.steps == {t: 3 for t in tasks} and res.gradients.examples == {t: 48 for t in tasks}
