"""The coordinator's round loop: config -> schedule -> messages -> replies -> fusion -> affinity -> grouping.

`Coordinator.run()` is the whole federation. Each round it
 1. picks up clients that joined (query messages: which tasks each holds),
 2. schedules clients onto the current task groups (capacity, data ownership, no starvation),
 3. sends every (client, group) pair the group's model in one `send_and_receive`,
 4. validates each reply and fuses the valid ones per group (ColD Fusion: body mean, heads per task),
    retrying a group with other clients when fewer than a quorum answered validly,
 5. folds the clients' affinity measurements into the trackers,
 6. evaluates every group on its clients' test splits (the models as trained this round),
 7. splits or merges the groups when the merge/split plan says so,
 8. records the history, the models and a checkpoint.
The set of groups is plain data (`self.groups`), so modes differ only in the plan.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from flwr.serverapp import Grid
from safetensors.torch import save_file

from coordinator import messaging as M
from coordinator.checkpoint import capture_rng_state, load_latest_checkpoint, restore_rng_state, save_checkpoint
from coordinator.config import ConfigError, RunConfig
from coordinator.groups import initial_model, merge_groups, split_groups
from coordinator.history import History, mean_accuracy, write_json_atomic
from coordinator.state import ClientInfo, RoundOutcome, TaskGroup
from coordinator.tracking import Trackers, open_trackers
from strategies.affinity import AffinityStats, AffinityTracker
from strategies.fusion import ClientUpdate, fuse_group
from strategies.grouping import best_grouping, should_regroup
from strategies.merge_split import MergeSplitPlan
from strategies.robust import clip_updates, make_reducer
from strategies.scheduler import SchedulerState, schedule_round
from strategies.validation import ValidationPolicy
from tasks.models import join_state, split_state
from tasks.registry import load_suite

Log = Callable[[str], None]
QUERY_BACKOFF = 3  # rounds before a node that failed its query is asked again


class Coordinator:
    """Runs one federation on a Flower `Grid` (simulation engine or real SuperLink alike)."""

    def __init__(self, grid: Grid, cfg: RunConfig, log: Log = print) -> None:
        self.grid = grid
        self.cfg = cfg
        self.log = log
        self.suite = load_suite(cfg.suite)
        cfg.validate_against_suite(self.suite.task_names)
        self.tasks = self.suite.task_names
        self.out = Path(cfg.out)
        self.plan = MergeSplitPlan(cfg.mode, cfg.split_round, cfg.regroup_every, cfg.regroup_rounds)
        self.clients: dict[int, ClientInfo] = {}
        self.groups: list[TaskGroup] = []
        self.next_gid = 0
        self.previous_grouping: list[list[str]] | None = None  # for dynamic-mode hysteresis
        self.trackers = {s: self._new_tracker() for s in ("lookahead", "cosine")}
        self.scheduler = SchedulerState()
        self.reducer = make_reducer(cfg.aggregator, **({"trim_fraction": cfg.trim_fraction} if cfg.aggregator == "trimmed-mean" else {}))
        self.validation = ValidationPolicy(max_update_norm=cfg.max_update_norm or None)
        self.history = History(config=cfg.to_dict(), tasks=self.tasks)
        self.round = 0
        self.unresponsive: dict[int, int] = {}  # node id -> round its query failed
        self.tracking = Trackers({})  # TensorBoard / MLflow, opened by run() (run-config key `tracking`)

    # ------------------------------------------------------------------ set-up
    def _new_tracker(self) -> AffinityTracker:
        return AffinityTracker(self.tasks, mode=self.cfg.affinity_average, window=self.cfg.affinity_window, alpha=self.cfg.affinity_ema)

    def _initial_groups(self) -> list[TaskGroup]:
        body, heads = initial_model(self.suite, self.cfg.seed)
        grouping = [[t] for t in self.tasks] if self.cfg.mode == "separate" else [list(self.tasks)]
        groups = split_groups(body, heads, grouping, first_gid=0)
        self.next_gid = len(groups)
        return groups

    def discover(self, wait_for: int, timeout: float) -> list[ClientInfo]:
        """Ask every node we have not met yet what it holds; wait until `wait_for` clients are known."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5.0
        joined: list[ClientInfo] = []
        while True:
            new = [n for n in self.grid.get_node_ids() if n not in self.clients and self._may_query(n)]
            if new:
                # Always give new nodes time to answer (a deployed node polls every 3 s and starts a
                # ClientApp process): with timeout 0 (late joiners) send_and_receive would return
                # before pulling any reply, and late joiners would never be picked up.
                wait = min(max(timeout, 60.0), 120.0)
                replies = M.send(self.grid, [M.query_message(n, self.cfg) for n in new], timeout=wait)
                answered = {reply.metadata.src_node_id for reply in replies if not reply.has_error()}
                for node in set(new) - answered:  # ask again only after QUERY_BACKOFF rounds
                    self.unresponsive[node] = self.round
                for reply in replies:
                    node = reply.metadata.src_node_id
                    if reply.has_error():
                        self.log(f"  client {node} failed to describe its data: {M.error_text(reply)}")
                        continue
                    info = M.parse_query_reply(reply)
                    unknown = sorted(set(info.tasks) - set(self.tasks))
                    if unknown:
                        self.log(f"  client {info.name} ({node}) holds tasks {unknown} unknown to suite {self.cfg.suite!r}: ignored")
                        info.tasks = [t for t in info.tasks if t in self.tasks]
                    for old_node in [n for n, c in self.clients.items() if c.name == info.name]:
                        del self.clients[old_node]  # the same client re-joined under a new node id
                        self.log(f"  {info.name} re-joined as node {node} (was node {old_node})")
                    self.clients[node] = info
                    joined.append(info)
                    examples = ", ".join(f"{t}:{info.train_examples[t]}" for t in info.tasks)
                    self.log(f"  joined: {info.name} (node {node}, {info.device}) tasks {examples}")
            if len(self.clients) >= wait_for or time.monotonic() > deadline:
                break
            if time.monotonic() >= next_note:
                self.log(f"  waiting for clients: {len(self.clients)} of {wait_for} joined "
                         f"({deadline - time.monotonic():.0f}s left of min-clients-timeout)")
                next_note = time.monotonic() + 15.0
            time.sleep(1.0)
        if len(self.clients) < wait_for:
            raise RuntimeError(f"only {len(self.clients)} of the {wait_for} required clients joined within {timeout:.0f}s")
        return joined

    def live_clients(self) -> dict[int, ClientInfo]:
        """Known clients whose nodes Flower still lists as connected: a SuperNode that died drops
        out here, so no round waits for it (it is picked up again if it re-joins)."""
        online = set(self.grid.get_node_ids())
        return {n: c for n, c in self.clients.items() if n in online}

    def _may_query(self, node: int) -> bool:
        """A node that failed or ignored a query is asked again only every QUERY_BACKOFF rounds,
        so one broken client cannot stall every round's discovery."""
        failed = self.unresponsive.get(node)
        return failed is None or self.round - failed >= QUERY_BACKOFF

    # ------------------------------------------------------------------ the loop
    def run(self) -> History:
        self.tracking = open_trackers(self.cfg.tracking, self.out, self.cfg.to_dict(), self.tasks, log=self.log)
        start_round = self._resume() if self.cfg.resume else 0
        self.discover(self.cfg.min_clients, self.cfg.min_clients_timeout)
        if start_round == 0:
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
            np.random.seed(self.cfg.seed)
            self.groups = self._initial_groups()
            outcome = RoundOutcome(round=0, groups=self.grouping())
            t0 = time.perf_counter()
            outcome.metrics = self.evaluate(0)
            outcome.seconds = time.perf_counter() - t0
            self._finish_round(outcome)
        for r in range(start_round + 1, self.cfg.rounds + 1):
            self.run_round(r)
        self.tracking.close()
        self.log(f"done: {self.cfg.rounds} rounds, results in {self.out}")
        return self.history

    def run_round(self, r: int) -> RoundOutcome:
        self.round = r
        t0 = time.perf_counter()
        if r > 1:
            self.discover(0, 0)  # late joiners are scheduled from this round on
        outcome = RoundOutcome(round=r, groups=self.grouping())
        replies = self.train(r, outcome)
        self.update_affinity(r, replies, outcome)
        outcome.metrics = self.evaluate(r)  # the groups as trained this round, before any regrouping
        action = self.plan.action_after(r)
        if action == "split":
            self.split(outcome)
        elif action == "merge":
            self.merge(outcome)
        outcome.seconds = time.perf_counter() - t0
        self._finish_round(outcome)
        return outcome

    def grouping(self) -> list[list[str]]:
        return [list(g.tasks) for g in self.groups]

    # ------------------------------------------------------------------ training
    def train(self, r: int, outcome: RoundOutcome) -> list[M.TrainReply]:
        """Schedule, send, validate, retry under quorum, fuse; returns the valid replies.

        Invalid replies never touch a model.
        """
        cfg = self.cfg
        # Scheduler ids are positions in the name-sorted client list: stable across a resume,
        # unlike Flower node ids, so a resumed run schedules exactly as an uninterrupted one.
        live = self.live_clients()
        names = sorted(info.name for info in live.values())
        node_of = {info.name: node for node, info in live.items()}
        client_tasks = {i: self.clients[node_of[name]].tasks for i, name in enumerate(names)}
        assignment = schedule_round(
            [g.tasks for g in self.groups], client_tasks, cfg.client_capacity, cfg.fraction,
            seed=cfg.seed, round=r, state=self.scheduler, max_starve=cfg.max_starve,
        )
        self.scheduler = assignment.state
        for gi in assignment.unserved + assignment.inactive:
            outcome.events.append(f"group {self.groups[gi].gid} got no client this round")
        pending: list[tuple[int, TaskGroup]] = [
            (node_of[names[c]], self.groups[gi]) for c, gis in sorted(assignment.clients.items()) for gi in gis
        ]
        sampled = defaultdict(int)
        for _, g in pending:
            sampled[g.gid] += 1
        load = defaultdict(int)  # groups each node was asked to train this round
        valid: dict[int, list[M.TrainReply]] = defaultdict(list)
        tried: dict[int, set[int]] = defaultdict(set)
        for attempt in range(cfg.max_retries + 1):
            if not pending:
                break
            for node, g in pending:
                tried[g.gid].add(node)
                load[node] += 1
            self._train_once(r, pending, valid, outcome)
            pending = self._retries(live, sampled, valid, tried, load) if attempt < cfg.max_retries else []
            for node, g in pending:
                outcome.events.append(f"retry group {g.gid} with client {self.clients[node].name}")
        # Replies arrive in any order; fuse in client-name order so float sums are reproducible bitwise.
        for reps in valid.values():
            reps.sort(key=lambda rep: self.clients[rep.update.node_id].name)
        self._fuse(sampled, valid, outcome)
        return [rep for reps in valid.values() for rep in reps]

    def _train_once(self, r: int, pending, valid, outcome: RoundOutcome) -> None:
        groups = {g.gid: g for _, g in pending}
        messages = []
        for node, g in pending:
            tasks = [t for t in g.tasks if t in self.clients[node].tasks]
            messages.append(M.train_message(node, g, tasks, self.cfg, r))
        replies = M.send(self.grid, messages, timeout=self.cfg.round_timeout)
        answered = set()
        for reply in replies:
            node, gid = reply.metadata.src_node_id, M.group_of(reply)
            answered.add((node, gid))
            name = self.clients[node].name if node in self.clients else str(node)
            if reply.has_error():
                outcome.errors.append({"node": node, "client": name, "group": gid, "error": M.error_text(reply)})
                self.log(f"  client {name} (node {node}) failed in group {gid}: {M.error_text(reply)}")
                continue
            checked = self._check_reply(reply, node, groups.get(gid))
            if isinstance(checked, list):
                outcome.rejected.append({"node": node, "client": name, "group": gid, "reasons": checked})
                self.log(f"  rejected reply of {name} (node {node}) for group {gid}: {'; '.join(checked[:3])}")
                continue
            valid[gid].append(checked)
        for node, g in pending:
            if (node, g.gid) not in answered:
                name = self.clients[node].name
                outcome.dropped.append({"node": node, "client": name, "group": g.gid, "reason": f"no reply within {self.cfg.round_timeout:.0f}s"})
                self.log(f"  client {name} (node {node}) did not answer group {g.gid} within {self.cfg.round_timeout:.0f}s")

    def _check_reply(self, reply, node: int, group: TaskGroup | None) -> "M.TrainReply | list[str]":
        """The decoded reply if it is fit to fuse, else the list of what is wrong with it."""
        if group is None:
            return [f"reply names no group of this round ({reply.metadata.group_id!r})"]
        try:
            parsed = M.parse_train_reply(reply)
        except Exception as exc:  # garbage reply: reject, never fuse
            return [f"unreadable reply: {type(exc).__name__}: {exc}"]
        expected = [t for t in group.tasks if t in self.clients[node].tasks]
        problems = self.validation.check(group.body, {t: group.heads[t] for t in expected}, expected, parsed.update)
        return problems or parsed

    def _needed(self, sampled: int) -> int:
        return max(1, math.ceil(self.cfg.quorum * sampled))

    def _retries(self, live, sampled, valid, tried, load) -> list[tuple[int, TaskGroup]]:
        """Other clients for groups short of a quorum of valid replies (capacity still respected)."""
        extra = []
        for g in self.groups:
            deficit = self._needed(sampled[g.gid]) - len(valid[g.gid]) if sampled[g.gid] else 0
            if deficit <= 0:
                continue
            candidates = sorted(
                (n for n, info in live.items()
                 if n not in tried[g.gid] and load[n] < self.cfg.client_capacity and set(info.tasks) & set(g.tasks)),
                key=lambda n: self.clients[n].name,
            )
            rng = random.Random(f"{self.cfg.seed}/{self.round}/{g.gid}/retry/{len(tried[g.gid])}")
            rng.shuffle(candidates)
            extra += [(n, g) for n in candidates[:deficit]]
        return extra

    def _fuse(self, sampled, valid, outcome: RoundOutcome) -> None:
        """Fuse each group that reached its quorum of valid replies; the others keep their model."""
        self._record_compute(valid, outcome)
        for g in self.groups:
            replies = valid.get(g.gid, [])
            if not sampled[g.gid]:
                continue
            needed = self._needed(sampled[g.gid])
            if len(replies) < needed:
                outcome.events.append(f"group {g.gid} kept its model: {len(replies)} valid replies, quorum needs {needed}")
                self.log(f"  group {g.gid}: only {len(replies)} valid replies (quorum {needed}); model unchanged")
                continue
            updates = [rep.update for rep in replies]
            if self.cfg.clip_norm > 0:
                updates = self._clip(g, updates)
            g.body, g.heads = fuse_group(g.heads, updates, self.cfg.fusion, self.reducer)
            g.rounds_trained += 1

    def _record_compute(self, valid, outcome: RoundOutcome) -> None:
        """Who trained which group, and the client compute it cost, so quality per compute can be compared."""
        per_group: dict[str, dict] = {}
        for g in self.groups:
            replies = valid.get(g.gid, [])
            examples: dict[str, int] = defaultdict(int)
            for rep in replies:
                for t, n in rep.update.examples.items():
                    examples[t] += int(n)
            per_group[str(g.gid)] = {
                "tasks": list(g.tasks),
                "clients": sorted(rep.update.node_id for rep in replies),
                "train_seconds": sum(rep.train_seconds for rep in replies),
                "affinity_seconds": sum(rep.affinity_seconds for rep in replies),
                "examples": dict(examples),
            }
        outcome.assignments = {gid: d["clients"] for gid, d in per_group.items()}
        outcome.clients = sorted({n for d in per_group.values() for n in d["clients"]})
        totals: dict[str, int] = defaultdict(int)
        for d in per_group.values():
            for t, n in d["examples"].items():
                totals[t] += n
        outcome.compute = {
            "train_seconds": sum(d["train_seconds"] for d in per_group.values()),
            "affinity_seconds": sum(d["affinity_seconds"] for d in per_group.values()),
            "examples": dict(totals),
            "groups": per_group,
        }

    def _clip(self, g: TaskGroup, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Clip each client's whole update (body and heads it trained) to `clip-norm`."""
        clipped = []
        for u in updates:
            ref = join_state(g.body, {t: g.heads[t] for t in u.heads})
            new = join_state(u.body, u.heads)
            body, heads = split_state(clip_updates(ref, [new], self.cfg.clip_norm)[0])
            clipped.append(ClientUpdate(u.node_id, body, heads, u.examples))
        return clipped

    # ------------------------------------------------------------------ affinity and grouping
    def update_affinity(self, r: int, replies: list[M.TrainReply], outcome: RoundOutcome) -> None:
        """Fold this round's valid client measurements into the trackers (exact sums, negatives kept)."""
        measured = {}
        for signal in self.trackers:
            stats = AffinityStats(list(self.tasks))
            for rep in replies:
                if signal in rep.affinity:
                    stats = stats.merge(rep.affinity[signal])
            if stats.counts.sum() > 0:
                self.trackers[signal].update(stats.reindexed(self.tasks), round=r)
                measured[signal] = stats.to_dict()
        if measured:
            outcome.affinity = {
                "round": measured,
                "tracked": {s: {"tasks": self.tasks, "matrix": self.trackers[s].matrix().tolist()} for s in measured},
            }

    def split(self, outcome: RoundOutcome) -> None:
        matrix = self.trackers[self.cfg.affinity_signal].matrix()
        off_diagonal = ~np.eye(len(self.tasks), dtype=bool)
        unmeasured = int((~np.isfinite(matrix) & off_diagonal).sum())
        if unmeasured:
            note = (f"affinity: {unmeasured} of {int(off_diagonal.sum())} ordered task pairs were never measured "
                    "(no sampled client holds both tasks); the grouping search counts them as 0")
            outcome.events.append(note)
            self.log(f"  {note}")
        proposal = best_grouping(matrix, self.cfg.max_groups, self.tasks)
        grouping = proposal.as_lists()
        if self.previous_grouping is not None and not should_regroup(
            self.previous_grouping, grouping, matrix, self.cfg.regroup_margin, self.tasks
        ):
            grouping = self.previous_grouping
            outcome.events.append(f"kept grouping {grouping} (new one not better by {self.cfg.regroup_margin})")
        merged = self.groups[0]
        body, heads = merged.body, merged.heads
        self.groups = split_groups(body, heads, grouping, self.next_gid)
        self.next_gid += len(self.groups)
        self.scheduler = SchedulerState()
        outcome.events.append(f"split into {grouping} (score {proposal.score:.4f})")
        self.log(f"  split into {len(grouping)} groups: {grouping}")

    def merge(self, outcome: RoundOutcome) -> None:
        self.previous_grouping = self.grouping()
        self.groups = [merge_groups(self.groups, self.next_gid, self.tasks)]
        self.next_gid += 1
        self.trackers = {s: self._new_tracker() for s in self.trackers}
        self.scheduler = SchedulerState()
        outcome.events.append("merged all groups to re-measure affinity")
        self.log("  merged all groups to re-measure affinity")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, r: int) -> dict[str, dict[str, float]]:
        """Each group's model on the test split of every client holding its tasks, pooled per task."""
        messages = []
        for g in self.groups:
            for node, info in sorted(self.live_clients().items()):
                tasks = [t for t in g.tasks if t in info.tasks]
                if tasks:
                    messages.append((M.evaluate_message(node, g, tasks, self.cfg, r), tasks))
        replies = M.send(self.grid, [m for m, _ in messages], timeout=self.cfg.round_timeout)
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"correct": 0.0, "loss": 0.0, "examples": 0.0})
        for reply in replies:
            if reply.has_error():
                self.log(f"  evaluation failed on node {reply.metadata.src_node_id}: {M.error_text(reply)}")
                continue
            for t, m in M.parse_evaluate_reply(reply).items():
                totals[t]["correct"] += m["accuracy"] * m["examples"]
                totals[t]["loss"] += m["loss"] * m["examples"]
                totals[t]["examples"] += m["examples"]
        metrics = {}
        for t in self.tasks:
            n = totals[t]["examples"] if t in totals else 0.0
            metrics[t] = {
                "accuracy": totals[t]["correct"] / n if n else float("nan"),
                "loss": totals[t]["loss"] / n if n else float("nan"),
                "examples": n,
            }
        return metrics

    # ------------------------------------------------------------------ bookkeeping
    def _finish_round(self, outcome: RoundOutcome) -> None:
        self.tracking.log_round(self.history.add(outcome))
        self.history.save(self.out)
        self._save_models(outcome.round)
        self._checkpoint(outcome.round)
        self._progress(outcome)

    def _save_models(self, r: int) -> None:
        """The current fused model of every group, as plain safetensors files anyone can load."""
        models = self.out / "models"
        models.mkdir(parents=True, exist_ok=True)
        for old in models.glob("group_*.safetensors"):
            if int(old.stem.split("_")[1]) not in {g.gid for g in self.groups}:
                old.unlink()
        for g in self.groups:
            tmp = models / f".group_{g.gid}.safetensors.tmp"
            save_file(g.tensors(), str(tmp), metadata={"round": str(r), "tasks": ",".join(g.tasks), "suite": self.cfg.suite})
            os.replace(tmp, models / f"group_{g.gid}.safetensors")
        index = {"round": r, "suite": self.cfg.suite, "groups": {str(g.gid): g.tasks for g in self.groups}}
        write_json_atomic(models / "index.json", index)

    def _progress(self, o: RoundOutcome) -> None:
        acc = mean_accuracy(o.metrics)
        faults = ""
        if o.dropped or o.rejected or o.errors:
            faults = f" ({len(o.dropped)} dropped, {len(o.rejected)} rejected, {len(o.errors)} failed)"
        self.log(
            f"round {o.round:>3}/{self.cfg.rounds} | groups {len(o.groups)} | clients {len(o.clients)}{faults} "
            f"| {o.seconds:6.1f}s | mean acc {acc:.3f}"
        )

    def _checkpoint(self, r: int) -> None:
        state = {
            "round": r,
            "groups": [{"gid": g.gid, "tasks": g.tasks, "rounds_trained": g.rounds_trained} for g in self.groups],
            "next_gid": self.next_gid,
            "previous_grouping": self.previous_grouping,
            "trackers": {s: t.to_dict() for s, t in self.trackers.items()},
            "scheduler": self.scheduler.to_dict(),
            "history": self.history.to_dict(),
            "rng": capture_rng_state(),
        }
        tensors = {f"group_{g.gid}": g.tensors() for g in self.groups}
        save_checkpoint(self.out / "checkpoints", r, state, tensors, keep=self.cfg.checkpoint_keep)

    def _resume(self) -> int:
        ckpt = load_latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            self.log(f"resume: no checkpoint under {self.out / 'checkpoints'}; starting from scratch")
            return 0
        s = ckpt.state
        saved = dict(s["history"]["config"])
        for key in ("suite", "mode", "seed", "data-seed"):
            if saved.get(key) != self.cfg.to_dict()[key]:
                raise ConfigError(f"resume: {key} = {self.cfg.to_dict()[key]!r} differs from the checkpoint's {saved.get(key)!r}")
        self.groups = []
        for meta in s["groups"]:
            body, heads = split_state(ckpt.tensors[f"group_{meta['gid']}"])
            self.groups.append(TaskGroup(meta["gid"], list(meta["tasks"]), body, heads, meta["rounds_trained"]))
        self.next_gid = s["next_gid"]
        self.previous_grouping = s["previous_grouping"]
        self.trackers = {sig: AffinityTracker.from_dict(d) for sig, d in s["trackers"].items()}
        self.scheduler = SchedulerState.from_dict(s["scheduler"])
        self.history = History.from_dict(s["history"])
        self.history.config = self.cfg.to_dict()
        restore_rng_state(s["rng"])
        self.log(f"resumed from {ckpt.path} (round {ckpt.round})")
        return int(ckpt.round)
