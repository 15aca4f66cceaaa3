"""Network namespaces for tests: separate "hosts" on one machine.

``NetnsLan(n_members)`` creates a *hub* namespace holding a bridge and
``n_members`` member namespaces, each joined to the bridge by a veth pair::

    hub  (br0 10.231.0.1/24) --veth-- member[0] (eth0 10.231.0.2/24)
                             --veth-- member[1] (eth0 10.231.0.3/24) ...

Each namespace has its own loopback (up), so ``127.0.0.1`` in the hub is
the hub's loopback only: a server bound to it there is unreachable from the
members, exactly like on separate hosts. Nothing is added to the caller's
(root) namespace: the veth ends are created directly inside the new
namespaces and the subnets are private to them.

Processes started with :meth:`Namespace.popen` are tracked; ``close()``
(also on ``with`` exit) stops them (their whole session/process group),
then kills whatever still runs inside the namespaces, then deletes them.

Needs root and ``ip`` (iproute2). :func:`netns_unavailable_reason` returns
why not (or ``None``); :func:`skip_unless_netns` turns it into a pytest
skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NetnsError",
    "Namespace",
    "NetnsLan",
    "netns_unavailable_reason",
    "skip_unless_netns",
]

_IP = shutil.which("ip") or "/usr/sbin/ip"
_REASON_CACHE: list[str | None] = []


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [_IP, *args], capture_output=True, text=True, timeout=20, check=False
    )
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` if they can."""
    if _REASON_CACHE:
        return _REASON_CACHE[0]
    reason: str | None = None
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        reason = "network namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "network namespaces need root (run the netns tests as root)"
    elif not os.path.exists(_IP):
        reason = "`ip` (iproute2) is not installed: apt-get install iproute2"
    else:
        probe = f"fmprobe{os.getpid()}{secrets.token_hex(2)}"
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            reason = f"cannot create a network namespace: {res.stderr.strip()}"
        else:
            lk = _ip(
                "link", "add", "p0", "netns", probe, "type", "veth",
                "peer", "name", "p1", "netns", probe, check=False,
            )
            if lk.returncode != 0:
                reason = f"cannot create veth links: {lk.stderr.strip()}"
            _ip("netns", "del", probe, check=False)
    _REASON_CACHE.append(reason)
    return reason


def skip_unless_netns() -> None:
    """``pytest.skip`` with a clear reason when namespaces are unavailable."""
    reason = netns_unavailable_reason()
    if reason:
        import pytest  # pylint: disable=import-outside-toplevel

        pytest.skip(reason)


class Namespace:
    """One network namespace; runs commands inside it."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address  # its IPv4 address on the LAN
        self.procs: list[subprocess.Popen[Any]] = []

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside this namespace."""
        return [_IP, "netns", "exec", self.name]

    def run(
        self, cmd: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace (pass ``timeout=``!)."""
        kwargs.setdefault("timeout", 60)
        return subprocess.run([*self.prefix(), *cmd], check=False, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a tracked background process in its own session."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(), *cmd], **kwargs)  # noqa: S603
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """PIDs of all processes inside the namespace."""
        res = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in res.stdout.split() if p.strip().isdigit()]

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop tracked processes (group-wide), then anything left inside."""
        stop_processes(self.procs, grace)
        for pid in self.pids():  # everything here was started by this test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_processes(procs: Sequence[subprocess.Popen[Any]], grace: float = 5.0) -> None:
    """SIGTERM each process group we started, wait, then SIGKILL; reap all."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        _signal_group(p, signal.SIGKILL)  # leftovers of the group (children)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(p: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # start_new_session=True: pgid == pid
    except (ProcessLookupError, PermissionError):
        try:
            if p.poll() is None:
                p.send_signal(sig)
        except ProcessLookupError:
            pass


class NetnsLan:
    """A hub namespace with a bridge and ``n_members`` namespaces on it."""

    def __init__(self, n_members: int = 1, subnet_prefix: str = "10.231.0") -> None:
        if not 1 <= n_members <= 200:
            raise ValueError("n_members must be 1..200")
        tag = f"fm{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.hub = Namespace(f"{tag}-hub", f"{subnet_prefix}.1")
        self.members = [
            Namespace(f"{tag}-m{i}", f"{subnet_prefix}.{i + 2}") for i in range(n_members)
        ]
        self._created: list[Namespace] = []
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def namespaces(self) -> list[Namespace]:
        """Hub first, then the members."""
        return [self.hub, *self.members]

    def _build(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns.name)
            self._created.append(ns)
            _ip("-n", ns.name, "link", "set", "lo", "up")
        h = self.hub.name
        _ip("-n", h, "link", "add", "br0", "type", "bridge")
        _ip("-n", h, "addr", "add", f"{self.hub.address}/24", "dev", "br0")
        _ip("-n", h, "link", "set", "br0", "up")
        for i, m in enumerate(self.members):
            port = f"hp{i}"
            _ip("link", "add", port, "netns", h, "type", "veth",
                "peer", "name", "eth0", "netns", m.name)
            _ip("-n", h, "link", "set", port, "master", "br0")
            _ip("-n", h, "link", "set", port, "up")
            _ip("-n", m.name, "addr", "add", f"{m.address}/24", "dev", "eth0")
            _ip("-n", m.name, "link", "set", "eth0", "up")
        # Wait for the links to come up (bridge ports go to forwarding state).
        deadline = time.monotonic() + 10
        for m in self.members:
            while time.monotonic() < deadline:
                r = m.run(["ping", "-c", "1", "-W", "1", self.hub.address],
                          capture_output=True, timeout=5) if shutil.which("ping") else None
                if r is None or r.returncode == 0:
                    break
                time.sleep(0.2)

    def close(self) -> None:
        """Stop every process inside, delete the namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self._created):
            try:
                ns.stop_all()
            finally:
                _ip("netns", "del", ns.name, check=False)

    def __enter__(self) -> NetnsLan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
