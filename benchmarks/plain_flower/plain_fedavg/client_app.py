"""ClientApp: fedmtl's own local training and evaluation, on the client's own partition.

The same data (`client.data.local_tasks`), model (`suite.build_model`), multi-task SGD
(`client.training.train_multitask`) and per-client seed as fedmtl's ClientApp, so both
frameworks do the same client work; only what surrounds it differs.
"""

from __future__ import annotations

import zlib

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import client_name, local_tasks
from client.training import TrainConfig, evaluate_multitask, train_multitask
from tasks.registry import load_suite

app = ClientApp()

if torch.get_num_threads() > 4:  # as fedmtl's ClientApp
    torch.set_num_threads(4)


def _setup(msg: Message, context: Context):
    cfg = dict(msg.content["config"])
    data = local_tasks(dict(context.node_config), str(cfg["suite"]), int(cfg["data-seed"]), str(cfg["data-root"]))
    model = load_suite(str(cfg["suite"])).build_model()
    state = {k: torch.from_numpy(v.numpy()) for k, v in msg.content["arrays"].items()}
    model.load_state_dict(state, strict=True)
    return cfg, data, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, data, model = _setup(msg, context)
    tasks = [t for t in load_suite(str(cfg["suite"])).task_names if t in data]  # fedmtl's order: the same batches
    # fedmtl's client seed for group 0 (all-in-one): the same batches in both frameworks.
    key = f"{cfg['seed']}/{cfg['server-round']}/0/{client_name(dict(context.node_config))}"
    result = train_multitask(model, data, tasks, TrainConfig(
        local_epochs=int(cfg["local-epochs"]), local_steps=int(cfg["local-steps"]), batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]), momentum=float(cfg["momentum"]), seed=zlib.crc32(key.encode()), device="cpu"))
    metrics = MetricRecord({"num-examples": sum(result.examples.values()), "train-seconds": result.train_seconds})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, data, model = _setup(msg, context)
    results = evaluate_multitask(model, data, sorted(data), device="cpu")
    n = sum(r["examples"] for r in results.values())
    metrics = MetricRecord({
        "num-examples": int(n),
        "accuracy": sum(r["accuracy"] * r["examples"] for r in results.values()) / n,
        "loss": sum(r["loss"] * r["examples"] for r in results.values()) / n,
    })
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
