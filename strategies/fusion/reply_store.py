"""Every reply of one state layout, flat float32, read back a parameter chunk at a time.

Robust reducers need all values of a coordinate at once, so their memory is inherently
clients x parameters; this store keeps that as compact as it can be (float32, one copy, no
float64 stack) and can keep it out of RAM: with `spill_dir`, each reply is appended to one
file and chunks are read back with positioned reads into a small buffer, so resident memory
stays at the working chunk (the kernel's page cache holds the file as it sees fit).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

MIN_WIDTH = 1024  # coordinates per chunk at least (fewer reads per row)


class ReplyStore:
    """Rows of `n` float32 values (one per reply), appended from per-tensor segments."""

    def __init__(self, n: int, spill_dir: str | os.PathLike | None = None) -> None:
        self.n = int(n)
        self.rows: list[np.ndarray] = []
        self.count = 0
        self._file = None
        self._path: Path | None = None
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="replies-", suffix=".f32", dir=spill_dir)
            self._file = os.fdopen(fd, "w+b", buffering=0)
            self._path = Path(name)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, segments: Sequence[np.ndarray]) -> int:
        """Store one reply given as float32 pieces covering the layout in order (segments, or runs
        of them: `float32_runs`); returns its row number."""
        if sum(len(s) for s in segments) != self.n:
            raise ValueError("reply does not match the store's layout")
        if self._file is not None:
            self._file.seek(self.count * self.n * 4)
            for s in segments:
                self._file.write(memoryview(np.ascontiguousarray(s, dtype=np.float32)))
        else:
            self.rows.append(np.concatenate([np.asarray(s, dtype=np.float32) for s in segments]) if segments else np.empty(0, np.float32))
        self.count += 1
        return self.count - 1

    def chunks(self, order: Sequence[int], max_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        """(start, values [C, len(order)]) for consecutive coordinate chunks, rows in `order`.

        The transposed layout puts one coordinate's values side by side, which is what the
        per-coordinate sorts want; C is chosen so the chunk and its sort stay near `max_bytes`.
        """
        k = len(order)
        width = max(MIN_WIDTH, int(max_bytes) // (k * 4 * 8))  # ~8 chunk-sized temporaries in the reducers
        buf = np.empty((k, min(width, max(self.n, 1))), dtype=np.float32)
        for start in range(0, self.n, width):
            stop = min(start + width, self.n)
            block = buf[:, : stop - start]
            for i, r in enumerate(order):
                if self._file is not None:
                    got = os.preadv(self._file.fileno(), [memoryview(block[i])], (r * self.n + start) * 4)
                    if got != block[i].nbytes:
                        raise OSError(f"short read from {self._path}: {got} of {block[i].nbytes} bytes")
                else:
                    block[i] = self.rows[r][start:stop]
            yield start, np.ascontiguousarray(block.T)

    def close(self) -> None:
        """Free the rows and delete the spill file."""
        self.rows = []
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def __del__(self) -> None:  # a forgotten store must not leave its spill file behind
        try:
            self.close()
        except OSError:  # interpreter shutdown: the folder may be gone already
            return
