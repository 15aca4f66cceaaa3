"""ServerApp: Flower's FedAvg over the whole multi-task model, every client every round.

Evaluation matches `fedmtl simulate`'s defaults: every client evaluates the initial model
(round 0) and the fused model after every round. One line per finished round lets the
benchmark time rounds; the final metrics go to `<out>/plain_result.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tasks.registry import load_suite

app = ServerApp()


class RoundLineFedAvg(FedAvg):
    """FedAvg that prints one line when a round's evaluation is in (nothing else changes)."""

    def __init__(self, rounds: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds = rounds
        self.metrics: dict[int, dict] = {}
        self.t0 = time.perf_counter()

    def aggregate_evaluate(self, server_round, replies):
        agg = super().aggregate_evaluate(server_round, replies)
        self.metrics[server_round] = dict(agg or {})
        acc = self.metrics[server_round].get("accuracy", float("nan"))
        print(f"plain-fedavg round {server_round}/{self.rounds} | mean acc {acc:.3f} | "
              f"{time.perf_counter() - self.t0:.1f}s", flush=True)
        return agg


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    rounds, nodes = int(cfg["num-server-rounds"]), int(cfg["min-nodes"])
    model = load_suite(str(cfg["suite"])).build_model(seed=int(cfg["seed"]))
    arrays = ArrayRecord(model.state_dict())
    strategy = RoundLineFedAvg(rounds, fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes,
                               min_evaluate_nodes=nodes, min_available_nodes=nodes)
    train_config = ConfigRecord({k: cfg[k] for k in ("suite", "data-root", "data-seed", "local-epochs", "local-steps",
                                                     "batch-size", "lr", "momentum", "seed")})
    evaluate_config = ConfigRecord({k: cfg[k] for k in ("suite", "data-root", "data-seed")})
    # Round 0: the initial model on every client, as fedmtl evaluates it.
    replies = grid.send_and_receive(strategy.configure_evaluate(0, arrays, ConfigRecord(dict(evaluate_config)), grid))
    strategy.aggregate_evaluate(0, replies)
    strategy.start(grid, arrays, num_rounds=rounds, train_config=train_config, evaluate_config=evaluate_config)
    if cfg.get("out"):
        out = Path(str(cfg["out"]))
        out.mkdir(parents=True, exist_ok=True)
        (out / "plain_result.json").write_text(json.dumps({"rounds": rounds, "metrics": strategy.metrics}, indent=1))
    print(f"plain-fedavg done: {rounds} rounds", flush=True)
