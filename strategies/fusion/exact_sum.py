"""An exact, arrival-order-independent weighted sum of float32 vectors in O(parameters) memory.

Why exact: replies arrive in any order and are folded as they come, so the only way a running
sum can be bitwise reproducible without holding the replies is for every partial sum to be
exact (integer-like arithmetic is associative; rounded float addition is not). Folding float32
values in float32 rounds at almost every step, so float32 accumulation is out however fast it is.

When float64 accumulation is exact. A term is t = w * x, x float32 (24-bit significand), w an
integer weight <= 2**24, so t is exact in float64 and a multiple of lowbit(x) >= 2**(E_min - 150)
(E = the float32 exponent field). Every partial sum P of a coordinate is then a multiple of
2**(E_min - 150), and is exactly representable when |P| <= 2**53 * 2**(E_min - 150). Since
|P| <= W * 2**(E_max - 126) (W = the sum of the weights folded so far), all partial sums are exact
when

    E_max - E_min <= 29 - ceil(log2 W)

over the non-zero values of that coordinate: with uniform weights and 128 clients, the values of
one coordinate may span 22 binades (a factor of 4 million). What breaks it: values of one
coordinate that differ enormously in magnitude (1e-30 beside 1.0, subnormals), and large
example-count weights (W = 2**19 leaves 10 binades).

How it stays exact anyway. Per coordinate we track the largest and smallest non-zero |x| (as
float32 bit patterns, which order like magnitudes). Before a batch of terms is folded, every
coordinate whose range could break the bound above is *escalated*: its float64 sum so far (still
exact) and all its later terms go to an exact binned accumulator (11 float64 bins, 32 bits apart,
that together cover every product of a float32 and a weight <= 2**24; each bin's sum is exact for
up to 2**21 terms). The final value of every coordinate is fl64(S), S the exact sum, rounded
once to nearest (math.fsum over the bins for escalated coordinates); so the result depends only
on the multiset of (weight, vector) pairs, never on their order or on which coordinates escalated.

`certify=False` drops the tracking and the escalation (about half the cost): the result is then
bitwise order-independent only where the bound above holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

CHUNK = 1 << 15  # coordinates per step: the float64 chunk and its trackers stay in L2 cache
MAX_WEIGHT = 1 << 24  # w * x is exact in float64 for integer w up to here
MAX_TERMS = 1 << 21  # each bin's sum is exact for this many terms

_ABS = np.uint32(0x7FFFFFFF)
_ONE = np.uint32(1)
_NO_VALUE = np.uint32(0xFFFFFFFF)  # "min of |x| - 1" before any non-zero value (0 - 1 wraps)

# Bins: bin j collects multiples of 2**_BIN_EXP[j] below 2**(_BIN_EXP[j] + 32) in magnitude.
# 2**-160 is below every float32 bit (2**-149); 2**160 * 2**51 bounds any weighted float32 term.
_BIN_EXP = [-160 + 32 * j for j in range(11)]
# Adding then subtracting 1.5 * 2**(e + 52) rounds a float64 |r| < 2**(e + 51) to a multiple of 2**e.
_SPLIT = [np.float64(1.5 * 2.0 ** (e + 52)) for e in _BIN_EXP]


def range_limit(total_weight: int) -> int:
    """The largest binade span E_max - E_min for which float64 sums up to `total_weight` are exact."""
    return 29 - max(0, math.ceil(math.log2(total_weight))) if total_weight > 1 else 29


def split_into_bins(values: np.ndarray) -> np.ndarray:
    """Split float64 values (multiples of 2**-149, |v| < 2**211) exactly into 11 aligned pieces."""
    rest = values.astype(np.float64, copy=True)
    out = np.empty((len(_BIN_EXP), len(values)), dtype=np.float64)
    for j in range(len(_BIN_EXP) - 1, -1, -1):
        piece = (rest + _SPLIT[j]) - _SPLIT[j]
        out[j] = piece
        rest -= piece
    return out


@dataclass
class _Escalated:
    """Coordinates of one chunk summed exactly in bins: local indices (sorted) and bins [11, m]."""

    index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    bins: np.ndarray = field(default_factory=lambda: np.empty((len(_BIN_EXP), 0), dtype=np.float64))

    def extend(self, new_index: np.ndarray, values: np.ndarray) -> None:
        index = np.concatenate([self.index, new_index])
        bins = np.concatenate([self.bins, split_into_bins(values)], axis=1)
        order = np.argsort(index, kind="stable")
        self.index, self.bins = index[order], bins[:, order]

    def add(self, terms: np.ndarray) -> None:
        self.bins += split_into_bins(terms)


class ExactSum:
    """Exact sum of weighted float32 vectors laid out as segments (one per tensor) of a flat vector.

    `add_batch([(arrays, weight), ...])` folds updates; `arrays` holds one 1-D float32 array per
    segment, in layout order. `total()` returns fl64(sum of weight * vector) per coordinate.
    """

    def __init__(self, sizes: Sequence[int], certify: bool = True) -> None:
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.certify = certify
        self.acc = np.zeros(n, dtype=np.float64)
        self.max_bits = np.zeros(n, dtype=np.uint32) if certify else None
        self.min_bits = np.full(n, _NO_VALUE, dtype=np.uint32) if certify else None
        self.escalated: dict[int, _Escalated] = {}  # global chunk start -> its escalated coordinates
        self.weight = 0  # sum of the weights folded so far
        self.terms = 0
        self._u32 = np.empty(CHUNK, dtype=np.uint32)
        self._f64 = np.empty(CHUNK, dtype=np.float64)
        self._bool = np.empty(CHUNK, dtype=bool)  # preallocated: per-chunk temporaries fragment the heap

    @property
    def escalated_count(self) -> int:
        return sum(len(e.index) for e in self.escalated.values())

    def add_batch(self, batch: Sequence[tuple[Sequence[np.ndarray], int]]) -> None:
        batch = [(arrays, int(w)) for arrays, w in batch if w != 0]
        if not batch:
            return
        for arrays, w in batch:
            if not 0 < w <= MAX_WEIGHT:
                raise ValueError(f"exact fusion needs integer weights in [0, {MAX_WEIGHT}], got {w}")
            if len(arrays) != len(self.sizes) or any(a.shape != (s,) for a, s in zip(arrays, self.sizes)):
                raise ValueError("update does not match the accumulator's layout")
            if any(a.dtype != np.float32 for a in arrays):
                raise ValueError("exact fusion sums float32 arrays")
        self.weight += sum(w for _, w in batch)
        self.terms += len(batch)
        if self.terms > MAX_TERMS:
            raise ValueError(f"more than {MAX_TERMS} terms in one exact sum")
        # The bound for partial sums up to the new total weight, as a difference of bit patterns:
        # max_bits - min_bits > (limit << 23) + 1 means the exponents may differ by more than limit.
        limit = range_limit(self.weight)
        threshold = np.uint32((limit << 23) + 1) if limit >= 0 else np.uint32(0)
        for seg, size in enumerate(self.sizes):
            base = int(self.offsets[seg])
            for lo in range(0, size, CHUNK):
                hi = min(lo + CHUNK, size)
                self._fold_chunk(base + lo, [(arrays[seg][lo:hi], w) for arrays, w in batch], threshold)

    def _fold_chunk(self, start: int, parts: list[tuple[np.ndarray, int]], threshold: np.uint32) -> None:
        n = len(parts[0][0])
        acc = self.acc[start:start + n]
        if self.certify:
            self._certify_chunk(start, n, acc, parts, threshold)
        tmp = self._f64[:n]
        for x, w in parts:
            if w == 1:
                np.add(acc, x, out=acc)
            else:
                np.multiply(x, np.float64(w), out=tmp)
                np.add(acc, tmp, out=acc)
        esc = self.escalated.get(start)
        if esc is not None:
            for x, w in parts:
                esc.add(x[esc.index].astype(np.float64) * np.float64(w))

    def _certify_chunk(self, start: int, n: int, acc: np.ndarray, parts, threshold: np.uint32) -> None:
        """Track |x| ranges; escalate coordinates whose next partial sums might round."""
        mx = self.max_bits[start:start + n]
        mn = self.min_bits[start:start + n]
        bits = self._u32[:n]
        for x, _ in parts:
            np.bitwise_and(x.view(np.uint32), _ABS, out=bits)
            np.maximum(mx, bits, out=mx)
            np.subtract(bits, _ONE, out=bits)  # zero wraps to 0xFFFFFFFF and never wins the min
            np.minimum(mn, bits, out=mn)
        np.subtract(mx, mn, out=bits)  # = max - min + 1 over non-zero |x| (1 when there are none)
        risky = np.greater(bits, threshold, out=self._bool[:n])
        if not risky.any():
            return
        index = np.flatnonzero(risky)
        esc = self.escalated.get(start)
        if esc is not None:
            index = np.setdiff1d(index, esc.index, assume_unique=True)
            if not len(index):
                return
        else:
            esc = self.escalated[start] = _Escalated()
        # acc[index] is still exact: these coordinates passed the bound for every earlier term.
        esc.extend(index, acc[index])

    def total(self) -> np.ndarray:
        """fl64(S) for every coordinate, S the exact weighted sum (a fresh array)."""
        out = self.acc.copy()
        for start, esc in self.escalated.items():
            if len(esc.index):
                rows = esc.bins.T.tolist()
                out[start + esc.index] = np.fromiter((math.fsum(r) for r in rows), dtype=np.float64, count=len(rows))
        return out
