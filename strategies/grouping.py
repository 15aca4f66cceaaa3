"""MAS task grouping: split tasks into disjoint groups that maximise mean inter-task affinity.

Objective (Zhuang et al., MAS, ICCV 2023), for an affinity matrix Z with Z[i, j] = Z(i->j):
  * a task j in a group G with |G| >= 2 scores the mean of Z(i->j) over the other members i;
  * a lone task j scores the mean of its outgoing and incoming affinities over ALL other tasks,
    i.e. (sum_{i != j} Z[i, j] + sum_{i != j} Z[j, i]) / (2 (n - 1)) (0 when n == 1);
  * the objective of a partition is the mean per-task score.
The diagonal (self-affinity) is ignored. NaN entries (pairs never measured) count as 0 —
"no evidence either way" — and still count in the denominators, so an unmeasured pair can
neither inflate nor sink a group. Infinite entries are rejected.

Search (`best_grouping`): disjoint groups covering every task, at most `max_groups` of them.
  * n <= `exact_limit` (12): EXACT dynamic programme over subsets. The objective is additive
    over groups, total = sum_G v(G) with v(G) = W(G) / (|G| - 1) (W = sum of Z within G) and
    v({j}) = lone score, so h[k][mask] = max_{S in mask, S holds mask's lowest task}
    v(S) + h[k-1][mask \\ S] gives the best split of `mask` into exactly k groups. All
    (mask, S) pairs ((3^n - 1) / 2 of them) are built once per n with numpy and every layer is
    one vectorised gather + `maximum.reduceat`: O(3^n * max_groups). Measured at n = 12:
    ~0.09 s on the first call (builds the cached pair table), ~0.02 s after; brute force is
    ~1000x slower already at n = 10 (benchmarks/bench_grouping.py).
  * n > `exact_limit`, at most 2 groups (n <= BIPARTITION_LIMIT, 20): EXACT too - every
    bipartition {A, rest} with task 0 in A is scored, 2^(n-1) of them, vectorised in chunks
    (~10 ms at n = 16, ~0.25 s at n = 20). The local search below missed the optimum in 1-2 of
    20 random matrices per n = 13..16 at 2 groups (benchmarks/bench_grouping.py).
  * n > `exact_limit`, 3 or more groups: deterministic heuristic — greedy agglomerative merging (best merge
    first; forced merges while there are more than max_groups groups) followed by best-
    improvement local search (move one task, swap two tasks, merge two groups), also started
    from the all-in-one partition, the best bipartition (n <= 20) and 32 random partitions
    drawn with a FIXED seed (8 missed the optimum at 3 groups in 1-2 of 20 random matrices at
    n = 13, 14; 32 found it in 20 of 20, ~90 ms); the
    best result wins (same tie rule). Every move's gain is O(1) from per-group sums, so one
    local search at n = 16 takes a few ms. Not guaranteed optimal (with 8 restarts, on 180
    random n = 9..12 instances checked against the exact DP, it was optimal in 179, within
    1.5% in the other).

Tie-breaking (both exact search and `brute_force_grouping`): partitions whose objective is
within a tolerance (1e-9 * max|Z|) of the best are ties; among them the one with the FEWEST
groups wins, then the lexicographically smallest canonical form. Canonical form: members
sorted, groups sorted by smallest member, compared as tuples of tuples
(so ((0, 1), (2,)) < ((0, 1, 2),) < ((0, 2), (1,))).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, NamedTuple, Sequence

import numpy as np

EXACT_LIMIT = 12
BIPARTITION_LIMIT = 20  # at most 2 groups: every bipartition is scored up to here (2^19 at n = 20, ~0.2 s)
_REL_TOL = 1e-9

Groups = tuple[tuple[int, ...], ...]


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


class ScoreBreakdown(NamedTuple):
    """The MAS objective of one partition and the per-task scores it averages."""

    objective: float
    per_task: np.ndarray


def clean_affinity(affinity: np.ndarray) -> np.ndarray:
    """Float64 copy with NaN -> 0 and a zero diagonal; raises on a non-square or infinite matrix."""
    z = np.array(affinity, dtype=np.float64, copy=True)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(f"affinity must be a square matrix, got shape {z.shape}")
    if np.isinf(z).any():
        raise ValueError("affinity has infinite entries")
    z[np.isnan(z)] = 0.0
    np.fill_diagonal(z, 0.0)
    return z


def lone_scores(z: np.ndarray) -> np.ndarray:
    """Score of each task when alone: mean of its outgoing and incoming affinities (z cleaned)."""
    n = z.shape[0]
    if n <= 1:
        return np.zeros(n)
    return (z.sum(axis=0) + z.sum(axis=1)) / (2.0 * (n - 1))


def canonical(groups: Sequence[Sequence[int]]) -> Groups:
    """Members sorted, groups sorted by their smallest member; empty groups dropped."""
    return tuple(sorted((tuple(sorted(int(t) for t in g)) for g in groups if len(g)), key=lambda g: g[0]))


def _as_index_groups(groups: "Sequence[Sequence[int | str]] | Grouping", n: int, task_names: Sequence[str] | None) -> Groups:
    """Groups of indices (names are resolved through `task_names`), checked to partition range(n)."""
    if isinstance(groups, Grouping):
        groups = groups.groups
    index = {name: i for i, name in enumerate(task_names)} if task_names is not None else {}
    out = []
    for g in groups:
        members = []
        for t in g:
            if isinstance(t, str):
                if t not in index:
                    raise ValueError(f"task {t!r} is not among task_names {list(task_names or [])}")
                members.append(index[t])
            else:
                members.append(int(t))
        out.append(members)
    flat = sorted(t for g in out for t in g)
    if flat != list(range(n)):
        raise ValueError(f"groups {groups} are not a partition of the {n} tasks")
    return canonical(out)


def _per_task_scores(z: np.ndarray, lone: np.ndarray, groups: Groups) -> np.ndarray:
    scores = np.empty(z.shape[0])
    for g in groups:
        if len(g) == 1:
            scores[g[0]] = lone[g[0]]
        else:
            idx = np.asarray(g)
            scores[idx] = z[np.ix_(idx, idx)].sum(axis=0) / (len(g) - 1)
    return scores


def group_scores(
    affinity: np.ndarray,
    groups: "Sequence[Sequence[int | str]] | Grouping",
    task_names: Sequence[str] | None = None,
) -> ScoreBreakdown:
    """MAS objective of `groups` (indices, or names with `task_names`) under `affinity`."""
    z = clean_affinity(affinity)
    g = _as_index_groups(groups, z.shape[0], task_names)
    per_task = _per_task_scores(z, lone_scores(z), g)
    return ScoreBreakdown(float(per_task.mean()) if len(per_task) else 0.0, per_task)


def _tolerance(z: np.ndarray) -> float:
    """Objective (mean-score) differences below this count as ties."""
    scale = float(np.abs(z).max()) if z.size else 0.0
    return _REL_TOL * (scale if scale > 0 else 1.0)


# --------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """A partition of tasks into groups (canonical index form) and its MAS objective.

    `exact` is True when the search proved optimality (exact DP or brute force).
    """

    groups: Groups
    score: float
    task_names: tuple[str, ...] | None = None
    exact: bool = True

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def named(self) -> tuple[tuple[str, ...], ...]:
        """Groups as task names (requires `task_names`)."""
        if self.task_names is None:
            raise ValueError("this grouping has no task names")
        return tuple(tuple(self.task_names[i] for i in g) for g in self.groups)

    def as_lists(self) -> list[list[str]] | list[list[int]]:
        """Plain lists (names when known), e.g. for a run config or the scheduler."""
        if self.task_names is None:
            return [list(g) for g in self.groups]
        return [list(g) for g in self.named()]

    def to_dict(self) -> dict[str, object]:
        return {
            "groups": [list(g) for g in self.groups], "score": self.score, "exact": self.exact,
            "task_names": None if self.task_names is None else list(self.task_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Grouping":
        names = d.get("task_names")
        return cls(canonical(d["groups"]), float(d["score"]), None if names is None else tuple(names), bool(d.get("exact", True)))


def _make_grouping(z_raw: np.ndarray, groups: Groups, task_names: Sequence[str] | None, exact: bool) -> Grouping:
    score = group_scores(z_raw, groups).objective
    return Grouping(groups, score, None if task_names is None else tuple(task_names), exact)


def _check_args(affinity: np.ndarray, max_groups: int, task_names: Sequence[str] | None) -> np.ndarray:
    z = clean_affinity(affinity)
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    if task_names is not None and len(task_names) != z.shape[0]:
        raise ValueError(f"{len(task_names)} task names for a {z.shape[0]}x{z.shape[0]} affinity matrix")
    if z.shape[0] == 0:
        raise ValueError("affinity matrix is empty: nothing to group")
    return z


# --------------------------------------------------------------------------------------------
# Exact search: dynamic programme over subsets
# --------------------------------------------------------------------------------------------


def _subset_values(z: np.ndarray) -> np.ndarray:
    """v[mask] for every non-empty subset: W(S)/(|S|-1), or the lone score for singletons."""
    n = z.shape[0]
    masks = np.arange(1 << n)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)  # [2^n, n]
    pair_sum = 0.5 * np.einsum("mi,mj,ij->m", bits, bits, z + z.T)  # W(S)
    size = bits.sum(axis=1)
    v = np.full(1 << n, -np.inf)
    big = size >= 2
    v[big] = pair_sum[big] / (size[big] - 1)
    lone = lone_scores(z)
    for i in range(n):
        v[1 << i] = lone[i]
    return v


@lru_cache(maxsize=4)
def _split_pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (mask, sub) with sub a subset of mask holding mask's lowest bit, sorted by mask.

    Built from the 3^n ternary codes (digit 0: outside, 1: in sub, 2: in mask only) and kept
    when the lowest non-zero digit is a 1. Returns (masks, subs, segment starts per mask 1..).
    """
    codes = np.arange(3**n, dtype=np.int64)
    mask = np.zeros_like(codes)
    sub = np.zeros_like(codes)
    first = np.zeros_like(codes)  # digit of the lowest non-zero position (0 while none yet)
    rem = codes.copy()
    for i in range(n):
        d = rem % 3
        rem //= 3
        mask |= (d > 0).astype(np.int64) << i
        sub |= (d == 1).astype(np.int64) << i
        first = np.where(first == 0, d, first)
    keep = first == 1
    mask, sub = mask[keep], sub[keep]
    order = np.argsort(mask, kind="stable")
    mask, sub = mask[order], sub[order]
    starts = np.searchsorted(mask, np.arange(1, 1 << n))
    return mask.astype(np.int32), sub.astype(np.int32), starts


def _dp_layers(v: np.ndarray, n: int, k_max: int) -> list[np.ndarray]:
    """h[k][mask] = best total of splitting mask into exactly k groups (-inf if impossible)."""
    masks, subs, starts = _split_pairs(n)
    rest = masks ^ subs
    h0 = np.full(1 << n, -np.inf)
    h0[0] = 0.0
    layers = [h0]
    for _ in range(k_max):
        vals = v[subs] + layers[-1][rest]
        h = np.full(1 << n, -np.inf)
        h[1:] = np.maximum.reduceat(vals, starts)
        layers.append(h)
    return layers


def _submasks_with_low(rest: int) -> Iterator[int]:
    """Subsets of `rest` that contain its lowest set bit."""
    low = rest & -rest
    others = rest ^ low
    s = others
    while True:
        yield s | low
        if s == 0:
            return
        s = (s - 1) & others


def _members(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def _exact_grouping(z: np.ndarray, max_groups: int) -> Groups:
    n = z.shape[0]
    k_max = min(max_groups, n)
    v = _subset_values(z)
    layers = _dp_layers(v, n, k_max)
    full = (1 << n) - 1
    tol = _tolerance(z) * n  # the DP works with totals, i.e. n * objective
    best = max(layers[k][full] for k in range(1, k_max + 1))
    k = next(k for k in range(1, k_max + 1) if layers[k][full] >= best - tol)
    groups: list[tuple[int, ...]] = []
    rest, acc = full, 0.0
    while rest:
        feasible = [s for s in _submasks_with_low(rest) if acc + v[s] + layers[k - 1][rest ^ s] >= best - tol]
        chosen = min(feasible, key=_members)
        groups.append(_members(chosen))
        acc += v[chosen]
        rest ^= chosen
        k -= 1
    return canonical(groups)


# --------------------------------------------------------------------------------------------
# Exact search at most two groups: every bipartition (any n up to BIPARTITION_LIMIT)
# --------------------------------------------------------------------------------------------


def _bipartition_totals(z: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """n * objective of every partition into {A, rest} with task 0 in A, indexed by the bits of
    tasks 1..n-1 in A (the last index, every task in A, is the one-group partition)."""
    n = z.shape[0]
    zs, lone = z + z.T, lone_scores(z)
    count = 1 << (n - 1)
    totals = np.empty(count)
    shifts = np.arange(n - 1)
    for lo in range(0, count, chunk):
        m = np.arange(lo, min(lo + chunk, count))
        a = np.ones((len(m), n))
        a[:, 1:] = (m[:, None] >> shifts) & 1
        b = 1.0 - a
        parts = []
        for side in (a, b):
            size = side.sum(axis=1)
            w = 0.5 * ((side @ zs) * side).sum(axis=1)
            single = side @ lone  # the lone score of a one-task side
            parts.append(_values(w, size, single))
        totals[m] = parts[0] + parts[1]
    return totals


def _best_bipartition(z: np.ndarray) -> Groups:
    """The best partition into at most 2 groups, exactly, with the module's tie rule."""
    n = z.shape[0]
    if n == 1:
        return ((0,),)
    totals = _bipartition_totals(z)
    tol = _tolerance(z) * n
    best = float(totals.max())
    one_group = len(totals) - 1
    if totals[one_group] >= best - tol:
        return (tuple(range(n)),)
    ties = np.flatnonzero(totals >= best - tol)

    def groups_of(m: int) -> Groups:
        a = (0,) + tuple(i + 1 for i in range(n - 1) if m >> i & 1)
        return canonical([a, tuple(i for i in range(n) if i not in a)])

    return min((groups_of(int(m)) for m in ties), key=lambda g: (len(g), g))


# --------------------------------------------------------------------------------------------
# Heuristic search for n > exact_limit
# --------------------------------------------------------------------------------------------


def _values(w: np.ndarray, size: np.ndarray, single: np.ndarray) -> np.ndarray:
    """Vectorised group value: 0 if empty, the lone score `single` if one task, W/(|G|-1) else."""
    safe = np.where(size >= 2, size - 1, 1)
    return np.where(size == 0, 0.0, np.where(size == 1, single, w / safe))


class _Partition:
    """A labelled partition with the sums that make every move's delta O(1).

    R[g, t] = sum_{i in g} (z[i, t] + z[t, i]) (how much t would add to W(g)); W[g] = within-
    group sum; adding t to g adds R[g, t] to W(g), removing it subtracts R[g, t].
    """

    def __init__(self, z: np.ndarray, lone: np.ndarray, labels: Sequence[int]) -> None:
        self.z, self.zs, self.lone = z, z + z.T, lone
        firsts: dict[int, int] = {}
        self.labels = np.array([firsts.setdefault(int(l), len(firsts)) for l in labels])  # canonical
        k = len(firsts)
        onehot = np.zeros((k, len(labels)))
        onehot[self.labels, np.arange(len(labels))] = 1.0
        self.onehot = onehot
        self.R = onehot @ self.zs
        self.size = onehot.sum(axis=1)
        self.W = 0.5 * (self.R * onehot).sum(axis=1)
        members = [np.flatnonzero(self.labels == g) for g in range(k)]
        self.single = np.array([lone[m[0]] if len(m) == 1 else 0.0 for m in members])
        self.val = _values(self.W, self.size, self.single)
        # for a task in a pair: the lone score of its partner (what is left when it leaves)
        self.partner_lone = np.zeros(len(labels))
        for m in members:
            if len(m) == 2:
                self.partner_lone[m[0]], self.partner_lone[m[1]] = lone[m[1]], lone[m[0]]

    @property
    def k(self) -> int:
        return len(self.size)

    def groups(self) -> Groups:
        return canonical([np.flatnonzero(self.labels == g).tolist() for g in range(self.k)])

    def total(self) -> float:
        return float(self.val.sum())

    def merge_deltas(self) -> np.ndarray:
        """[k, k] gain of merging groups a < b (-inf elsewhere)."""
        cross = self.R @ self.onehot.T  # cross[b, a] = sum_{i in a} R[b, i]
        w = self.W[:, None] + self.W[None, :] + cross.T
        merged = _values(w, self.size[:, None] + self.size[None, :], np.zeros_like(w))
        delta = merged - self.val[:, None] - self.val[None, :]
        return np.where(np.triu(np.ones_like(delta, dtype=bool), 1), delta, -np.inf)

    def move_deltas(self, max_groups: int) -> np.ndarray:
        """[n, k+1] gain of moving task t to group b (column k: a new group of its own)."""
        n, k, a = len(self.labels), self.k, self.labels
        s_a = self.size[a]
        w_from = self.W[a] - self.R[a, np.arange(n)]
        left = _values(w_from, s_a - 1, self.partner_lone)
        r_to = np.concatenate([self.R.T, np.zeros((n, 1))], axis=1)  # [n, k+1]
        w_to = np.concatenate([self.W, [0.0]])[None, :] + r_to
        s_to = np.concatenate([self.size, [0.0]])[None, :] + 1
        joined = _values(w_to, s_to, np.broadcast_to(self.lone[:, None], w_to.shape))
        val_to = np.concatenate([self.val, [0.0]])[None, :]
        delta = left[:, None] + joined - self.val[a][:, None] - val_to
        delta[np.arange(n), a] = -np.inf
        if k >= max_groups:
            delta[:, k] = -np.inf
        delta[s_a == 1, k] = -np.inf  # a lone task moving "alone" is no move
        return delta

    def swap_deltas(self) -> np.ndarray:
        """[n, n] gain of swapping tasks t and u of different groups (upper triangle only)."""
        n, a = len(self.labels), self.labels
        r_a_t = self.R[a, np.arange(n)]  # R[a(t), t]
        r_a_u = self.R[a]  # [n, n]: R[a(t), u]
        w_t_side = self.W[a][:, None] - r_a_t[:, None] + r_a_u - self.zs
        size_t = np.broadcast_to(self.size[a][:, None], (n, n))
        new_t_side = _values(w_t_side, size_t, np.broadcast_to(self.lone[None, :], (n, n)))
        delta = new_t_side + new_t_side.T - self.val[a][:, None] - self.val[a][None, :]
        valid = (a[:, None] != a[None, :]) & np.triu(np.ones((n, n), dtype=bool), 1)
        return np.where(valid, delta, -np.inf)


def _apply_best(p: _Partition, max_groups: int, tol: float, allow_swaps: bool = True) -> _Partition | None:
    """Best single improving move (merge, move or swap); None at a local optimum.

    Candidates are compared in a fixed order (merges, moves, swaps; row-major within each)
    and a later one must be better by more than `tol`, which keeps the search deterministic.
    """
    best, labels = tol, None
    merge = p.merge_deltas()
    if merge.size and merge.max() > best:
        a, b = np.unravel_index(np.argmax(merge), merge.shape)
        best, labels = merge[a, b], np.where(p.labels == b, a, p.labels)
    move = p.move_deltas(max_groups)
    if move.max() > best:
        t, b = np.unravel_index(np.argmax(move), move.shape)
        best, labels = move[t, b], p.labels.copy()
        labels[t] = b
    if allow_swaps:
        swap = p.swap_deltas()
        if swap.max() > best:
            t, u = np.unravel_index(np.argmax(swap), swap.shape)
            best, labels = swap[t, u], p.labels.copy()
            labels[t], labels[u] = p.labels[u], p.labels[t]
    return None if labels is None else _Partition(p.z, p.lone, labels)


def _agglomerate(z: np.ndarray, lone: np.ndarray, max_groups: int, tol: float) -> _Partition:
    """Start from singletons; merge the best pair while it helps (or while too many groups)."""
    p = _Partition(z, lone, range(z.shape[0]))
    while p.k > 1:
        merge = p.merge_deltas()
        a, b = np.unravel_index(np.argmax(merge), merge.shape)
        if p.k <= max_groups and merge[a, b] <= tol:
            break
        p = _Partition(z, lone, np.where(p.labels == b, a, p.labels))
    return p


def _local_search(p: _Partition, max_groups: int, tol: float, max_iter: int = 1000) -> _Partition:
    """Best-improvement hill climbing over merges, single-task moves and pairwise swaps."""
    for _ in range(max_iter):
        nxt = _apply_best(p, max_groups, tol)
        if nxt is None:
            break
        p = nxt
    return p


def _heuristic_grouping(z: np.ndarray, max_groups: int, restarts: int = 32, seeds: Sequence[Groups] = ()) -> Groups:
    """Local search from agglomeration, all-in-one, `seeds` (e.g. the best bipartition) and
    `restarts` random partitions; the best local optimum wins (module tie rule)."""
    n = z.shape[0]
    lone = lone_scores(z)
    tol = _tolerance(z) * n
    starts = [_agglomerate(z, lone, max_groups, tol), _Partition(z, lone, [0] * n)]
    for groups in seeds:
        labels = np.zeros(n, dtype=np.int64)
        for g, members in enumerate(groups):
            labels[list(members)] = g
        starts.append(_Partition(z, lone, labels))
    rng = np.random.default_rng(0)  # fixed seed: restarts are part of the deterministic algorithm
    for _ in range(restarts):
        starts.append(_Partition(z, lone, rng.integers(0, min(max_groups, n), size=n)))
    results = [_local_search(s, max_groups, tol) for s in starts]
    best = max(r.total() for r in results)
    return min((r.groups() for r in results if r.total() >= best - tol), key=lambda g: (len(g), g))


# --------------------------------------------------------------------------------------------
# Public search API
# --------------------------------------------------------------------------------------------


def best_grouping(
    affinity: np.ndarray,
    max_groups: int,
    task_names: Sequence[str] | None = None,
    exact_limit: int = EXACT_LIMIT,
) -> Grouping:
    """The partition maximising the MAS objective with at most `max_groups` groups.

    Exact (DP) for n <= `exact_limit`; above it exact too for at most 2 groups (every
    bipartition, n <= BIPARTITION_LIMIT), else the heuristic, which also starts from the best
    bipartition (`Grouping.exact` says which).
    The DP needs O(3^n) memory: raising `exact_limit` to 13-14 is fine, 15+ costs GBs.
    Deterministic; ties resolved as described in the module docstring.
    """
    z = _check_args(affinity, max_groups, task_names)
    n = z.shape[0]
    if n <= exact_limit:
        return _make_grouping(affinity, _exact_grouping(z, max_groups), task_names, True)
    if max_groups == 1:
        return _make_grouping(affinity, (tuple(range(n)),), task_names, True)
    halves = _best_bipartition(z) if n <= BIPARTITION_LIMIT else None
    if halves is not None and max_groups == 2:
        return _make_grouping(affinity, halves, task_names, True)
    seeds = [] if halves is None else [halves]
    return _make_grouping(affinity, _heuristic_grouping(z, max_groups, seeds=seeds), task_names, False)


def set_partitions(n: int, max_groups: int | None = None) -> Iterator[Groups]:
    """Every partition of range(n) into at most `max_groups` groups, in canonical form."""
    k_max = n if max_groups is None else max_groups

    def rec(i: int, groups: list[list[int]]) -> Iterator[Groups]:
        if i == n:
            yield tuple(tuple(g) for g in groups)
            return
        for g in groups:
            g.append(i)
            yield from rec(i + 1, groups)
            g.pop()
        if len(groups) < k_max:
            groups.append([i])
            yield from rec(i + 1, groups)
            groups.pop()

    if n == 0:
        return iter(())
    return rec(0, [])


def brute_force_grouping(affinity: np.ndarray, max_groups: int, task_names: Sequence[str] | None = None) -> Grouping:
    """Reference: score every set partition with `group_scores`' definition; same tie rule.

    Bell(n) partitions: fine up to n ~ 10 (115,975 partitions), hopeless beyond ~12.
    """
    z = _check_args(affinity, max_groups, task_names)
    lone = lone_scores(z)
    tol = _tolerance(z)
    scored = [(float(_per_task_scores(z, lone, p).mean()), p) for p in set_partitions(z.shape[0], max_groups)]
    best = max(s for s, _ in scored)
    chosen = min((p for s, p in scored if s >= best - tol), key=lambda p: (len(p), p))
    return _make_grouping(affinity, chosen, task_names, True)


def should_regroup(
    current: "Sequence[Sequence[int | str]] | Grouping",
    proposed: "Sequence[Sequence[int | str]] | Grouping",
    affinity: np.ndarray,
    margin: float = 0.0,
    task_names: Sequence[str] | None = None,
) -> bool:
    """Hysteresis: switch only if `proposed` beats `current` by more than `margin` under `affinity`.

    Both are re-scored under the SAME (latest) affinity, so a stale score stored with `current`
    cannot bias the decision. An identical partition never triggers a regroup.
    """
    n = np.asarray(affinity).shape[0]
    cur = _as_index_groups(current, n, task_names)
    new = _as_index_groups(proposed, n, task_names)
    if cur == new:
        return False
    return group_scores(affinity, new).objective > group_scores(affinity, cur).objective + margin
