"""A hostile ClientApp: replies an honest client would never send, for tests and benchmarks.

Unlike `testbed.faults` (the honest client with broken updates), this app forges whole replies:
missing or unexpected records, wrong types, lists of different lengths, oversized arrays,
counts it never had, affinity it never measured, metrics out of range, names it does not own.
It answers honestly except where its node config says otherwise:

    hostile = "BEHAVIOUR[,BEHAVIOUR...]"     (see BEHAVIOURS; empty = honest)
    hostile-round = R                       only in round R (absent or 0: every round)
    steal-name = NAME                       with `q-steal-name`: the name it claims

A behaviour's prefix says which reply it forges: `q-` query, `t-` train, `e-` evaluate, `v-` the
test scores a train reply carries when the message asked for them (`evaluate-in-train`).
"""

from __future__ import annotations

import importlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client import app as honest
from strategies.affinity import GradientReport
from tasks import protocol as P
from tasks.packing import Layout, unpack
from testbed.hostile_affinity import forge_gradient_report

BEHAVIOURS = {
    # every message
    "x-crash": "raises on every message (never joins: a reference for runs without it)",
    # query
    "q-no-info": "query reply without its info record",
    "q-lengths": "task and count lists of different lengths",
    "q-huge-counts": "declares 10^12 training examples",
    "q-types": "task names as numbers, counts as strings",
    "q-steal-name": "claims another client's name (steal-name)",
    "q-long-name": "a 100,000-character name",
    # train
    "t-no-model": "train reply without its model record (its layout still there)",
    "t-no-metrics": "train reply without its metrics record",
    "t-extra-record": "an extra, unexpected record",
    "t-extra-head": "a head for a task it was not asked to train",
    "t-extra-array": "an array the model does not have",
    "t-shape": "a body tensor of the wrong shape",
    "t-dtype": "the body in float64",
    "t-oversized": "an array whose bytes are 100x what its shape needs",
    "t-nan": "NaN in the body",
    "t-huge": "an update scaled by 1e8",
    "t-inflate-examples": "claims 10^9 examples (more than it declared)",
    "t-float-examples": "example counts as floats",
    "t-negative-seconds": "negative training time",
    "t-affinity-nan": "NaN affinity sums",
    "t-affinity-counts": "affinity counts far above the steps it ran",
    "t-affinity-foreign": "affinity for tasks it does not hold",
    "t-affinity-range": "cosine affinity of 50",
    "t-grad-nan": "NaN in a gradient summary (a summary nobody asked for, in rounds that measure nothing)",
    "t-grad-huge": "gradient summaries scaled by 1e8",
    "t-grad-foreign": "a gradient summary for a task it does not train",
    "t-grad-counts": "steps and examples behind its summaries inflated 1000x",
    "t-grad-dim": "gradient summaries one entry short",
    "t-grad-seed": "summaries sketched with another seed than the round's",
    "t-many-metrics": "100,000 metric entries",
    "t-wrong-reply": "a reply that answers no message",
    "t-reordered": "its records, metrics and arrays in another order (valid: must fuse correctly)",
    # train, the packed model's layout (tasks.packing) and flat arrays: lies on the wire
    "t-no-layout": "the packed model without a layout record (valid: the coordinator knows the layout)",
    "t-layout-length": "layout lists of different lengths (one dtype short)",
    "t-layout-duplicate": "a tensor name listed twice in the layout",
    "t-layout-huge": "a layout shape claiming 10^12 elements",
    "t-layout-type": "layout dims as strings",
    "t-layout-foreign": "the layout names a foreign head instead of its own (arrays unchanged)",
    "t-layout-order": "the model packed in another order than the one it was sent",
    "t-layout-negative": "a negative dimension (its neighbour larger: the sizes still add up)",
    "t-wire-dtype": "the float32 array's bytes declared as float64",
    "t-npy-header": "the flat array's npy header claims 10^12 elements",
    "t-eval-unasked": "test scores in a train reply that asked for none",
    # probes (measure-only train messages, `affinity-coverage = "probe"`); honest to other messages
    "p-model": "a probe reply that carries a model (its received weights x 100), to be fused",
    "p-no-summary": "a probe reply without its gradient summaries",
    "p-virtual": "virtual-step affinity in a probe reply",
    "p-grad-huge": "a probe's gradient summaries scaled by 1e8",
    "p-grad-dim": "a probe's gradient summaries one entry short",
    "p-grad-seed": "a probe's summaries sketched with another seed than the round's",
    "p-grad-counts": "steps and examples behind a probe's summaries inflated 1000x",
    "p-grad-foreign": "a probe's gradient summary for a task it was not asked to measure",
    # train, with the received model's test scores asked for (run-config `evaluate-in-train`)
    "v-missing": "no scores record, though the message asked for one",
    "v-type": "the scores as a ConfigRecord",
    "v-accuracy": "accuracy 2.0",
    "v-foreign": "scores for a task it was not asked to train",
    "v-examples": "claims 10^9 test examples",
    "v-missing-task": "no scores for one of its tasks",
    # evaluate
    "e-no-metrics": "evaluate reply without metrics",
    "e-accuracy": "accuracy 2.0",
    "e-negative-loss": "loss -5",
    "e-foreign-task": "metrics for a task it was not asked about",
    "e-inflate-examples": "claims 10^9 test examples",
    "e-many-metrics": "100,000 metric entries",
}


PLAN_MODULE = "testbed.hostile_plan"  # written by `app_folder`: app bundles carry only *.py files


def _node_settings(context: Context) -> dict:
    """This node's hostile settings: its node config, or (simulation, where a node config holds only
    partition-id and num-partitions) the plan file shipped inside the app folder, by partition."""
    node = dict(context.node_config)
    if "hostile" not in node:
        try:
            plan = importlib.import_module(PLAN_MODULE).PLAN
        except ModuleNotFoundError:
            plan = {}
        node |= plan.get(str(node.get("partition-id")), {})
    return node


def _behaviours(context: Context, msg: Message) -> set[str]:
    node = _node_settings(context)
    wanted = {b.strip() for b in str(node.get("hostile", "") or "").split(",") if b.strip()}
    unknown = wanted - set(BEHAVIOURS)
    if unknown:
        raise ValueError(f"unknown hostile behaviours {sorted(unknown)}; known: {sorted(BEHAVIOURS)}")
    only = int(node.get("hostile-round", 0) or 0)
    this = int(dict(msg.content[P.CONFIG]).get("round", 0)) if P.CONFIG in msg.content else 0
    return wanted if not only or only == this else set()


def _maybe_crash(evil: set[str]) -> None:
    if "x-crash" in evil:
        raise RuntimeError("hostile client: x-crash")


def _rebuild(reply: Message, msg: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=msg)


app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    evil = _behaviours(context, msg)
    _maybe_crash(evil)
    reply = honest.query(msg, context)
    info = dict(reply.content[P.INFO])
    if "q-no-info" in evil:
        return _rebuild(reply, msg, {P.CONFIG: ConfigRecord({"hello": "world"})})
    if "q-lengths" in evil:
        info["train-examples"] = info["train-examples"][:-1] or [1, 2]
    if "q-huge-counts" in evil:
        info["train-examples"] = [10**12 for _ in info["train-examples"]]
    if "q-types" in evil:
        info["tasks"] = list(range(len(info["tasks"])))
        info["train-examples"] = [str(n) for n in info["train-examples"]]
    if "q-steal-name" in evil:
        info["name"] = str(_node_settings(context).get("steal-name", "partition-0"))
    if "q-long-name" in evil:
        info["name"] = "x" * 100_000
    return _rebuild(reply, msg, {P.INFO: ConfigRecord(info)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    evil = _behaviours(context, msg)
    _maybe_crash(evil)
    reply = honest.train(msg, context)
    if not evil:
        return reply
    if "t-wrong-reply" in evil:
        other = Message(RecordDict(), dst_node_id=msg.metadata.dst_node_id, message_type=P.TRAIN)
        other.metadata.__dict__["_message_id"] = "not-a-message-the-coordinator-sent"
        return Message(reply.content, reply_to=other)
    if dict(msg.content[P.CONFIG]).get(P.MEASURE_ONLY):
        return _forged_probe(evil, reply, msg)
    metrics = dict(reply.content[P.METRICS])
    state = reply_state(reply, msg)
    body_key = next(k for k in state if k.startswith("body.") and state[k].is_floating_point())
    tasks = list(dict(msg.content[P.CONFIG])["tasks"])
    if "t-extra-head" in evil:
        head = {k: v for k, v in state.items() if k.startswith(f"heads.{tasks[0]}.")}
        state |= {k.replace(f"heads.{tasks[0]}.", "heads.intruder."): v.clone() for k, v in head.items()}
    if "t-extra-array" in evil:
        state["body.backdoor"] = torch.ones(4)
    if "t-shape" in evil:
        state[body_key] = torch.zeros(3, 3)
    if "t-dtype" in evil:
        state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    if "t-nan" in evil:
        state[body_key] = torch.full_like(state[body_key], float("nan"))
    if "t-huge" in evil:
        sent = honest.received_state(msg)
        state = {k: sent[k] + 1e8 * (v - sent[k]) if k.startswith("body.") and v.is_floating_point() else v
                 for k, v in state.items()}
    if "t-layout-order" in evil:
        state = dict(reversed(list(state.items())))
    arrays, layout = _forged_packing(evil, state, tasks)
    records: dict = {P.MODEL: arrays, P.LAYOUT: layout, P.METRICS: None}
    if P.AFFINITY in reply.content:
        records[P.AFFINITY] = reply.content[P.AFFINITY]
    grad_forgery = next((b[len("t-grad-"):] for b in evil if b.startswith("t-grad-")), None)
    if grad_forgery:
        records[P.AFFINITY], metrics = _forged_summaries(grad_forgery, records.get(P.AFFINITY), metrics, tasks)
    if "t-inflate-examples" in evil:
        metrics |= {P.task_key(P.EXAMPLES, t): 10**9 for t in tasks}
    if "t-float-examples" in evil:
        metrics |= {P.task_key(P.EXAMPLES, t): 100.0 for t in tasks}
    if "t-negative-seconds" in evil:
        metrics[P.TRAIN_SECONDS] = -1.0
    pair = (tasks[0], tasks[-1])
    if "t-affinity-nan" in evil:
        metrics[f"lookahead.sum.{pair[0]}.{pair[1]}"] = float("nan")
        metrics[f"lookahead.count.{pair[0]}.{pair[1]}"] = 1
    if "t-affinity-counts" in evil:
        metrics[f"lookahead.sum.{pair[0]}.{pair[1]}"] = 1e6
        metrics[f"lookahead.count.{pair[0]}.{pair[1]}"] = 10**6
    if "t-affinity-foreign" in evil:
        metrics["cosine.sum.ghost_a.ghost_b"] = -1.0
        metrics["cosine.count.ghost_a.ghost_b"] = 1
    if "t-affinity-range" in evil:
        metrics[f"cosine.sum.{pair[0]}.{pair[1]}"] = 50.0
        metrics[f"cosine.count.{pair[0]}.{pair[1]}"] = 1
    if "t-many-metrics" in evil:
        metrics |= {f"junk.{i}": float(i) for i in range(100_000)}
    records[P.METRICS] = MetricRecord(metrics)
    if P.EVALUATION in reply.content:
        records[P.EVALUATION] = _forged_scores(evil, dict(reply.content[P.EVALUATION]), tasks)
    elif "t-eval-unasked" in evil:
        records[P.EVALUATION] = MetricRecord({P.task_key(name, t): value for t in tasks
                                              for name, value in ((P.ACCURACY, 0.5), (P.LOSS, 1.0), (P.EXAMPLES, 1.0))})
    if "v-missing" in evil:
        records.pop(P.EVALUATION, None)
    if "t-no-model" in evil:
        del records[P.MODEL]
    if "t-no-layout" in evil:
        del records[P.LAYOUT]
    if "t-no-metrics" in evil:
        del records[P.METRICS]
    if "t-extra-record" in evil:
        records["payload"] = ArrayRecord({"x": torch.zeros(1000)})
    if "t-reordered" in evil:
        records = dict(reversed(list(records.items())))
        records[P.METRICS] = MetricRecord(dict(reversed(list(metrics.items()))))
        records[P.MODEL] = ArrayRecord(dict(reversed(list(records[P.MODEL].items()))))
    return _rebuild(reply, msg, records)


def _forged_probe(evil: set[str], reply: Message, msg: Message) -> Message:
    """The honest reply to a probe (metrics and gradient summaries, no model), forged."""
    records = dict(reply.content.items())
    metrics = dict(records[P.METRICS])
    tasks = list(dict(msg.content[P.CONFIG])["tasks"])
    grad_forgery = next((b[len("p-grad-"):] for b in evil if b.startswith("p-grad-")), None)
    if grad_forgery:
        records[P.AFFINITY], metrics = _forged_summaries(grad_forgery, records.get(P.AFFINITY), metrics, tasks)
    if "p-virtual" in evil:
        metrics |= {f"cosine.sum.{tasks[0]}.{tasks[-1]}": 0.5, f"cosine.count.{tasks[0]}.{tasks[-1]}": 1}
    records[P.METRICS] = MetricRecord(metrics)
    if "p-model" in evil:
        sent = honest.received_state(msg)
        records[P.MODEL] = honest.packed_update({k: v * 100 if v.is_floating_point() else v for k, v in sent.items()})
    if "p-no-summary" in evil:
        records.pop(P.AFFINITY, None)
    return _rebuild(reply, msg, records)


def _forged_scores(evil: set[str], scores: dict, tasks: list[str]) -> MetricRecord | ConfigRecord:
    """The honest test scores of the received model (`P.EVALUATION`), forged."""
    if "v-accuracy" in evil:
        scores |= {P.task_key(P.ACCURACY, t): 2.0 for t in tasks}
    if "v-foreign" in evil:
        scores |= {"accuracy.ghost": 1.0, "loss.ghost": 0.0, "examples.ghost": 10.0}
    if "v-examples" in evil:
        scores |= {P.task_key(P.EXAMPLES, t): 1e9 for t in tasks}
    if "v-missing-task" in evil:
        scores = {k: v for k, v in scores.items() if not k.endswith(f".{tasks[0]}")}
    return ConfigRecord(scores) if "v-type" in evil else MetricRecord(scores)


def reply_state(reply: Message, msg: Message) -> dict[str, torch.Tensor]:
    """The update an honest train reply to `msg` carries, read as the coordinator reads it: with
    the layout of the model it was sent, narrowed to the body and the heads of the asked tasks."""
    sent = honest.received_state(msg)
    tasks = list(dict(msg.content[P.CONFIG])["tasks"])
    kept = {k: v for k, v in sent.items() if k.startswith("body.") or any(k.startswith(f"heads.{t}.") for t in tasks)}
    return unpack({dtype: a.numpy() for dtype, a in reply.content[P.MODEL].items()}, Layout.of(kept))


def _forged_packing(evil: set[str], state: dict[str, torch.Tensor], tasks: list[str]) -> tuple[ArrayRecord, ConfigRecord]:
    """`state` packed as the honest client packs it, plus a layout record (a reply may carry one:
    it is then checked), then that layout or the flat arrays forged."""
    arrays = honest.packed_update(state)
    layout = Layout.of(state).to_wire()
    if "t-layout-length" in evil:
        layout["dtypes"] = layout["dtypes"][:-1]
    if "t-layout-duplicate" in evil:
        layout["names"][1] = layout["names"][0]
    if "t-layout-huge" in evil:  # the first tensor that has dims claims 10^12 elements (its other dims 1)
        i = next(k for k, r in enumerate(layout["ranks"]) if r)
        at, rank = sum(layout["ranks"][:i]), layout["ranks"][i]
        layout["dims"][at:at + rank] = [10**12] + [1] * (rank - 1)
    if "t-layout-type" in evil:
        layout["dims"] = [str(d) for d in layout["dims"]]
    if "t-layout-foreign" in evil:
        own = f"heads.{tasks[0]}."
        layout["names"] = [n.replace(own, "heads.ghost.", 1) if n.startswith(own) else n for n in layout["names"]]
    if "t-layout-negative" in evil:  # two rank-1 tensors: sizes (a, b) claimed as (-1, a + b + 1)
        i, j = [k for k, r in enumerate(layout["ranks"]) if r == 1][:2]
        at = [sum(layout["ranks"][:k]) for k in (i, j)]
        a, b = layout["dims"][at[0]], layout["dims"][at[1]]
        layout["dims"][at[0]], layout["dims"][at[1]] = -1, a + b + 1
    f32 = arrays.get("float32")  # t-dtype leaves none
    if f32 is None:
        return arrays, ConfigRecord(layout)
    if "t-oversized" in evil:
        arrays["float32"] = Array(dtype=f32.dtype, shape=f32.shape, stype=f32.stype, data=f32.data * 100)
    if "t-wire-dtype" in evil:
        arrays["float32"] = Array(dtype="float64", shape=(f32.shape[0] // 2,), stype=f32.stype, data=f32.data)
    if "t-npy-header" in evil:
        payload = np.load(io.BytesIO(f32.data))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        arrays["float32"] = Array(dtype=f32.dtype, shape=f32.shape, stype=f32.stype,
                                  data=header.getvalue() + payload.tobytes())
    return arrays, ConfigRecord(layout)


def _forged_summaries(kind: str, record: ArrayRecord | None, metrics: dict, tasks: list[str]) -> tuple[ArrayRecord, dict]:
    """The honest gradient summaries forged (`testbed.hostile_affinity`), or, when the message
    asked for none, summaries of random numbers it was never asked for."""
    if record is not None:
        arrays = {k: v.numpy() for k, v in record.items()}
        report = GradientReport.from_wire(arrays, metrics)
    else:
        rng = np.random.default_rng(0)
        report = GradientReport("", {t: rng.standard_normal(64).astype(np.float32) for t in tasks},
                                {t: 1 for t in tasks}, {t: 1 for t in tasks}, {t: 1.0 for t in tasks}, seed=0)
    forged = forge_gradient_report(kind, report, list(tasks) + ["ghost"])  # "foreign" claims a task it never had
    arrays, more = forged.to_wire()
    keep = {k: v for k, v in metrics.items()
            if not k.startswith((P.AFFINITY_STEPS + ".", P.AFFINITY_EXAMPLES + ".", P.AFFINITY_LOSS + "."))}
    return ArrayRecord({k: Array(v) for k, v in arrays.items()}), keep | more


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    evil = _behaviours(context, msg)
    _maybe_crash(evil)
    reply = honest.evaluate(msg, context)
    if not evil:
        return reply
    metrics = dict(reply.content[P.METRICS])
    tasks = [k.partition(".")[2] for k in metrics if k.startswith(P.ACCURACY + ".")]
    if "e-no-metrics" in evil:
        return _rebuild(reply, msg, {P.CONFIG: ConfigRecord({"x": 1})})
    if "e-accuracy" in evil:
        metrics |= {P.task_key(P.ACCURACY, t): 2.0 for t in tasks}
    if "e-negative-loss" in evil:
        metrics |= {P.task_key(P.LOSS, t): -5.0 for t in tasks}
    if "e-foreign-task" in evil:
        metrics |= {"accuracy.ghost": 1.0, "loss.ghost": 0.0, "examples.ghost": 10.0}
    if "e-inflate-examples" in evil:
        metrics |= {P.task_key(P.EXAMPLES, t): 1e9 for t in tasks}
    if "e-many-metrics" in evil:
        metrics |= {f"junk.{i}": float(i) for i in range(100_000)}
    return _rebuild(reply, msg, {P.METRICS: MetricRecord(metrics)})


def honest_twin(behaviour: str) -> bool:
    """Behaviours whose reply is valid (the coordinator must accept and use it)."""
    return behaviour in ("t-reordered", "t-no-layout")


def app_folder(project: Path, dst: Path, plan: dict[int, dict]) -> Path:
    """A copy of the Flower app whose ClientApp is this hostile one, with `plan` (partition ->
    {"hostile": ..., ...}) shipped beside it: for runs through real Flower processes (the
    simulation engine, or SuperNodes) where node configs cannot carry the behaviours."""
    dst = Path(dst)
    for pkg in ("fedmtl", "coordinator", "client", "launch", "strategies", "tasks", "common", "testbed"):
        shutil.copytree(Path(project) / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data"))
    if (Path(project) / "tasks" / "data").is_dir():
        shutil.copytree(Path(project) / "tasks" / "data", dst / "tasks" / "data")
    pyproject = (Path(project) / "pyproject.toml").read_text()
    pyproject = pyproject.replace('clientapp = "client.app:app"', 'clientapp = "testbed.hostile:app"')
    assert 'clientapp = "testbed.hostile:app"' in pyproject
    (dst / "pyproject.toml").write_text(pyproject)
    (dst / "README.md").write_text("hostile fedmtl app (tests only)\n")
    plan_text = json.dumps({str(k): v for k, v in plan.items()}, indent=1)
    (dst / "testbed" / "hostile_plan.py").write_text(f'"""Hostile behaviours by partition (tests only)."""\n\nPLAN = {plan_text}\n')
    return dst

