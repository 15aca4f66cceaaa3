"""The coordinator's round: config -> schedule -> messages -> replies -> fusion -> affinity -> grouping.

`Coordinator.run()` is the whole federation; `run_round` reads as the sequence of its steps,
each a module of its own:

  discovery  (coordinator/discovery.py)  meet the clients this round will use, check who they are
  schedule   (coordinator/schedule.py)   which client trains which group (capacity, ownership)
  train      (coordinator/train.py)      send models, check each reply as it arrives, fold it in
  fuse       (below, strategies/fusion)  groups with a quorum of valid replies take the fused model
  affinity   (coordinator/affinity.py)   pool the round's affinity measurements
  evaluate   (coordinator/evaluate.py)   the models on clients' test splits, at the run's cadence
             (with `evaluate-in-train`: by the next round's train messages, see DeferredRecord)
  regroup    (coordinator/regroup.py)    split or merge the groups when the plan says so
  record     (coordinator/record.py)     history, models, checkpoint, progress line

The set of groups is plain data (`GroupState`), so modes differ only in the merge/split plan.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.progress import marker_line, round_event
from coordinator import evaluate as evaluation
from coordinator import regroup
from coordinator.affinity import AffinityBook
from coordinator.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    capture_rng_state,
    load_compatible_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from coordinator.config import ConfigError, RunConfig
from coordinator.discovery import Roster
from coordinator.groups import initial_model, split_groups
from coordinator.history import History
from coordinator.messaging import Exchange, Outbox
from coordinator.record import ModelStore, progress_line
from coordinator.schedule import assign, probes, task_coverage, with_coverage
from coordinator.state import ClientInfo, RoundOutcome, TaskGroup
from coordinator.tracking import Trackers, open_trackers
from coordinator.train import TrainResults, train
from strategies.affinity import body_num_params, measures_gradients
from strategies.merge_split import MergeSplitPlan
from strategies.scheduler import SchedulerState
from strategies.validation import ValidationPolicy
from tasks.models import split_state
from tasks.registry import load_suite

Log = Callable[[str], None]


@dataclass
class DeferredRecord:
    """A round whose evaluation travels with the next round's train messages (`evaluate-in-train`).

    Each client of the next round scores the model it receives (this round's result) before
    training it, so a round costs one message per client instead of two. This round is recorded
    (history, models, checkpoint) once those scores are in; its checkpoint keeps the scheduler,
    affinity and RNG state this round ended with, so a run resumed from it replays the next
    round exactly. Only rounds after which the groups stay as they are are deferred: a split or
    merge would change the models the next round sends."""

    outcome: RoundOutcome
    groups: list[TaskGroup]
    at_end: dict  # the checkpoint state that the next round's discovery and scheduling change


@contextlib.contextmanager
def _phase(outcome: RoundOutcome, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        outcome.timing[name] = outcome.timing.get(name, 0.0) + time.perf_counter() - t0


class Coordinator:
    """Runs one federation on a Flower `Grid` (simulation engine or real SuperLink alike)."""

    def __init__(self, grid, cfg: RunConfig, log: Log = print) -> None:
        self.cfg = cfg
        self.log = log
        self.suite = load_suite(cfg.suite)
        cfg.validate_against_suite(self.suite.task_names)
        self.tasks = self.suite.task_names
        self.out = Path(cfg.out)
        self.exchange = Exchange(grid)
        self.roster = Roster(cfg, self.tasks, log)
        self.plan = MergeSplitPlan(cfg.mode, cfg.split_round, cfg.regroup_every, cfg.regroup_rounds, rounds=cfg.rounds)
        self.affinity = AffinityBook(self.tasks, cfg, self.plan, self._body_params())
        self.state = regroup.GroupState(groups=[], next_gid=0)
        self.scheduler = SchedulerState()
        self.policy = ValidationPolicy(max_update_norm=cfg.max_update_norm or None, max_examples=cfg.max_examples,
                                       max_relative_norm=cfg.max_update_ratio or None)
        self.history = History(config=cfg.to_dict(), tasks=self.tasks, suite=cfg.suite)
        self.models = ModelStore(self.out, cfg.suite, cfg.to_dict())
        self.tracking = Trackers({})  # TensorBoard / MLflow, opened by run() (run-config key `tracking`)
        self.round = 0
        self.deferred: DeferredRecord | None = None
        if cfg.evaluate_data:
            try:  # read and check the operator's folder now, not in the middle of round 1
                evaluation.held_out_data(cfg.evaluate_data, cfg.suite)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"evaluate-data = {cfg.evaluate_data!r}: {exc}") from None

    # The groups and clients, for callers and tests.
    @property
    def groups(self) -> list[TaskGroup]:
        return self.state.groups

    @property
    def clients(self):
        return self.roster.clients

    def grouping(self) -> list[list[str]]:
        return self.state.grouping()

    # ------------------------------------------------------------------ the run
    def run(self) -> History:
        start_round = self._resume() if self.cfg.resume else 0
        self.tracking = open_trackers(self.cfg.tracking, self.out, self.cfg.to_dict(), self.tasks, log=self.log)
        self.roster.wait_for(self.exchange, Outbox(self.cfg, start_round), self.cfg.min_clients, self.cfg.min_clients_timeout)
        if start_round == 0:
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
            np.random.seed(self.cfg.seed)
            self.state = regroup.GroupState(groups=self._initial_groups(), next_gid=0)
            self.state.next_gid = len(self.state.groups)
            self.history.start(self.out)
            outcome = RoundOutcome(round=0, groups=self.grouping())
            t0 = time.perf_counter()
            defer = self._defers(0)
            with _phase(outcome, "evaluate"):
                self._evaluate(0, Outbox(self.cfg, 0), outcome, evaluators=None if defer else self._evaluators(0))
            with _phase(outcome, "record"):
                if not defer:
                    self.models.save(self.groups, 0, outcome.metrics, outcome.evaluated)
            outcome.seconds = time.perf_counter() - t0
            self._finish(outcome, defer)
        for r in range(start_round + 1, self.cfg.rounds + 1):
            self.run_round(r)
        self.history.finish(self.out)
        self.tracking.close()
        self.log(f"done: {self.cfg.rounds} rounds, results in {self.out}")
        return self.history

    def run_round(self, r: int) -> RoundOutcome:
        self.round = r
        t0 = time.perf_counter()
        outcome = RoundOutcome(round=r, groups=self.grouping())
        outbox = Outbox(self.cfg, r)
        due = evaluation.due(self.cfg, r)
        defer = due and self._defers(r)
        with _phase(outcome, "discovery"):
            online = self.exchange.node_ids()
            drawn = self.roster.draw(online, self.cfg.fraction, r)
            # The clients that will evaluate are drawn now too, from the same roster, so the
            # ones not met yet are asked what they hold in this one query exchange, not in a
            # second one before evaluation (with sampling, a round's one extra round trip).
            evaluators = self._evaluators(r, online) if due and not defer else None
            met = self.roster.pool(self.exchange, outbox, sorted(set(drawn) | set(evaluators or ())), r, outcome)
            pool = {n: met[n] for n in drawn if n in met}
            live = self.roster.live(online)
            probing: dict[int, ClientInfo] = {}
            if self.cfg.fraction < 1.0:
                pool = with_coverage(self.groups, pool, live, self.cfg.seed, r)
                if self.affinity.measuring(r) and self.cfg.affinity_coverage != "none":
                    covering = task_coverage(self.groups, pool, live, self.cfg.seed, r)
                    if self.affinity.probes:
                        probing = covering
                    else:
                        pool = pool | covering
        with _phase(outcome, "schedule"):
            work, self.scheduler = assign(self.groups, pool, self.cfg, r, self.scheduler, outcome)
            work += probes(self.groups, probing)
        with _phase(outcome, "train"):
            results = train(self.exchange, outbox, work, self.roster, live, self.cfg, outcome,
                            lambda g: self.affinity.ask(g, r), self.policy, evaluate=self.deferred is not None)
        if self.deferred is not None:  # the previous round's models, scored by this round's clients
            self._close_deferred(results.scores, r)
        with _phase(outcome, "fuse"):
            self._fuse(results, outcome)
        with _phase(outcome, "affinity"):
            self.affinity.update(r, results, outcome)
        with _phase(outcome, "evaluate"):
            if due:  # the groups as trained this round, before regrouping
                self._evaluate(r, outbox, outcome, evaluators)
        with _phase(outcome, "record"):  # the models as evaluated: what the round's metrics describe
            if not defer:
                self.models.save(self.groups, r, outcome.metrics, outcome.evaluated)
        with _phase(outcome, "regroup"):
            action = self.plan.action_after(r)
            if action == "split":
                regroup.split(self.state, self.affinity, self.cfg.max_groups, self.cfg.regroup_margin, self.tasks, outcome, self.log)
                self.scheduler = SchedulerState()
            elif action == "merge":
                regroup.merge(self.state, self.affinity, self.tasks, outcome, self.log)
                self.scheduler = SchedulerState()
        outcome.seconds = time.perf_counter() - t0
        self._finish(outcome, defer)
        return outcome

    # ------------------------------------------------------------------ evaluation with training
    def _defers(self, r: int) -> bool:
        """Round r's evaluation rides on round r+1's train messages: asked for (`evaluate-in-train`),
        not the last round, and no split or merge after it (the next round sends these models)."""
        return self.cfg.evaluate_in_train and r < self.cfg.rounds and self.plan.action_after(r) is None

    def _finish(self, outcome: RoundOutcome, defer: bool) -> None:
        """Record the round now, or hold it until the next round's clients have scored its models."""
        if not defer:
            self._record(outcome)
            return
        self.roster.report_into(outcome)  # start-up joins belong to this round, not the next
        self.deferred = DeferredRecord(outcome, list(self.groups), {
            "rng": capture_rng_state(), "scheduler": self.scheduler.to_dict(), "trackers": self.affinity.to_dict()})

    def _close_deferred(self, scores: list[tuple[str, dict[str, dict[str, float]]]], r: int) -> None:
        """Record the held round with the scores round r's clients sent with their training. If a
        group was scored by nobody (its clients all failed), it is evaluated as without
        `evaluate-in-train`, by evaluate messages: the weights are still the held round's."""
        held, self.deferred = self.deferred, None
        o = held.outcome
        scored = {t for _, result in scores for t in result}
        if all(scored & set(g.tasks) for g in held.groups):
            o.metrics, o.evaluated = evaluation.pooled(scores, self.tasks), True
            o.events.append(f"evaluated by round {r}'s clients with their training ({len(scores)} scores)")
        else:
            o.events.append(f"a group was not scored with round {r}'s training: evaluated by evaluate messages")
            with _phase(o, "evaluate"):  # on clients only: the held-out folder was scored already
                self._evaluate_on_clients(o.round, Outbox(self.cfg, o.round), o, self._evaluators(o.round))
        with _phase(o, "record"):
            self.models.save(held.groups, o.round, o.metrics, o.evaluated)
        self._record(o, held.at_end)

    # ------------------------------------------------------------------ steps kept here
    def _body_params(self) -> int:
        """P, the body parameters a gradient summary covers (built once; only the gradient method needs it)."""
        if not measures_gradients(self.cfg.affinity_method):
            return 0
        return body_num_params(self.suite.build_model(self.tasks[:1], seed=self.cfg.seed))

    def _initial_groups(self) -> list[TaskGroup]:
        body, heads = initial_model(self.suite, self.cfg.seed, self.cfg.head_init)
        grouping = [[t] for t in self.tasks] if self.cfg.mode == "separate" else [list(self.tasks)]
        return split_groups(body, heads, grouping, first_gid=0)

    def _fuse(self, results: TrainResults, outcome: RoundOutcome) -> None:
        """Groups that reached their quorum of valid replies take the fused model; the others keep theirs."""
        for g in self.groups:
            if not results.sampled.get(g.gid):
                continue
            got, needed = len(results.valid[g.gid]), results.quorum(g.gid, self.cfg.quorum)
            if got < needed:
                outcome.events.append(f"group {g.gid} kept its model: {got} valid replies, quorum needs {needed}")
                self.log(f"  group {g.gid}: only {got} valid replies (quorum {needed}); model unchanged")
                continue
            body, heads = results.fusers[g.gid].result()
            g.set_weights(body, heads)
            g.rounds_trained += 1
        for fuser in results.fusers.values():
            fuser.close()  # spill files of the round, if any
        self._compute(results, outcome)

    def _compute(self, results: TrainResults, outcome: RoundOutcome) -> None:
        """Who trained which group, and the client compute it cost (quality per compute)."""
        per_group: dict[str, dict] = {}
        for g in self.groups:
            replies = results.valid.get(g.gid, [])
            examples: dict[str, int] = defaultdict(int)
            for rep in replies:
                for t, n in rep.update.examples.items():
                    examples[t] += int(n)
            per_group[str(g.gid)] = {
                "tasks": list(g.tasks),
                "clients": sorted(self.roster.name_of(rep.update.node_id) for rep in replies),
                "train_seconds": sum(rep.train_seconds for rep in replies),
                "affinity_seconds": sum(rep.affinity_seconds for rep in replies),
                "examples": dict(examples),
            }
        for g in self.groups:  # measure-only replies: their compute is affinity measurement
            probed = results.probes.get(g.gid, [])
            if probed:
                d = per_group[str(g.gid)]
                d["probes"] = sorted(self.roster.name_of(rep.update.node_id) for rep in probed)
                d["affinity_seconds"] += sum(rep.affinity_seconds + rep.train_seconds for rep in probed)
        outcome.assignments = {gid: d["clients"] for gid, d in per_group.items()}
        outcome.clients = sorted({c for d in per_group.values() for c in d["clients"]})
        totals: dict[str, int] = defaultdict(int)
        for d in per_group.values():
            for t, n in d["examples"].items():
                totals[t] += n
        outcome.compute = {
            "train_seconds": sum(d["train_seconds"] for d in per_group.values()),
            "affinity_seconds": sum(d["affinity_seconds"] for d in per_group.values()),
            "examples": dict(totals),
            "probes": sorted({c for d in per_group.values() for c in d.get("probes", [])}),
            "groups": per_group,
        }

    def _evaluators(self, r: int, online: list[int] | None = None) -> list[int]:
        """The nodes drawn to evaluate round r (`fraction-evaluate` of the connected ones)."""
        online = self.exchange.node_ids() if online is None else online
        return self.roster.draw(online, self.cfg.fraction_evaluate, r, salt="evaluate/")

    def _evaluate(self, r: int, outbox: Outbox, outcome: RoundOutcome, evaluators: list[int] | None) -> None:
        """The groups on the test splits of `evaluators` (None: on no client, the next round's
        train messages score them) and on the operator's held-out folder, if any."""
        if evaluators is not None:
            self._evaluate_on_clients(r, outbox, outcome, evaluators)
        if self.cfg.evaluate_data:
            outcome.held_out = evaluation.evaluate_held_out(self.groups, self.suite, self.cfg)

    def _evaluate_on_clients(self, r: int, outbox: Outbox, outcome: RoundOutcome, drawn: list[int]) -> None:
        """`drawn`: the round's evaluators (drawn, and the new ones met, in its discovery step); the
        ones still online and known evaluate. A node whose query failed is in the Roster's backoff
        and is not asked again this round."""
        online = set(self.exchange.node_ids())
        pool = self.roster.pool(self.exchange, outbox, [n for n in drawn if n in online], r, outcome)
        outcome.metrics = evaluation.evaluate(self.exchange, outbox, self.groups, pool, self.roster, self.cfg,
                                              self.tasks, outcome)
        outcome.evaluated = True

    # ------------------------------------------------------------------ record and resume
    def _record(self, outcome: RoundOutcome, at_end: dict | None = None) -> None:
        """History, checkpoint, trackers and progress line of a finished round (`at_end`: the state
        a deferred round ended with, see DeferredRecord)."""
        if at_end is None:
            self.roster.report_into(outcome)
        with _phase(outcome, "record"):
            entry = self.history.add(outcome, self.out)
            self._checkpoint(outcome.round, at_end)
            self.tracking.log_round(entry)
        self.log(progress_line(outcome, self.cfg.rounds))
        self.log(marker_line("round", **round_event(entry, self.cfg.rounds)))  # for tools (fedmtl.progress)

    def _checkpoint(self, r: int, at_end: dict | None = None) -> None:
        s = self.state
        stash_keys = sorted(s.stash)
        state = {
            "round": r,
            "config": self.cfg.to_dict(),
            "groups": [{"gid": g.gid, "tasks": g.tasks, "rounds_trained": g.rounds_trained} for g in s.groups],
            "next_gid": s.next_gid,
            "previous_grouping": s.previous_grouping,
            "stash": [list(k) for k in stash_keys],
            "trackers": self.affinity.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "history": self.history.digest(self.out),
            "best": self.models.best,
            "rng": capture_rng_state(),
        } | (at_end or {})
        tensors = {f"group_{g.gid}": g.tensors() for g in s.groups}
        for i, k in enumerate(stash_keys):
            tensors[f"stash_{i}"] = {f"body.{n}": v for n, v in s.stash[k].items()}
        if s.merged_at is not None:
            tensors["merged_at"] = {f"body.{n}": v for n, v in s.merged_at.items()}
        save_checkpoint(self.out / CHECKPOINT_DIR, r, state, tensors, keep=self.cfg.checkpoint_keep)

    def _resume(self) -> int:
        try:  # verified, and written with this run's settings (or an older one that fits the suite)
            ckpt = load_compatible_checkpoint(self.out / CHECKPOINT_DIR, self.cfg.to_dict(), self.suite)
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from None
        if ckpt is None:
            self.log(f"resume: no checkpoint under {self.out / CHECKPOINT_DIR}; starting from scratch")
            return 0
        s = ckpt.state
        groups = []
        for meta in s["groups"]:
            body, heads = split_state(ckpt.tensors[f"group_{meta['gid']}"])
            groups.append(TaskGroup(meta["gid"], list(meta["tasks"]), body, heads, meta["rounds_trained"]))
        stash = {tuple(k): split_state(ckpt.tensors[f"stash_{i}"])[0] for i, k in enumerate(s.get("stash", []))}
        merged_at = split_state(ckpt.tensors["merged_at"])[0] if "merged_at" in ckpt.tensors else None
        self.state = regroup.GroupState(groups, s["next_gid"], s["previous_grouping"], stash, merged_at)
        self.affinity.load(s["trackers"])
        self.scheduler = SchedulerState.from_dict(s["scheduler"])
        self.history = History.resume(self.out, s["history"], self.cfg.to_dict())
        self.models.best = s.get("best")
        restore_rng_state(s["rng"])
        self.log(f"resumed from {ckpt.path} (round {ckpt.round})")
        return int(ckpt.round)
