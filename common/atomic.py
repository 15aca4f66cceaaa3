"""Write files so that a reader, or a crash, sees the old content or the new, never half a file.

Every file fedmtl rewrites while others may read it (history, metrics, models, checkpoints,
keys, the coordinator's info file) goes through here: write to a temporary file beside the
target, then `os.replace` it into place (atomic within one filesystem). `durable=True` also
fsyncs the file and its directory, for files that must survive a power cut (checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist a directory entry (a new file or a rename); a no-op where the OS cannot do it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to (by any writer: csv, safetensors...);
    it replaces `path` when the block ends without an error, and is removed otherwise."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None, durable: bool = False) -> None:
    """Replace `path` with `data`. With `mode`, the file never exists with wider permissions
    (the temporary file is created with `mode`, whatever the umask)."""
    path = Path(path)
    with atomic_path(path, durable=durable) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)  # the umask applies to 0o666
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # umask-proof
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str, **kwargs: Any) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), **kwargs)


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: write null instead, so every JSON parser can read the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 1,
                      sort_keys: bool = False, **kwargs: Any) -> None:
    """`payload` as strict JSON (NaN becomes null), atomically."""
    text = json.dumps(json_safe(payload), indent=indent, sort_keys=sort_keys, allow_nan=False)
    write_text_atomic(path, text + "\n", **kwargs)
