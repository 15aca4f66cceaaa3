"""`flower-superlink` with its object store in memory and its link state in the database (run by path).

Why this exists
---------------
Given `--database FILE`, Flower 1.42 keeps two things in that SQLite file: the link state (runs,
nodes and their public keys, messages' metadata) and the object store (every record and array of
every message: the models themselves), `ObjectStoreFactory(database)` in
`flwr/superlink/config_loader.py`. fedmtl's coordinator needs the link state on disk:
registrations, node ids and revoked keys outlive a restart, and a resumed coordinator stops the
run its predecessor left (`CoordinatorService.stop_stale_runs`). It does not need the objects on
disk: they belong to the messages of a running run, Flower deletes them once delivered, a run
that outlives its SuperLink is stopped on resume anyway, and fedmtl's own checkpoints hold the
models. In SQLite every object is a transaction: putting and reading back a tiny-suite train
message's 6 objects takes about 29 ms against 1.6 ms in Flower's in-memory store (this 2-core
VM), on the SuperLink's one database connection that every pull, push and heartbeat also uses.

This script runs Flower's own `flower-superlink` entry point, arguments unchanged, after making
that one factory call build Flower's in-memory object store (`:flwr-in-memory:`, what Flower uses
when no database is given). The link state stays in the database, exactly as before.

It is guarded: if `config_loader` no longer creates the store with `ObjectStoreFactory(database)`
in `get_objectstore_linkstate_factories`, it says so on stderr and runs Flower unchanged, so a
Flower upgrade can make a round slower again but never wrong.

It imports only the standard library and flwr (no fedmtl package), like `supernode_main.py`.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

#: The call this script redirects, as it reads in Flower's source.
FLOWER_STORE_CALL = "ObjectStoreFactory(database)"


def objects_in_memory() -> str | None:
    """Patch Flower's SuperLink start-up; None when done, else why it was left as it is."""
    from flwr.superlink import config_loader
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

    make = getattr(config_loader, "get_objectstore_linkstate_factories", None)
    factory = getattr(config_loader, "ObjectStoreFactory", None)
    if make is None or factory is None:
        return "flwr.superlink.config_loader has no get_objectstore_linkstate_factories or ObjectStoreFactory"
    try:
        source = inspect.getsource(make)
    except (OSError, TypeError):
        return "the source of get_objectstore_linkstate_factories cannot be read"
    if FLOWER_STORE_CALL not in source:
        return f"get_objectstore_linkstate_factories no longer calls {FLOWER_STORE_CALL}"

    def in_memory_store(database: str = FLWR_IN_MEMORY_DB_NAME):  # noqa: ARG001 - the link state keeps it
        return factory(FLWR_IN_MEMORY_DB_NAME)

    config_loader.ObjectStoreFactory = in_memory_store
    return None


def main(argv: list[str]) -> int:
    here = str(Path(__file__).resolve().parent)  # run by path: launch/ must not shadow other modules
    sys.path[:] = [p for p in sys.path if p != here]
    why_not = objects_in_memory()
    if why_not is not None:
        print(f"superlink_main: objects left in the database ({why_not})", file=sys.stderr, flush=True)
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    return flower_superlink() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
