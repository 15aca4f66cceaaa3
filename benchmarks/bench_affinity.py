"""What measuring task affinity costs next to training, side by side in one run.

Usage: python benchmarks/bench_affinity.py [--tasks 4] [--steps 30] [--batch-size 32]
On the default image suite (SmallCNN body), times one multi-task training step, one TAG
lookahead measurement and one gradient-cosine measurement on the same batches, and the
whole local round with affinity every 10 steps versus without; prints the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.training import TrainConfig, train_multitask  # noqa: E402
from strategies.affinity import gradient_cosine, lookahead_affinity, measure_both  # noqa: E402
from tasks.registry import load_suite  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite("default")
    data = suite.load_partition(0, 1, 0, "")
    tasks = sorted(data)[: args.tasks]
    model = suite.build_model(tasks, seed=0)
    batches = {t: (torch.as_tensor(data[t].x_train[: args.batch_size]), torch.as_tensor(data[t].y_train[: args.batch_size])) for t in tasks}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step() -> None:
        opt.zero_grad()
        loss = sum(torch.nn.functional.cross_entropy(model(x, t), y) for t, (x, y) in batches.items())
        loss.backward()
        opt.step()

    t_step = _time(step, 10)
    t_look = _time(lambda: lookahead_affinity(model, batches, lr=0.05), 5)
    t_cos = _time(lambda: gradient_cosine(model, batches), 5)
    t_both = _time(lambda: measure_both(model, batches, lr=0.05), 5)
    print(f"{len(tasks)} tasks, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"  training step          {t_step * 1e3:8.1f} ms   1.00x")
    print(f"  lookahead affinity     {t_look * 1e3:8.1f} ms   {t_look / t_step:5.2f}x a step")
    print(f"  gradient cosine        {t_cos * 1e3:8.1f} ms   {t_cos / t_step:5.2f}x a step")
    print(f"  both, shared backward  {t_both * 1e3:8.1f} ms   {t_both / t_step:5.2f}x a step (what clients run)")
    rounds = {}
    for every in (0, 10):
        m = suite.build_model(tasks, seed=0)
        start = time.perf_counter()
        res = train_multitask(m, data, tasks, TrainConfig(local_steps=args.steps, batch_size=args.batch_size, affinity_every=every))
        rounds[every] = (time.perf_counter() - start, res.affinity_seconds)
    base, (with_aff, aff_s) = rounds[0][0], rounds[10]
    print(f"  local round, {args.steps} steps: {base:.2f} s without affinity, {with_aff:.2f} s with it every 10 steps "
          f"({with_aff / base:.2f}x; {aff_s:.2f} s reported as affinity cost)")


if __name__ == "__main__":
    main()
