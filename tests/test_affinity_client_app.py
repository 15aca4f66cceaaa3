"""The ClientApp's train reply carries gradient summaries exactly as the contract says (in-process grid)."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.messaging import packed_records
from strategies.affinity import (
    AffinityStats, GradientReport, body_num_params, sketch_dim, validate_gradient_report, window_steps,
)
from tasks import protocol as P
from tasks.packing import layout_entries
from tasks.registry import load_suite
from testbed.inprocess import InProcessGrid


def _train(grid: InProcessGrid, node: int, tasks: list[str], extra: dict) -> Message:
    suite = load_suite("planted")
    model = suite.build_model(tasks, seed=0)
    config = {"suite": "planted", "data-root": "", "data-seed": 0, "device": "cpu", "seed": 0, "round": 1, "group": 0,
              "tasks": tasks, "local-epochs": 1, "local-steps": 6, "batch-size": 16, "lr": 0.1, "momentum": 0.9} | extra
    arrays, layout = packed_records(model.state_dict())
    content = RecordDict({P.MODEL: arrays, P.CONFIG: ConfigRecord(config | layout_entries(layout, P.LAYOUT))})
    msg = Message(content, dst_node_id=node, message_type=P.TRAIN, group_id="round-1.group-0")
    (reply,) = grid.send_and_receive([msg], timeout=120)
    assert not reply.has_error(), reply.error
    return reply


def test_train_reply_carries_summaries_and_counts_as_the_contract_says() -> None:
    grid = InProcessGrid(3)
    node = sorted(grid.get_node_ids())[0]
    suite = load_suite("planted")
    held = sorted(suite.load_partition(0, 3, 0, ""))
    reply = _train(grid, node, held, {P.CFG_AFFINITY_METHOD: "gradients", P.CFG_AFFINITY_STEPS: 4 * len(held),
                                                  P.CFG_AFFINITY_SKETCH_DIM: 64, P.CFG_AFFINITY_SKETCH_SEED: 12345})
    assert P.AFFINITY in reply.content
    arrays = {k: v.numpy() for k, v in reply.content[P.AFFINITY].items()}
    metrics = dict(reply.content[P.METRICS])
    report = GradientReport.from_wire(arrays, metrics, client="partition-0")
    dim = sketch_dim(body_num_params(suite.build_model(held[:1])), 64)
    assert sorted(report.tasks) == held and all(a.shape == (dim,) for a in arrays.values())
    assert report.seed == 12345 and report.steps == {t: 4 for t in held} and report.examples == {t: 64 for t in held}
    assert window_steps(4 * len(held), len(held), 6) == 4
    assert validate_gradient_report(report, held, max_steps=4, dim=dim, batch_size=16, expected_seed=12345) == []
    assert not AffinityStats.from_metrics(metrics, "lookahead").tasks  # no virtual step was asked for


def test_none_measures_nothing_and_legacy_config_means_virtual_step() -> None:
    grid = InProcessGrid(3)
    node = sorted(grid.get_node_ids())[0]
    held = sorted(load_suite("planted").load_partition(0, 3, 0, ""))
    reply = _train(grid, node, held, {P.CFG_AFFINITY_METHOD: "none", P.CFG_AFFINITY_EVERY: 2})
    metrics = dict(reply.content[P.METRICS])
    assert P.AFFINITY not in reply.content and not any(k.startswith(("affinity-steps.", "lookahead.")) for k in metrics)
    legacy = dict(_train(grid, node, held, {P.CFG_AFFINITY_EVERY: 2}).content[P.METRICS])
    assert AffinityStats.from_metrics(legacy, "lookahead").counts.max() == 3
