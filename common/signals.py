"""Stop cleanly on SIGTERM and SIGINT: one handler for every long-running fedmtl command.

`docker stop`, systemd and a parent's `kill` send SIGTERM; Python's default is to die on the
spot, skipping every `finally` that tears down the SuperLink, SuperNodes and their children.
These handlers turn the signal into an exception instead, so the normal clean-up runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def install_stop_handlers(*, as_exit: bool = False, sigint: bool = True) -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt (or `SystemExit(128 + signum)` with `as_exit`).

    With `sigint`, Python's own Ctrl-C handler is (re)installed as well: a background job of a
    non-interactive shell starts with SIGINT ignored, and `kill -INT` would then do nothing.
    Returns a function that restores the previous handlers; off the main thread nothing is
    installed (Python allows signal handlers there only) and the function does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def on_term(signum: int, frame: Any) -> None:
        if as_exit:
            raise SystemExit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
