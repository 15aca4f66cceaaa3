"""Count sketch of a flat body gradient: d numbers instead of P, inner products kept in expectation.

A count sketch S maps coordinate k of a P-vector to bucket h(k) in [0, d) with sign s(k) = +-1:
(S x)[b] = sum_{k: h(k) = b} s(k) x_k. For any fixed a, b, E[(S a).(S b)] = a.b over the choice of
(h, s), with standard deviation about sqrt((|a|^2 |b|^2 + (a.b)^2) / d) (Charikar et al. 2002),
the same guarantee as a dense +-1/sqrt(d) random projection at a fraction of the cost.

Why a hash and not a random generator: (h, s) are a fixed 32-bit integer hash of (seed,
coordinate index), computed in int64 arithmetic that never overflows, so every client - any
torch version, CPU or GPU - derives the very same sketch from the seed the coordinator sends,
and no d x P matrix (4096 x 22M would be 90G entries) is ever stored: coordinates are hashed
in chunks of `chunk` as they are sketched. Sketching a 22M-parameter body takes well under a
second per round on one CPU core for all tasks together (benchmarks/bench_affinity.py).

When P <= d a sketch would only add noise: `sketch_dim(P, d)` is then P and `sketch` returns
the exact vector (identity), so inner products are exact.
"""

from __future__ import annotations

from typing import Sequence

import torch

_MASK = 0xFFFFFFFF
# Odd multipliers below 2^31: a product with a 32-bit value stays below 2^63 (no int64 overflow).
_M1 = 0x7FEB352D
_M2 = 0x68E31DA5
_SALT = 0x3C6EF372
DEFAULT_CHUNK = 1 << 20


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (two xorshift-multiply rounds, the `lowbias32` shape) on
    int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def _seed_key(seed: int, salt: int) -> int:
    """A 32-bit key from an arbitrary integer seed (all 64 bits of it count) and a salt."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    lo, hi = s & _MASK, s >> 32
    t = torch.tensor([lo ^ salt], dtype=torch.int64)
    t = mix32(mix32(t) ^ hi)
    return int(t.item())


def sketch_dim(num_params: int, dim: int) -> int:
    """How many numbers a sketch of a `num_params` vector has: `dim`, or `num_params` if smaller."""
    if dim < 1 or num_params < 1:
        raise ValueError(f"sketch needs dim >= 1 and a non-empty vector, got dim {dim}, {num_params} params")
    if num_params >= 1 << 32:
        raise ValueError(f"{num_params} parameters: the sketch's 32-bit hash covers at most 2^32 coordinates")
    return min(int(num_params), int(dim))


class CountSketch:
    """The seeded count sketch of P-vectors into `dim` buckets (identity when P <= dim)."""

    def __init__(self, num_params: int, dim: int, seed: int, chunk: int = DEFAULT_CHUNK) -> None:
        self.num_params = int(num_params)
        self.dim = sketch_dim(num_params, dim)
        self.seed = int(seed)
        self.chunk = int(chunk)
        self._key = _seed_key(seed, _SALT)

    @property
    def exact(self) -> bool:
        """True when no sketching happens (P <= dim): the output is the vector itself."""
        return self.dim == self.num_params

    def hashes(self, start: int, stop: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket (int64) and sign (+-1, float32) of coordinates start..stop-1: one 32-bit hash
        per coordinate, its lowest bit the sign and the other 31 bits the bucket."""
        h = mix32(torch.arange(start, stop, dtype=torch.int64, device=device) ^ self._key)
        sign = (h & 1).to(torch.float32) * 2.0 - 1.0
        return (h >> 1) % self.dim, sign

    def sketch(self, vectors: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Sketch several vectors at once: `vectors[t]` is one vector given as a sequence of
        tensors (e.g. per-parameter gradients) whose flattened concatenation has `num_params`
        entries. Returns float32 [len(vectors), dim]. Hashes are computed once per chunk and
        shared by all vectors. On CPU the result is deterministic; on CUDA `index_add_` adds in
        an arbitrary order, so the last bits may differ between runs.
        """
        if not vectors:
            raise ValueError("nothing to sketch")
        device = vectors[0][0].device if len(vectors[0]) else torch.device("cpu")
        sizes = [sum(int(p.numel()) for p in v) for v in vectors]
        if any(n != self.num_params for n in sizes):
            raise ValueError(f"vectors have {sizes} entries, the sketch was built for {self.num_params}")
        if self.exact:
            return torch.stack([torch.cat([p.reshape(-1) for p in v]).to(torch.float32) for v in vectors])
        out = torch.zeros(len(vectors), self.dim, dtype=torch.float32, device=device)
        base = 0  # position of the current parameter in the flat vector
        for parts in zip(*vectors):  # the same parameter of every vector
            flat = torch.stack([p.reshape(-1) for p in parts]).to(device)  # [T, n]
            for lo in range(0, flat.shape[1], self.chunk):
                hi = min(lo + self.chunk, flat.shape[1])
                bucket, sign = self.hashes(base + lo, base + hi, device)
                out.index_add_(1, bucket, flat[:, lo:hi].to(torch.float32) * sign)
            base += flat.shape[1]
        return out


def sketch_seed(base_seed: int, round_: int) -> int:
    """The sketch seed of one round: all clients of a round must share it, rounds should not
    (a fixed sketch would repeat the same sketching error every round instead of averaging it out)."""
    return (int(base_seed) * 1_000_003 + int(round_)) & 0x7FFFFFFFFFFFFFFF
