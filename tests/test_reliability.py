"""Fault injection on the real round loop (in-process grid): what survives, and what is recorded."""

import torch

from coordinator.config import RunConfig
from coordinator.loop import Coordinator
from coordinator.messaging import Sent
from coordinator.replies import read_train
from strategies.fusion import fuse_group
from strategies.validation import ValidationPolicy
from testbed.inprocess import InProcessGrid


def _run(tmp_path, clients: int, faults: str = "", hang_seconds: float = 3600.0, **overrides):
    cfg = RunConfig.from_dict({"suite": "tiny", "rounds": 1, "min-clients": clients, "out": str(tmp_path), "plots": False,
                               "affinity-every": 0, "local-steps": 4} | overrides)
    grid = InProcessGrid(clients, faults=faults, hang_seconds=hang_seconds)
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    initial = None
    original_round = coordinator.run_round

    def remember_then_run(r):
        nonlocal initial
        g = coordinator.groups[0]
        initial = {k: v.clone() for k, v in g.body.items()}, {t: dict(h) for t, h in g.heads.items()}, g.tensors()
        return original_round(r)

    coordinator.run_round = remember_then_run
    history = coordinator.run()
    return coordinator, grid, history, initial


def test_crash_hang_nan_shape_and_huge_updates_never_reach_the_model(tmp_path):
    faults = "0:crash,1:nan,2:shape,3:huge,4:hang"
    coordinator, grid, history, (initial_body, initial_heads, _) = _run(
        # the timeout leaves honest clients room on a loaded machine (8 in-process clients share
        # its cores); the hanging client outlasts it
        tmp_path, 8, faults=faults, hang_seconds=20.0, **{"round-timeout": 12.0, "max-update-norm": 1000.0,
                                        "quorum": 0.3, "max-retries": 0})
    r1 = history.rounds[1]
    partition = {n: grid.partition_of(n) for n in grid.contexts}
    crashed = {partition[e["node"]] for e in r1["errors"]}
    rejected = {partition[e["node"]]: " ".join(e["reasons"]) for e in r1["rejected"]}
    dropped = {partition[e["node"]] for e in r1["dropped"]}
    assert crashed == {0} and "injected crash" in r1["errors"][0]["error"]
    assert set(rejected) == {1, 2, 3}
    assert "finite" in rejected[1].lower() or "nan" in rejected[1].lower()
    assert "shape" in rejected[2].lower()
    assert "norm" in rejected[3].lower()
    assert dropped == {4}
    # The fused model is exactly the fusion of the three valid replies (partitions 5, 6, 7).
    group = coordinator.groups[0]
    sent_model = type(group)(group.gid, list(group.tasks), initial_body, initial_heads)
    replies = sorted((m for m in grid.replies if m.metadata.message_type == "train" and not m.has_error()
                      and partition[m.metadata.src_node_id] >= 5), key=lambda m: coordinator.clients[m.metadata.src_node_id].name)
    valid = [read_train(m, Sent("train", m.metadata.src_node_id, group.gid, tuple(coordinator.clients[m.metadata.src_node_id].tasks)),
                        sent_model, coordinator.clients[m.metadata.src_node_id], ValidationPolicy()) for m in replies]
    assert len(valid) == 3
    body, heads = fuse_group(initial_heads, [v.update for v in valid], "uniform")
    for k in body:
        assert torch.equal(group.body[k], body[k]), k
    for t in heads:
        for k in heads[t]:
            assert torch.equal(group.heads[t][k], heads[t][k]), (t, k)
    assert all(torch.isfinite(v).all() for v in group.body.values())


def test_group_without_quorum_keeps_its_model_and_says_so(tmp_path):
    coordinator, _grid, history, (initial_body, _, _) = _run(
        tmp_path, 4, faults="0:crash,1:crash,2:nan", **{"quorum": 0.75, "max-retries": 1})
    r1 = history.rounds[1]
    assert any("kept its model" in e for e in r1["events"])
    for k, v in coordinator.groups[0].body.items():
        assert torch.equal(v, initial_body[k])


def test_retry_uses_other_clients_when_quorum_missed(tmp_path):
    # fraction 0.5 samples half the clients; two of those crash, so the group is retried with others.
    _c, grid, history, _ = _run(tmp_path, 6, faults="0:crash,1:crash,2:crash", **{"fraction": 0.5, "quorum": 1.0, "max-retries": 2})
    r1 = history.rounds[1]
    assert any(e.startswith("retry group") for e in r1["events"])
    assert len(r1["clients"]) >= 3


def test_a_client_that_cannot_describe_its_data_is_asked_again_only_after_a_backoff(tmp_path):
    from coordinator.discovery import QUERY_BACKOFF

    grid = InProcessGrid(3)
    broken = grid.add_node({})  # no data-dir and no partition: its query handler raises
    cfg = RunConfig.from_dict({"suite": "tiny", "rounds": 4, "min-clients": 3, "out": str(tmp_path), "plots": False,
                               "affinity-every": 0, "local-steps": 2})
    logs = []
    history = Coordinator(grid, cfg, log=logs.append).run()
    queries = [m for m in grid.sent if m.metadata.dst_node_id == broken and m.metadata.message_type == "query"]
    assert len(queries) == 1 + (cfg.rounds - 1) // QUERY_BACKOFF
    assert any(f"node {broken} failed to describe its data" in line and "partition-id" in line for line in logs)
    assert all(broken not in r["clients"] for r in history.rounds)


def test_a_node_that_dies_is_no_longer_scheduled_or_evaluated_and_a_rejoin_is_picked_up(tmp_path):
    grid = InProcessGrid(4)
    cfg = RunConfig.from_dict({"suite": "tiny", "rounds": 4, "min-clients": 4, "out": str(tmp_path), "plots": False,
                               "affinity-every": 0, "local-steps": 2, "round-timeout": 30.0})
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    victim = sorted(grid.contexts)[0]
    victim_config = dict(grid.contexts[victim].node_config)
    original = coordinator.run_round

    def run_round(r):
        if r == 2:
            grid.remove_node(victim)  # dies between rounds 1 and 2
        if r == 4:
            grid.add_node(victim_config)  # the same client comes back under a new node id
        return original(r)

    coordinator.run_round = run_round
    history = coordinator.run()
    to_victim = [m.metadata.message_type for m in grid.sent if m.metadata.dst_node_id == victim]
    assert to_victim.count("train") == 1  # round 1 only
    assert all(len(r["dropped"]) == 0 for r in history.rounds)  # nobody waited for a dead node
    assert len(history.rounds[4]["clients"]) == 4  # the re-joined client trains again in round 4
    assert victim not in coordinator.clients
