"""Which task suites a client agrees to run: its own code, not code the run config points at.

A suite is Python code: loading it imports a module and calls a function. The run config
(chosen by the coordinator's operator, or by anyone who can start runs on the coordinator) names
the suite, and may name it by module (`pkg.mod:make`) or by file (`/path/suite.py:make`). A
deployed client must not import whatever that names, so it runs only

* the built-in suites (`tasks.registry.BUILTIN_SUITES`, by name or by their own factory path),
* suites installed on the client itself (entry points of group `fedmtl.suites`), and
* suites its operator allowed explicitly: `fedmtl client --allow-suite SPEC` (repeatable), carried
  to the ClientApp in the SuperNode's node config as `allow-suites` (specs separated by newlines;
  a file path is compared after resolving it, so `./s.py:make` and `/abs/s.py:make` match).

Anything else is refused before it is imported, with an error that says how to allow it.

In a simulation (`fedmtl simulate`: node config with only `partition-id`/`num-partitions`, no
`data-dir`) the local user launched the whole federation, so every suite is allowed there.

What this does not cover: the ClientApp itself is part of the app bundle (FAB) the coordinator
sends, so whoever controls the coordinator's *code* controls what clients run; see
docs/security.md ("Code that clients run") for Flower's app verification and its limits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tasks.registry import BUILTIN_SUITES, ENTRY_POINT_GROUP, SuiteLoadError

__all__ = [
    "ALLOW_SUITES_KEY",
    "UntrustedSuiteError",
    "allowed_suites",
    "check_suite_trusted",
    "encode_allowed",
    "installed_suites",
    "is_simulated",
    "normalize_suite_spec",
]

#: Node-config key with the suites this client's operator allowed (newline-separated specs).
ALLOW_SUITES_KEY = "allow-suites"


class UntrustedSuiteError(SuiteLoadError):
    """The run config names a suite this client does not run."""


def normalize_suite_spec(spec: str, base: str | os.PathLike[str] | None = None) -> str:
    """A comparable form of a suite spec: `file.py:fn` with the file resolved (relative to
    `base`, default the current folder); names and `module:fn` unchanged."""
    spec = spec.strip()
    module_part, sep, attr = spec.rpartition(":")
    if sep and module_part.endswith(".py"):
        path = Path(module_part).expanduser()
        if not path.is_absolute():
            path = Path(base or os.getcwd()) / path
        return f"{path.resolve()}:{attr}"
    return spec


def encode_allowed(specs: Iterable[str], base: str | os.PathLike[str] | None = None) -> str:
    """The node-config value for `--allow-suite` specs (normalized, newline-separated)."""
    out = []
    for spec in specs:
        if "\n" in spec or not spec.strip():
            raise ValueError(f"--allow-suite {spec!r}: expected one suite spec")
        out.append(normalize_suite_spec(spec, base))
    return "\n".join(dict.fromkeys(out))


def allowed_suites(node_config: Mapping[str, Any]) -> set[str]:
    value = node_config.get(ALLOW_SUITES_KEY, "") or ""
    return {normalize_suite_spec(s) for s in str(value).splitlines() if s.strip()}


def installed_suites() -> set[str]:
    """Entry-point names of suites installed on this machine."""
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_simulated(node_config: Mapping[str, Any]) -> bool:
    """A simulated client (Flower's simulation engine): partition ids and no data folder."""
    return not node_config.get("data-dir") and "partition-id" in node_config and "num-partitions" in node_config


def check_suite_trusted(spec: str, node_config: Mapping[str, Any]) -> None:
    """Raise UntrustedSuiteError unless this client may load the suite `spec` (module docstring)."""
    if is_simulated(node_config):
        return
    if spec in BUILTIN_SUITES or spec in BUILTIN_SUITES.values():
        return
    if spec in installed_suites():
        return
    normalized = normalize_suite_spec(spec)
    if normalized in allowed_suites(node_config):
        return
    installed = sorted(installed_suites())
    raise UntrustedSuiteError(
        f"this client does not run the suite {spec!r} named by the run config: a suite named by module or file "
        f"is code this client would import and run. It runs the built-in suites ({', '.join(sorted(BUILTIN_SUITES))}), "
        f"suites installed on it (entry points of group {ENTRY_POINT_GROUP!r}: "
        f"{', '.join(installed) if installed else 'none installed'}) and suites its operator allowed. "
        f"To allow this one, restart the client with `fedmtl client ... --allow-suite '{spec}'` "
        "(after reading that code)")
