"""A federation in one process, shaped like fedmtl's rounds, for measuring affinity and grouping.

No Flower: each simulated client is `client.training.train_multitask` on its own partition,
starting every round from the fused model; the coordinator side is the very code the round loop
calls - `strategies.affinity` validation, `round_affinity` pooling, `AffinityTracker` - then
`strategies.grouping.best_grouping` at the split. Bodies are fused uniformly (ColD Fusion) and
heads over their holders (`strategies.fusion.fuse_group`).

    result = run_affinity_federation(suite, HarnessConfig(method="gradients"), hostile={3: "steer"})
    result.grouping, result.ari, result.rejected, result.cost_share()

With `total_rounds > split_round` the run continues after the split with the groups it found
(the real scheduler, capacity 1, no measurement), which is what a whole `mas` run costs.
Used by tests/test_affinity_planted.py and benchmarks/bench_affinity.py; reusable by
through-the-loop tests that want the same planted cases (`planted_case`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from client.training import TrainConfig, train_multitask
from strategies.affinity import (
    AffinityTracker,
    GradientReport,
    RoundAffinity,
    body_num_params,
    max_virtual_measurements,
    round_affinity,
    sketch_dim,
    sketch_seed,
    validate_affinity_stats,
    validate_gradient_report,
    window_steps,
)
from strategies.fusion import ClientUpdate, fuse_group
from strategies.grouping import best_grouping
from strategies.scheduler import SchedulerState, schedule_round
from tasks.models import split_state
from tasks.planted import make_planted_suite
from tasks.suite import Suite
from testbed.hostile_affinity import GRADIENT_FORGERIES, forge_gradient_report, forge_virtual_stats

# The three holding patterns of issue 8: every client holds every task, a few across groups, one.
PLANTED_CASES = {"all": 0, "few": 4, "one": 1}


@dataclass
class HarnessConfig:
    """Run settings; names follow the run config keys (`affinity_steps` is `affinity-steps`)."""

    split_round: int = 3  # merged, measured rounds before the split
    total_rounds: int = 0  # 0 = stop at the split; else continue training the groups found
    local_steps: int = 30  # 0 = local_epochs over the largest task
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    method: str = "gradients"
    affinity_steps: int = 10  # task-step budget (strategies.affinity.window_steps)
    affinity_sketch_dim: int = 2048
    affinity_sketch_seed: int = 0
    affinity_every: int = 5
    affinity_batch_size: int = 0
    affinity_pooling: str = "mean"
    affinity_signal: str = "lookahead"
    affinity_average: str = "mean"
    max_groups: int = 3
    seed: int = 0
    data_seed: int = 0
    threads: int = 1
    monitor_after_split: bool = False  # keep measuring (unread) after the split, as fedmtl did before issue 8
    keep_start_models: bool = False  # store each measured round's starting model (for exact-vs-estimate checks)


@dataclass
class HarnessResult:
    tasks: list[str]
    grouping: list[list[str]]  # by `affinity_signal`: what the run went on with
    ari: float | None
    tracked: dict[str, np.ndarray]
    rounds: list[RoundAffinity]
    groupings: dict[str, list[list[str]]] = field(default_factory=dict)  # per signal, same measurements
    aris: dict[str, float] = field(default_factory=dict)
    rejected: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (round, client, problems)
    train_seconds: list[float] = field(default_factory=list)  # per round, all clients
    affinity_seconds: list[float] = field(default_factory=list)
    start_models: list[tuple[dict, dict]] = field(default_factory=list)  # (body, heads) per measured round

    def cost_share(self) -> float:
        """Affinity seconds over training seconds, whole run."""
        train = sum(self.train_seconds)
        return sum(self.affinity_seconds) / train if train > 0 else float("nan")


def grouping_ari(truth: list[list[str]], groups: list[list[str]], tasks: list[str]) -> float:
    """Adjusted Rand index between two partitions of `tasks` (1.0 = identical)."""
    label = lambda gs: [next(k for k, g in enumerate(gs) if t in g) for t in tasks]  # noqa: E731
    return float(adjusted_rand_score(label(truth), label(groups)))


def planted_case(case: str, teacher_seed: int = 0, num_clients: int = 8, **suite_kw) -> tuple[Suite, int]:
    """(suite, clients) for case "all" | "few" | "one": 8 tasks in groups of 3, 3, 2 by default.

    "all": every client holds every task; "few": 4 tasks each, across groups; "one": exactly one
    task each (8 clients, one per task). Extra keywords go to `make_planted_suite`
    (e.g. `variation` for relatedness, `label_noise`).
    """
    if case not in PLANTED_CASES:
        raise ValueError(f"planted case {case!r} is not one of {sorted(PLANTED_CASES)}")
    kw = {"num_groups": 3, "tasks_per_group": (3, 3, 2), "train_per_task": 512, "teacher_seed": teacher_seed} | suite_kw
    num_tasks = sum(kw["tasks_per_group"]) if not isinstance(kw["tasks_per_group"], int) else kw["num_groups"] * kw["tasks_per_group"]
    per_client = PLANTED_CASES[case] or num_tasks
    return make_planted_suite(tasks_per_client=per_client, **kw), num_clients


def _client_seed(seed: int, round_: int, gid: int, client: int) -> int:
    return zlib.crc32(f"{seed}/{round_}/{gid}/partition-{client}".encode())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run_affinity_federation(
    suite: Suite,
    num_clients: int,
    cfg: HarnessConfig,
    hostile: Mapping[int, str] | None = None,
) -> HarnessResult:
    """Train merged for `cfg.split_round` rounds measuring affinity, split, optionally go on.

    `hostile`: client index -> forgery kind (testbed.hostile_affinity); its affinity report is
    forged after honest training and then goes through validation like any other.
    """
    torch.set_num_threads(cfg.threads)
    hostile = dict(hostile or {})
    tasks = suite.task_names
    data = {c: suite.load_partition(c, num_clients, cfg.data_seed, "") for c in range(num_clients)}
    held = {c: sorted(d) for c, d in data.items()}
    body, heads = split_state(_state(suite.build_model(seed=cfg.seed)))
    p = body_num_params(suite.build_model(tasks[:1], seed=cfg.seed))
    dim = sketch_dim(p, cfg.affinity_sketch_dim)
    trackers = {s: AffinityTracker(tasks, mode=cfg.affinity_average) for s in ("lookahead", "cosine")}
    result = HarnessResult(tasks, [list(tasks)], None, {}, [])
    groups: list[list[str]] = [list(tasks)]
    models = [(body, heads)]
    sched = SchedulerState()
    total = max(cfg.total_rounds, cfg.split_round)
    for r in range(1, total + 1):
        measuring = r <= cfg.split_round
        method = cfg.method if measuring or cfg.monitor_after_split else "none"
        if measuring and cfg.keep_start_models:
            result.start_models.append(({k: v.clone() for k, v in models[0][0].items()},
                                        {t: {k: v.clone() for k, v in h.items()} for t, h in models[0][1].items()}))
        if measuring:
            plan = {c: {0: held[c]} for c in range(num_clients)}
        else:
            a = schedule_round(groups, held, capacity=1, seed=cfg.seed, round=r, state=sched)
            sched, plan = a.state, a.clients
        seed_r = sketch_seed(cfg.affinity_sketch_seed, r)
        updates: dict[int, list[ClientUpdate]] = {g: [] for g in range(len(groups))}
        reports: list[GradientReport] = []
        virtual: list[dict] = []
        train_s = aff_s = 0.0
        for c in range(num_clients):
            for g, ctasks in plan.get(c, {}).items():
                gbody, gheads = models[g]
                model = suite.build_model(ctasks, seed=cfg.seed)
                model.load_state_dict({**{f"body.{k}": v for k, v in gbody.items()},
                                       **{f"heads.{t}.{k}": v for t in ctasks for k, v in gheads[t].items()}})
                tc = TrainConfig(local_epochs=cfg.local_epochs, local_steps=cfg.local_steps, batch_size=cfg.batch_size,
                                 lr=cfg.lr, momentum=cfg.momentum, seed=_client_seed(cfg.seed, r, g, c),
                                 affinity_method=method, affinity_every=cfg.affinity_every,
                                 affinity_batch_size=cfg.affinity_batch_size, affinity_steps=cfg.affinity_steps,
                                 affinity_sketch_dim=cfg.affinity_sketch_dim, affinity_sketch_seed=seed_r)
                res = train_multitask(model, data[c], ctasks, tc)
                train_s += res.train_seconds
                aff_s += res.affinity_seconds
                b, h = split_state(_state(model))
                updates[g].append(ClientUpdate(c, b, h, res.examples))
                if not measuring:
                    continue
                name = f"partition-{c}"
                kind = hostile.get(c)
                if res.gradients is not None:
                    rep = res.gradients
                    rep.client = name
                    if kind in GRADIENT_FORGERIES:
                        rep = forge_gradient_report(kind, rep, tasks, seed=r)
                    problems = validate_gradient_report(rep, ctasks, window_steps(cfg.affinity_steps, len(ctasks), res.steps), dim,
                                                        batch_size=cfg.batch_size, expected_seed=seed_r)
                    if problems:
                        result.rejected.append((r, name, problems))
                    else:
                        reports.append(rep)
                if res.lookahead is not None and res.cosine is not None:
                    stats = {"lookahead": res.lookahead, "cosine": res.cosine}
                    max_count = max_virtual_measurements(res.steps, cfg.affinity_every)
                    if kind and kind.startswith("virtual-"):
                        stats = forge_virtual_stats(kind, stats, tasks, max_count)
                    problems = [p for s, st in stats.items() for p in validate_affinity_stats(st, ctasks, max_count, s)]
                    if problems:
                        result.rejected.append((r, name, problems))
                    else:
                        virtual.append(stats)
        for g in range(len(groups)):
            if updates[g]:
                models[g] = fuse_group(models[g][1], updates[g], "uniform")
        result.train_seconds.append(train_s)
        result.affinity_seconds.append(aff_s)
        if measuring:
            ra = round_affinity(tasks, cfg.method, cfg.lr, reports, virtual, cfg.affinity_pooling)
            result.rounds.append(ra)
            ra.feed(trackers, round=r)
        if r == cfg.split_round:
            result.tracked = {s: tr.matrix() for s, tr in trackers.items()}
            result.groupings = {s: best_grouping(m, cfg.max_groups, tasks).as_lists() for s, m in result.tracked.items()}
            groups = result.groupings[cfg.affinity_signal]
            result.grouping = groups
            mbody, mheads = models[0]
            models = [({k: v.clone() for k, v in mbody.items()}, {t: mheads[t] for t in grp}) for grp in groups]
    if suite.planted_groups:
        result.ari = grouping_ari(suite.planted_groups, result.grouping, tasks)
        result.aris = {s: grouping_ari(suite.planted_groups, g, tasks) for s, g in result.groupings.items()}
    return result

