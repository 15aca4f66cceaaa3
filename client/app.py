"""The fedmtl ClientApp: answers `query`, `train` and `evaluate` messages from the coordinator.

Everything a client needs to know (suite, which tasks of which group to train, local epochs,
learning rate, seeds) arrives in the message config, so the same code serves Flower's
simulation engine and real SuperNodes.
"""

from __future__ import annotations

import time
import zlib

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import client_name, client_suite, local_tasks
from client.timing import timing_mod
from client.training import TrainConfig, evaluate_multitask, resolve_device, train_multitask
from tasks import protocol as P
from tasks.packing import layout_from_entries, pack, unpack

app = ClientApp(mods=[timing_mod])  # records per-message timing only when FEDMTL_CLIENT_TIMING is set

# One process trains with a bounded number of threads: several simulated clients share a machine.
if torch.get_num_threads() > 4:
    torch.set_num_threads(4)


def _config(msg: Message) -> dict:
    return dict(msg.content[P.CONFIG])


def _data(context: Context, cfg: dict):
    return local_tasks(dict(context.node_config), str(cfg["suite"]), int(cfg.get("data-seed", 0)), str(cfg.get("data-root", "")))


def packed_update(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A trained state as the reply's ArrayRecord of flat arrays (`tasks.packing`), packed in the
    order of the model it was sent. No layout travels back: the coordinator knows it."""
    buffers, _ = pack(state)
    return ArrayRecord({dtype: Array(buf) for dtype, buf in buffers.items()})


def received_state(msg: Message, model_key: str = P.MODEL, layout_prefix: str = P.LAYOUT) -> dict[str, torch.Tensor]:
    """The packed model a message carries, unpacked (in the coordinator's order) with the layout
    its config holds under `layout_prefix`."""
    arrays = msg.content[model_key]
    layout = layout_from_entries(msg.content[P.CONFIG], layout_prefix)
    return unpack({dtype: array.numpy() for dtype, array in arrays.items()}, layout)


def _model(sent: dict[str, torch.Tensor], context: Context, cfg: dict, tasks: list[str]):
    """Rebuild the group's model for `tasks` and load the weights the coordinator sent.

    `sent` is the group's whole model (one record serves every client of the group); only the
    body and the heads of `tasks` are loaded. The suite is one this client trusts
    (`client.data.client_suite`).
    """
    model = client_suite(dict(context.node_config), str(cfg["suite"])).build_model(tasks)
    wanted = set(model.state_dict())
    model.load_state_dict({k: v for k, v in sent.items() if k in wanted}, strict=True)
    return model


def _node_seed(cfg: dict, context: Context) -> int:
    """A seed unique to (run seed, round, group, client) so clients do not draw identical batches."""
    # The client's name, not its node id: node ids change when a run is resumed, names do not.
    key = f"{cfg.get('seed', 0)}/{cfg.get('round', 0)}/{cfg.get('group', 0)}/{client_name(dict(context.node_config))}"
    return zlib.crc32(key.encode())


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report which tasks this client holds and how many examples each has (never the data)."""
    cfg = _config(msg)
    data = _data(context, cfg)
    names = sorted(data)
    # Exact Python types: Flower's ConfigRecord refuses numpy scalars and mixed-type lists.
    info = ConfigRecord(
        {
            "name": str(client_name(dict(context.node_config))),
            "device": str(resolve_device(str(cfg.get("device", "auto")))),
            "tasks": [str(t) for t in names],
            "train-examples": [int(data[t].num_train) for t in names],
            "test-examples": [int(data[t].num_test) for t in names],
        }
    )
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received group model on the tasks of the group this client holds (and,
    when the message asks, score it on the test split first: `P.EVALUATE_FIRST`). A probe
    (`P.MEASURE_ONLY`) only measures: its reply carries the gradient summaries and no model."""
    cfg = _config(msg)
    probe = bool(cfg.get(P.MEASURE_ONLY, False))
    data = _data(context, cfg)
    tasks = [t for t in cfg["tasks"] if t in data]
    if not tasks:
        raise ValueError(f"asked to train tasks {list(cfg['tasks'])} but this client holds {sorted(data)}")
    sent = received_state(msg)
    model = _model(sent, context, cfg, tasks)
    train_cfg = TrainConfig(
        local_epochs=int(cfg.get("local-epochs", 1)),
        local_steps=int(cfg.get("local-steps", 0)),
        batch_size=int(cfg.get("batch-size", 32)),
        lr=float(cfg.get("lr", 0.05)),
        momentum=float(cfg.get("momentum", 0.9)),
        optimizer=str(cfg.get("optimizer", "sgd")),
        seed=_node_seed(cfg, context),
        device=str(cfg.get("device", "auto")),
        measure_only=probe,
        **_affinity_config(cfg),
    )
    scores = None
    if cfg.get(P.EVALUATE_FIRST) and not probe:  # the model as received, before any training
        started = time.perf_counter()
        scores = _scores(model, data, tasks, cfg)
        scores[P.EVAL_SECONDS] = time.perf_counter() - started
    result = train_multitask(model, data, tasks, train_cfg)
    metrics: dict[str, float | int | list[float] | list[int]] = {
        P.TRAIN_SECONDS: result.train_seconds,
        P.AFFINITY_SECONDS: result.affinity_seconds,
        P.STEPS: result.steps,
    }
    for t in tasks:
        metrics[P.task_key(P.EXAMPLES, t)] = int(result.examples[t])
        metrics[P.task_key(P.LOSS, t)] = float(result.mean_loss[t])
    for signal, stats in (("lookahead", result.lookahead), ("cosine", result.cosine)):
        if stats is not None:
            metrics.update(stats.to_metrics(signal))
    records = {} if scores is None else {P.EVALUATION: MetricRecord(scores)}
    if result.gradients is not None and result.gradients.grads:
        arrays, grad_metrics = result.gradients.to_wire()
        metrics.update(grad_metrics)
        records[P.AFFINITY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if probe:
        return Message(RecordDict({P.METRICS: MetricRecord(metrics), **records}), reply_to=msg)
    # Packed in the order of the model it was sent: the coordinator expects exactly that layout.
    trained = model.state_dict()
    state = {k: trained[k] for k in sent if k in trained} | {k: v for k, v in trained.items() if k not in sent}
    content = RecordDict(
        {
            P.MODEL: packed_update(state),
            P.METRICS: MetricRecord(metrics),
            **records,
        }
    )
    return Message(content, reply_to=msg)


def _affinity_config(cfg: dict) -> dict:
    """TrainConfig's affinity fields from the train message: measure exactly what it asks for.

    A coordinator that predates `affinity-method` sent only `affinity-every`; it then means the
    virtual step, as it always did.
    """
    every = int(cfg.get(P.CFG_AFFINITY_EVERY, 0))
    legacy = "virtual-step" if every > 0 else "none"
    return {
        "affinity_method": str(cfg.get(P.CFG_AFFINITY_METHOD, legacy)),
        "affinity_every": every,
        "affinity_batch_size": int(cfg.get(P.CFG_AFFINITY_BATCH_SIZE, 0)),
        "affinity_steps": int(cfg.get(P.CFG_AFFINITY_STEPS, 10)),
        "affinity_sketch_dim": int(cfg.get(P.CFG_AFFINITY_SKETCH_DIM, 2048)),
        "affinity_sketch_seed": int(cfg.get(P.CFG_AFFINITY_SKETCH_SEED, 0)),
    }


def _scores(model, data, tasks: list[str], cfg: dict) -> dict[str, float]:
    """"accuracy.<task>", "loss.<task>", "examples.<task>" of `model` on this client's test split."""
    scores: dict[str, float] = {}
    for t, r in evaluate_multitask(model, data, tasks, device=str(cfg.get("device", "auto"))).items():
        for name, value in r.items():
            scores[P.task_key(name, t)] = value
    return scores


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Per-task accuracy and loss of the received models on this client's own test split.

    One message carries a packed model per task group this client holds tasks of
    ("model.<gid>", its layout under "layout.<gid>" and the tasks to evaluate under "tasks.<gid>"
    in the config).
    """
    cfg = _config(msg)
    data = _data(context, cfg)
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    for gid in cfg[P.EVAL_GROUPS]:
        tasks = [t for t in cfg[P.group_key("tasks", gid)] if t in data]
        if not tasks:
            continue
        sent = received_state(msg, P.group_key(P.MODEL, gid), P.group_key(P.LAYOUT, gid))
        metrics.update(_scores(_model(sent, context, cfg, tasks), data, tasks, cfg))
    metrics[P.EVAL_SECONDS] = time.perf_counter() - started
    return Message(RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)
