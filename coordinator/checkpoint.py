"""Atomic, verifiable checkpoints of the coordinator, so a killed run resumes from the last good round.

Layout under `root` (e.g. `<out>/ckpt`)::

    round_00007/
        state.json                 coordinator state (grouping, affinity, scheduler, RNG states, history...)
        group_<id>.safetensors     one file per entry of `tensors` (flat name -> tensor)
        MANIFEST.json              sha256 and size of every file above; written last
    LATEST                         "round_00007": a pointer for people and scripts

Why it is safe: a checkpoint is written into a hidden temp dir in the same parent, every file
is fsynced, and only then is the dir renamed to `round_<r>` (a rename within one filesystem is
atomic). So a `round_*` dir is complete or absent; a kill mid-write leaves only a `.tmp-*` dir,
which loading ignores and the next save removes. The manifest additionally catches later damage
(truncation, bit rot, hand edits): loading verifies sizes, hashes and parsability and falls back
to the previous good checkpoint with a warning naming the bad file.

Loading scans `round_*` dirs newest first rather than trusting `LATEST`: a kill between the
dir rename and the pointer update leaves a complete, newer checkpoint the pointer does not name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from common.atomic import fsync_dir, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
STATE_FILE = "state.json"
LATEST = "LATEST"
FORMAT_VERSION = 1
_ROUND_DIR = re.compile(r"^round_(\d{5,})$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them is valid: resuming silently from scratch would lose work."""


@dataclass
class Checkpoint:
    """One loaded, verified checkpoint."""

    round: int
    state: dict[str, Any]
    tensors: dict[str | int, dict[str, torch.Tensor]]
    path: Path


def round_dir_name(round: int) -> str:
    return f"round_{round:05d}"


# ----------------------------------------------------------------------------- low-level IO


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write and fsync a file; return its manifest entry."""
    write_bytes_atomic(path, data, durable=True)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _group_file(gid: str | int) -> str:
    if isinstance(gid, bool) or not isinstance(gid, (str, int)):
        raise ValueError(f"group id must be a str or int, got {gid!r}")
    name = str(gid)
    if not _SAFE_ID.match(name):
        raise ValueError(f"group id {gid!r} is not usable in a file name (letters, digits, _ . -)")
    return f"group_{name}.safetensors"


def _serialise_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes; clones so views and tied weights (shared storage) serialise too."""
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"tensors must map str -> Tensor, got {key!r} -> {type(value).__name__}")
    return safetensors.torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


# ----------------------------------------------------------------------------- save


def save_checkpoint(
    root: str | os.PathLike,
    round: int,
    state: dict[str, Any],
    tensors: dict[str | int, dict[str, torch.Tensor]],
    keep: int = 2,
) -> Path:
    """Write the checkpoint of `round` atomically, point LATEST at it, prune to the last `keep`.

    `state` must be JSON-serialisable (NaN/Inf floats are allowed, as Python's json reads them
    back). Group ids of `tensors` may be str or int and come back with the same type.
    Saving a round that already exists (a resumed run redoing it) replaces it.
    """
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be an int >= 0, got {round!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state_bytes = json.dumps(state, indent=1).encode()  # fail before touching the disk
    final = root / round_dir_name(round)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    try:
        _write_contents(tmp, round, state_bytes, tensors)
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, final.name + "\n", durable=True)
    _prune(root, final, keep)
    return final


def _write_contents(
    directory: Path, round: int, state_bytes: bytes, tensors: dict[str | int, dict[str, torch.Tensor]]
) -> None:
    files = {STATE_FILE: _write_bytes(directory / STATE_FILE, state_bytes)}
    groups: list[dict[str, Any]] = []
    for gid, group_tensors in tensors.items():
        name = _group_file(gid)
        if name in files:
            raise ValueError(f"two group ids map to the same file {name}")
        files[name] = _write_bytes(directory / name, _serialise_tensors(group_tensors))
        groups.append({"id": gid, "file": name})
    manifest = {"format": FORMAT_VERSION, "round": round, "groups": groups, "files": files}
    _write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode())


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp -> final; an existing final (a redone round) is moved aside first, then removed."""
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f"{_TRASH_PREFIX}{final.name}-", dir=final.parent))
        os.rename(final, trash / final.name)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


def _round_dirs(root: Path) -> list[tuple[int, Path]]:
    """`round_*` dirs, newest round first."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _ROUND_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, key=lambda rp: rp[0], reverse=True)


def _prune(root: Path, saved: Path, keep: int) -> None:
    """Keep `saved` plus the newest keep-1 older checkpoints that verify; remove the rest.

    Only verified checkpoints count towards `keep`, so a damaged newer one can never cause the
    last good one to be deleted. Dirs of rounds *after* `saved` are from a timeline the run
    abandoned when it resumed from an older round (they failed verification then), and go too.
    Leftover `.tmp-*`/`.trash-*` dirs of killed saves are removed.
    """
    saved_round = int(_ROUND_DIR.match(saved.name).group(1))  # type: ignore[union-attr]
    kept = 1
    for rnd, path in _round_dirs(root):
        if path == saved:
            continue
        if rnd > saved_round:
            log.info("checkpoint: removing %s, newer than the resumed-and-redone round %d", path, saved_round)
            shutil.rmtree(path, ignore_errors=True)
        elif kept < keep:
            problem = _verify(path)
            if problem is None:
                kept += 1
            else:
                log.warning("checkpoint: removing invalid %s (%s)", path.name, problem)
                shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for entry in root.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


# ----------------------------------------------------------------------------- load


def _verify(path: Path) -> str | None:
    """The first problem of a checkpoint dir, or None if it is intact (cheap enough: one read per file)."""
    try:
        _read_checkpoint(path)
    except _Invalid as err:
        return str(err)
    return None


class _Invalid(Exception):
    """A checkpoint dir failed verification; the message names the bad file."""


def _read_verified(path: Path, name: str, entry: Any) -> bytes:
    file = path / name
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size"), int):
        raise _Invalid(f"{path / MANIFEST}: malformed entry for {name}")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise _Invalid(f"{file}: missing (listed in the manifest)") from None
    except OSError as err:
        raise _Invalid(f"{file}: unreadable ({err})") from None
    if len(data) != entry["size"]:
        raise _Invalid(f"{file}: size {len(data)} bytes, manifest says {entry['size']} (truncated or overwritten)")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _Invalid(f"{file}: sha256 mismatch with the manifest (corrupted)")
    return data


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise _Invalid(f"{file}: missing (incomplete checkpoint)") from None
    except (OSError, ValueError) as err:
        raise _Invalid(f"{file}: unreadable or not JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not isinstance(
        manifest.get("groups"), list
    ):
        raise _Invalid(f"{file}: not a checkpoint manifest")
    if manifest.get("format") != FORMAT_VERSION:
        raise _Invalid(f"{file}: unsupported format {manifest.get('format')!r} (expected {FORMAT_VERSION})")
    if STATE_FILE not in manifest["files"]:
        raise _Invalid(f"{file}: does not list {STATE_FILE}")
    return manifest


def _read_checkpoint(path: Path) -> Checkpoint:
    """Read and fully verify one checkpoint dir; raises _Invalid naming the first bad file."""
    manifest = _read_manifest(path)
    match = _ROUND_DIR.match(path.name)
    if match is None or manifest.get("round") != int(match.group(1)):
        raise _Invalid(f"{path / MANIFEST}: round {manifest.get('round')!r} does not match the dir name")
    data = _read_verified(path, STATE_FILE, manifest["files"][STATE_FILE])
    try:
        state = json.loads(data)
    except ValueError as err:
        raise _Invalid(f"{path / STATE_FILE}: not valid JSON ({err})") from None
    tensors: dict[str | int, dict[str, torch.Tensor]] = {}
    for group in manifest["groups"]:
        name = group.get("file") if isinstance(group, dict) else None
        gid = group.get("id") if isinstance(group, dict) else None
        bad_id = isinstance(gid, bool) or not isinstance(gid, (str, int))
        if bad_id or not isinstance(name, str) or name not in manifest["files"] or "/" in name or name.startswith("."):
            raise _Invalid(f"{path / MANIFEST}: malformed group entry {group!r}")
        data = _read_verified(path, name, manifest["files"][name])
        try:
            tensors[gid] = safetensors.torch.load(data)
        except Exception as err:  # safetensors raises its own error type for bad headers/data
            raise _Invalid(f"{path / name}: not a readable safetensors file ({err})") from None
    return Checkpoint(round=manifest["round"], state=state, tensors=tensors, path=path)


def load_latest_checkpoint(root: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies, or None if there is none at all.

    Each damaged newer checkpoint is skipped with a warning naming the bad file. Raises
    CheckpointError when `round_*` dirs exist but none verifies. Hidden `.tmp-*` dirs (saves
    killed mid-write) are not checkpoints and are ignored.
    """
    root = Path(root)
    candidates = _round_dirs(root)
    problems: list[str] = []
    for _, path in candidates:
        try:
            ckpt = _read_checkpoint(path)
        except _Invalid as err:
            log.warning("checkpoint %s is invalid, falling back to an older one: %s", path.name, err)
            problems.append(str(err))
            continue
        if problems:
            log.warning("resuming from older checkpoint %s after %d invalid newer one(s)", path.name, len(problems))
        _check_latest_pointer(root, path)
        return ckpt
    if candidates:
        raise CheckpointError(f"no valid checkpoint under {root}: " + "; ".join(problems))
    return None


def _check_latest_pointer(root: Path, used: Path) -> None:
    """LATEST is informational; note when it disagrees with what was loaded (kill after rename, or damage)."""
    try:
        pointer = (root / LATEST).read_text().strip()
    except OSError:
        pointer = ""
    if pointer != used.name:
        log.info("checkpoint: LATEST says %r, loaded %s", pointer or None, used.name)


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """JSON-serialisable state of python `random`, numpy's global RNG and torch's CPU RNG.

    Put it in the checkpoint `state` so a resumed run draws the same client samples and
    initialisations as an uninterrupted one. (CUDA RNGs are not captured: the coordinator is CPU.)
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
        },
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (also accepts its JSON round trip)."""
    py = rng["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = rng["numpy"]
    np.random.set_state(
        (npy["kind"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    raw = bytearray(base64.b64decode(rng["torch"]))
    torch.set_rng_state(torch.frombuffer(raw, dtype=torch.uint8).clone())
