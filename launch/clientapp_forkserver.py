"""A ClientApp executor for `flower-supernode --isolation process` that forks pre-imported workers.

Why this exists
---------------
With Flower's default isolation (`subprocess`), the SuperNode starts `flower-superexec`, which
polls the SuperNode's Runtime API every `FLWR_SUPEREXEC_TASK_POLL_INTERVAL` seconds (1.0 by
default) and starts a fresh `flwr-clientapp` process for every message
(`flwr/supercore/superexec/executor/subprocess_executor.py`). That process imports flwr, numpy
and torch again before it can do anything: about 3-5 s per message on a busy 2-core machine,
twice a round or more. Flower 1.42 has no long-lived ClientApp process: its warm executor pools
(`warm_executor_pool.py`) exist only on Kubernetes and only for agent, model and connector
tasks, and its prestarted workers (`flwr/supercore/task_worker.py`) are single-use.

`--isolation process` is Flower's supported way to run the ClientApp executor outside the
SuperNode (`flower-supernode --help`: "a separate independent process gets created outside of
SuperNode"). This module is such an executor. It imports the heavy third-party modules once
(`--preload`, default numpy and torch, plus Flower's ClientApp runtime), then polls the Runtime
API (`AcquireTask`, every `--poll-interval` s, and at once when the SuperNode's log shows that it
received a message) and, for each ClientApp task, `fork()`s a child
that runs Flower's own `run_clientapp` with the task's token, exactly what `flwr-clientapp
--token` does. So every message still gets a fresh process (Flower's isolation: nothing of one
message's state, and no app module, survives into the next), the app's code is still imported
from the run's FAB in that child, and only the import of the preloaded libraries is saved.

Rules it keeps so that forking is safe:

* It never imports app code (it is run by path and imports only the standard library, flwr
  and the `--preload` modules), so each child imports the FAB's modules fresh. A preload that
  names an app package is refused.
* It never touches CUDA (`torch.cuda` initialised in a parent cannot be used by forked
  children); it checks `torch.cuda.is_initialized()` stays False before every fork.
* It starts no threads and registers no Flower exit handlers; children reset signal handlers,
  then Flower's runtime registers its own.
* It exits when the SuperNode (`--parent-pid`) is gone, or on SIGTERM, and then stops and reaps
  the tasks still running (each child also exits by itself within 0.2 s if the server dies).
* If the client pins the app bundles it runs (`FEDMTL_PINNED_APP_HASHES`, checked by a
  `flwr-clientapp` wrapper on PATH), a child execs that `flwr-clientapp` instead of running the
  task in-process: the check is never bypassed (the speed-up is then lost).

It also unpacks each app bundle once per node, not once per task (`install_once`: Flower's
runtime unzips and re-hashes the whole bundle in every ClientApp process, then uses the folder
it installed the first time as it finds it).

One more wait it avoids: the SuperNode creates a message's task *before* it has downloaded the
message's objects from the SuperLink (`_pull_and_store_message` in
`flwr/supernode/start_client_internal.py`), and a ClientApp that asks for them too early is
answered "not available" and backs off 1 s, then 2 s, 4 s ... (`PULL_INITIAL_BACKOFF`,
`flwr/supercore/inflatable/inflatable_utils.py`). Flower's own executor never notices because
its ClientApp takes seconds to import; a forked child would start within milliseconds and lose
3-4 s to that backoff. So with `--supernode-log` (the SuperNode's output file) a child is forked
only once the SuperNode has logged the end of its latest reception ("Received successfully" or
"Failed to receive message" after the last "Receiving:"), at most `--receive-wait` seconds after
the task was acquired (then it starts anyway: the child's own backoff is the fallback). If the
log never shows these lines (other wording), the gate is open and nothing waits.

With `--superexec-auth-secret-file` (the same file given to `flower-supernode`), its
`AcquireTask` calls are signed (Flower's SuperExec HMAC auth), so no other local process can
take this node's tasks; Flower's own `subprocess` mode runs without that check.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from collections.abc import Sequence

#: Packages of the fedmtl app: never preloaded (children must import them from the run's FAB).
APP_PACKAGES = frozenset({"client", "coordinator", "tasks", "strategies", "common", "launch", "testbed", "fedmtl"})

#: numpy and torch, plus what torch imports lazily on a ClientApp's first training step: creating
#: an optimizer imports torch._dynamo (about 1.5 s on a busy 2-core machine, every message).
DEFAULT_PRELOAD = ("numpy", "torch", "torch.optim", "torch._dynamo")


def _log(text: str) -> None:
    print(f"[clientapp-forkserver {os.getpid()}] {text}", file=sys.stderr, flush=True)


def preload(modules: Sequence[str]) -> float:
    """Import the heavy modules every ClientApp needs, plus Flower's ClientApp runtime; seconds taken."""
    started = time.perf_counter()
    # Any CUDA availability check (by torch or by a preloaded module) asks NVML instead of the
    # CUDA runtime: a CUDA driver initialised here could not be used by the forked children.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    for name in modules:
        if name.split(".")[0] in APP_PACKAGES:
            raise ValueError(f"--preload {name}: app modules must be imported by each task from its FAB, not preloaded")
        importlib.import_module(name)
    importlib.import_module("flwr.supernode.runtime.run_clientapp")
    if _cuda_initialized():
        raise RuntimeError(f"preloading {list(modules)} initialised CUDA: forked ClientApps could not use it")
    return time.perf_counter() - started


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a torch without CUDA support
        return False


#: Under `$FLWR_HOME` (beside Flower's `apps` folder, never in it): one file per bundle, named by
#: its SHA-256, that Flower's own `install_from_fab` installed on this node, naming its folder.
INSTALLED_DIR = ".fedmtl-installed"

#: Set to 1 to have every task unpack its bundle as Flower does (the benchmark's side-by-side).
UNPACK_ENV = "FEDMTL_UNPACK_EVERY_TASK"


def install_once() -> bool:
    """Let forked tasks skip unpacking a bundle this node has installed already; True if applied.

    Flower's runtime calls `install_from_fab(content)` in every ClientApp process
    (`flwr/supernode/runtime/run_clientapp.py`): it unzips the whole bundle into a temporary
    folder and hashes every file against the bundle's CONTENT list, then finds the install
    folder there already and returns it, unchanged and unchecked (`validate_and_install`). That
    is 0.05 s a message on an idle machine and about 0.3 s on a busy 2-core one, for nothing.
    Patched here, in the fork server before it forks (so every child has it): a bundle whose
    SHA-256 Flower's function installed before (recorded only once it returned) is answered with
    its install folder at once; any other bundle, or one whose folder is gone, goes through
    Flower's function unchanged. Nothing is trusted that Flower trusted not: it too uses an
    existing install folder as it finds it.
    """
    import hashlib

    from flwr.cli import install as flower_install
    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
    from flwr.supercore.utils import get_flwr_home
    from flwr.supernode.runtime import run_clientapp as runtime

    flower = flower_install.install_from_fab
    if getattr(runtime, "install_from_fab", None) is not flower:
        _log("Flower's ClientApp runtime no longer calls flwr.cli.install.install_from_fab: every task unpacks "
             "its bundle as Flower does")
        return False

    def install_from_fab(fab_file, install_dir=None, skip_prompt=False):  # type: ignore[no-untyped-def]
        if not (isinstance(fab_file, bytes) and install_dir is None and skip_prompt):
            return flower(fab_file, install_dir, skip_prompt)
        digest = hashlib.sha256(fab_file).hexdigest()
        home = get_flwr_home()
        apps, record = home / APP_DIR, home / INSTALLED_DIR / digest
        try:
            folder = apps / record.read_text(encoding="utf-8").strip()
            if folder.name.endswith(digest[:FAB_HASH_TRUNCATION]) and folder.parent == apps and folder.is_dir():
                return folder
        except (OSError, ValueError):
            pass
        folder = flower(fab_file, install_dir, skip_prompt)
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_name(f".{digest}.{os.getpid()}")
            partial.write_text(folder.name, encoding="utf-8")
            os.replace(partial, record)  # whole or absent: a task forked meanwhile unpacks again
        except OSError:
            pass
        return folder

    runtime.install_from_fab = install_from_fab  # type: ignore[attr-defined]
    return True


#: Set when the client accepts only app bundles of given hashes (a `flwr-clientapp` wrapper on
#: PATH checks them before unpacking): such tasks must go through that wrapper, never in-process.
PINNED_ENV = "FEDMTL_PINNED_APP_HASHES"


def _run_child(runtime_api_address: str, token: str, parent: int) -> None:
    """In the forked child: Flower's own ClientApp process main, then exit without our clean-up."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if os.environ.get(PINNED_ENV):  # fail closed: let the checking `flwr-clientapp` run it
            os.execvp("flwr-clientapp", ["flwr-clientapp", "--runtime-api-address", runtime_api_address,
                                         "--token", token, "--insecure", "--parent-pid", str(parent)])
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=True,
                      certificates=None, parent_pid=parent, runtime_dependency_install=False)
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task with sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - never return into the parent's loop
        _log(f"task process failed: {type(exc).__name__}: {exc}")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (with its pid it names one process); None if it is
    gone or a zombie (dead, not yet reaped: a container without init keeps those)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


class ReceptionGate:
    """Whether the SuperNode is still receiving a message, from its log (see the module docstring).

    The SuperNode receives one message at a time (pull, store, then push replies, in one loop),
    so only the latest "Receiving:" matters: it is over once an end line follows it. A reception
    that ended without one (Flower logs none on some error paths) is over when the next begins,
    and `wait` never waits past its timeout, so a missed line costs at most one wait.
    """

    BEGUN = b"Receiving: "
    ENDED = (b"Received successfully", b"Failed to receive message")

    def __init__(self, path: str | None, offset: int = 0) -> None:
        self.path = path
        self.receiving = False
        self.received = 0  # receptions ended so far (each may have created a task)
        self._offset = offset  # where this SuperNode's output starts (the log is appended to per start)
        self._rest = b""

    def scan(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                while data := f.read(1 << 20):
                    self._offset += len(data)
                    self._feed(data)
        except OSError:
            return

    def _feed(self, data: bytes) -> None:
        *lines, self._rest = (self._rest + data).split(b"\n")
        if len(self._rest) > 1 << 16:  # a runaway line without newline: it is no status line
            self._rest = b""
        for line in lines:
            if self.BEGUN in line:
                self.receiving = True
            elif any(end in line for end in self.ENDED):
                self.receiving = False
                self.received += 1

    def wait_for_news(self, timeout: float) -> None:
        """Sleep up to `timeout` seconds, less if the SuperNode ends a reception meanwhile (a new
        task may be there): so the task poll can be slow and a message still starts at once."""
        if not self.path:
            time.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        before = self.received
        while True:
            self.scan()
            left = deadline - time.monotonic()
            if self.received != before or left <= 0:
                return
            time.sleep(min(0.01, left))

    def wait(self, timeout: float) -> float:
        """Wait until the SuperNode's current reception (if any) has ended, at most `timeout`
        seconds; the seconds waited."""
        started = time.monotonic()
        self.scan()
        while self.receiving and time.monotonic() - started < timeout:
            time.sleep(0.005)
            self.scan()
        if self.receiving:
            _log(f"the SuperNode's log shows no end of its last reception after {timeout:g}s: starting the task anyway")
            self.receiving = False  # never wait on the same line twice
        return time.monotonic() - started


class ForkServer:
    """Acquire ClientApp tasks from a SuperNode's Runtime API and run each in a forked child."""

    def __init__(self, runtime_api_address: str, parent_pid: int | None, poll_interval: float,
                 secret: bytes | None, supernode_log: str | None = None, receive_wait: float = 30.0,
                 log_offset: int = 0) -> None:
        import httpx
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.retry.retry_invoker import RetryInvoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.parent_pid = parent_pid
        self.poll_interval = poll_interval
        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address, insecure=True, root_certificates=None,
            interceptors=interceptors,
            # One try per call: Flower's own invoker retries for ever (a SuperNode that is gone
            # would keep this loop from ever noticing) and SIGINTs the process on a 401.
            retry_invoker=RetryInvoker(wait_gen_factory=lambda: iter(()), recoverable_exceptions=(httpx.HTTPError,),
                                       max_tries=1, max_time=None, jitter=None))
        self.children: set[int] = set()
        self.launched = 0
        self.gate = ReceptionGate(supernode_log, log_offset)
        self.receive_wait = receive_wait
        self._parent_start = _start_time(parent_pid) if parent_pid is not None else None

    def parent_alive(self) -> bool:
        """False once the SuperNode is gone (its pid vanished or now names another process)."""
        if self.parent_pid is None:
            return True
        start = _start_time(self.parent_pid)
        return start is not None and start == self._parent_start

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def shutdown(self, grace_s: float = 3.0) -> None:
        """Stop the tasks still running (SIGTERM: Flower's runtime reports them as stopped), wait
        up to `grace_s`, then SIGKILL what is left and reap it: no child outlives the server."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
        self.reap()
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
            for pid in self.children:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.children and time.monotonic() < deadline:
                time.sleep(0.05)
                self.reap()
            if not self.children:
                return

    def acquire(self) -> str | None:
        """The token of one pending ClientApp task, or None."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value],
                                                         agentapp_fab_hashes=[]))
        if res.HasField("task") and res.token:
            return str(res.token)
        return None

    def launch(self, token: str) -> int:
        if _cuda_initialized():  # pragma: no cover - guarded by never importing app code here
            raise RuntimeError("CUDA was initialised in the fork server: forked ClientApps could not use it")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(self.address, token, os.getppid())
        self.children.add(pid)
        self.launched += 1
        return pid

    def serve(self) -> int:
        errors = 0
        while self.parent_alive():
            self.reap()
            try:
                token = self.acquire()
                errors = 0
            except Exception as exc:  # noqa: BLE001 - the SuperNode restarting, or not up yet
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status in (401, 403):  # never gets better: say so and let fedmtl client decide
                    _log(f"AcquireTask refused (HTTP {status}): the SuperNode does not accept this fork server's "
                         "--superexec-auth-secret-file; exiting")
                    return 3
                errors += 1
                if errors in (1, 10) or errors % 100 == 0:
                    _log(f"AcquireTask failed ({errors}x): {type(exc).__name__}: {exc}")
                token = None
                time.sleep(min(2.0, self.poll_interval * errors))
            if token is not None:
                self.gate.wait(self.receive_wait)  # the message's objects are on this node now
                self.launch(token)
                continue  # another task may be waiting already
            self.gate.wait_for_news(self.poll_interval)
        _log("the SuperNode is gone: exiting")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    if __name__ == "__main__" and sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # run by path: this folder's modules must not shadow anything a task imports
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (HOST:PORT, loopback)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) is gone")
    p.add_argument("--poll-interval", type=float, default=0.5,
                   help="seconds between AcquireTask polls (with --supernode-log, a reception ends a wait early)")
    p.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                   help=f"comma-separated modules to import once before forking (default {','.join(DEFAULT_PRELOAD)})")
    p.add_argument("--superexec-auth-secret-file", default=None,
                   help="the SuperNode's --superexec-auth-secret-file (signs AcquireTask)")
    p.add_argument("--supernode-log", default=None,
                   help="the SuperNode's output file: fork a task only once its message has been received")
    p.add_argument("--supernode-log-offset", type=int, default=0,
                   help="where this SuperNode's output starts in that file (earlier runs' lines are ignored)")
    p.add_argument("--receive-wait", type=float, default=30.0,
                   help="wait at most this many seconds for that (default 30)")
    args = p.parse_args(argv)
    if not 0.005 <= args.poll_interval <= 60:
        p.error("--poll-interval must be between 0.005 and 60 seconds")
    # A terminal Ctrl-C or the SuperNode's stop ends the loop; children get the default handlers back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    secret = None
    if args.superexec_auth_secret_file:
        with open(args.superexec_auth_secret_file, "rb") as f:
            secret = f.read()
        if not secret:
            p.error("--superexec-auth-secret-file is empty")
    seconds = preload([m for m in args.preload.split(",") if m.strip()])
    if os.environ.get(UNPACK_ENV) != "1":
        install_once()
    _log(f"preloaded {args.preload or 'nothing'} and Flower's ClientApp runtime in {seconds:.2f}s; "
         f"polling {args.runtime_api_address} every {args.poll_interval:g}s")
    server = ForkServer(args.runtime_api_address, args.parent_pid, args.poll_interval, secret,
                        args.supernode_log, args.receive_wait, args.supernode_log_offset)
    try:
        return server.serve()
    except KeyboardInterrupt:
        return 130
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
