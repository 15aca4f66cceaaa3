"""Grouping through the real round loop (in-process grid): `mas` with the default affinity
(gradient summaries, cosine signal) recovers planted groups whether clients hold every task, four
or two across groups, or ONE task each (ColD Fusion's setting, where no client ever trains two tasks together),
measures only in the merged rounds the split reads, and says per pair how it was measured."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.affinity_harness import grouping_ari
from testbed.planted_loop import planted_mas as _mas


@pytest.mark.parametrize("case,seed", [("all", 0), ("few", 0), ("few", 1), ("two", 0), ("one", 0), ("one", 1)])
def test_mas_recovers_planted_groups_from_gradient_summaries(tmp_path, case: str, seed: int) -> None:
    suite, history = _mas(tmp_path, case, seed)
    rounds = history.rounds
    assert [bool(r.get("affinity")) for r in rounds[1:]] == [True, True, True, False]  # measured where read
    assert grouping_ari(suite.planted_groups, rounds[-1]["groups"], suite.task_names) == 1.0, rounds[-1]["groups"]
    # the split read the default signal (cosine); the TAG lookahead of the same measurements is
    # tracked too, for every pair (its recovery over seeds is in docs/affinity.md)
    assert rounds[3]["affinity"]["signal"] == "cosine"
    lookahead = np.array(rounds[3]["affinity"]["tracked"]["lookahead"]["matrix"], dtype=float)
    assert np.isfinite(lookahead[~np.eye(8, dtype=bool)]).all()
    coverage = rounds[3]["affinity"]["coverage"]["summary"]
    assert coverage["never"] == 0
    if case == "one":  # every pair is known only from different clients' summaries
        assert coverage == {"same-client": 0, "cross-client": 56, "never": 0}
    counts = [p[3] for p in rounds[3]["affinity"]["coverage"]["pairs"]]
    assert min(counts) >= 3  # summed over the three measured rounds
    compute = [r["compute"] for r in rounds[1:]]
    assert sum(c["affinity_seconds"] for c in compute) < 0.10 * sum(c["train_seconds"] for c in compute)


def test_all_in_one_measures_nothing_unless_monitoring_is_asked(tmp_path) -> None:
    _, quiet = _mas(tmp_path / "quiet", "few", mode="all-in-one", rounds=2, **{"split-round": 1})
    assert not any(r.get("affinity") for r in quiet.rounds)
    assert all(r["compute"]["affinity_seconds"] == 0 for r in quiet.rounds[1:])
    _, watched = _mas(tmp_path / "watched", "few", mode="all-in-one", rounds=2, **{"split-round": 1, "affinity-monitor": True})
    assert all(r.get("affinity") for r in watched.rounds[1:])


@pytest.mark.parametrize("coverage", ["probe", "train"])
def test_sampled_rounds_that_measure_ask_a_holder_of_every_task(tmp_path, coverage: str) -> None:
    """One dataset per client and 2 of 8 clients drawn a round (ColD Fusion's setting): the
    measuring rounds add a holder of every task, so every pair the split reads is measured. By
    default the added holders only probe (gradient summaries at the round's model, no training):
    the round trains and fuses what it drew. With `affinity-coverage = "train"` they train too.
    The rounds after the split train what they draw (plus a client for a group none of them holds)."""
    suite, history = _mas(tmp_path, "one", rounds=3, fraction=0.25,
                          **{"split-round": 2, "min-clients": 8, "affinity-coverage": coverage})
    rounds = history.rounds
    assert rounds[2]["affinity"]["coverage"]["summary"] == {"same-client": 0, "cross-client": 56, "never": 0}
    for r in rounds[1:3]:
        trained, probed = r["clients"], r["compute"]["probes"]
        assert len(trained) + len(probed) == 8 and not set(trained) & set(probed)
        assert len(trained) == (2 if coverage == "probe" else 8)
        assert r["assignments"] == {"0": trained}  # only trainers were fused
        assert r["compute"]["affinity_seconds"] > 0
    assert len(rounds[3]["clients"]) < 8 and rounds[3]["compute"]["probes"] == []


def test_probe_takes_the_training_window_at_the_received_model() -> None:
    """A probe's summary is the gradient window a training client takes, every step at the
    received weights (which it leaves untouched), and it costs no training time."""
    import torch

    from client.training import TrainConfig, train_multitask
    from strategies.affinity.summaries import body_num_params
    from tasks.registry import load_suite

    suite = load_suite("tiny")
    data = suite.partition(0, 2, 0, "")
    tasks = sorted(data)[:1]
    model = suite.build_model(tasks, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(local_steps=50, batch_size=8, lr=0.1, affinity_method="gradients", affinity_steps=3,
                      affinity_sketch_dim=body_num_params(model) + 1, seed=1, measure_only=True)
    result = train_multitask(model, data, tasks, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.steps == 3 and result.train_seconds == 0.0 and result.affinity_seconds > 0
    assert result.gradients.steps == {tasks[0]: 3}
    # the same window with lr = 0 (the weights never move) gives the same summary
    trained = suite.build_model(tasks, seed=0)
    still = train_multitask(trained, data, tasks, TrainConfig(**{**cfg.__dict__, "measure_only": False, "lr": 0.0,
                                                                  "momentum": 0.0, "local_steps": 3}))
    assert np.allclose(result.gradients.grads[tasks[0]], still.gradients.grads[tasks[0]], atol=1e-6)
