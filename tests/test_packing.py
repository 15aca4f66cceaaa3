"""Packed model messages (tasks.packing) and the coordinator's checks of a packed reply
(coordinator.replies._decode_packed): round trips are bitwise, every lie is refused and named,
and nothing raises."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord

from coordinator.messaging import packed_records
from coordinator.replies import _decode_packed, _read_npy
from tasks.packing import Layout, layout_entries, layout_from_entries, pack, unpack
from tasks.registry import load_suite


def _mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "body.w": torch.randn(4, 3, generator=g),
        "body.bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),  # rank 0
        "body.empty": torch.zeros(0, 5),
        "body.b": torch.tensor([-0.0, float("nan"), float("inf"), 1e-45]),  # bits that must survive
        "body.mask": torch.tensor([True, False, True]),
        "heads.t.counts": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "heads.t.w": torch.randn(2, 2, generator=g).t(),  # not contiguous
        "heads.t.half": torch.randn(3, generator=g).half(),
    }


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def test_round_trip_is_bitwise_in_order_with_one_buffer_per_dtype():
    state = _mixed()
    buffers, layout = pack(state)
    assert list(buffers) == ["float32", "int64", "bool", "float16"]  # dtypes in order of first use
    assert all(b.ndim == 1 for b in buffers.values())
    assert buffers["float32"].shape == (12 + 0 + 4 + 4,) and buffers["int64"].shape == (7,)
    assert layout["names"] == list(state) and layout["ranks"] == [2, 0, 2, 1, 1, 2, 2, 1]
    back = unpack(buffers, layout)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert _bits(back[k]) == _bits(v), k


def test_round_trip_through_flower_records_and_a_real_model():
    state = load_suite("tiny").build_model().state_dict()
    arrays, layout = packed_records(state)
    assert list(arrays.keys()) == ["float32"] and layout == pack(state)[1]
    config = ConfigRecord({"round": 3} | layout_entries(layout, "layout.2"))  # as a message carries it
    assert layout_from_entries(dict(config), "layout.2") == layout and layout_from_entries(dict(config), "layout") == {}
    back = unpack({k: a.numpy() for k, a in arrays.items()}, layout_from_entries(dict(config), "layout.2"))
    assert list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())
    # the packed tensors do not alias the originals: changing one does not change the other
    back["body.features.0.weight"].add_(1.0)
    assert not torch.equal(back["body.features.0.weight"], state["body.features.0.weight"])


def test_empty_states_and_all_empty_dtypes():
    buffers, layout = pack({})
    assert buffers == {} and unpack(buffers, layout) == {}
    buffers, layout = pack({"a": torch.zeros(0), "b": torch.zeros(3, 0, dtype=torch.int64)})
    assert {k: v.shape for k, v in buffers.items()} == {"float32": (0,), "int64": (0,)}
    back = unpack(buffers, layout)
    assert back["a"].shape == (0,) and back["b"].shape == (3, 0) and back["b"].dtype == torch.int64


@pytest.mark.parametrize("forge, message", [
    (lambda b, l: b.pop("int64"), "buffers"),
    (lambda b, l: b.update(extra=np.zeros(1, np.float32)), "buffers"),
    (lambda b, l: b.update(float32=b["float32"][:-1]), "the layout needs"),
    (lambda b, l: b.update(float32=b["float32"].astype(np.float64)), "the layout needs"),
    (lambda b, l: l["names"].__setitem__(1, l["names"][0]), "twice"),
    (lambda b, l: l.update(dims=[str(d) for d in l["dims"]]), "not ints"),
    (lambda b, l: l.update(ranks=l["ranks"][:-1]), "ranks"),
    (lambda b, l: l["dims"].__setitem__(0, -4), "negative"),
    (lambda b, l: l.update(extra=[1]), "unexpected layout entries"),
    (lambda b, l: l.pop("dtypes"), "lacks dtypes"),
    (lambda b, l: l.update(names="body.w"), "not a list"),
    (lambda b, l: l.update(ranks=[True] * len(l["ranks"])), "not ints"),
])
def test_unpack_refuses_buffers_and_layouts_that_do_not_fit(forge, message):
    buffers, layout = pack(_mixed())
    forge(buffers, layout)
    with pytest.raises(ValueError, match=message):
        unpack(buffers, layout)


# ----------------------------------------------------------------------------- the coordinator's checks


def _expected() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"body.w": torch.randn(4, 3, generator=g), "body.b": torch.randn(4, generator=g),
            "body.n": torch.tensor(3, dtype=torch.int64), "heads.t1.w": torch.randn(2, 4, generator=g),
            "heads.t1.b": torch.randn(2, generator=g)}


def _reply(state=None, layout_edit=None, array_edit=None):
    arrays, layout = packed_records(state if state is not None else _expected())
    wire = dict(layout)
    if layout_edit:
        layout_edit(wire)
    if array_edit:
        array_edit(arrays)
    return arrays, ConfigRecord(wire)


@pytest.mark.parametrize("with_layout", [False, True])
def test_an_honest_packed_reply_decodes_bitwise(with_layout):
    """fedmtl's client sends no layout (the coordinator knows it); one that is sent is checked."""
    arrays, layout = _reply()
    state, problems = _decode_packed(arrays, layout if with_layout else None, _expected(), "model")
    assert problems == [] and list(state) == list(_expected())
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in _expected().items())


def _f32(arrays) -> Array:
    return arrays["float32"]


def _npy(shape, payload: bytes, descr="<f4") -> bytes:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False, "shape": shape})
    return head.getvalue() + payload


def _swap(d: dict, key: str, i: int, j: int) -> None:
    d[key][i], d[key][j] = d[key][j], d[key][i]


LIES = {
    "extra name": (lambda l: (l["names"].append("heads.t3.weight"), l["dtypes"].append("float32"),
                              l["ranks"].append(1), l["dims"].append(2)), None,
                   ["model: layout names 'heads.t3.weight' not expected"]),
    "missing name": (lambda l: [l[k].pop() for k in ("names", "dtypes", "ranks", "dims")], None,
                     ["model: layout lacks 'heads.t1.b'"]),
    "duplicate": (lambda l: l["names"].__setitem__(4, "heads.t1.w"), None,
                  ["model: layout lacks 'heads.t1.b'", "model: layout lists 'heads.t1.w' more than once"]),
    "foreign head": (lambda l: l.update(names=[n.replace("heads.t1.", "heads.t9.") for n in l["names"]]), None,
                     ["model: layout names 'heads.t9.w', 'heads.t9.b' not expected",
                      "model: layout lacks 'heads.t1.w', 'heads.t1.b'"]),
    "order": (lambda l: _swap(l, "names", 0, 1), None,
              ["model: layout order differs from the model's (position 0: 'body.b', expected 'body.w')"]),
    "dtype": (lambda l: l["dtypes"].__setitem__(2, "float32"), None,
              ["model.body.n: layout dtype float32, expected int64"]),
    "huge shape": (lambda l: l["dims"].__setitem__(2, 10**12), None,
                   ["model.body.b: layout shape (1000000000000,), expected (4,)"]),
    "negative size": (lambda l: l["dims"].__setitem__(2, -1), None, ["model: layout has a negative dimension"]),
    "non-int dims": (lambda l: l.update(dims=[float(d) for d in l["dims"]]), None,
                     ["model: layout dims holds '4.0' (float), not ints"]),
    "lengths": (lambda l: l["dtypes"].pop(), None, ["model: layout lists 5 names, 4 dtypes and 5 ranks"]),
    "ranks vs dims": (lambda l: l["dims"].append(1), None, ["model: layout ranks add up to 6, but 7 dims are listed"]),
    "rank too large": (lambda l: l["ranks"].__setitem__(0, 10**9), None, ["model: layout ranks must lie in 0..32"]),
    "no layout entries": (lambda l: l.clear(), None, ["model: layout lacks names, dtypes, ranks, dims"]),
    "array missing": (None, lambda a: a.pop("int64"), ["model: no int64 array for the model's int64 tensors"]),
    "array extra": (None, lambda a: a.__setitem__("float64", Array(np.zeros(2))), None),
    "array short": (None, lambda a: a.__setitem__("float32", Array(_f32(a).numpy()[:-1])),
                    ["model.float32: shape (25,), expected (26,) (the 26 elements of the model it was sent)"]),
    "array dtype": (None, lambda a: a.__setitem__("float32", Array(_f32(a).numpy().astype(np.float64))),
                    ["model.float32: dtype float64, expected float32"]),
    "array oversized": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray", data=_f32(a).data * 100)), None),
    "stype": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="pickle", data=_f32(a).data)), None),
    "npy header lies": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray", data=_npy((10**12,), _f32(a).numpy().tobytes()))), None),
    "npy big-endian": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray",
        data=_npy((26,), _f32(a).numpy().astype(">f4").tobytes(), ">f4"))), None),
    "npy short payload": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray", data=_npy((26,), b"\0" * 100))), None),
    "npy garbage": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray", data=b"\x93NUMPY\x01\x00\x10\x00{'descr': ]]]]]]]]")), None),
    "not npy": (None, lambda a: a.__setitem__("float32", Array(
        dtype="float32", shape=(26,), stype="numpy.ndarray", data=b"hello")), None),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_every_lie_in_a_packed_reply_is_refused_and_named_without_raising(lie):
    layout_edit, array_edit, exact = LIES[lie]
    state, problems = _decode_packed(*_reply(layout_edit=layout_edit, array_edit=array_edit), _expected(), "model")
    assert state == {} and problems and all(isinstance(p, str) and p.startswith("model") for p in problems), problems
    if exact is not None:
        assert all(e in problems for e in exact), problems


@pytest.mark.parametrize("lie", sorted(k for k, (layout_edit, _, _) in LIES.items() if layout_edit is None))
def test_array_lies_are_refused_without_a_layout_record_too(lie):
    _, array_edit, exact = LIES[lie]
    arrays, _ = _reply(array_edit=array_edit)
    state, problems = _decode_packed(arrays, None, _expected(), "model")
    assert state == {} and problems and all(p.startswith("model") for p in problems), problems
    if exact is not None:
        assert all(e in problems for e in exact), problems


def test_a_layout_record_of_the_wrong_shape_is_refused():
    arrays, _ = packed_records(_expected())
    for layout in (ConfigRecord({"names": "x"}), ConfigRecord({"names": [1, 2], "dtypes": ["a"], "ranks": [0], "dims": []})):
        state, problems = _decode_packed(arrays, layout, _expected(), "model")
        assert state == {} and problems


def test_read_npy_checks_the_header_before_allocating():
    good = io.BytesIO()
    np.save(good, np.arange(3, dtype=np.float32))
    assert _read_npy(good.getvalue(), "float32", (3,)).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="header says"):
        _read_npy(_npy((10**15,), b""), "float32", (3,))
    with pytest.raises(ValueError, match="payload"):
        _read_npy(good.getvalue() + b"\0\0\0\0", "float32", (3,))


def test_layout_of_a_state_lists_every_tensor_in_order():
    layout = Layout.of(_expected())
    assert layout.names == tuple(_expected()) and layout.counts() == {"float32": 26, "int64": 1}
    assert Layout.from_wire(layout.to_wire()) == layout


def test_outbox_packs_each_group_model_once_and_shares_it_across_messages():
    from coordinator.config import RunConfig
    from coordinator.messaging import Outbox
    from coordinator.state import TaskGroup
    from tasks import protocol as P
    from tasks.models import split_state
    from testbed.inprocess import InProcessGrid

    InProcessGrid(0)  # stamps this process with the task identity Flower's Message needs
    suite = load_suite("tiny")
    body, heads = split_state(suite.build_model().state_dict())
    group = TaskGroup(0, list(suite.task_names), body, heads)
    outbox = Outbox(RunConfig.from_dict({"suite": "tiny"}), 1)
    (a, _), (b, _) = outbox.train(1, group, suite.task_names[:1], {}), outbox.train(2, group, suite.task_names[1:], {})
    (e, _) = outbox.evaluate(3, [(group, suite.task_names)])
    assert a.content[P.MODEL] is b.content[P.MODEL] is e.content[P.group_key(P.MODEL, 0)]
    assert list(a.content.keys()) == [P.MODEL, P.CONFIG]  # the layout rides in the config: no record of its own
    layout = layout_from_entries(dict(a.content[P.CONFIG]), P.LAYOUT)
    assert layout == layout_from_entries(dict(e.content[P.CONFIG]), P.group_key(P.LAYOUT, 0))
    assert list(a.content[P.MODEL].keys()) == ["float32"]
    assert layout["names"] == list(group.state_for(group.tasks))
    group.version += 1  # new weights: packed again
    assert outbox.train(1, group, suite.task_names, {})[0].content[P.MODEL] is not a.content[P.MODEL]
