"""Packed model messages: a state dict travels as ONE flat 1-D buffer per dtype plus its layout.

Why: Flower 1.42 makes every Array of an ArrayRecord its own transport object (plus a chunk per
5 MB), fetched with one HTTPS request each, two at a time. A model sent tensor by tensor costs
dozens of requests a message; packed, it costs one array (and its chunks) per dtype.

The wire form, both directions (coordinator -> client models, client -> coordinator updates):

* buffers: ``{dtype name: 1-D numpy array}``, e.g. ``{"float32": ..., "int64": ...}``: the
  tensors of that dtype, flattened (C order) and concatenated in layout order. A dtype the
  layout names has a buffer even when all its tensors are empty; no other buffer exists.
* layout: ``{"names": [str], "dtypes": [str], "ranks": [int], "dims": [int]}`` (plain lists, as
  Flower's ConfigRecord takes them): tensor i is ``names[i]``, of numpy dtype ``dtypes[i]`` and
  shape ``dims[sum(ranks[:i]) : sum(ranks[:i + 1])]``.

No Flower import: the Flower records are built from these plain values by a line in
`coordinator/messaging.py` and `client/app.py`. A model the coordinator sends carries its layout
as entries of the message's config record (`layout_entries`); an update a client sends back
carries none: the coordinator unpacks it with the layout of the model it sent. Parsing a layout (`Layout.from_wire`) is safe on
untrusted input: it only ever raises ValueError, before anything is allocated. Checking a layout
against the one that was expected is the coordinator's job (`coordinator/replies.py`).
Dtypes are numpy's (torch's bfloat16 has no numpy twin and cannot be packed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

LAYOUT_KEYS = ("names", "dtypes", "ranks", "dims")
MAX_RANK = 32  # numpy's own limit is 64; no model tensor comes close
_SHOWN = 80  # characters of an untrusted name shown in an error


def _cut(text: object) -> str:
    s = str(text)
    return repr(s if len(s) <= _SHOWN else s[:_SHOWN] + "...")


@dataclass(frozen=True)
class Layout:
    """Names, dtypes and shapes of a packed state, in packing order."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        """The layout `pack` writes for `state` (its order)."""
        return cls(tuple(state), tuple(_dtype_name(t) for t in state.values()),
                   tuple(tuple(int(d) for d in t.shape) for t in state.values()))

    def to_wire(self) -> dict[str, list]:
        return {"names": list(self.names), "dtypes": list(self.dtypes),
                "ranks": [len(s) for s in self.shapes], "dims": [d for s in self.shapes for d in s]}

    @classmethod
    def from_wire(cls, wire: Mapping[str, object]) -> Layout:
        """Parse a layout someone else wrote. Raises ValueError (and nothing else) naming the
        first structural problem: keys, list types, entry types, negative sizes, lengths."""
        keys = list(wire.keys())
        extra = [k for k in keys if k not in LAYOUT_KEYS]
        if extra:
            raise ValueError(f"unexpected layout entries {', '.join(_cut(k) for k in extra[:5])}")
        missing = [k for k in LAYOUT_KEYS if k not in keys]
        if missing:
            raise ValueError(f"layout lacks {', '.join(missing)}")
        lists = {}
        for key, kind in (("names", str), ("dtypes", str), ("ranks", int), ("dims", int)):
            value = wire[key]
            if not isinstance(value, list):
                raise ValueError(f"layout {key} is a {type(value).__name__}, not a list")
            bad = next((v for v in value if not isinstance(v, kind) or isinstance(v, bool)), None)
            if bad is not None:
                raise ValueError(f"layout {key} holds {_cut(bad)} ({type(bad).__name__}), not {kind.__name__}s")
            lists[key] = value
        names, dtypes, ranks, dims = (lists[k] for k in LAYOUT_KEYS)
        if not len(names) == len(dtypes) == len(ranks):
            raise ValueError(f"layout lists {len(names)} names, {len(dtypes)} dtypes and {len(ranks)} ranks")
        if any(r < 0 or r > MAX_RANK for r in ranks):
            raise ValueError(f"layout ranks must lie in 0..{MAX_RANK}")
        if sum(ranks) != len(dims):
            raise ValueError(f"layout ranks add up to {sum(ranks)}, but {len(dims)} dims are listed")
        if any(d < 0 for d in dims):
            raise ValueError("layout has a negative dimension")
        shapes, at = [], 0
        for r in ranks:
            shapes.append(tuple(dims[at:at + r]))
            at += r
        return cls(tuple(names), tuple(dtypes), tuple(shapes))

    def counts(self) -> dict[str, int]:
        """Elements per dtype (the length of its buffer), dtypes in order of first use."""
        out: dict[str, int] = {}
        for dtype, shape in zip(self.dtypes, self.shapes):
            out[dtype] = out.get(dtype, 0) + math.prod(shape)
        return out


def layout_entries(wire: Mapping[str, list], prefix: str) -> dict[str, list]:
    """A layout's wire form as entries of a config record beside other entries: "<prefix>.names",
    ... (a message then carries one record fewer, and every record is one more request)."""
    return {f"{prefix}.{k}": wire[k] for k in LAYOUT_KEYS}


def layout_from_entries(config: Mapping[str, object], prefix: str) -> dict[str, object]:
    """The wire form `layout_entries` wrote under `prefix` (the entries present; `Layout.from_wire`
    names the missing ones)."""
    return {k: config[f"{prefix}.{k}"] for k in LAYOUT_KEYS if f"{prefix}.{k}" in config}


def _dtype_name(t: torch.Tensor) -> str:
    return str(torch.empty(0, dtype=t.dtype).numpy().dtype)


def pack(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """(buffers, layout wire form) of `state`, in its order; the tensors' bits are copied as is."""
    parts: dict[str, list[np.ndarray]] = {}
    for t in state.values():
        flat = t.detach().cpu().reshape(-1).numpy()
        parts.setdefault(str(flat.dtype), []).append(flat)
    buffers = {dtype: np.concatenate(ps) if len(ps) > 1 else ps[0].copy() for dtype, ps in parts.items()}
    return buffers, Layout.of(state).to_wire()


def unpack(buffers: Mapping[str, np.ndarray], layout: Layout | Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The state `pack` packed, in layout order. Raises ValueError when buffers and layout do not
    fit (a buffer missing or extra, of another dtype or length). The tensors are views of one
    writable copy per buffer."""
    if not isinstance(layout, Layout):
        layout = Layout.from_wire(layout)
    if len(set(layout.names)) != len(layout.names):
        raise ValueError("layout lists a name twice")
    counts = layout.counts()
    if set(buffers) != set(counts):
        raise ValueError(f"buffers {sorted(buffers)} for a layout of dtypes {sorted(counts)}")
    flat: dict[str, np.ndarray] = {}
    for dtype, n in counts.items():
        buf = buffers[dtype]
        if not isinstance(buf, np.ndarray) or buf.ndim != 1 or str(buf.dtype) != dtype or buf.shape[0] != n:
            raise ValueError(f"buffer {dtype}: {getattr(buf, 'dtype', type(buf).__name__)} "
                             f"{getattr(buf, 'shape', '')}, the layout needs {n} {dtype}")
        flat[dtype] = buf if buf.flags.writeable else buf.copy()
    state: dict[str, torch.Tensor] = {}
    at = dict.fromkeys(counts, 0)
    for name, dtype, shape in zip(layout.names, layout.dtypes, layout.shapes):
        n = math.prod(shape)
        state[name] = torch.from_numpy(flat[dtype][at[dtype]:at[dtype] + n].reshape(shape))
        at[dtype] += n
    return state
