"""Hostile clients on the real round loop (in-process grid): every forged reply is refused and
named, the run completes, and the models are bitwise those of a run without the hostile clients."""

import pytest
import torch

from coordinator.config import RunConfig
from coordinator.loop import Coordinator
from testbed import hostile
from testbed.inprocess import InProcessGrid

HONEST = 4
PARTITIONS = 40  # fixed, so honest clients hold the same data in every run
TRAIN = sorted(b for b in hostile.BEHAVIOURS if b.startswith("t-") and not hostile.honest_twin(b) and b != "t-wrong-reply")
EVALUATE = sorted(b for b in hostile.BEHAVIOURS if b.startswith("e-"))
QUERY = sorted(b for b in hostile.BEHAVIOURS if b.startswith("q-") and b != "q-steal-name")
assert HONEST + len(TRAIN) <= PARTITIONS  # one partition per hostile client of the run below


def _run(tmp_path, behaviours: list[str], honest: int = HONEST, **overrides):
    """HONEST honest clients plus one hostile client per behaviour; returns (coordinator, history, grid)."""
    n = honest + len(behaviours)
    configs = [{"partition-id": i, "num-partitions": PARTITIONS} for i in range(honest)]
    configs += [{"partition-id": HONEST + i, "num-partitions": PARTITIONS, "hostile": b, "steal-name": "partition-0"}
                for i, b in enumerate(behaviours)]
    cfg = RunConfig.from_dict({"suite": "tiny", "rounds": 2, "min-clients": honest, "out": str(tmp_path), "plots": False,
                               "affinity-every": 0, "local-steps": 3, "quorum": 0.1, "round-timeout": 300.0} | overrides)
    grid = InProcessGrid(n, node_configs=configs, client_app=hostile.app)
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    return coordinator, coordinator.run(), grid


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    coordinator, history, _ = _run(tmp_path_factory.mktemp("reference"), [])
    return {g.gid: g.tensors() for g in coordinator.groups}, history


def _same_models(coordinator, reference_models):
    got = {g.gid: g.tensors() for g in coordinator.groups}
    assert got.keys() == reference_models.keys()
    for gid, tensors in got.items():
        for k, v in tensors.items():
            assert torch.equal(v, reference_models[gid][k]), (gid, k)


# What the refusal of a forged packed model (tasks.packing) must say: the record, array or
# layout entry that lied, and how.
WIRE_REASONS = {
    "t-no-model": "missing record 'model'",
    "t-extra-head": "model: layout names 'heads.intruder.",
    "t-extra-array": "model: layout names 'body.backdoor' not expected",
    "t-shape": "layout shape (3, 3), expected",
    "t-dtype": "layout dtype float64, expected float32",
    "t-oversized": "model.float32: ",
    "t-layout-length": "model: layout lists ",
    "t-layout-duplicate": "more than once",
    "t-layout-huge": "layout shape (1000000000000, ",
    "t-layout-type": "model: layout dims holds ",
    "t-layout-foreign": "model: layout names 'heads.ghost.",
    "t-layout-order": "model: layout order differs",
    "t-layout-negative": "model: layout has a negative dimension",
    "t-wire-dtype": "model.float32: dtype float64, expected float32",
    "t-npy-header": "model.float32: npy header says float32 (1000000000000,)",
}


@pytest.mark.slow
def test_forged_train_and_evaluate_replies_are_refused_named_and_change_nothing(tmp_path, reference):
    # each hostile client forges one kind of train reply and one kind of evaluate reply
    behaviours = [f"{t},{EVALUATE[i % len(EVALUATE)]}" for i, t in enumerate(TRAIN)]
    coordinator, history, _ = _run(tmp_path, behaviours)
    ref_models, ref_history = reference
    hostile_names = {f"partition-{HONEST + i}" for i in range(len(behaviours))}
    forged = {f"partition-{HONEST + i}": t for i, t in enumerate(TRAIN)}
    for r in (1, 2):
        entry = history.rounds[r]
        for kind in ("train", "evaluate"):
            refused = {e["client"] for e in entry["rejected"] if e["kind"] == kind}
            dropped = {e["client"] for e in entry["dropped"]}
            assert refused == hostile_names and not dropped, (r, kind, sorted(hostile_names - refused), dropped)
        for e in entry["rejected"]:
            assert e["reasons"] and all(isinstance(x, str) and x for x in e["reasons"]), e
            want = WIRE_REASONS.get(forged[e["client"]]) if e["kind"] == "train" else None
            assert want is None or any(want in x for x in e["reasons"]), (forged[e["client"]], e["reasons"])
        assert entry["metrics"] == ref_history.rounds[r]["metrics"]
        assert entry["clients"] == ref_history.rounds[r]["clients"]
    _same_models(coordinator, ref_models)


def test_forged_queries_are_refused_and_named(tmp_path, reference):
    coordinator, history, _ = _run(tmp_path, QUERY)
    assert sorted(c.name for c in coordinator.clients.values()) == [f"partition-{i}" for i in range(HONEST)]
    refused = {e["node"]: e for r in history.rounds for e in r["rejected"] if e["kind"] == "query"}
    assert len(refused) == len(QUERY) and all(e["reasons"] for e in refused.values())
    _same_models(coordinator, reference[0])
    assert all(len(r["clients"]) == HONEST for r in history.rounds[1:])


def test_a_newcomer_claiming_a_connected_clients_name_is_refused(tmp_path):
    cfg = RunConfig.from_dict({"suite": "tiny", "rounds": 3, "min-clients": 2, "out": str(tmp_path), "plots": False,
                               "affinity-every": 0, "local-steps": 2})
    grid = InProcessGrid(2, client_app=hostile.app)
    coordinator = Coordinator(grid, cfg, log=lambda line: None)
    original = coordinator.run_round
    thief = {}

    def run_round(r):
        if r == 2:
            thief["node"] = grid.add_node({"partition-id": 1, "num-partitions": 2, "hostile": "q-steal-name",
                                           "steal-name": "partition-0"})
        return original(r)

    coordinator.run_round = run_round
    history = coordinator.run()
    victim = next(n for n, c in coordinator.clients.items() if c.name == "partition-0")
    assert victim != thief["node"] and victim in grid.contexts
    refusal = [e for e in history.rounds[2]["rejected"] if e["node"] == thief["node"]]
    assert refusal and "already used" in refusal[0]["reasons"][0]
    assert history.rounds[3]["clients"] == ["partition-0", "partition-1"]


@pytest.mark.parametrize("behaviour", ["t-reordered", "t-no-layout"])
def test_valid_replies_are_fused(tmp_path, reference, behaviour):
    """The right records, metrics and arrays in another order, or a packed model without a layout
    record (the coordinator knows the layout), are valid replies: they must be used, and fused
    correctly. (Tensors packed in another order than the model was sent in, with a layout saying
    so, are not: `t-layout-order`, refused above.)"""
    coordinator, history, _ = _run(tmp_path, [behaviour])
    entry = history.rounds[1]
    assert not entry["rejected"] and len(entry["clients"]) == HONEST + 1
    assert all(torch.isfinite(v).all() for g in coordinator.groups for v in g.tensors().values())


def test_a_reply_that_answers_no_message_is_not_used(tmp_path):
    """A reply whose reply-to id matches nothing the coordinator sent is ignored: the client
    counts as not answering (dropped after the round timeout), and the round goes on."""
    _, history, _ = _run(tmp_path, ["t-wrong-reply"], honest=2, rounds=1, **{"round-timeout": 15.0, "min-clients": 2})
    entry = history.rounds[1]
    assert [e["client"] for e in entry["dropped"]] == [f"partition-{HONEST}"]
    assert entry["clients"] == ["partition-0", "partition-1"]


GRADIENT = sorted(b for b in hostile.BEHAVIOURS if b.startswith("t-grad-"))


def test_forged_gradient_summaries_in_measured_rounds_are_refused_and_change_nothing(tmp_path):
    """Every round measures (one group, `affinity-monitor`): forged gradient summaries are refused
    and named in both rounds, and the pooled affinity (what a split reads) and the models are
    bitwise those of the honest run. (Summaries nobody asked for are refused in the test above,
    where no round measures.)"""
    settings = {"affinity-method": "gradients", "affinity-monitor": True, "evaluate-every": 2}
    ref_coordinator, ref_history, _ = _run(tmp_path / "reference", [], **settings)
    coordinator, history, _ = _run(tmp_path / "hostile", GRADIENT, **settings)
    hostile_names = {f"partition-{HONEST + i}" for i in range(len(GRADIENT))}
    for r in (1, 2):
        refused = {e["client"]: e["reasons"] for e in history.rounds[r]["rejected"] if e["kind"] == "train"}
        assert set(refused) == hostile_names, (r, sorted(hostile_names - set(refused)))
        assert all(any("affinity" in x for x in reasons) for reasons in refused.values()), refused
        measured, reference = history.rounds[r]["affinity"], ref_history.rounds[r]["affinity"]
        assert measured["method"] == "gradients"
        assert measured["tracked"] == reference["tracked"] and measured["coverage"] == reference["coverage"]
    _same_models(coordinator, {g.gid: g.tensors() for g in ref_coordinator.groups})


SCORES = sorted(b for b in hostile.BEHAVIOURS if b.startswith("v-"))


def test_forged_test_scores_sent_with_training_are_refused_named_and_change_nothing(tmp_path, reference):
    """With `evaluate-in-train` each train message asks for the received model's test scores:
    forged, missing or mistyped scores refuse the whole reply (update included), named, and the
    metrics those scores would have entered and the models are those of the honest clients alone.
    (The reference evaluates by evaluate messages; with one group every honest client trains
    and scores it, so its metrics are what the scores must pool to.)"""
    ref_models, ref_history = reference
    coordinator, history, _ = _run(tmp_path, SCORES, **{"evaluate-in-train": True})
    hostile_names = {f"partition-{HONEST + i}": b for i, b in enumerate(SCORES)}
    for r in (1, 2):  # both rounds' train messages carry the previous round's evaluation
        refused = {e["client"]: e["reasons"] for e in history.rounds[r]["rejected"] if e["kind"] == "train"}
        assert set(refused) == set(hostile_names), (r, sorted(set(hostile_names) - set(refused)))
        for client, reasons in refused.items():
            assert any("evaluation" in x for x in reasons), (hostile_names[client], reasons)
    for r in (0, 1):  # scored with rounds 1 and 2's training: by the honest clients only
        assert history.rounds[r]["metrics"] == ref_history.rounds[r]["metrics"]
        assert any("evaluated by round" in e for e in history.rounds[r]["events"])
    _same_models(coordinator, ref_models)


PROBE = sorted(b for b in hostile.BEHAVIOURS if b.startswith("p-"))
PROBE_REASONS = {"p-model": "unexpected record 'model' (a measure-only reply carries no model)",
                 "p-no-summary": "missing record 'affinity'", "p-virtual": "virtual-step measurements this message did not ask for"}


def test_forged_probe_replies_are_refused_named_and_never_fused(tmp_path):
    """One dataset per client, 2 of 8 drawn a round (ColD Fusion's setting), every round measuring:
    each round adds the other holders as measure-only probes. Every client forges its probe replies (and
    trains honestly): each forged probe is refused and named, nothing of it reaches fusion (the
    models are bitwise those of the honest run: a probe's model, even one sent, is never read),
    and the round's trainers are the same."""
    from testbed.planted_mix import suite_name

    suite = suite_name(num_groups=3, tasks_per_group=(3, 3, 2), train_per_task=64, teacher_seed=0, tasks_per_client=1)
    settings = {"suite": suite, "mode": "all-in-one", "affinity-monitor": True, "rounds": 2, "fraction": 0.25, "min-clients": 8,
                "local-steps": 3, "batch-size": 16, "lr": 0.1, "plots": False, "evaluate-every": 2}

    def run(out, behaviours):
        configs = [{"partition-id": i, "num-partitions": 8} | ({"hostile": behaviours[i]} if behaviours else {})
                   for i in range(8)]
        cfg = RunConfig.from_dict(settings | {"out": str(out)})
        coordinator = Coordinator(InProcessGrid(8, node_configs=configs, client_app=hostile.app), cfg, log=lambda line: None)
        return coordinator, coordinator.run()

    ref_coordinator, ref_history = run(tmp_path / "reference", None)
    coordinator, history = run(tmp_path / "hostile", PROBE)
    for r in (1, 2):
        probed = ref_history.rounds[r]["compute"]["probes"]
        assert probed and not ref_history.rounds[r]["rejected"]
        refused = {e["client"]: e["reasons"] for e in history.rounds[r]["rejected"]}
        assert {e["kind"] for e in history.rounds[r]["rejected"]} == {"probe"}
        assert sorted(refused) == probed and history.rounds[r]["compute"]["probes"] == []
        for client, reasons in refused.items():
            behaviour = PROBE[int(client.split("-")[1])]
            want = PROBE_REASONS.get(behaviour, "affinity")
            assert any(want in x for x in reasons), (behaviour, reasons)
        assert history.rounds[r]["clients"] == ref_history.rounds[r]["clients"]
    _same_models(coordinator, {g.gid: g.tensors() for g in ref_coordinator.groups})
