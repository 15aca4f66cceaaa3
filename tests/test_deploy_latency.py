"""What makes a deployed round fast, without processes: the gateway's held pulls, the client's
SuperNode command lines (fork server or Flower's SuperExec), the fork server's rules, the data
folder's validated fingerprint, and the ClientApp's timing records.

The real-process checks are tests/test_deployment.py (clients use the fork server by default)
and the figures come from benchmarks/bench_deployment.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse  # pylint: disable=E0611
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

from client import data as client_data
from client import folder
from client.folder import (
    ClientDataError,
    folder_fingerprint,
    read_client_dir,
    write_client_dir,
)
from client.timing import TIMING_ENV, timing_mod
from launch import clientapp_forkserver as fs
from launch.gateway import GatewayConfig, gateway_command
from launch.gateway_hold import OBJECT_ROUTE, PULL_ROUTE, PullHolder
from launch.supernode import (
    FORKSERVER,
    MAX_EXECUTOR_RESTARTS,
    SUPERNODE_MAIN,
    TASK_POLL_ENV,
    SuperNodeConfig,
    SuperNodeProcess,
)
from tasks.suite import TaskData, TaskSpec


# --------------------------------------------------------------------------- gateway: held pulls
def _pull_body(node: int) -> bytes:
    return PullMessagesRequest(node=Node(node_id=node)).SerializeToString()


EMPTY = PullMessagesResponse().SerializeToString()
FULL = PullMessagesResponse(messages_list=[ProtoMessage()]).SerializeToString()


class _Conn:
    """The SuperNode's side of one held request: its body was read; `disconnect()` closes it."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()

    async def receive(self) -> dict:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        self._gone.set()


def _client(answers: list[tuple[int, bytes]], calls: list[float]) -> httpx.AsyncClient:
    """A fake SuperLink answering pulls from `answers` in turn (the last one repeats)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path in (PULL_ROUTE, OBJECT_ROUTE) and request.headers["x-signed"] == "yes"  # unchanged
        calls.append(time.monotonic())
        status, body = answers[min(len(calls) - 1, len(answers) - 1)]
        return httpx.Response(status, content=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="https://superlink")


HEADERS = [(b"x-signed", b"yes")]


def _pull(holder: PullHolder, answers: list[tuple[int, bytes]], route: str = PULL_ROUTE,
          body: bytes | None = None) -> tuple[tuple | None, list[float], float]:
    async def go() -> tuple[tuple | None, list[float], float]:
        calls: list[float] = []
        t0 = time.monotonic()
        async with _client(answers, calls) as client:
            answer = await holder.pull(client, route, HEADERS, _pull_body(7) if body is None else body,
                                       _Conn().receive, "10.0.0.1")
        return answer, calls, time.monotonic() - t0

    return asyncio.run(go())


def test_empty_pull_is_held_until_a_message_arrives_and_refusals_pass_at_once() -> None:
    holder = PullHolder(hold_s=5.0, poll_s=0.05)
    answer, calls, took = _pull(holder, [(200, EMPTY), (200, EMPTY), (200, EMPTY), (200, FULL)])
    assert answer is not None and answer[0] == 200 and answer[2] == FULL and len(calls) == 4
    assert holder.held == 1 and took < 2.0
    assert all(b - a >= 0.04 for a, b in zip(calls, calls[1:]))  # polled at poll_s, not in a busy loop
    for status, body in ((401, b'{"detail": "Invalid SuperNode authentication"}'), (200, FULL)):
        holder = PullHolder(hold_s=5.0, poll_s=0.05)
        answer, calls, _ = _pull(holder, [(status, body)])
        assert len(calls) == 1 and answer is not None and answer[:1] == (status,) and answer[2] == body
        assert holder.held == 0 and not holder._holds  # a refused pull never holds nor ends a hold
    answer, calls, took = _pull(PullHolder(hold_s=0.4, poll_s=0.1), [(200, EMPTY)])  # the hold ends: "no message"
    assert answer is not None and answer[2] == EMPTY and 0.35 < took < 1.5 and 3 <= len(calls) <= 6


def test_held_pulls_are_bounded_and_holding_can_be_off() -> None:
    for holder in (PullHolder(hold_s=0), PullHolder(hold_s=5.0, max_held=0), PullHolder(hold_s=5.0, max_held_per_peer=0)):
        answer, calls, _ = _pull(holder, [(200, EMPTY)])
        assert len(calls) == 1 and answer is not None and answer[2] == EMPTY  # forwarded once, as without holding
    assert not PullHolder(hold_s=0).enabled


def test_a_client_that_goes_away_takes_no_message() -> None:
    async def go() -> tuple[tuple | None, list[float]]:
        calls: list[float] = []
        conn = _Conn()
        holder = PullHolder(hold_s=5.0, poll_s=0.05)
        async with _client([(200, EMPTY)], calls) as client:
            task = asyncio.ensure_future(holder.pull(client, PULL_ROUTE, HEADERS, _pull_body(1), conn.receive))
            await asyncio.sleep(0.2)
            conn.disconnect()
            answer = await asyncio.wait_for(task, 2.0)
            n = len(calls)
            await asyncio.sleep(0.2)
            assert len(calls) == n  # no pull after the disconnect
        assert not holder._active and holder._active_total == 0  # its slot is free again
        return answer, calls

    answer, calls = asyncio.run(go())
    assert answer is None and len(calls) >= 2


def test_a_newer_pull_of_the_same_node_ends_the_older_hold() -> None:
    async def go() -> tuple[tuple | None, float]:
        calls: list[float] = []
        holder = PullHolder(hold_s=5.0, poll_s=0.05)
        old, new = _Conn(), _Conn()
        async with _client([(200, EMPTY)], calls) as client:
            first = asyncio.ensure_future(holder.pull(client, PULL_ROUTE, HEADERS, _pull_body(3), old.receive))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            second = asyncio.ensure_future(holder.pull(client, PULL_ROUTE, HEADERS, _pull_body(3), new.receive))
            answer = await asyncio.wait_for(first, 2.0)
            ended = time.monotonic() - t0
            new.disconnect()
            await asyncio.wait_for(second, 2.0)
        return answer, ended

    answer, ended = asyncio.run(go())
    assert answer is not None and answer[2] == EMPTY and ended < 1.0


def test_release_all_answers_every_held_pull_at_once_and_holds_no_more() -> None:
    """What a stopping gateway does first: no held pull (message or object) keeps it waiting."""
    obj = PullObjectRequest(node=Node(node_id=9), run_id=1, object_id="abc").SerializeToString()
    pending = PullObjectResponse(object_found=True, object_available=False).SerializeToString()

    async def go() -> tuple[list, float, int, list[float]]:
        holder = PullHolder(hold_s=30.0, poll_s=0.05, object_poll_s=0.05)
        async with _client([(200, EMPTY)], []) as messages, _client([(200, pending)], []) as objects:
            held = [asyncio.ensure_future(holder.pull(messages, PULL_ROUTE, HEADERS, _pull_body(n), _Conn().receive))
                    for n in (1, 2)]
            held.append(asyncio.ensure_future(holder.pull(objects, OBJECT_ROUTE, HEADERS, obj, _Conn().receive)))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            released = holder.release_all()
            answers = await asyncio.wait_for(asyncio.gather(*held), 2.0)
            took = time.monotonic() - t0
            calls: list[float] = []
            async with _client([(200, EMPTY)], calls) as late:  # after release: forwarded once, never held
                answers.append(await holder.pull(late, PULL_ROUTE, HEADERS, _pull_body(3), _Conn().receive))
        return answers, took, released, calls

    answers, took, released, calls = asyncio.run(go())
    assert released == 3 and took < 1.0
    assert [a[2] for a in answers] == [EMPTY, EMPTY, pending, EMPTY]  # the SuperLink's own last answers
    assert len(calls) == 1


def test_an_object_not_uploaded_yet_is_held_until_it_is() -> None:
    body = PullObjectRequest(node=Node(node_id=7), run_id=1, object_id="abc").SerializeToString()
    pending = PullObjectResponse(object_found=True, object_available=False).SerializeToString()
    ready = PullObjectResponse(object_found=True, object_available=True, object_content=b"weights").SerializeToString()
    missing = PullObjectResponse(object_found=False, object_available=False).SerializeToString()
    holder = PullHolder(hold_s=5.0, object_poll_s=0.01)
    answer, calls, _ = _pull(holder, [(200, pending), (200, pending), (200, ready)], OBJECT_ROUTE, body)
    assert len(calls) == 3 and answer is not None and answer[2] == ready
    assert holder.held_objects == 1 and holder.held == 0
    answer, calls, _ = _pull(holder, [(200, missing)], OBJECT_ROUTE, body)  # unknown: Flower's error, relayed at once
    assert len(calls) == 1 and answer is not None and answer[2] == missing


def test_gateway_config_and_command_carry_the_hold() -> None:
    cfg = GatewayConfig(listen="0.0.0.0:9092", upstream="127.0.0.1:9093", insecure=True, pull_hold_s=0.0)
    cmd = gateway_command(cfg)
    assert cmd[cmd.index("--pull-hold") + 1] == "0"
    assert "--pull-hold" not in gateway_command(GatewayConfig("0.0.0.0:9092", "127.0.0.1:9093", insecure=True))
    with pytest.raises(ValueError, match="30 s"):
        GatewayConfig("0.0.0.0:9092", "127.0.0.1:9093", insecure=True, pull_hold_s=40).validate()


# --------------------------------------------------------------------------- SuperNode and executors
def _node(tmp_path: Path, **kw: object) -> SuperNodeProcess:
    node = SuperNodeProcess(SuperNodeConfig(superlink="coord:9092", data_dir=tmp_path, name="a", work_dir=tmp_path / "w",
                                            private_key=tmp_path / "a.key", root_certificates=tmp_path / "ca.crt",
                                            runtime_port=9555, **kw))  # type: ignore[arg-type]
    return node


def test_fork_executor_runs_the_supernode_in_process_isolation(tmp_path: Path) -> None:
    node = _node(tmp_path)
    cmd = node.command()
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(node.secret_path)
    fork = node.executor_command(supernode_pid=4242, log_offset=77)
    assert fork[:2] == [sys.executable, str(FORKSERVER)]
    assert fork[fork.index("--runtime-api-address") + 1] == "127.0.0.1:9555"
    assert fork[fork.index("--parent-pid") + 1] == "4242" and fork[fork.index("--preload") + 1] == ",".join(fs.DEFAULT_PRELOAD)
    assert fork[fork.index("--superexec-auth-secret-file") + 1] == str(node.secret_path)
    assert fork[fork.index("--supernode-log") + 1] == str(node.log_path)
    assert fork[fork.index("--supernode-log-offset") + 1] == "77"
    assert fork[fork.index("--poll-interval") + 1] == "0.5" and TASK_POLL_ENV not in node.env()  # woken by the log


def test_supernode_runs_with_a_short_reply_poll_unless_told_flowers(tmp_path: Path) -> None:
    cmd = _node(tmp_path).command()
    assert cmd[:4] == [sys.executable, str(SUPERNODE_MAIN), "--reply-poll", "0.02"] and cmd[4] == "--superlink"
    plain = _node(tmp_path, reply_poll_s=None).command()
    assert Path(plain[0]).name == "flower-supernode" and plain[1:] == cmd[4:]
    with pytest.raises(ValueError, match="reply_poll_s=0.7"):
        _node(tmp_path, reply_poll_s=0.7)


def test_reply_poll_patch_fits_the_installed_flower() -> None:
    """In a fresh interpreter (the patch changes Flower's module): the guard finds Flower's 0.5 s
    reply wait, and afterwards that sleep, and only that one, is short. A Flower upgrade that
    moves the wait fails here (the client would then run at Flower's 0.5 s, still correctly)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import supernode_main as m\n"
            "assert m.shorten_reply_poll(0.01) is None\n"
            "from flwr.supernode import start_client_internal as loop\n"
            "t = time.monotonic(); loop.time.sleep(0.5); short = time.monotonic() - t\n"
            "t = time.monotonic(); loop.time.sleep(0.2); other = time.monotonic() - t\n"
            "assert short < 0.2 and other >= 0.2 and time.sleep is not loop.time.sleep, (short, other)\n"
            "assert m.main(['--reply-poll', '0.9']) == 2\n")
    done = subprocess.run([sys.executable, "-c", code, str(SUPERNODE_MAIN.parent)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "must be between 0.001 and 0.5" in done.stderr


def test_coordinator_superlink_keeps_objects_in_memory_and_its_state_on_disk(tmp_path: Path) -> None:
    from launch.superlink import IN_MEMORY_DATABASE, SUPERLINK_MAIN, SuperLinkConfig, SuperLinkProcess

    cmd = SuperLinkProcess(SuperLinkConfig(run_dir=tmp_path, port=9999, objects_in_memory=True)).command()
    assert Path(cmd[1]) == SUPERLINK_MAIN and cmd[cmd.index("--database") + 1] == str(tmp_path / "state.db")
    plain = SuperLinkProcess(SuperLinkConfig(run_dir=tmp_path, port=9999)).command()
    assert Path(plain[0]).name == "flower-superlink" and plain[1:] == cmd[2:]
    memory = SuperLinkProcess(SuperLinkConfig(run_dir=tmp_path, port=9999, objects_in_memory=True,
                                              database=IN_MEMORY_DATABASE)).command()
    assert Path(memory[0]).name == "flower-superlink"  # nothing to move: all of it is in memory already


def test_object_store_patch_fits_the_installed_flower(tmp_path: Path) -> None:
    """In a fresh interpreter (the patch changes Flower's module): after the guard passes, Flower's
    own factory function gives an in-memory object store beside a link state in the database
    file. A Flower upgrade that changes how the store is made fails here (the SuperLink would
    then keep its objects in the database, as Flower does, still correctly)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import superlink_main as m\n"
            "assert m.objects_in_memory() is None\n"
            "from flwr.superlink import config_loader as c\n"
            "objects, state = c.get_objectstore_linkstate_factories(sys.argv[2], c.get_federation_manager())\n"
            "print(type(objects.store()).__name__, type(state.state()).__name__)\n")
    db = tmp_path / "state.db"
    from launch.superlink import SUPERLINK_MAIN

    done = subprocess.run([sys.executable, "-c", code, str(SUPERLINK_MAIN.parent), str(db)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["InMemoryObjectStore", "SqlLinkState"] and db.exists()


def test_flower_executor_keeps_flowers_superexec_with_a_short_poll(tmp_path: Path) -> None:
    node = _node(tmp_path, executor="flower", task_poll_s=0.2)
    assert "--isolation" not in node.command()
    assert node.env()[TASK_POLL_ENV] == "0.2"
    assert TASK_POLL_ENV not in _node(tmp_path, executor="flower", task_poll_s=None).env()  # Flower's 1 s
    with pytest.raises(ValueError, match="executor"):
        _node(tmp_path, executor="threads")
    with pytest.raises(ValueError, match="between 0.01 and 60"):
        _node(tmp_path, task_poll_s=0.001)


def test_fork_server_unpacks_each_bundle_once_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks forked after a bundle was installed get its folder without unpacking it again; an
    unknown bundle, a record whose folder is gone or a forged record all go through Flower's own
    install (which verifies the bundle)."""
    from flwr.cli import install as flower_install
    from flwr.cli.build import build_fab_from_disk
    from flwr.supernode.runtime import run_clientapp as runtime

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    unpacked: list[str] = []
    real = flower_install.install_from_fab
    monkeypatch.setattr(flower_install, "install_from_fab", lambda fab, *a: unpacked.append("x") or real(fab, *a))
    monkeypatch.setattr(runtime, "install_from_fab", flower_install.install_from_fab)
    assert fs.install_once()
    fabs = []
    for version in ("1.0.0", "1.0.1"):
        app = tmp_path / f"app{version}"
        app.mkdir()
        (app / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
            f'[project]\nname = "tinyapp"\nversion = "{version}"\n'
            '[tool.flwr.app]\npublisher = "fedmtl"\n[tool.flwr.app.components]\n'
            'serverapp = "tinyapp.server:app"\nclientapp = "tinyapp.client:app"\n')
        (app / "tinyapp").mkdir()
        (app / "tinyapp" / "client.py").write_text("app = None\n")
        fabs.append(build_fab_from_disk(app))
    install = runtime.install_from_fab
    first = install(fabs[0], skip_prompt=True)
    assert first.is_dir() and (first / "tinyapp" / "client.py").is_file() and len(unpacked) == 1
    assert install(fabs[0], skip_prompt=True) == first and len(unpacked) == 1  # the next task: no unpacking
    second = install(fabs[1], skip_prompt=True)  # another bundle: Flower's install
    assert second != first and len(unpacked) == 2
    records = tmp_path / "home" / fs.INSTALLED_DIR
    assert sorted(p.name for p in records.iterdir()) == sorted(hashlib.sha256(f).hexdigest() for f in fabs)
    # a record naming another bundle's folder, or a folder outside the apps folder, is not believed
    (records / hashlib.sha256(fabs[0]).hexdigest()).write_text(second.name)
    (records / hashlib.sha256(fabs[1]).hexdigest()).write_text("../../elsewhere." + second.name[-8:])
    assert install(fabs[0], skip_prompt=True) == first and install(fabs[1], skip_prompt=True) == second
    assert len(unpacked) == 4
    shutil.rmtree(first)  # removed by hand: installed again
    assert install(fabs[0], skip_prompt=True) == first and first.is_dir() and len(unpacked) == 5
    # a damaged bundle whose hash has no record is refused by Flower's verification as before
    with pytest.raises(Exception, match="FAB|hash|zip|File"):
        install(fabs[0][:-40], skip_prompt=True)


def test_fork_server_never_preloads_app_code() -> None:
    for name in ("client.app", "tasks", "coordinator.loop"):
        with pytest.raises(ValueError, match="FAB"):
            fs.preload([name])
    # run by path, it imports no fedmtl package (children import the app from the run's FAB)
    probe = ("import runpy, sys\nsys.argv = ['forkserver', '--help']\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))") % (str(FORKSERVER), sorted(fs.APP_PACKAGES))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_fork_server_notices_its_supernode_is_gone_and_stops_its_tasks(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    server = fs.ForkServer.__new__(fs.ForkServer)
    server.parent_pid, server._parent_start = child.pid, "0"
    assert not server.parent_alive()
    server.parent_pid, server._parent_start = os.getpid(), fs._start_time(os.getpid())
    assert server.parent_alive()
    # on exit it stops the tasks still running: one that ends on SIGTERM, one that ignores it
    server.children, tasks = set(), []
    for ignore in (False, True):
        ready = tmp_path / f"ready{int(ignore)}"
        task = subprocess.Popen([sys.executable, "-c", "import pathlib, signal, sys, time\n"
                                 + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore else "")
                                 + f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)"])
        server.children.add(task.pid)
        tasks.append(task.pid)
        while not ready.exists():
            time.sleep(0.02)
    previous = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        server.shutdown(grace_s=0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not server.children and time.monotonic() - t0 < 3
    for pid in tasks:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped, not a zombie


def test_a_dead_fork_server_is_replaced_a_few_times_then_the_client_gives_up(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path)
    monkeypatch.setattr(node, "executor_command", lambda *a: [sys.executable, "-c", "import sys; sys.exit(7)"])
    node.config.work_dir.mkdir(parents=True)
    node.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for the SuperNode
    try:
        node._start_executor()
        said = []
        for _ in range(MAX_EXECUTOR_RESTARTS + 1):
            node.executor_proc.wait(timeout=30)
            line = node.revive_executor()
            if line is None:
                break
            said.append(line)
        assert len(said) == MAX_EXECUTOR_RESTARTS and "status 7" in said[0] and "started a new one" in said[0]
        node.executor_proc.wait(timeout=30)
        assert node.revive_executor() is None and not node.is_running()
        assert "fork server exited (status 7) after 3 restart(s)" in node.exit_description()
        assert node.proc.poll() is None  # the SuperNode itself was left alone until stop()
    finally:
        node.proc.kill()
        node.proc.wait()


# --------------------------------------------------------------------------- data folder fingerprint
def _folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 4, 4), dtype=np.float32)
    data = TaskData(x, np.array([0, 1, 0, 1, 0, 1]), x[:2], np.array([0, 1]))
    return write_client_dir(tmp_path / "site", {"t": data}, "s", "site", [TaskSpec("t", 2)])


def test_a_validated_fingerprint_skips_only_the_value_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _folder(tmp_path)
    fp = folder_fingerprint(d)
    assert fp and fp == folder_fingerprint(d)
    seen: list[bool] = []
    real = folder._check_arrays
    monkeypatch.setattr(folder, "_check_arrays", lambda *a, **k: (seen.append(k.get("values", True)), real(*a, **k))[1])
    read_client_dir(d)
    read_client_dir(d, validated=fp)
    assert seen == [True, True, False, False]
    # a rewritten file is a new fingerprint: validated again in full, and a bad value is caught
    x = np.full((6, 1, 4, 4), np.nan, dtype=np.float32)
    np.savez_compressed(d / "t" / "train.npz", x=x, y=np.zeros(6, dtype=np.int64))
    assert folder_fingerprint(d) != fp
    with pytest.raises(ClientDataError, match="NaN"):
        read_client_dir(d, validated=fp)


def test_clientapp_processes_trust_only_the_folder_fedmtl_client_validated(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    d = _folder(tmp_path)
    env = client_data.validated_env(d, folder_fingerprint(d))
    info = json.loads(env[client_data.VALIDATED_ENV])
    assert info == {"dir": str(d.resolve()), "fingerprint": folder_fingerprint(d)}
    monkeypatch.setenv(client_data.VALIDATED_ENV, env[client_data.VALIDATED_ENV])
    assert client_data.validated_fingerprint(str(d)) == info["fingerprint"]
    assert client_data.validated_fingerprint(str(tmp_path)) == ""  # another folder
    assert client_data.validated_env(d, "stale") == {}  # changed while validating: nothing trusted
    # within one process the folder is cached under its content: a changed folder is read again
    first = client_data._folder(str(d))[1]["t"]
    assert client_data._folder(str(d))[1]["t"] is first
    time.sleep(0.01)
    np.savez_compressed(d / "t" / "train.npz", x=np.zeros((6, 1, 4, 4), np.float32), y=np.zeros(6, np.int64))
    again = client_data._folder(str(d))[1]["t"]
    assert again is not first and float(again.x_train.sum()) == 0.0


# --------------------------------------------------------------------------- timing records
def test_timing_mod_writes_one_line_per_message_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("run_id", 1), ("task_id", 1), ("node_id", 0)):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, f"_{attr}", value, raising=False)
    msg = Message(RecordDict({"config": ConfigRecord({"round": 1})}), dst_node_id=5, message_type="train",
                  group_id="round-1.group-0")
    ctx = Context(run_id=1, node_id=5, node_config={"name": "site-a"}, state=RecordDict(), run_config={})

    def handler(m: Message, c: Context) -> Message:
        time.sleep(0.05)
        return Message(RecordDict({"metrics": MetricRecord({"train-seconds": 0.04})}), reply_to=m)

    monkeypatch.delenv(TIMING_ENV, raising=False)
    timing_mod(msg, ctx, handler)
    path = tmp_path / "timing.jsonl"
    monkeypatch.setenv(TIMING_ENV, str(path))
    timing_mod(msg, ctx, handler)
    (rec,) = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert rec["type"] == "train" and rec["group"] == "round-1.group-0" and rec["name"] == "site-a"
    assert rec["pid"] == os.getpid() and rec["ray_node"] is None and rec["compute"] == pytest.approx(0.04)
    assert rec["process_start"] <= rec["created"] <= rec["enter"] and rec["exit"] - rec["enter"] >= 0.05

    def scoring_handler(m: Message, c: Context) -> Message:  # evaluate-in-train: scores travel with training
        return Message(RecordDict({"metrics": MetricRecord({"train-seconds": 0.04, "affinity-seconds": 0.01}),
                                   "evaluation": MetricRecord({"accuracy.t": 0.5, "eval-seconds": 0.02})}), reply_to=m)

    timing_mod(msg, ctx, scoring_handler)
    rec = json.loads(path.read_text().splitlines()[-1])
    assert rec["compute"] == pytest.approx(0.07)  # training + measurement + scoring the received model


def test_fork_server_waits_until_the_supernode_has_received_the_message(tmp_path: Path) -> None:
    log = tmp_path / "supernode.log"
    log.write_bytes(b"\x1b[92mINFO \x1b[0m:      Receiving: query message (ID: 1)\nINFO : Received successfully\n"
                    b"INFO : Receiving: train message (ID: 2)\n")
    gate = fs.ReceptionGate(str(log))
    t0 = time.monotonic()
    gate.scan()
    assert gate.receiving  # the train message is still being downloaded
    with open(log, "ab") as f:
        f.write(b"INFO : Received succ")  # a line being written does not count yet
    gate.scan()
    assert gate.receiving
    with open(log, "ab") as f:
        f.write(b"essfully\n")
    assert gate.wait(5.0) < 0.5 and not gate.receiving
    # a reception whose end was never logged costs one wait at most, and the next one resets it
    with open(log, "ab") as f:
        f.write(b"INFO : Receiving: evaluate message (ID: 3)\n")
    assert gate.wait(0.2) >= 0.2 and not gate.receiving and gate.wait(5.0) < 0.1
    with open(log, "ab") as f:
        f.write(b"INFO : Receiving: train message (ID: 4)\n")
    gate.scan()
    assert gate.receiving
    assert time.monotonic() - t0 < 3
    # the task poll wakes up as soon as a reception ends, else sleeps its full interval
    t1 = time.monotonic()
    gate.wait_for_news(0.3)
    assert time.monotonic() - t1 >= 0.3
    with open(log, "ab") as f:
        f.write(b"INFO : Received successfully\n")
    t1 = time.monotonic()
    gate.wait_for_news(5.0)
    assert time.monotonic() - t1 < 0.5
    # lines of an earlier start of the SuperNode (before the offset) are ignored
    assert not fs.ReceptionGate(str(log), offset=log.stat().st_size).receiving
    assert fs.ReceptionGate(None).wait(5.0) < 0.1  # no log: nothing waits
    assert fs.ReceptionGate(str(tmp_path / "other-wording.log")).wait(5.0) < 0.1
