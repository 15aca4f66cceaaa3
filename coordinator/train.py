"""Train: send each (client, group) pair its group's model, fold valid replies in as they arrive.

Replies stream in (`Exchange.collect`); each one is checked (`coordinator.replies.read_train`)
and, if fit, folded into its group's fuser at once, after which its tensors are dropped: the
coordinator holds one accumulator per group, not every client's model. A group short of a
quorum of valid replies is retried with other clients (`max-retries`). Probes (measure-only work
items, `coordinator.schedule.probes`) go out with the first attempt; their replies carry
gradient summaries for the affinity step and never reach a fuser, a quorum or a retry. Failed,
dropped and rejected clients are named in the round's outcome; nothing a client sends raises
out of here.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.affinity_ask import AffinityAsk
from coordinator.config import RunConfig
from coordinator.discovery import Roster
from coordinator.messaging import Exchange, Outbox, Sent, error_text
from coordinator.replies import Refused, TrainReply, read_probe, read_train
from coordinator.schedule import Work
from coordinator.state import ClientInfo, RoundOutcome, TaskGroup
from strategies.fusion import GroupFusion
from strategies.validation import ValidationPolicy


@dataclass
class TrainResults:
    """What the train step hands to fusion, affinity and the record."""

    fusers: dict[int, GroupFusion]
    sampled: dict[int, int]  # gid -> clients first asked to train it
    valid: dict[int, list[TrainReply]] = field(default_factory=lambda: defaultdict(list))  # tensors dropped
    probes: dict[int, list[TrainReply]] = field(default_factory=lambda: defaultdict(list))  # measure-only replies
    scores: list[tuple[str, dict[str, dict[str, float]]]] = field(default_factory=list)  # (client, its test scores)

    def quorum(self, gid: int, share: float) -> int:
        return max(1, math.ceil(share * self.sampled.get(gid, 0)))


def training_config(cfg: RunConfig) -> dict:
    """The local-training settings of a train message (measurement settings are added per group)."""
    return {
        "local-epochs": cfg.local_epochs,
        "local-steps": cfg.local_steps,
        "batch-size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "optimizer": cfg.optimizer,
    }


def train(
    exchange: Exchange, outbox: Outbox, work: list[Work], roster: Roster, live: dict[int, ClientInfo],
    cfg: RunConfig, outcome: RoundOutcome, measure: Callable[[TaskGroup], AffinityAsk], policy: ValidationPolicy,
    evaluate: bool = False,
) -> TrainResults:
    """Run the round's training; `measure(group)` says what its clients measure (and may reply).

    With `evaluate`, every client first scores the model it is sent on its test split (the
    previous round's evaluation travelling with this round's training); the scores of valid
    replies are in `TrainResults.scores`."""
    groups = {w.group.gid: w.group for w in work}
    spill = Path(cfg.out) / ".fusion-spill" / f"round-{outcome.round}"  # replies that arrive early wait here
    results = TrainResults(
        fusers={gid: GroupFusion(g.body, g.heads, cfg.fusion, cfg.aggregator, cfg.trim_fraction, cfg.clip_norm,
                                 spill_dir=spill / f"group-{gid}")
                for gid, g in groups.items()},
        sampled=dict(_count(w.group.gid for w in work if not w.probe)),
    )
    base = training_config(cfg)
    asks = {gid: measure(g) for gid, g in groups.items()}
    extra = {gid: base | asks[gid].to_config() for gid in groups}
    work = [w for w in work if not w.probe or asks[w.group.gid].gradients]  # a probe measures gradients or nothing
    tried: dict[int, set[int]] = defaultdict(set)
    load: dict[int, int] = defaultdict(int)
    pending = work
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        for w in pending:
            tried[w.group.gid].add(w.node)
            load[w.node] += 1
        for gid, fuser in results.fusers.items():  # the order the mean folds replies in: the order sent
            fuser.expect([roster.name_of(w.node) for w in pending if w.group.gid == gid and not w.probe])
        outgoing = [outbox.train(w.node, w.group, w.tasks, extra[w.group.gid], attempt, evaluate, w.probe)
                    for w in pending]
        pushed, refused = exchange.push(outgoing)
        for sent, reply in exchange.collect(pushed, timeout=cfg.round_timeout):
            take = _take_probe if sent.probe else _take
            take(sent, reply, groups[sent.gid], asks[sent.gid], roster, policy, results, outcome)
        for sent in refused + list(pushed.values()):
            name = roster.name_of(sent.node)
            if not sent.probe:
                results.fusers[sent.gid].skip(name)
            what = "probe" if sent.probe else "client"
            outcome.dropped.append({"node": sent.node, "client": name, "group": sent.gid, "probe": sent.probe,
                                    "reason": f"no reply within {cfg.round_timeout:.0f}s"})
            outcome.events.append(f"{what} {name} did not answer group {sent.gid}")
            roster.log(f"  {what} {name} (node {sent.node}) did not answer group {sent.gid} within {cfg.round_timeout:.0f}s")
        pending = _retries(groups, live, results, tried, load, cfg, outcome) if attempt < cfg.max_retries else []
        for w in pending:
            outcome.events.append(f"retry group {w.group.gid} with client {live[w.node].name}")
    return results


def _take(sent: Sent, reply, group: TaskGroup, ask: AffinityAsk, roster: Roster, policy: ValidationPolicy,
          results: TrainResults, outcome: RoundOutcome) -> None:
    """Check one reply and fold it into its group's fuser, or record why not."""
    node, name = sent.node, roster.name_of(sent.node)
    fuser = results.fusers[sent.gid]
    if reply.has_error():
        fuser.skip(name)
        text = error_text(reply)
        outcome.errors.append({"node": node, "client": name, "group": sent.gid, "error": text})
        roster.log(f"  client {name} (node {node}) failed in group {sent.gid}: {text}")
        return
    client = roster.clients.get(node)
    parsed = Refused([f"node {node} is not a known client"]) if client is None else read_train(reply, sent, group, client, policy, ask)
    if isinstance(parsed, Refused):
        fuser.skip(name)
        outcome.reject(node, name, sent.gid, parsed.reasons, "train")
        roster.log(f"  rejected reply of {name} (node {node}) for group {sent.gid}: {'; '.join(parsed.reasons[:3])}")
        return
    # Fusion weighs examples by what the client declared when it joined, never by more.
    parsed.update.examples = {t: min(int(n), client.train_examples.get(t, 0)) for t, n in parsed.update.examples.items()}
    fuser.add(parsed.update, key=name)
    parsed.update.body, parsed.update.heads = {}, {}  # folded: drop the tensors
    results.valid[sent.gid].append(parsed)
    if parsed.scores:
        results.scores.append((name, parsed.scores))


def _take_probe(sent: Sent, reply, group: TaskGroup, ask: AffinityAsk, roster: Roster, policy: ValidationPolicy,
                results: TrainResults, outcome: RoundOutcome) -> None:
    """Check one probe's reply (summaries only) and keep it for the affinity step, or record why not."""
    node, name = sent.node, roster.name_of(sent.node)
    if reply.has_error():
        text = error_text(reply)
        outcome.errors.append({"node": node, "client": name, "group": sent.gid, "error": text, "probe": True})
        roster.log(f"  probe {name} (node {node}) failed in group {sent.gid}: {text}")
        return
    client = roster.clients.get(node)
    parsed = Refused([f"node {node} is not a known client"]) if client is None else read_probe(reply, sent, client, ask)
    if isinstance(parsed, Refused):
        outcome.reject(node, name, sent.gid, parsed.reasons, "probe")
        roster.log(f"  rejected probe of {name} (node {node}) for group {sent.gid}: {'; '.join(parsed.reasons[:3])}")
        return
    results.probes[sent.gid].append(parsed)


def _retries(groups: dict[int, TaskGroup], live: dict[int, ClientInfo], results: TrainResults,
             tried: dict[int, set[int]], load: dict[int, int], cfg: RunConfig, outcome: RoundOutcome) -> list[Work]:
    """Other clients for groups short of a quorum of valid replies (capacity still respected)."""
    extra: list[Work] = []
    for gid, g in sorted(groups.items()):
        deficit = results.quorum(gid, cfg.quorum) - len(results.valid[gid])
        if deficit <= 0:
            continue
        candidates = sorted(
            (n for n, info in live.items()
             if n not in tried[gid] and load[n] < cfg.client_capacity and set(info.tasks) & set(g.tasks)),
            key=lambda n: live[n].name,
        )
        rng = random.Random(f"{cfg.seed}/{outcome.round}/{gid}/retry/{len(tried[gid])}")
        rng.shuffle(candidates)
        for n in candidates[:deficit]:
            extra.append(Work(n, g, [t for t in g.tasks if t in live[n].tasks]))
    return extra


def _count(items) -> dict:
    counts: dict = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts
