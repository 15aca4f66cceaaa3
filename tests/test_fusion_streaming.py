"""Streaming fusion (GroupFusion) against the stacked reference, in any arrival order.

Guarantees under test (strategies/fusion/streaming.py, ordered_sum.py):
* median / trimmed mean: bitwise equal to the stacked reducers on the updates sorted by key;
* mean: bitwise independent of arrival order (folded in the announced order), within float32
  rounding of the stacked float64 mean; replies that arrive in order never wait, early ones wait
  in RAM or in a spill file.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from strategies.fusion import ClientUpdate, GroupFusion, fuse_group, fuse_group_stacked
from strategies.fusion.ordered_sum import OrderedSum
from strategies.robust import clip_updates, make_reducer

CASES = [("mean", {}), ("median", {}), ("median", {"weighted": False}), ("trimmed-mean", {"trim_fraction": 0.2})]
TASKS = ("a", "b", "c")


def _reference(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    body = {
        "conv.weight": torch.randn(4, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "norm.running_mean": torch.randn(4, generator=g),
        "norm.num_batches_tracked": torch.tensor(5, dtype=torch.int64),
        "half": torch.randn(6, generator=g).to(torch.float16),
        "scalar": torch.randn((), generator=g),
    }
    heads = {t: {"weight": torch.randn(2, 4, generator=g), "bias": torch.randn(2, generator=g)} for t in TASKS}
    return body, heads


def _updates(n: int, seed: int = 1, ties: bool = True) -> list[ClientUpdate]:
    body, heads = _reference()
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = {k: (v + 0.1 * torch.randn(v.shape, generator=g).to(v.dtype)) if v.is_floating_point() else v + i
             for k, v in body.items()}
        if ties and i % 3 == 0:  # exact ties across clients exercise the tie order
            b["conv.bias"] = body["conv.bias"].clone()
        trained = [t for t in TASKS if rng.random() < 0.6] or ["a"]
        trained = [t for t in trained if t != "c"]  # nobody trains c: its head must be kept
        if not trained:
            trained = ["a"]
        h = {t: {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in heads[t].items()} for t in trained}
        examples = {t: rng.randint(1, 50) for t in trained}
        if i == 1 and "b" in examples:
            examples["b"] = 0
        out.append(ClientUpdate(node_id=100 + i, body=b, heads=h, examples=examples))
    return out


def _stream(updates, keys, weighting, name, opts, expect=None, **kw):
    body, heads = _reference()
    fusion = GroupFusion(body, heads, weighting, name, trim_fraction=opts.get("trim_fraction", 0.2),
                         median_weighted=opts.get("weighted", True), **kw)
    if expect is not None:
        fusion.expect(expect)
    for u, key in zip(updates, keys):
        fusion.add(u, key=key)
    out = fusion.result()
    fusion.close()
    return out


def _assert_states(a, b, ulps: int = 0):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if ulps == 0 or not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
        else:
            x, y = a[k].to(torch.float64).numpy(), b[k].to(torch.float64).numpy()
            spacing = np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(a[k].numpy().dtype)).astype(np.float64)
            assert np.all(np.abs(x - y) <= ulps * spacing), k


def _assert_groups(a, b, ulps: int = 0):
    _assert_states(a[0], b[0], ulps)
    assert list(a[1]) == list(b[1])
    for t in a[1]:
        _assert_states(a[1][t], b[1][t], ulps)


@pytest.mark.parametrize("n", [10, 11])
@pytest.mark.parametrize("weighting", ["uniform", "examples"])
@pytest.mark.parametrize("name, opts", CASES)
def test_streaming_equals_stacked_in_key_order(name, opts, weighting, n):
    updates = _updates(n)
    _, heads = _reference()
    expected = fuse_group_stacked(heads, updates, weighting, make_reducer(name, **opts))
    order = list(range(len(updates)))
    random.Random(3).shuffle(order)
    got = _stream([updates[i] for i in order], [f"client{i:02d}" for i in order], weighting, name, opts,
                  expect=[f"client{i:02d}" for i in range(len(updates))])
    # the mean differs by float32 rounding only (float16 tensors: by float16 rounding)
    _assert_groups(got, expected, ulps=2 * n if name == "mean" else 0)
    assert torch.equal(got[1]["c"]["weight"], heads["c"]["weight"])  # untrained head kept
    assert got[0]["norm.num_batches_tracked"].item() == 5  # integer buffer of the smallest key (client00)


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
@pytest.mark.parametrize("name, opts", CASES)
def test_arrival_order_never_changes_a_bit(name, opts, weighting):
    updates = _updates(9)
    keys = [f"client{i}" for i in range(len(updates))]
    first = _stream(updates, keys, weighting, name, opts, expect=keys)
    for seed in range(4):
        order = list(range(len(updates)))
        random.Random(seed).shuffle(order)
        again = _stream([updates[i] for i in order], [keys[i] for i in order], weighting, name, opts, expect=keys)
        _assert_groups(again, first)
    unannounced = _stream(updates[::-1], keys[::-1], weighting, name, opts)  # folded in sorted key order at the end
    _assert_groups(unannounced, first)


def test_in_order_terms_never_wait_and_early_ones_wait_or_spill(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(1000).astype(np.float32) for _ in range(10)]
    keys = [f"c{i}" for i in range(10)]
    ref = OrderedSum([400, 600])
    ref.expect(keys)
    for k, r in zip(keys, rows):
        ref.add(k, [r[:400], r[400:]], 1)
        assert not ref._waiting  # in order: folded at once
    expected = np.concatenate(ref.total())
    s = OrderedSum([400, 600], spill_dir=tmp_path, max_waiting=2)
    s.expect(keys)
    for i in range(9, 0, -1):  # everything but the first arrives early, in reverse
        s.add(keys[i], [rows[i][:400], rows[i][400:]], 1)
    assert len(s._waiting) == 9 and len(list(tmp_path.iterdir())) == 9 - 2  # 2 in RAM, the rest spilled
    s.add(keys[0], [rows[0][:400], rows[0][400:]], 1)
    assert not s._waiting and not list(tmp_path.iterdir())  # all folded, spill files gone
    assert np.array_equal(np.concatenate(s.total()), expected)


def test_skipped_terms_let_later_ones_fold_and_cannot_come_back():
    s = OrderedSum([3])
    s.expect(["a", "b", "c"])
    s.add("c", [np.ones(3, np.float32)], 2)
    assert "c" in s._waiting
    s.skip("a")
    s.skip("b")
    assert not s._waiting and s.weight == 2
    with pytest.raises(ValueError, match="skipped"):
        s.add("a", [np.ones(3, np.float32)], 1)
    with pytest.raises(ValueError, match="already added"):
        s.add("c", [np.ones(3, np.float32)], 1)


def test_clipping_in_add_matches_clipping_the_joined_update():
    body, heads = _reference()
    updates = _updates(6, ties=False)
    for u in updates:  # heads in the group's task order, as the old loop joined them
        u.heads = {t: u.heads[t] for t in TASKS if t in u.heads}
    clipped = []
    for u in updates:
        ref = {f"body.{k}": v for k, v in body.items()} | {f"heads.{t}.{k}": v for t in u.heads for k, v in heads[t].items()}
        new = {f"body.{k}": v for k, v in u.body.items()} | {f"heads.{t}.{k}": v for t, h in u.heads.items() for k, v in h.items()}
        c = clip_updates(ref, [new], 0.5)[0]
        clipped.append(ClientUpdate(u.node_id, {k: c[f"body.{k}"] for k in u.body},
                                    {t: {k: c[f"heads.{t}.{k}"] for k in h} for t, h in u.heads.items()}, u.examples))
    for name, opts in CASES:
        expected = fuse_group_stacked(heads, clipped, "uniform", make_reducer(name, **opts))
        got = _stream(updates, range(len(updates)), "uniform", name, opts, clip_norm=0.5)
        _assert_groups(got, expected, ulps=12 if name == "mean" else 0)


def test_key_order_of_a_client_state_does_not_matter():
    updates = _updates(5)
    shuffled = [ClientUpdate(u.node_id, dict(reversed(list(u.body.items()))),
                             {t: dict(reversed(list(h.items()))) for t, h in reversed(list(u.heads.items()))}, u.examples)
                for u in updates]
    for name, opts in CASES:
        a = _stream(updates, range(5), "examples", name, opts, clip_norm=0.3)
        b = _stream(shuffled, range(5), "examples", name, opts, clip_norm=0.3)
        _assert_groups(a, b)


def test_spilled_replies_give_the_same_result_and_are_removed(tmp_path):
    updates = _updates(7)
    for name, opts in CASES[1:]:
        in_ram = _stream(updates, range(7), "examples", name, opts)
        spilled = _stream(updates, range(7), "examples", name, opts, spill_dir=tmp_path / name)
        _assert_groups(spilled, in_ram)
        assert not [p for p in (tmp_path / name).rglob("*") if p.is_file()]


def test_heads_whose_holders_report_zero_examples_are_averaged_uniformly():
    body, heads = _reference()
    updates = [ClientUpdate(i, {k: v.clone() for k, v in body.items()}, {"a": {"weight": torch.full((2, 4), float(i)), "bias": torch.zeros(2)}},
                            {"a": 0, "b": 5}) for i in (1, 3)]
    for name in ("mean", "median", "trimmed-mean"):
        fusion = GroupFusion(body, heads, "examples", name, trim_fraction=0.0)
        for u in updates:
            fusion.add(u)
        assert torch.equal(fusion.result()[1]["a"]["weight"], torch.full((2, 4), 2.0))


def test_fuse_group_streams_known_reducers_and_falls_back_for_custom_ones():
    updates = _updates(6)
    _, heads = _reference()
    for name, opts in CASES:
        reduce = make_reducer(name, **opts)
        _assert_groups(fuse_group(heads, updates, "uniform", reduce), _stream(updates, range(6), "uniform", name, opts))

    def maximum(stacked, weights):
        return stacked.max(dim=0).values

    _assert_groups(fuse_group(heads, updates, "uniform", maximum), fuse_group_stacked(heads, updates, "uniform", maximum))


def test_bad_replies_are_refused():
    body, heads = _reference()
    u = _updates(1)[0]
    fusion = GroupFusion(body, heads)
    fusion.add(u, key="x")
    with pytest.raises(ValueError, match="already added"):
        fusion.add(u, key="x")
    with pytest.raises(ValueError, match="outside the group"):
        fusion.add(ClientUpdate(1, u.body, {"zzz": u.heads.get("a", {})}, {"zzz": 1}), key="y")
    with pytest.raises(ValueError, match="shape"):
        fusion.add(ClientUpdate(1, {**u.body, "conv.bias": torch.zeros(5)}, {}, {"a": 1}), key="z")
    with pytest.raises(ValueError, match="keys differ"):
        fusion.add(ClientUpdate(1, {"conv.bias": torch.zeros(4)}, {}, {"a": 1}), key="w")
    with pytest.raises(ValueError, match="at least one"):
        GroupFusion(body, heads).result()
    with pytest.raises(ValueError, match="aggregator"):
        GroupFusion(body, heads, aggregator="krum")
    with pytest.raises(ValueError, match="weighting"):
        GroupFusion(body, heads, weighting="median-ish")


def test_many_small_chunks_give_the_same_result(monkeypatch):
    from strategies.fusion import reply_store, streaming

    updates = _updates(8)
    keys = list(range(8))
    whole = {(n, str(o)): _stream(updates, keys, "examples", n, o) for n, o in CASES}
    monkeypatch.setattr(reply_store, "MIN_WIDTH", 3)
    monkeypatch.setattr(streaming, "WORKING_BYTES", 1)
    for n, o in CASES:
        _assert_groups(_stream(updates, keys, "examples", n, o), whole[(n, str(o))])


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_replies_as_received_packed_fold_in_one_pass_to_the_same_bits(weighting, monkeypatch):
    """A reply arrives packed (one flat array per dtype, tasks/packing.py) and is unpacked into
    views of it: the mean then folds the body's float32 tensors as one span. Same bits as the
    same replies held as separate tensors, which fold segment by segment."""
    from strategies.fusion import ordered_sum, streaming
    from tasks.packing import pack, unpack

    def as_received(u: ClientUpdate) -> ClientUpdate:
        buffers, layout = pack(u.body)
        return ClientUpdate(node_id=u.node_id, body=unpack(buffers, layout), heads=u.heads, examples=u.examples)

    runs: list[int] = []
    real = ordered_sum.float32_runs
    monkeypatch.setattr(streaming, "float32_runs", lambda ts: runs.append(len(out := real(ts))) or out)
    updates = _updates(9)
    keys = list(range(len(updates)))
    separate = _stream([_copied(u) for u in updates], keys, weighting, "mean", {})
    assert max(runs) == 5  # separately allocated: one piece per float tensor (5 in the body)
    runs.clear()
    packed = _stream([as_received(u) for u in updates], keys, weighting, "mean", {})
    # conv.weight, conv.bias, norm.running_mean lie back to back in the packed float32 array: one
    # run; the float16 tensor is converted (a copy) and so folds apart, then `scalar`
    assert 3 in runs and 5 not in runs, runs
    _assert_groups(packed, separate)


def test_float32_runs_join_only_what_lies_back_to_back():
    from strategies.fusion.ordered_sum import float32_runs

    a, b = torch.zeros(3), torch.zeros(3)
    assert [len(x) for x in float32_runs([a, b])] == [3, 3]  # separately allocated: two pieces
    flat = torch.arange(9, dtype=torch.float32)
    parts = [flat[:3], flat[3:4], flat[4:4], flat[4:7].reshape(3, 1), flat[7:8].to(torch.float64), flat[8:]]
    pieces = float32_runs(parts)
    assert [len(x) for x in pieces] == [7, 1, 1]  # the float64 tensor is converted and breaks the run
    assert np.array_equal(np.concatenate(pieces), np.arange(9, dtype=np.float32))
    assert not np.shares_memory(pieces[1], flat.numpy()) and np.shares_memory(pieces[0], flat.numpy())
    del flat, parts
    assert pieces[0][6] == 6  # the joined run keeps its tensors' memory alive
    assert [len(x) for x in float32_runs([torch.zeros(0), torch.zeros(0)])] == [0]
    negated = torch._neg_view(torch.arange(3, dtype=torch.float32))  # same bytes, other values
    assert np.array_equal(np.concatenate(float32_runs([negated])), [0, -1, -2])
    with pytest.raises(ValueError, match="layout"):
        OrderedSum([4, 4]).add("k", [np.zeros(3, np.float32), np.zeros(5, np.float32)], 1)  # not at a boundary


def _copied(u: ClientUpdate) -> ClientUpdate:
    return ClientUpdate(node_id=u.node_id, body={k: v.clone() for k, v in u.body.items()},
                        heads={t: {k: v.clone() for k, v in h.items()} for t, h in u.heads.items()}, examples=u.examples)
