"""One seed of the ColD Fusion experiment: fuse, then evaluate the fused body against the original.

`run_seed` returns a JSON-ready dict (see `report.py` for how seeds are aggregated):
  {"seed", "config", "fusion": {"iterations": [...], "seconds_per_iteration", "body_shift"},
   "eval": {"plain": {dataset: {"split", "probe", "finetune", ["fewshot_probe", "fewshot_finetune"]}}},
   "original": {dataset: {same keys}}, "curve": [{"iteration", "probe": {d: acc}, "fewshot_probe": {d: acc}}],
   "seen_curve": [{"iteration", "accuracy": {d: acc}}] (each seen dataset's own head on its test split),
   "grouped": {...} (when a grouping is asked for), "seconds": {...}}
"""

from __future__ import annotations

import time
from typing import Callable

from client.training import TrainConfig, evaluate_multitask
from experiments.coldfusion.config import ColdFusionConfig
from experiments.coldfusion.evaluate import Embedder, fewshot, fewshot_indices, finetune_accuracy, probe
from experiments.coldfusion.plain import body_distance, run_plain
from strategies.fusion import State
from tasks.models import join_state
from tasks.suite import Suite, TaskData
from tasks.text.suite import TEXT_TASKS, dataset, make_text_suite

# progress(units_done, description)
Progress = Callable[[int, str], None]


def work_units(cfg: ColdFusionConfig) -> int:
    """How many progress steps one seed takes (for the progress bar)."""
    n_all = len(cfg.seen) + len(cfg.held_out)
    curve_points = len(curve_iterations(cfg))
    per_body = 2 * n_all + 2 * len(cfg.held_out)  # probe + finetune per dataset, few-shot probe + finetune
    bodies = 2 + (1 if cfg.grouping != "none" else 0)
    grouped = cfg.iterations if cfg.grouping != "none" else 0
    return cfg.iterations * cfg.contributors + curve_points * len(cfg.held_out) + bodies * per_body + grouped


def curve_iterations(cfg: ColdFusionConfig) -> list[int]:
    return sorted({*range(cfg.curve_every, cfg.iterations + 1, cfg.curve_every), cfg.iterations})


def train_config(cfg: ColdFusionConfig, steps: int) -> TrainConfig:
    return TrainConfig(local_steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer, device=cfg.device)


def load_datasets(cfg: ColdFusionConfig) -> dict[str, TaskData]:
    """Every dataset of the experiment (train and test parts), tokenized once per process."""
    suite_cfg = cfg.suite_config()
    return {t: dataset(t, suite_cfg, seed=cfg.data_seed) for t in (*cfg.seen, *cfg.held_out)}


def evaluate_body(
    suite: Suite, body: State, cfg: ColdFusionConfig, data: dict[str, TaskData], seed: int, tick: Progress,
    label: str, bodies_for: dict[str, State] | None = None,
) -> dict[str, dict]:
    """Probe and finetune `body` on every dataset (few-shot on held-out ones); `bodies_for[d]`
    overrides the body for dataset d (grouped ColD Fusion: each seen dataset's own group body)."""
    out: dict[str, dict] = {}
    embedders: dict[int, Embedder] = {}

    def embedder_for(b: State) -> Embedder:
        if id(b) not in embedders:
            embedders[id(b)] = Embedder(suite, b, cfg.device)
        return embedders[id(b)]

    for task, d in data.items():
        b = (bodies_for or {}).get(task, body)
        held = task in cfg.held_out
        n_classes = TEXT_TASKS[task].num_classes
        row = {"split": "held_out" if held else "seen"}
        row["probe"] = probe(embedder_for(b), task, d, cfg.probe_c)
        tick(1, f"{label}: probe {task}")
        row["finetune"] = finetune_accuracy(suite, b, task, n_classes, d, train_config(cfg, cfg.finetune_steps), seed)
        tick(1, f"{label}: finetune {task}")
        if held:
            idx = fewshot_indices(d, cfg.fewshot_labels, seed, task)
            row["fewshot_probe"] = probe(embedder_for(b), task, d, cfg.probe_c, subset=idx)
            tick(1, f"{label}: few-shot probe {task}")
            row["fewshot_finetune"] = finetune_accuracy(suite, b, task, n_classes, fewshot(d, idx),
                                                        train_config(cfg, cfg.fewshot_steps), seed)
            tick(1, f"{label}: few-shot finetune {task}")
        out[task] = row
    return out


def seen_accuracy(suite: Suite, body: State, heads: dict[str, State], seen: dict[str, TaskData],
                  device: str = "cpu") -> dict[str, float]:
    """Each seen dataset's test accuracy with the shared body and its contributor's head: what the
    federation itself serves (no probe, no finetune), the quantity the grouped round loop
    records every round, so the two compare per unit of client compute."""
    tasks = [t for t in seen if t in heads]
    model = suite.build_model(tasks)
    model.load_state_dict(join_state(body, {t: heads[t] for t in tasks}), strict=True)
    return {t: r["accuracy"] for t, r in evaluate_multitask(model, seen, tasks, batch_size=64, device=device).items()}


def run_seed(cfg: ColdFusionConfig, seed: int, tick: Progress = lambda n, d: None,
             on_iteration: Callable[[int, State], None] | None = None) -> tuple[dict, State, dict[str, State]]:
    """Plain ColD Fusion for one seed, its held-out curve, and the evaluation of both bodies.

    Returns (result dict, fused body, fused heads)."""
    started = time.perf_counter()
    suite = make_text_suite(cfg.suite_config())
    data = load_datasets(cfg)
    seen = {t: data[t] for t in cfg.seen}
    held = {t: data[t] for t in cfg.held_out}
    at = set(curve_iterations(cfg))
    curve: list[dict] = []
    seen_curve: list[dict] = []
    original: dict[str, State] = {}
    curve_seconds = 0.0

    def after_iteration(it: int, body: State, heads: dict[str, State]) -> None:
        nonlocal curve_seconds
        if it == 0:
            original["body"] = {k: v.clone() for k, v in body.items()}
        if on_iteration:
            on_iteration(it, body)
        t0 = time.perf_counter()
        seen_curve.append({"iteration": it, "accuracy": seen_accuracy(suite, body, heads, seen, cfg.device)})
        curve_seconds += time.perf_counter() - t0
        if it not in at:
            return
        t0 = time.perf_counter()
        emb = Embedder(suite, body, cfg.device)
        point = {"iteration": it, "probe": {}, "fewshot_probe": {}}
        for task, d in held.items():
            point["probe"][task] = probe(emb, task, d, cfg.probe_c)
            point["fewshot_probe"][task] = probe(emb, task, d, cfg.probe_c,
                                                 subset=fewshot_indices(d, cfg.fewshot_labels, seed, task))
            tick(1, f"seed {seed}: held-out probe after iteration {it}")
        curve.append(point)
        curve_seconds += time.perf_counter() - t0

    def contributor_done(it: int, task: str) -> None:
        tick(1, f"seed {seed}: iteration {it}/{cfg.iterations}, contributor {task}")

    t0 = time.perf_counter()
    run = run_plain(suite, seen, cfg.iterations, cfg.contributors, train_config(cfg, cfg.local_steps), seed,
                    on_contributor=contributor_done, on_iteration=after_iteration)
    fusion_seconds = time.perf_counter() - t0 - curve_seconds
    t0 = time.perf_counter()
    orig_eval = evaluate_body(suite, original["body"], cfg, data, seed, tick, f"seed {seed}: original")
    plain_eval = evaluate_body(suite, run.body, cfg, data, seed, tick, f"seed {seed}: ColD")
    # Curve point 0 is the original body's held-out probe, from the evaluation just made.
    curve.insert(0, {"iteration": 0,
                     "probe": {t: orig_eval[t]["probe"] for t in cfg.held_out},
                     "fewshot_probe": {t: orig_eval[t]["fewshot_probe"] for t in cfg.held_out}})
    result = {
        "seed": seed,
        "config": cfg.fusion_key(),
        "fusion": {"iterations": run.iterations, "seconds_per_iteration": run.seconds_per_iteration,
                   "body_shift": body_distance(original["body"], run.body)},
        "original": orig_eval,
        "eval": {"plain": plain_eval},
        "curve": curve,
        "seen_curve": seen_curve,
        "seconds": {"fusion": fusion_seconds, "curve": curve_seconds, "evaluation": time.perf_counter() - t0},
    }
    if cfg.grouping != "none":
        add_grouped(cfg, seed, result, tick, suite, data)
    result["seconds"]["total"] = time.perf_counter() - started
    return result, run.body, run.heads


def grouped_units(cfg: ColdFusionConfig) -> int:
    """Progress steps of the grouped part of one seed (its rounds and the evaluation of its bodies)."""
    n_all = len(cfg.seen) + len(cfg.held_out)
    return cfg.iterations + 2 * n_all + 2 * len(cfg.held_out)


def add_grouped(cfg: ColdFusionConfig, seed: int, result: dict, tick: Progress = lambda n, d: None,
                suite: Suite | None = None, data: dict[str, TaskData] | None = None) -> dict:
    """Run grouped ColD Fusion for `seed` and evaluate its bodies into `result` (a seed's result
    dict, possibly a plain one from an earlier run: the original's evaluation is reused)."""
    from experiments.coldfusion.grouped import run_grouped  # noqa: PLC0415 - only when asked for

    suite = suite or make_text_suite(cfg.suite_config())
    data = data or load_datasets(cfg)
    t0 = time.perf_counter()
    grouped = run_grouped(cfg, seed, tick)
    result["grouped"] = grouped.summary
    result["eval"]["grouped"] = evaluate_body(suite, grouped.merged_body, cfg, data, seed, tick,
                                              f"seed {seed}: grouped", bodies_for=grouped.body_of_task)
    result["seconds"]["grouped"] = time.perf_counter() - t0
    result["config"] = cfg.fusion_key()
    return result
