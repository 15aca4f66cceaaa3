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
    return load_compatible_checkpoint(root, None)


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


# ----------------------------------------------------------------------------- whose checkpoints, and do they fit

#: Where a run keeps its checkpoints, under its output folder.
CHECKPOINT_DIR = "checkpoints"

#: Keys that make a checkpoint another run altogether: another model, data split or randomness.
IDENTITY_KEYS = ("suite", "seed", "data-seed")
#: Keys that decide what the grouping means (MAS split, dynamic re-grouping, the affinity driving them).
SPLIT_KEYS = ("split-round", "max-groups", "affinity-signal", "affinity-average")
DYNAMIC_KEYS = ("regroup-every", "regroup-rounds", "regroup-margin")


def existing_checkpoint_rounds(root: str | os.PathLike) -> list[int]:
    """Rounds of the `round_*` folders under `root`, newest first (valid or not)."""
    return [rnd for rnd, _ in _round_dirs(Path(root))]


def fresh_run_problem(out: str | os.PathLike) -> str | None:
    """Why a fresh run (not `--resume`) must not start in `out`, or None.

    A fresh run saving its round 0 would prune every newer checkpoint of the run that was there
    before (see `_prune`): hours of someone's training gone without a word. So a folder that
    already holds checkpoints is refused unless the user says so (`--overwrite`, which calls
    `clear_checkpoints`) or resumes it.
    """
    root = Path(out) / CHECKPOINT_DIR
    rounds = existing_checkpoint_rounds(root)
    if not rounds:
        return None
    what = ""
    try:
        state = json.loads((root / round_dir_name(rounds[0]) / STATE_FILE).read_text())
        saved = checkpoint_config(state) or {}
        what = f" (suite {saved.get('suite')!r}, mode {saved.get('mode')!r})" if saved else ""
    except (OSError, ValueError):
        pass
    return (f"{Path(out)} already holds the checkpoints of another run{what}, up to round {rounds[0]}: a fresh run "
            f"there would delete them. Continue that run with --resume, write this one elsewhere (--out), or "
            f"pass --overwrite to replace them")


def clear_checkpoints(out: str | os.PathLike) -> int:
    """Remove the checkpoints under `out` (the user asked: `--overwrite`); returns how many."""
    root = Path(out) / CHECKPOINT_DIR
    count = len(existing_checkpoint_rounds(root))
    if root.exists():
        shutil.rmtree(root)
    return count


def checkpoint_config(state: dict[str, Any]) -> dict[str, Any] | None:
    """The run config a checkpoint was written with: `state["config"]`, else the history's."""
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        history = state.get("history") if isinstance(state, dict) else None
        config = history.get("config") if isinstance(history, dict) else None
    return dict(config) if isinstance(config, dict) else None


def checkpoint_compatibility(saved_config: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Why a checkpoint written with `saved_config` cannot be resumed with `config` (empty: it can).

    Refused: another suite, seed or data seed (another run), another mode, and, where the mode
    uses them, the settings that decide what the grouping means: split-round, max-groups, the
    affinity signal and averaging (with its window or ema), and in dynamic mode the regrouping
    period, rounds and margin. Everything else (rounds, learning rate, timeouts, fusion, ...)
    may change on resume. Keys missing from an older checkpoint count as their defaults. Each
    entry names the key: "mode: 'mas' in the checkpoint, 'dynamic' now".
    """
    from coordinator.config import RunConfig  # noqa: PLC0415 - keep this module free of config imports

    defaults = RunConfig().to_dict()

    def get(cfg: dict[str, Any], key: str) -> Any:
        return cfg.get(key, defaults.get(key))

    keys = [*IDENTITY_KEYS, "mode"]
    modes = {get(saved_config, "mode"), get(config, "mode")}
    if modes & {"mas", "dynamic"}:
        keys += SPLIT_KEYS
        averages = {get(saved_config, "affinity-average"), get(config, "affinity-average")}
        if "window" in averages:
            keys.append("affinity-window")
        if "ema" in averages:
            keys.append("affinity-ema")
    if "dynamic" in modes:
        keys += DYNAMIC_KEYS
    problems = []
    for key in keys:
        before, now = get(saved_config, key), get(config, key)
        if before != now:
            problems.append(f"{key}: {before!r} in the checkpoint, {now!r} now")
    return problems


def checkpoint_state_problems(state: dict[str, Any], tensors: dict[str | int, dict[str, torch.Tensor]],
                              suite: Any, tensor_key: Any = lambda gid: f"group_{gid}") -> list[str]:
    """What makes an intact checkpoint unusable with `suite` (empty: usable).

    Checks that `state["groups"]` lists groups (gid, tasks, rounds_trained) whose tasks are the
    suite's, each task in exactly one group, and that each group's tensors (`tensors[tensor_key(gid)]`)
    have exactly the names and shapes of `suite.build_model(tasks)` (a suite changed under the
    same name shows up here, instead of as a crash inside the first fusion).
    """
    groups = state.get("groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not groups:
        return ["the checkpoint lists no task groups"]
    problems: list[str] = []
    seen: dict[str, Any] = {}
    names = set(suite.task_names)
    for meta in groups:
        if not isinstance(meta, dict) or not isinstance(meta.get("tasks"), list) or "gid" not in meta:
            return [f"malformed group entry {meta!r}"]
        gid, tasks = meta["gid"], [str(t) for t in meta["tasks"]]
        unknown = sorted(set(tasks) - names)
        if unknown:
            problems.append(f"group {gid}: tasks {unknown} are not in suite {getattr(suite, 'name', '?')!r}")
            continue
        for t in tasks:
            if t in seen:
                problems.append(f"task {t!r} is in groups {seen[t]} and {gid}")
            seen[t] = gid
        group_tensors = tensors.get(tensor_key(gid))
        if group_tensors is None:
            problems.append(f"group {gid}: no model in the checkpoint")
            continue
        want = {k: tuple(v.shape) for k, v in suite.build_model(tasks).state_dict().items()}
        have = {k: tuple(v.shape) for k, v in group_tensors.items()}
        if want != have:
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
            problems.append(f"group {gid}: its model does not fit suite {getattr(suite, 'name', '?')!r} "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}, other shapes {shapes[:3]})")
    missing_tasks = sorted(names - set(seen))
    if missing_tasks and not problems:
        problems.append(f"tasks {missing_tasks} of the suite are in no group")
    return problems


def load_compatible_checkpoint(root: str | os.PathLike, config: dict[str, Any] | None, suite: Any = None,
                               tensor_key: Any = lambda gid: f"group_{gid}") -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies AND fits `config` (and `suite`), or None.
    With `config` None, only verification counts (`load_latest_checkpoint`).

    Damaged checkpoints, and intact ones whose models or groups do not fit the suite, are skipped
    with a warning (falling back to an older one). A checkpoint written with other settings
    (`checkpoint_compatibility`) raises CheckpointError naming the keys: all checkpoints of a run
    share its settings, so an older one would not fit either. CheckpointError too when there are
    checkpoints but none is usable.
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
        saved = checkpoint_config(ckpt.state) if config is not None else {}
        if saved is None:
            problems.append(f"{path}: records no run config")
            continue
        differences = checkpoint_compatibility(saved, config) if config is not None else []
        if differences:
            raise CheckpointError(
                f"resume: the checkpoint {path} was written with other settings: {'; '.join(differences)}. "
                "Resume with the settings it was written with, or start a fresh run (another --out, or --overwrite)")
        if suite is not None:
            unfit = checkpoint_state_problems(ckpt.state, ckpt.tensors, suite, tensor_key)
            if unfit:
                log.warning("checkpoint %s does not fit the suite, falling back to an older one: %s",
                            path.name, "; ".join(unfit))
                problems.append(f"{path}: " + "; ".join(unfit))
                continue
        if problems:
            log.warning("resuming from older checkpoint %s after %d unusable newer one(s)", path.name, len(problems))
        _check_latest_pointer(root, path)
        return ckpt
    if candidates:
        raise CheckpointError(f"no usable checkpoint under {root}: " + "; ".join(problems))
    return None
