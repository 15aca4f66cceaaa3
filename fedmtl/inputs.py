"""Read the inputs people bring to `fedmtl predict`: array files and text lines.

An input KIND is a reader `(path, suite) -> model inputs`. Built in:
  * `npy`  a NumPy array file: one example or a batch (the suite's `prepare_inputs` shapes it),
  * `npz`  an archive: its array `x` (as in client data folders), or its only array,
  * `text` one example per non-empty line (a `.txt` file, or `-` for standard input), turned into
           model inputs by the suite's `encode_text` (text suites only).
The kind is picked from the file's suffix unless given. A suite with inputs of its own (images
from PNG files, audio, ...) plugs in with `register_input_kind`.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.suite import Suite

Reader = Callable[[Path, Suite], np.ndarray]


class InputError(ValueError):
    """An input file that cannot be read or does not fit the suite."""


@dataclass(frozen=True)
class InputKind:
    name: str
    suffixes: tuple[str, ...]
    read: Reader
    help: str = ""


KINDS: dict[str, InputKind] = {}


def register_input_kind(name: str, suffixes: tuple[str, ...], read: Reader, help: str = "") -> None:
    """Add (or replace) an input kind; `suffixes` (e.g. ('.png',)) select it from a file name."""
    KINDS[name] = InputKind(name, tuple(s.lower() for s in suffixes), read, help)


def kind_for(path: str, kind: str | None = None) -> InputKind:
    if kind:
        if kind not in KINDS:
            raise InputError(f"unknown input kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        return KINDS[kind]
    if path == "-":
        return KINDS["text"]
    suffix = Path(path).suffix.lower()
    for k in KINDS.values():
        if suffix in k.suffixes:
            return k
    known = ", ".join(f"{k.name} ({' '.join(k.suffixes)})" for k in KINDS.values())
    raise InputError(f"{path}: cannot tell the input kind from its suffix {suffix!r}; known kinds: {known} (or pass --kind)")


def read_inputs(path: str, suite: Suite, kind: str | None = None) -> np.ndarray:
    """The model inputs (a batch) in `path` for `suite`; raises InputError naming the file."""
    chosen = kind_for(path, kind)
    if path != "-" and not Path(path).is_file():
        raise InputError(f"input file {path} does not exist")
    try:
        x = chosen.read(Path(path), suite)
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path} ({chosen.name} input for suite {suite.name!r}): {exc}") from exc
    if len(x) == 0:
        raise InputError(f"{path} holds no inputs")
    return x


def _read_npy(path: Path, suite: Suite) -> np.ndarray:
    return suite.model_inputs(np.load(path, allow_pickle=False))


def _read_npz(path: Path, suite: Suite) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        names = list(npz.files)
        if "x" in names:
            return suite.model_inputs(npz["x"])
        if len(names) == 1:
            return suite.model_inputs(npz[names[0]])
        raise InputError(f"{path} holds arrays {names}: name the inputs 'x' (as client data folders do)")


def _read_text(path: Path, suite: Suite) -> np.ndarray:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path} holds no non-empty lines")
    return suite.text_inputs(lines)


register_input_kind("npy", (".npy",), _read_npy, "a NumPy array: one example or a batch")
register_input_kind("npz", (".npz",), _read_npz, "a NumPy archive: array 'x' or its only array")
register_input_kind("text", (".txt", ".text"), _read_text, "one example per line (text suites)")
