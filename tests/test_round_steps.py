"""The round's steps on their own and through the in-process loop: the merge/split plan's end of
run, regrouping that keeps what groups learned, evaluation cadence and sampling, sampled
discovery, the live history, best-round models and identities bound to a client registry."""

import json

import pytest
import torch

from coordinator.affinity import AffinityBook
from coordinator.config import ConfigError, RunConfig
from coordinator.history import read_history
from coordinator.loop import Coordinator
from coordinator.regroup import GroupState, merge, split
from coordinator.state import RoundOutcome, TaskGroup
from strategies.merge_split import MergeSplitPlan
from testbed.inprocess import InProcessGrid

TINY = {"suite": "tiny", "min-clients": 4, "local-steps": 2, "affinity-every": 0, "plots": False}


def _run(tmp_path, clients=4, grid=None, **cfg):
    config = RunConfig.from_dict(TINY | {"out": str(tmp_path), "min-clients": min(clients, 4)} | cfg)
    grid = grid or InProcessGrid(clients)
    coordinator = Coordinator(grid, config, log=lambda line: None)
    return coordinator, coordinator.run(), grid


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("rounds", [7, 8, 9, 10, 11, 13, 14, 15])
def test_dynamic_plan_never_regroups_after_the_end_or_merges_without_room(rounds):
    plan = MergeSplitPlan("dynamic", split_round=3, regroup_every=4, regroup_rounds=2, rounds=rounds)
    actions = {r: plan.action_after(r) for r in range(1, rounds + 1)}
    assert actions[rounds] is None
    for r, action in actions.items():
        if action == "merge":  # a merge is followed by its re-split and at least one trained round
            assert r + 2 < rounds and actions[r + 2] == "split"
    assert not plan.merged_during(rounds) or rounds <= 3


def test_only_rounds_a_split_reads_measure_affinity():
    mas = MergeSplitPlan("mas", split_round=3, rounds=10)
    assert [r for r in range(1, 11) if mas.measures(r)] == [1, 2, 3]
    dyn = MergeSplitPlan("dynamic", split_round=3, regroup_every=4, regroup_rounds=2, rounds=14)
    assert [r for r in range(1, 15) if dyn.measures(r)] == [1, 2, 3, 8, 9]
    for mode in ("all-in-one", "separate"):
        assert not any(MergeSplitPlan(mode, rounds=10).measures(r) for r in range(1, 11))


def test_default_all_in_one_run_measures_nothing_unless_monitoring_is_asked_for(tmp_path):
    _, history, _ = _run(tmp_path / "default", rounds=2, **{"affinity-every": 2, "local-steps": 4})
    assert all(not r["affinity"] and r["compute"].get("affinity_seconds", 0) == 0 for r in history.rounds)
    _, history, _ = _run(tmp_path / "monitor", rounds=2, **{"affinity-every": 2, "local-steps": 4, "affinity-monitor": True})
    assert all(r["affinity"] for r in history.rounds[1:])


# ----------------------------------------------------------------------------- regrouping


def _group(gid, tasks, fill):
    body = {"w": torch.full((2, 2), float(fill))}
    heads = {t: {"w": torch.full((2,), float(fill))} for t in tasks}
    return TaskGroup(gid, list(tasks), body, heads)


def test_a_regroup_that_keeps_the_grouping_resumes_each_group_from_its_own_body():
    tasks = ["a", "b", "c", "d"]
    state = GroupState([_group(0, ["a", "b"], 1.0), _group(1, ["c", "d"], 3.0)], next_gid=2)
    cfg = RunConfig.from_dict({"mode": "dynamic", "rounds": 20, "max-groups": 2})
    book = AffinityBook(tasks, cfg, MergeSplitPlan("dynamic", rounds=20))
    outcome = RoundOutcome(round=6, groups=state.grouping())
    merge(state, book, tasks, outcome, log=lambda line: None)
    merged = state.groups[0]
    assert torch.equal(merged.body["w"], torch.full((2, 2), 2.0))  # task-weighted mean of the bodies
    merged.body = {"w": merged.body["w"] + 0.5}  # what the merged re-measuring rounds taught
    # affinity that favours the same grouping again
    z = torch.tensor([[0, 1, -1, -1], [1, 0, -1, -1], [-1, -1, 0, 1], [-1, -1, 1, 0]], dtype=torch.float64).numpy()
    for _ in range(2):
        book.trackers[cfg.affinity_signal].update(z)
    split(state, book, 2, 0.01, tasks, outcome, log=lambda line: None)
    bodies = {tuple(g.tasks): g.body["w"] for g in state.groups}
    assert torch.equal(bodies[("a", "b")], torch.full((2, 2), 1.5))  # own body + merged-phase delta
    assert torch.equal(bodies[("c", "d")], torch.full((2, 2), 3.5))
    assert any("resume from their own bodies" in e for e in outcome.events)


# ----------------------------------------------------------------------------- evaluation, sampling


def test_evaluation_cadence_and_config_keys(tmp_path):
    _, history, _ = _run(tmp_path, rounds=5, **{"evaluate-every": 2})
    evaluated = [r["round"] for r in history.rounds if r["evaluated"]]
    assert evaluated == [0, 2, 4, 5]  # round 0 and the last round always
    assert all(not r["metrics"] for r in history.rounds if not r["evaluated"])
    for bad, key in [({"evaluate-every": 0}, "evaluate-every"), ({"fraction-evaluate": 0.0}, "fraction-evaluate"),
                     ({"fraction-evaluate": 1.5}, "fraction-evaluate"), ({"max-examples": 0}, "max-examples")]:
        with pytest.raises(ConfigError, match=key):
            RunConfig.from_dict(bad)


def test_a_round_costs_what_it_samples_not_the_federation(tmp_path):
    """200 connected clients, 2% drawn per round: only the drawn are queried, trained and evaluated."""
    n, rounds = 200, 3
    _, history, grid = _run(tmp_path, clients=n, rounds=rounds, fraction=0.02, suite="planted",
                            **{"fraction-evaluate": 0.02, "local-steps": 1})
    sent = [m.metadata.message_type for m in grid.sent]
    per_draw = 4  # ceil(0.02 * 200)
    # start-up meets a batch, each round draws its trainers and evaluators: never the federation
    assert sent.count("query") <= 2 * 4 + (2 * rounds + 1) * per_draw < n / 4
    for r in history.rounds[1:]:
        assert 1 <= len(r["clients"]) <= per_draw + 1  # +1: a group no drawn client could train
    assert sent.count("evaluate") <= (rounds + 1) * per_draw
    # One query exchange a round: the round's evaluators are drawn and met with its trainers,
    # so no query goes out between a round's training and its evaluation.
    runs = [t for i, t in enumerate(sent) if i == 0 or sent[i - 1] != t]
    after_start = runs[runs.index("train"):]
    assert all(not (a == "train" and b == "query" and c == "evaluate")
               for a, b, c in zip(after_start, after_start[1:], after_start[2:])), runs
    assert after_start.count("query") <= rounds - 1, runs


# ----------------------------------------------------------------------------- outputs


def test_history_is_appended_live_and_best_models_are_kept(tmp_path):
    coordinator, history, _ = _run(tmp_path, rounds=3)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == 2 and len(lines) == 1 + 4
    assert read_history(tmp_path)["rounds"] == json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 4 * len(coordinator.tasks)
    index = json.loads((tmp_path / "models" / "index.json").read_text())
    best = index["best"]
    accs = {r["round"]: r for r in history.rounds}
    from coordinator.history import mean_accuracy

    assert best["mean_accuracy"] == pytest.approx(max(mean_accuracy(r["metrics"]) for r in accs.values()))
    for gid, g in best["groups"].items():
        assert (tmp_path / "models" / g["file"]).is_file()
    assert index["latest"]["round"] == 3 and index["suite"] == "tiny"


def test_with_a_client_registry_names_come_from_registered_keys(tmp_path):
    grid = InProcessGrid(3)
    nodes = sorted(grid.contexts)
    registry = tmp_path / "client_registry.json"
    registry.write_text(json.dumps({str(nodes[0]): "alice", str(nodes[1]): "bob"}))  # the third is not registered
    coordinator, history, _ = _run(tmp_path / "out", clients=3, grid=grid, rounds=1,
                                   **{"client-registry": str(registry), "min-clients": 2})
    assert sorted(c.name for c in coordinator.clients.values()) == ["alice", "bob"]
    refused = [e for r in history.rounds for e in r["rejected"] if e["kind"] == "query"]
    assert [e["node"] for e in refused] == [nodes[2]] and "not in the client registry" in refused[0]["reasons"][0]


def test_the_coordinator_also_scores_a_held_out_folder_it_owns(tmp_path):
    from client.folder import prepare_client_dirs
    from tasks.registry import load_suite

    held_out = prepare_client_dirs(load_suite("tiny"), 1, tmp_path / "operator", seed=7)[0]
    coordinator, history, _ = _run(tmp_path / "out", rounds=1, **{"evaluate-data": str(held_out)})
    for r in history.rounds:
        assert set(r["held_out"]) == set(coordinator.tasks)
        assert all(0.0 <= m["accuracy"] <= 1.0 and m["examples"] > 0 for m in r["held_out"].values())
    with pytest.raises(ConfigError, match="evaluate-data"):
        _run(tmp_path / "bad", rounds=1, **{"evaluate-data": str(tmp_path / "nowhere")})
