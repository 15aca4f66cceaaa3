"""`flwr-simulation` whose message pump asks only for nodes that have a message waiting.

Why this exists
---------------
In Flower's simulation engine one thread moves messages from the link state to the backend's
workers: `add_messages_to_queue` in `flwr/server/superlink/fleet/vce/vce_api.py` (flwr 1.41,
1.42) sweeps ``for node_id in nodes_mapping: state.get_message_ins(node_id=node_id, limit=1)``
and then waits 0.1 s. Every call scans every stored message under the state's lock, so with
10,000 simulated clients a sweep is 10,000 scans even when 10 messages are waiting: a message
waits for the sweep to reach its node, and the sweep takes the CPU from the clients on a small
machine. docs/benchmarks.md, "Scale", measured 3.2 s a round for 10 sampled clients of 10,000
against 0.6 s of 10.

The pump here first collects, in one pass under the lock, the destination nodes of the
messages not delivered yet, and then asks Flower's `get_message_ins(node_id, limit=1)` for
those nodes only, in the same node order as Flower. So each message is still taken, checked
(expiry, federation) and marked delivered by Flower's own code, one per node per sweep as
before; nodes with nothing waiting are skipped. A sweep costs one pass over the waiting
messages instead of one per node.

How it runs: SuperExec starts `flwr-simulation` by name, so `fedmtl simulate` puts a
`flwr-simulation` script first on the SuperLink's PATH (`write_shim`) that loads this file and
runs Flower's own `flwr_simulation()` after `install()`. The patch is guarded: if the pump no
longer looks as described, or the link state is not Flower's in-memory one (no
`message_ins_store`), Flower's pump runs unchanged. Which pump ran is written to
`$FLWR_HOME/simulation-pump.txt` (under the simulation's SuperLink folder: Flower sends this
process's own output nowhere). `FEDMTL_SIMULATION_PUMP=flower` turns it off (for side-by-side
benchmarks).

Imports only the standard library and flwr: it runs in Flower's process, not as part of the app.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: Set to "flower" to run Flower's own pump.
PUMP_ENV = "FEDMTL_SIMULATION_PUMP"
SHIM_NAME = "flwr-simulation"
#: What the process writes to $FLWR_HOME/PUMP_RECORD when the pump is installed.
PUMP_LINE = "simulation message pump: nodes with a message waiting only (launch/simulation_main.py)"
PUMP_RECORD = "simulation-pump.txt"
_FLOWER_SWEEP = "state.get_message_ins(node_id=node_id, limit=1)"


def waiting_nodes(state: Any) -> set[int] | None:
    """Destination nodes of the messages not delivered yet (one pass under the state's lock);
    None when `state` is not Flower's in-memory link state."""
    store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        return {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}


def make_pump(flower_pump: Callable[..., None]) -> Callable[..., None]:
    """A drop-in for Flower's `add_messages_to_queue` that skips nodes with nothing waiting."""

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: Mapping[int, int], f_stop: Any) -> None:
        if waiting_nodes(state) is None:
            return flower_pump(state, queue, nodes_mapping, f_stop)
        while not f_stop.is_set():
            waiting = waiting_nodes(state)
            if waiting:
                for node_id in nodes_mapping:  # Flower's order
                    if node_id in waiting:
                        for msg in state.get_message_ins(node_id=node_id, limit=1):
                            queue.put(msg)
            f_stop.wait(0.1)
        return None

    add_messages_to_queue.__doc__ = "Put Messages in the queue from the LinkState (nodes with one waiting only)."
    return add_messages_to_queue


def install() -> str | None:
    """Replace Flower's pump; None when done, else why it was left as it is."""
    from flwr.server.superlink.fleet.vce import vce_api

    flower_pump = getattr(vce_api, "add_messages_to_queue", None)
    if flower_pump is None:
        return "vce_api has no add_messages_to_queue"
    try:
        source = inspect.getsource(flower_pump)
    except (OSError, TypeError):
        return "the source of add_messages_to_queue cannot be read"
    if _FLOWER_SWEEP not in source:
        return f"add_messages_to_queue no longer sweeps with {_FLOWER_SWEEP}"
    vce_api.add_messages_to_queue = make_pump(flower_pump)
    return None


def write_shim(folder: Path, python: str | None = None) -> Path:
    """Write the `flwr-simulation` stand-in into `folder` (put `folder` first on the SuperLink's PATH)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / SHIM_NAME
    here = str(Path(__file__).resolve())
    shim.write_text(f"#!{python or sys.executable}\n"
                    "import importlib.util, sys\n"
                    f"spec = importlib.util.spec_from_file_location('fedmtl_simulation_main', {here!r})\n"
                    "module = importlib.util.module_from_spec(spec)\n"
                    "spec.loader.exec_module(module)\n"
                    "sys.exit(module.main())\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


def main() -> int:
    if os.environ.get(PUMP_ENV, "") == "flower":
        said = f"Flower's own simulation message pump ({PUMP_ENV}=flower)"
    else:
        why_not = install()
        said = PUMP_LINE if why_not is None else f"Flower's own simulation message pump ({why_not})"
        if why_not is not None:
            print(f"fedmtl: {said}", file=sys.stderr, flush=True)
    # Flower sends this process's output nowhere before its run log starts: say it in a file
    # beside the run's Flower home (the simulation's SuperLink sets FLWR_HOME).
    if os.environ.get("FLWR_HOME"):
        with contextlib.suppress(OSError):
            (Path(os.environ["FLWR_HOME"]) / PUMP_RECORD).write_text(said + "\n")
    from flwr.simulation.app import flwr_simulation

    flwr_simulation()
    return 0
