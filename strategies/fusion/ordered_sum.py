"""Weighted sums of float32 vectors, folded in a fixed order whatever order they arrive in.

Why: float addition is not associative, so a mean folded in arrival order changes in its last
bits when replies arrive in another order, and a run would not be reproducible for its seed.
An exact, order-free sum is possible but costs several passes per element; a plain in-place
float32 add is one. So the order is fixed instead: the caller says which keys to expect, in
their canonical order (`expect`); a term is folded as soon as every term before it has arrived
or been given up (`skip`); a term that arrives early waits — in RAM up to `max_waiting` terms,
then in a spill file under `spill_dir` — until its turn. Replies of a round mostly arrive in
the order they were sent, so little ever waits: memory stays one accumulator, not one vector
per client, and the result is bitwise the same for every arrival order.

Keys never announced by `expect` (or all keys, if it is never called) are folded at `total()`
in sorted order after the announced ones. Accumulation is in float32 (one pass per term, like a
plain sum), so the sum carries the usual float32 rounding: at most about K * 2^-24 relative to
the sum of magnitudes for K terms, typically sqrt(K) times less. The passes are torch's
in-place element-wise ops on the same memory (`torch.from_numpy` views): each element is one
correctly rounded float32 add (or multiply, then add), exactly numpy's result, but spread over
torch's threads, so a coordinator with several cores folds a reply at memory speed.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import warnings
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch


SCALE_CHUNK = 1 << 18  # floats (1 MB) of a weighted term scaled at a time: read back from cache, not from memory


class OrderedSum:
    """sum_i w_i * x_i over float32 vectors given as per-tensor segments (layout `sizes`)."""

    def __init__(self, sizes: Sequence[int], spill_dir: str | os.PathLike | None = None, max_waiting: int = 4) -> None:
        self.sizes = [int(s) for s in sizes]
        # One accumulator, seen per segment: a term whose segments lie back to back in one buffer
        # (a reply unpacked from its packed array, tasks/packing.py) folds in one pass over it.
        self._offsets = [0, *np.cumsum(self.sizes).tolist()]
        self._flat = np.zeros(self._offsets[-1], np.float32)
        self.acc = [self._flat[a:b] for a, b in zip(self._offsets, self._offsets[1:])]
        self._bounds = set(self._offsets)
        self.weight = 0
        self.count = 0
        self.max_waiting = max_waiting
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        self._order: list[Hashable] = []
        self._announced: set[Hashable] = set()
        self._next = 0  # position in _order of the next term to fold
        self._waiting: dict[Hashable, tuple[object, int]] = {}  # key -> (segments or spill path, weight)
        self._done: set[Hashable] = set()  # folded or skipped
        self._added: set[Hashable] = set()

    # -- the order -------------------------------------------------------------------------------

    def expect(self, keys: Iterable[Hashable]) -> None:
        """Announce terms that may arrive, in the order they are to be folded (appended)."""
        for k in keys:
            if k not in self._announced:
                self._announced.add(k)
                self._order.append(k)
        self._drain()

    def skip(self, key: Hashable) -> None:
        """This term will never come (the client failed, timed out or was refused)."""
        if key in self._added:
            raise ValueError(f"term {key!r} already arrived; it cannot be skipped")
        self._done.add(key)
        self._drain()

    # -- terms -----------------------------------------------------------------------------------

    def add(self, key: Hashable, pieces: Sequence[np.ndarray], weight: int) -> None:
        """Fold (or, if terms before it are still out, hold) one term, given as float32 pieces
        that cover the layout in order, each one or more whole segments (`float32_runs` joins
        the segments that lie back to back in memory). The pieces are read, never written; the
        caller must not change them afterwards."""
        if key in self._added:
            raise ValueError(f"a term with key {key!r} was already added")
        if key in self._done:
            raise ValueError(f"term {key!r} was skipped; it cannot be added")
        self._check_pieces(pieces)
        self._added.add(key)
        self.count += 1
        self._waiting[key] = (list(pieces), int(weight))
        self._drain()
        if key in self._waiting:  # early: it waits for the terms before it
            self._hold(key)

    def _check_pieces(self, pieces: Sequence[np.ndarray]) -> None:
        at = 0
        for x in pieces:
            at += len(x)
            if at not in self._bounds or x.dtype != np.float32 or x.ndim != 1:
                break
        else:
            if at == self._offsets[-1]:
                return
        raise ValueError("term does not match the sum's layout")

    def _hold(self, key: Hashable) -> None:
        in_ram = sum(isinstance(v, list) for v, _ in self._waiting.values())
        if self.spill_dir is None or in_ram <= self.max_waiting:
            return  # waits in RAM (the caller's arrays, which it has handed over)
        segments, w = self._waiting[key]
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="waiting-", suffix=".f32", dir=self.spill_dir)
        with os.fdopen(fd, "wb") as f:
            for x in segments:  # type: ignore[union-attr]
                f.write(memoryview(np.ascontiguousarray(x, dtype=np.float32)))
        self._waiting[key] = (Path(name), w)

    def _load(self, held: object) -> list[np.ndarray]:
        if isinstance(held, list):
            return held
        flat = np.fromfile(held, dtype=np.float32)  # type: ignore[arg-type]
        Path(held).unlink(missing_ok=True)  # type: ignore[arg-type]
        return [flat]

    def _fold(self, key: Hashable) -> None:
        held, w = self._waiting.pop(key)
        pieces = self._load(held)  # (a spilled term's file is removed here)
        at = 0
        for x in pieces:
            acc = self._flat[at:at + len(x)]
            at += len(x)
            if w == 1:
                _view(acc).add_(_view(x))  # one in-place pass, like a plain sum
            elif w:
                # multiply, round, then add (not a fused multiply-add: the same bits as numpy), a
                # cache-sized chunk at a time so the scaled chunk is read back from cache
                scale = float(np.float32(w))
                for a in range(0, len(x), SCALE_CHUNK):
                    part = _view(x[a:a + SCALE_CHUNK])
                    scaled = torch.mul(part, scale, out=_view(self._scratch(len(part))))
                    _view(acc[a:a + SCALE_CHUNK]).add_(scaled)
        self.weight += w
        self._done.add(key)

    def _scratch(self, n: int) -> np.ndarray:
        """A reusable buffer for weighted terms (no allocation per term)."""
        if getattr(self, "_buf", None) is None or len(self._buf) < n:
            self._buf = np.empty(n, np.float32)
        return self._buf[:n]

    def _drain(self) -> None:
        while self._next < len(self._order):
            key = self._order[self._next]
            if key in self._waiting:
                self._fold(key)
            elif key not in self._done:
                return
            self._next += 1

    # -- result ----------------------------------------------------------------------------------

    def total(self) -> list[np.ndarray]:
        """The sum, per segment, after folding every term that arrived (announced ones first, in
        their order; the others in sorted key order). Missing announced terms count as skipped."""
        for key in self._order[self._next:]:
            if key in self._waiting:
                self._fold(key)
        self._next = len(self._order)
        for key in sorted(self._waiting, key=repr):
            self._fold(key)
        return self.acc

    def close(self) -> None:
        """Delete spill files of terms that never got their turn."""
        for held, _ in self._waiting.values():
            if isinstance(held, Path):
                held.unlink(missing_ok=True)
        self._waiting.clear()


def float32_runs(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The tensors as flat float32 arrays, in order, with those that lie back to back in memory
    joined into one array: a reply unpacked from its packed array (tasks/packing.py) is one, so
    it folds in one pass and with a few Python calls, not a dozen per tensor. A tensor that is
    not a contiguous float32 CPU tensor is converted (a copy) and breaks the run. Each array
    keeps its tensors alive and shares their memory; it is only ever read."""
    pieces: list[np.ndarray] = []
    run: list[torch.Tensor] = []
    start = end = 0

    def close() -> None:
        if len(run) == 1:
            pieces.append(run[0].detach().numpy().reshape(-1))  # a contiguous float32 CPU tensor: a view
        elif run and end == start:
            pieces.append(np.empty(0, np.float32))
        elif run:
            buf = (ctypes.c_char * (end - start)).from_address(start)
            buf._owners = tuple(run)  # type: ignore[attr-defined]  # the memory lives while the array does
            pieces.append(np.frombuffer(buf, dtype=np.float32))
        run.clear()

    for t in tensors:
        n = t.numel()
        # (a lazily negated view, `is_neg`, holds bytes that are not its values: converted too)
        if not (t.is_cpu and t.dtype is torch.float32 and t.is_contiguous()) or t.is_neg():
            close()
            pieces.append(_flat32(t))
            continue
        if n == 0 and run:
            run.append(t)  # adds nothing to the span
            continue
        at = t.data_ptr()
        if not run or at != end:
            close()
            start = at
        run.append(t)
        end = at + 4 * n
    close()
    return pieces


def _flat32(t: torch.Tensor) -> np.ndarray:
    t = t.detach().resolve_neg()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.reshape(-1).contiguous().numpy()


def _view(a: np.ndarray) -> torch.Tensor:
    """The array's memory as a float32 tensor, no copy (a read-only term is only ever read)."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(a)
