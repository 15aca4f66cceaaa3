"""What measuring task affinity costs and how good it is, side by side in one run.

Usage: python benchmarks/bench_affinity.py [--threads 1] [--skip mas,sketch,...] [--recovery-seeds 0]

Sections (each prints its own table; run under `flock /tmp/fedmtl-cpu.lock`):
  step      one training step vs one virtual-step measurement (TAG lookahead + cosine) on the
            default suite's SmallCNN, same batches.
  sketch    a 22M-parameter body: what a client adds per accumulated step (per-task gradient sums)
            and once per round (count-sketching every task's mean gradient), vs one SGD step.
  exact     the first-order estimate lr g_i.g_j / L_j against the exact TAG lookahead at the
            same models (planted suite, models each measured round started from): Pearson
            correlation over off-diagonal pairs, for the pooled federated estimate, the
            centralized first-order one, and the per-batch virtual-step average.
  mas       a default `mas` run (default suite, 6 clients, 15 rounds, split after 3, local-epochs
            1, batch 32, lr 0.05) in the in-process harness: client training seconds and
            affinity seconds for affinity-method gradients / virtual-step (measured rounds only) /
            virtual-step in every round (what fedmtl did before issue 8). Target: <= 10%.
  recovery  (--recovery-seeds N > 0) planted cases all/few/one x methods x N seeds: ARI per signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.training import _per_task_backward  # noqa: E402
from strategies.affinity import (  # noqa: E402
    TaskGradients,
    first_order_lookahead,
    gradient_cosine,
    lookahead_affinity,
    measure_both,
)
from strategies.affinity.bodygrad import body_grads  # noqa: E402
from tasks.registry import load_suite  # noqa: E402
from testbed.affinity_harness import HarnessConfig, planted_case, run_affinity_federation  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _alternating_medians(fns, repeats: int) -> list[float]:
    """Median seconds of each fn, calls interleaved so load changes hit all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def bench_step(tasks_n: int = 4, batch: int = 32) -> None:
    suite = load_suite("default")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)[:tasks_n]
    model = suite.build_model(tasks, seed=0)
    batches = {t: (torch.as_tensor(data[t].x_train[:batch]), torch.as_tensor(data[t].y_train[:batch])) for t in tasks}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step() -> None:
        opt.zero_grad()
        sum(F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()).backward()
        opt.step()

    acc = TaskGradients(model, tasks, max_steps=10**9)

    def step_per_task() -> None:  # a step inside the gradients window: per-task backward + sums
        opt.zero_grad()
        losses = {t: F.cross_entropy(model(x, t), y) for t, (x, y) in batches.items()}
        _per_task_backward(model, losses, acc, {t: batch for t in tasks})
        opt.step()

    t_step, t_window = _alternating_medians([step, step_per_task], 15)
    t_look = _time(lambda: lookahead_affinity(model, batches, lr=0.05), 5)
    t_cos = _time(lambda: gradient_cosine(model, batches), 5)
    t_both = _time(lambda: measure_both(model, batches, lr=0.05), 5)
    print(f"[step] default suite, {len(tasks)} tasks, batch {batch}")
    print(f"  training step          {t_step * 1e3:8.1f} ms   1.00x")
    print(f"  step in gradient window{t_window * 1e3:8.1f} ms   {t_window / t_step:5.2f}x a step (per-task backward + sums)")
    print(f"  lookahead affinity     {t_look * 1e3:8.1f} ms   {t_look / t_step:5.2f}x a step")
    print(f"  gradient cosine        {t_cos * 1e3:8.1f} ms   {t_cos / t_step:5.2f}x a step")
    print(f"  both, shared backward  {t_both * 1e3:8.1f} ms   {t_both / t_step:5.2f}x a step (one virtual-step measurement)")


def bench_sketch(num_params: int = 22_000_000, tasks_n: int = 4, dim: int = 2048) -> None:
    """A 22M-parameter MLP-shaped body (a few big matrices); costs of accumulating and sketching."""
    shapes = [(2048, 2048)] * 5 + [(num_params - 5 * 2048 * 2048,)]
    body = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(*s) * 0.01) for s in shapes])

    class _Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

    model = _Model()
    tasks = [f"t{i}" for i in range(tasks_n)]
    acc = TaskGradients(model, tasks, max_steps=10)
    grads = [torch.randn_like(p) for p in body]
    t_add = _time(lambda: [acc.add(t, grads, 1.0, 32) for t in tasks], 3)
    acc = TaskGradients(model, tasks, max_steps=10)
    for t in tasks:
        acc.add(t, grads, 1.0, 32)
    start = time.perf_counter()
    report = acc.report(dim, seed=1)
    t_sketch = time.perf_counter() - start
    # one SGD step's own arithmetic on the same parameters (a lower bound on a training step)
    opt = torch.optim.SGD(body.parameters(), lr=0.05, momentum=0.9)
    for p, g in zip(body, grads):
        p.grad = g

    t_sgd = _time(opt.step, 3)
    size_kb = sum(g.nbytes for g in report.grads.values()) / 1024
    print(f"[sketch] body of {num_params / 1e6:.0f}M parameters, {tasks_n} tasks, sketch dim {dim}, {torch.get_num_threads()} thread(s)")
    print(f"  accumulate one step, all tasks   {t_add * 1e3:8.1f} ms   (optimizer.step alone: {t_sgd * 1e3:.1f} ms)")
    print(f"  sketch all tasks, once a round   {t_sketch * 1e3:8.1f} ms   -> {size_kb:.0f} KiB on the wire ({size_kb / tasks_n:.0f} KiB per task)")
    print(f"  memory while accumulating        {tasks_n * num_params * 4 / 2**20:8.0f} MiB (one float32 body per task)")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    off = ~np.eye(a.shape[0], dtype=bool)
    x, y = a[off], b[off]
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def bench_exact(seeds: int = 3, case: str = "few") -> None:
    """First-order estimates vs the exact lookahead, at the models each measured round started from."""
    print(f"[exact] planted case {case!r}, {seeds} seeds, 3 measured rounds each; Pearson r over off-diagonal pairs "
          "against the exact lookahead on 2048 examples per task")
    rows = []
    for seed in range(seeds):
        suite, n = planted_case(case, teacher_seed=seed)
        cfg = HarnessConfig(seed=seed, data_seed=seed, keep_start_models=True)
        res = run_affinity_federation(suite, n, cfg)
        tasks = suite.task_names
        ref_data = make_reference_data(planted_case(case, teacher_seed=seed, train_per_task=2048)[0], seed)
        g = torch.Generator().manual_seed(seed)
        for r, ((body, heads), ra) in enumerate(zip(res.start_models, res.rounds), start=1):
            model = suite.build_model(tasks, seed=0)
            model.load_state_dict({**{f"body.{k}": v for k, v in body.items()},
                                   **{f"heads.{t}.{k}": v for t in tasks for k, v in heads[t].items()}})
            big = {t: ref_data[t] for t in tasks}
            exact = lookahead_affinity(model, big, cfg.lr)
            losses, grads, _ = body_grads(model, big, F.cross_entropy)
            flat = torch.stack([torch.cat([x.reshape(-1) for x in grads[t]]) for t in tasks]).double().numpy()
            central = first_order_lookahead(flat, np.array([float(losses[t]) for t in tasks]), cfg.lr)
            per_batch = np.zeros((len(tasks), len(tasks)))
            for _ in range(10):  # the virtual-step way: 10 batches of 64, per-batch ratios averaged
                idx = {t: torch.randint(0, len(ref_data[t][1]), (64,), generator=g) for t in tasks}
                per_batch += lookahead_affinity(model, {t: (ref_data[t][0][i], ref_data[t][1][i]) for t, i in idx.items()}, cfg.lr) / 10
            rows.append((seed, r, _pearson(ra.matrices["lookahead"], exact), _pearson(central, exact), _pearson(per_batch, exact)))
    print("  seed round  federated-first-order  centralized-first-order  virtual-step(10x64)")
    for seed, r, fed, cen, pb in rows:
        print(f"  {seed:4d} {r:5d}  {fed:21.3f}  {cen:23.3f}  {pb:19.3f}")
    arr = np.array([row[2:] for row in rows])
    print(f"  mean        {arr[:, 0].mean():21.3f}  {arr[:, 1].mean():23.3f}  {arr[:, 2].mean():19.3f}")


def make_reference_data(suite, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fresh samples of every task (same teachers and names as the clients' suite, other draws)."""
    data = suite.load_partition(0, 1, seed + 1000, "")
    return {t: (torch.as_tensor(d.x_train).float(), torch.as_tensor(d.y_train).long()) for t, d in data.items()}


def bench_mas(rounds: int = 15, split: int = 3, clients: int = 6) -> None:
    suite = load_suite("default")
    base = dict(split_round=split, total_rounds=rounds, local_steps=0, local_epochs=1, batch_size=32, lr=0.05, seed=0)
    runs = [
        ("gradients (default)", HarnessConfig(method="gradients", **base)),
        ("virtual-step, rounds 1-3", HarnessConfig(method="virtual-step", affinity_every=10, **base)),
        ("virtual-step, every round", HarnessConfig(method="virtual-step", affinity_every=10, monitor_after_split=True, **base)),
    ]
    print(f"[mas] default suite, {clients} clients, {rounds} rounds, split after {split}, local-epochs 1, batch 32 "
          f"(in-process harness, {torch.get_num_threads()} thread(s))")
    print("  method                      train s  affinity s  share  (measured rounds: affinity s)  grouping")
    for name, cfg in runs:
        res = run_affinity_federation(suite, clients, cfg)
        train, aff = sum(res.train_seconds), sum(res.affinity_seconds)
        early = sum(res.affinity_seconds[:split])
        print(f"  {name:26s} {train:8.1f} {aff:10.2f} {aff / train:6.1%}  {early:22.2f}  {res.grouping}")


def bench_recovery(seeds: int) -> None:
    print(f"[recovery] planted 8 tasks (3+3+2), 8 clients, 3 merged rounds, {seeds} seeds: ARI (lookahead | cosine)")
    for case in ("all", "few", "one"):
        for method in ("virtual-step", "gradients"):
            la, cos = [], []
            for seed in range(seeds):
                suite, n = planted_case(case, teacher_seed=seed)
                res = run_affinity_federation(suite, n, HarnessConfig(method=method, seed=seed, data_seed=seed))
                la.append(res.aris["lookahead"])
                cos.append(res.aris["cosine"])
            print(f"  {case:4s} {method:12s}  lookahead {' '.join(f'{a:.2f}' for a in la)}  |  cosine {' '.join(f'{a:.2f}' for a in cos)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: step,sketch,exact,mas")
    ap.add_argument("--recovery-seeds", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    for name, fn in (("step", bench_step), ("sketch", bench_sketch), ("exact", bench_exact), ("mas", bench_mas)):
        if name not in skip:
            start = time.perf_counter()
            fn()
            print(f"  ({time.perf_counter() - start:.0f} s)\n", flush=True)
    if args.recovery_seeds > 0:
        bench_recovery(args.recovery_seeds)


if __name__ == "__main__":
    main()
