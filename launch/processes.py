"""The processes fedmtl starts, found again and ended: `ProcessFamily` and the reaper.

Flower's processes do not stay where they were started: SuperExec and its children run in
sessions of their own and get re-parented to init when their parents die, so killing a process
group or a process tree is not enough. Instead every process fedmtl starts carries a marker in
its environment (`FEDMTL_LAUNCH_TAG=<tag>`, `ENV_TAG`), and its `ProcessFamily` (marked
processes, the sessions they live in, their descendants) is found through /proc and killed.

A small reaper process (`spawn_reaper`, this file run as a script with `--reap`) does the same
if the process that started the family is SIGKILLed or crashes. The reaper runs this file by
path, so it imports nothing but the standard library. Children that must not outlive the thread
that started them (the `flwr` CLI) get Linux's parent-death signal (`killed_with_parent_kwargs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_TAG",
    "ProcessFamily",
    "find_tagged_processes",
    "free_port",
    "killed_with_parent_kwargs",
    "log_tail",
    "process_start_time",
    "spawn_reaper",
]

#: Environment variable carrying a process family's marker into every process it starts.
ENV_TAG = "FEDMTL_LAUNCH_TAG"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it; another process may
    still take it before we bind it, so callers retry on "address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class _Proc:
    state: str  # one letter; "Z" = zombie (dead, waiting to be reaped: holds nothing)
    ppid: int
    sid: int
    tagged: bool


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, session id) of a process, from /proc; None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[3])


def _snapshot(tag: str | None) -> dict[int, _Proc]:
    """Every process we can see, with whether its environment holds `FEDMTL_LAUNCH_TAG=<tag>`."""
    needle = f"{ENV_TAG}={tag}".encode() if tag else None
    out: dict[int, _Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        st = _proc_stat(pid)
        if st is None:
            continue
        tagged = False
        if needle is not None:
            try:
                tagged = needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                pass
        out[pid] = _Proc(st[0], st[1], st[2], tagged)
    return out


class ProcessFamily:
    """The processes a `SuperLinkProcess` started, directly or not, found again at any time.

    Members: processes whose environment carries the marker `FEDMTL_LAUNCH_TAG=<tag>`, every
    process in a session one of them lives in (SuperExec starts `flwr-simulation` in a session
    of its own, and Ray's daemons, agents and actors stay in it; Ray renames them with
    setproctitle, which wipes /proc/PID/environ, so the marker alone misses them), and the
    descendants of all of these and of `roots`. Sessions seen once are remembered, so members
    are still found after their parents died and they were re-parented to init. Our own session
    and our own process are never members. Zombies are ignored.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sids: set[int] = set()

    def scan(self, roots: Sequence[int] = ()) -> set[int]:
        snap = _snapshot(self.tag)
        me = os.getpid()
        own_sid = os.getsid(0)
        tagged = {pid for pid, p in snap.items() if p.tagged}
        self.sids |= {snap[pid].sid for pid in tagged if snap[pid].sid not in (0, 1, own_sid)}
        members = tagged | {pid for pid, p in snap.items() if p.sid in self.sids}
        children: dict[int, list[int]] = {}
        for pid, p in snap.items():
            children.setdefault(p.ppid, []).append(pid)
        todo = [r for r in roots if r in snap] + list(members)
        members |= set(todo)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in members:
                    members.add(child)
                    todo.append(child)
        return {pid for pid in members if pid != me and snap[pid].state != "Z"}

    def kill(self, roots: Sequence[int] = (), term_wait_s: float = 3.0) -> set[int]:
        """SIGTERM every member, wait up to `term_wait_s`, then SIGKILL what is left (Ray's
        agents ignore SIGTERM). Returns the members still alive at the end (normally none)."""
        targets = self.scan(roots)
        if targets:
            _signal_all(targets, signal.SIGTERM)
            _wait_gone(targets, term_wait_s)
        left: set[int] = set()
        for _ in range(3):
            left = _alive(targets | self.scan(roots))
            if not left:
                break
            _signal_all(left, signal.SIGKILL)
            targets = left
            _wait_gone(left, 2.0)
        return _alive(left)


def find_tagged_processes(tag: str) -> set[int]:
    """Live (not zombie) processes whose environment holds `FEDMTL_LAUNCH_TAG=<tag>`."""
    me = os.getpid()
    return {pid for pid, p in _snapshot(tag).items() if p.tagged and p.state != "Z" and pid != me}


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        st = _proc_stat(pid)
        if st is not None and st[0] != "Z":
            out.add(pid)
    return out


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = _alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    return left


def _set_pdeathsig(sig: int) -> None:  # runs in the child between fork and exec
    try:
        _LIBC.prctl(1, sig)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, never fail the exec
        pass


def _killed_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it exits (CLI helpers)."""
    _set_pdeathsig(signal.SIGKILL)


def killed_with_parent_kwargs() -> dict[str, Any]:
    """`subprocess.Popen` keyword arguments for a child in its own session (a terminal Ctrl-C
    reaches only us, and we decide what to stop) that is SIGKILLed when the thread that
    started it exits (Linux)."""
    kwargs: dict[str, Any] = {"start_new_session": True}
    if _LIBC is not None:
        kwargs["preexec_fn"] = _killed_with_parent
    return kwargs


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (with the pid, it identifies the process)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()[19]


def _reap_when_parent_dies(parent: int, parent_start: str, tag: str) -> None:
    """The reaper's main: wait for `parent` to die, then kill the family of `tag`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal Ctrl-C is the parent's business
    family = ProcessFamily(tag)
    next_scan = 0.0
    while process_start_time(parent) == parent_start:
        if time.monotonic() >= next_scan:  # learn the family's sessions while it is intact
            family.scan()
            next_scan = time.monotonic() + 2.0
        time.sleep(0.5)
    family.kill(term_wait_s=5.0)


def spawn_reaper(tag: str) -> subprocess.Popen[bytes] | None:
    """Start a reaper: a small process in its own session that outlives us if we are
    SIGKILLed (or crash) and then kills our processes' family (SIGTERM, 5 s, SIGKILL). Without
    it an orphaned `flwr-simulation` lingers ~45 s and leaves Ray's agents running for ever.
    None where /proc is not available."""
    me = os.getpid()
    start = process_start_time(me)
    if start is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != ENV_TAG}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--reap", str(me), start, tag],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env, close_fds=True)


def log_tail(path: Path, n: int = 40) -> str:
    """The last `n` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--reap":
    _reap_when_parent_dies(int(sys.argv[2]), sys.argv[3], sys.argv[4])
