"""Who a node is, when clients authenticate with keys: the client registry.

In a secure deployment every client holds a key pair; the coordinator operator registers each
public key under a name (`fedmtl keys register`, the name is the key's comment) and Flower gives
that key a node id. A client's *identity* is therefore the name its key was registered under,
not the name it reports in its query reply: a newcomer claiming a known client's name must not
take that client's place.

`CoordinatorService` keeps `RUN_DIR/client_registry.json` current (written atomically whenever
keys are registered or revoked, also while the coordinator runs) and passes its path to the
ServerApp in the run-config key `client-registry` ("" when there is none: simulation, or a
coordinator started with --insecure, where clients are known only by what they report).

File format (JSON object, node ids as decimal strings, names as registered)::

    {"4132988749913284986": "site-a", "16936497820988182807": "site-b"}

This module is pure (no Flower import): `load_registry` reads it, `registry_from_registered`
derives it from `registered_keys.json`, `bind_identity` decides one node's name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic

__all__ = [
    "REGISTRY_FILE",
    "ClientRegistryError",
    "Identity",
    "bind_identity",
    "load_registry",
    "registry_from_registered",
    "write_registry",
]

REGISTRY_FILE = "client_registry.json"


class ClientRegistryError(ValueError):
    """The registry file exists but is not a registry: identities cannot be trusted."""


def load_registry(path: str | os.PathLike[str] | None) -> dict[int, str]:
    """`{node_id: name}` from the registry file; `{}` when `path` is empty or the file is missing
    (no key registered yet). Raises ClientRegistryError for a file that is not a registry, so a
    damaged registry fails closed instead of falling back to the names clients report."""
    if not path:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientRegistryError(f"client registry {p}: unreadable ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientRegistryError(f"client registry {p}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ClientRegistryError(f"client registry {p}: expected an object {{node id: name}}")
    out: dict[int, str] = {}
    for key, name in data.items():
        try:
            node = int(key)
        except (TypeError, ValueError):
            raise ClientRegistryError(f"client registry {p}: {key!r} is not a node id") from None
        if not isinstance(name, str) or not name:
            raise ClientRegistryError(f"client registry {p}: node {key} has no name")
        out[node] = name
    names = list(out.values())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClientRegistryError(f"client registry {p}: name(s) {dup} bound to more than one node")
    return out


def registry_from_registered(registered: Mapping[str, Mapping[str, Any]]) -> dict[int, str]:
    """The registry implied by `registered_keys.json` (name -> {fingerprint, node_id, revoked?}):
    every key that is registered (has a node id) and not revoked."""
    out: dict[int, str] = {}
    for name, record in registered.items():
        if not isinstance(record, Mapping) or record.get("revoked") or record.get("node_id") is None:
            continue
        out[int(record["node_id"])] = str(name)
    return out


def write_registry(path: str | os.PathLike[str], registry: Mapping[int, str]) -> None:
    """Write the registry atomically (readers never see a partial file)."""
    write_json_atomic(Path(path), {str(node): name for node, name in sorted(registry.items())}, sort_keys=True)


@dataclass(frozen=True)
class Identity:
    """One node's identity: `name` to use, or `refused` (why it may not take part); `note` tells
    of a reported name that differs from the registered one (the registered one is used)."""

    name: str | None
    refused: str | None = None
    note: str | None = None


def bind_identity(node_id: int, claimed: str, registry: Mapping[int, str] | None,
                  known: Mapping[int, str]) -> Identity:
    """Decide the name of `node_id`, which reports `claimed`, given the clients already `known`
    ({node id: name}) and the registry (None: no registry, names are what clients report).

    With a registry the node's name is the registry's, whatever it claims; a node missing from it
    is refused (its key was revoked, or registered outside fedmtl). Without one the claimed name
    is used, unless another known node already holds it: then this node is refused, so the client
    that joined first keeps its place.
    """
    if registry is not None:
        name = registry.get(int(node_id))
        if name is None:
            return Identity(None, refused=f"node {node_id} is not in the client registry (its key is not "
                                          "registered with fedmtl, or was revoked)")
        holder = next((n for n, nm in known.items() if nm == name and n != node_id), None)
        if holder is not None:
            return Identity(None, refused=f"the name {name!r} is already bound to node {holder}")
        note = None
        if claimed and claimed != name:
            note = f"node {node_id} reports the name {claimed!r}; it is registered as {name!r} (used)"
        return Identity(name, note=note)
    holder = next((n for n, nm in known.items() if nm == claimed and n != node_id), None)
    if holder is not None:
        return Identity(None, refused=f"the name {claimed!r} is already used by node {holder}: a second client "
                                      "claiming it is refused (give each client its own name)")
    return Identity(claimed)
