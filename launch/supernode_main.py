"""`flower-supernode` with a shorter wait for the ClientApp's reply (run by path, like the fork server).

Why this exists
---------------
Once a SuperNode has handed a message to its ClientApp, it waits for the reply in fixed 0.5 s
sleeps: `_push_messages` in `flwr/supernode/start_client_internal.py` (flwr 1.41 and 1.42) loops
``while not (reply := state.get_messages_legacy(is_reply=True)): time.sleep(0.5)``, and again
``while object_store.get(id) == b"": time.sleep(0.5)`` for each object of the reply that the
ClientApp has not finished uploading. Both poll the SuperNode's own in-memory state, so a short
interval costs nothing measurable, but at 0.5 s every reply leaves the client on average a
quarter of a second late, and up to a second when an object lags: on a deployed round of one
message per client that was 0.5-0.9 s of the ~2.8 s spent beyond the clients' training
(docs/deployment.md, "Measured"). Flower has no setting for it.

This script runs Flower's own `flower-supernode` entry point, arguments unchanged, after
replacing the module's `time` with a view of it whose `sleep(0.5)` sleeps `--reply-poll`
seconds instead (default 0.02). Every other sleep, and everything else, is Flower's: the 3 s
pause after an empty pull (the Fleet gateway holds pulls, see `launch/gateway_hold.py`), the
retries, the reconnection back-off.

It is guarded: if the module no longer looks as described (no `_push_messages`, no module-level
`time`, or no ``time.sleep(0.5)`` in its source), it says so on stderr and runs Flower unchanged,
so a Flower upgrade can make a round slower again but never wrong.

It imports only the standard library and flwr (no fedmtl package: it runs with Flower's
environment, as `flower-supernode` would).
"""

from __future__ import annotations

import inspect
import sys
import time as _time
import types
from pathlib import Path

#: The sleep this script shortens: Flower's reply and reply-object waits (and no other sleep).
FLOWER_REPLY_SLEEP_S = 0.5
DEFAULT_REPLY_POLL_S = 0.02
#: The reply polls accepted (seconds): never longer than Flower's own.
REPLY_POLL_RANGE_S = (0.001, FLOWER_REPLY_SLEEP_S)


def _short_reply_time(reply_poll_s: float) -> types.ModuleType:
    """A stand-in for the `time` module: the same functions, `sleep(0.5)` shortened."""
    view = types.ModuleType("time")
    view.__dict__.update({k: v for k, v in vars(_time).items() if not k.startswith("__")})

    def sleep(seconds: float) -> None:
        _time.sleep(reply_poll_s if seconds == FLOWER_REPLY_SLEEP_S else seconds)

    view.sleep = sleep  # type: ignore[attr-defined]
    return view


def shorten_reply_poll(reply_poll_s: float) -> str | None:
    """Patch Flower's SuperNode loop; None when done, else why it was left as it is."""
    from flwr.supernode import start_client_internal as loop

    if not hasattr(loop, "_push_messages") or getattr(loop, "time", None) is not _time:
        return "flwr.supernode.start_client_internal has no _push_messages or no module-level time"
    try:
        source = inspect.getsource(loop._push_messages)
    except (OSError, TypeError):
        return "the source of _push_messages cannot be read"
    if f"time.sleep({FLOWER_REPLY_SLEEP_S})" not in source:
        return f"_push_messages no longer waits with time.sleep({FLOWER_REPLY_SLEEP_S})"
    loop.time = _short_reply_time(reply_poll_s)
    return None


def main(argv: list[str]) -> int:
    here = str(Path(__file__).resolve().parent)  # run by path: launch/ must not shadow other modules
    sys.path[:] = [p for p in sys.path if p != here]
    reply_poll_s = DEFAULT_REPLY_POLL_S
    if argv[:1] == ["--reply-poll"]:
        reply_poll_s, argv = float(argv[1]), argv[2:]
    low, high = REPLY_POLL_RANGE_S
    if not low <= reply_poll_s <= high:
        print(f"supernode_main: --reply-poll {reply_poll_s}: must be between {low:g} and {high:g} s", file=sys.stderr)
        return 2
    why_not = shorten_reply_poll(reply_poll_s)
    if why_not is not None:
        print(f"supernode_main: reply poll left at Flower's 0.5 s ({why_not})", file=sys.stderr, flush=True)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
