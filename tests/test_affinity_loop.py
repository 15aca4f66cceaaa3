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


def test_sampled_rounds_that_measure_ask_a_holder_of_every_task(tmp_path) -> None:
    """One dataset per client and 2 of 8 clients drawn a round (ColD Fusion's setting): the
    measuring rounds add a holder of every task, so every pair the split reads is measured; the
    rounds after the split train what they draw (plus a client for a group none of them holds)."""
    suite, history = _mas(tmp_path, "one", rounds=3, fraction=0.25, **{"split-round": 2, "min-clients": 8})
    rounds = history.rounds
    assert [len(r["clients"]) for r in rounds[1:3]] == [8, 8]
    assert rounds[2]["affinity"]["coverage"]["summary"] == {"same-client": 0, "cross-client": 56, "never": 0}
    assert len(rounds[3]["clients"]) < 8
