"""launch.simulation: a private SuperLink runs a tiny Flower app on the simulation engine (Ray).

The slow tests run a real federation (SuperLink, SuperExec, flwr-simulation, Ray) on a tiny
throwaway app written into tmp_path: one that completes, one whose ServerApp raises. Both check
that nothing the launcher started is left running. The other tests need no processes.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from launch import simulation as launcher
from launch.flwr_cli import FlwrCli, SuperLinkConnection
from launch.processes import find_tagged_processes, free_port
from launch.simulation import SimulationFailed, SimulationResources, check_fab, run_simulation_app
from launch.simulation_main import PUMP_LINE, PUMP_RECORD, make_pump, waiting_nodes
from launch.superlink import SuperLinkConfig, SuperLinkProcess
from testbed.flower_app import write_flower_app

TINY_SERVER = '''\
"""Tiny ServerApp: query every node, then a few train rounds; one progress line each."""

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    label, rounds = str(cfg["label"]), int(cfg["rounds"])
    nodes = []
    for _ in range(120):  # the simulation engine registers its nodes one by one
        nodes = list(grid.get_node_ids())
        if len(nodes) >= int(cfg["nodes"]):
            break
        time.sleep(0.5)
    print(f"[{label}] server module {__file__}", flush=True)
    print(f"[{label}] nodes: {len(nodes)}", flush=True)
    if bool(cfg["fail"]):
        raise RuntimeError(f"[{label}] deliberate failure: boom-42")
    query = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query") for n in nodes]
    files = {r.content["info"]["file"] for r in grid.send_and_receive(query, timeout=120) if not r.has_error()}
    print(f"[{label}] client modules: {sorted(files)}", flush=True)
    for rnd in range(1, rounds + 1):
        msgs = [Message(RecordDict({"cfg": ConfigRecord({"round": rnd})}), dst_node_id=n, message_type="train")
                for n in nodes]
        ok = [r for r in grid.send_and_receive(msgs, timeout=120) if not r.has_error()]
        total = sum(float(r.content["m"]["value"]) for r in ok)
        print(f"[{label}] round {rnd}/{rounds}: {len(ok)}/{len(nodes)} replies, sum={total:.0f}", flush=True)
    print(f"[{label}] done", flush=True)
'''

TINY_CLIENT = '''\
"""Tiny ClientApp answering query and train messages."""

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"info": ConfigRecord({"file": __file__})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    value = 10.0 * int(msg.content["cfg"]["round"]) + int(context.node_config["partition-id"])
    return Message(RecordDict({"m": MetricRecord({"value": value})}), reply_to=msg)
'''


def write_tiny_app(root: Path) -> Path:
    """The tiny app in `root` (created), as a folder `flwr run` accepts."""
    return write_flower_app(root, "tinyapp", {"tiny_server/app.py": TINY_SERVER, "tiny_client/app.py": TINY_CLIENT},
                            "tiny_server.app:app", "tiny_client.app:app", {"rounds": 3, "fail": False, "label": "tiny", "nodes": 1})


def _cmdlines_mentioning(text: str) -> list[str]:
    """Command lines of live (not zombie) processes that mention `text`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(cmd)
    return out


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_app(tmp_path_factory.mktemp("launcher") / "tinyapp")


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> list[SuperLinkProcess]:
    """Every SuperLinkProcess that run_simulation_app creates during the test."""
    made: list[SuperLinkProcess] = []

    class Recording(SuperLinkProcess):
        def __init__(self, config: SuperLinkConfig) -> None:
            super().__init__(config)
            made.append(self)

    monkeypatch.setattr(launcher, "SuperLinkProcess", Recording)
    return made


def _assert_nothing_left(link: SuperLinkProcess, run_dir: Path) -> None:
    assert link.proc is None
    assert link.family.scan() == set(), "processes of the SuperLink's family are still running"
    assert find_tagged_processes(link.tag) == set()
    assert _cmdlines_mentioning(str(run_dir)) == []  # flower-superlink --database RUN_DIR/state.db
    assert _cmdlines_mentioning(f"127.0.0.1:{link.port}") == []  # flower-superexec, flwr-simulation, flwr log


# ------------------------------------------------------------------------------------------------
# Real federations
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_simulation_completes_streams_progress_and_cleans_up(tiny_app: Path, tmp_path: Path, links) -> None:
    lines: list[str] = []
    run_dir = tmp_path / "run"
    status = run_simulation_app(
        app_dir=tiny_app, run_dir=run_dir, run_config={"rounds": 3, "label": "tiny", "nodes": 4}, num_supernodes=4,
        num_cpus_per_client=1, num_gpus_per_client=0, ray_address=None, timeout_s=150, on_line=lines.append,
    )
    assert status == "finished:completed"
    text = "\n".join(lines)
    assert "[tiny] nodes: 4" in lines
    for rnd in (1, 2, 3):
        assert f"[tiny] round {rnd}/3: 4/4 replies, sum={40 * rnd + 6}" in lines, text
    assert "[tiny] done" in lines
    assert lines.index("[tiny] round 1/3: 4/4 replies, sum=46") < lines.index("[tiny] done")
    # The apps run from the unpacked bundle under the SuperLink's Flower home, not from tiny_app.
    server_line = next(ln for ln in lines if ln.startswith("[tiny] server module "))
    assert str(run_dir / "flwr_home" / "apps") in server_line and str(tiny_app) not in server_line
    assert not any("Since flwr 1.32" in ln for ln in lines)  # boilerplate filtered
    assert (run_dir / "superlink.log").is_file()
    assert (run_dir / "flwr_home" / PUMP_RECORD).read_text().strip() == PUMP_LINE  # launch/simulation_main.py ran
    (link,) = links
    _assert_nothing_left(link, run_dir)


@pytest.mark.slow
def test_failing_serverapp_raises_simulation_failed_with_its_error(tiny_app: Path, tmp_path: Path, links) -> None:
    lines: list[str] = []
    run_dir = tmp_path / "run"
    with pytest.raises(SimulationFailed) as info:
        run_simulation_app(tiny_app, run_dir, {"fail": True}, num_supernodes=2, timeout_s=150, on_line=lines.append)
    err = info.value
    assert err.status == "finished:failed"
    assert "boom-42" in err.details
    assert "RuntimeError: [tiny] deliberate failure: boom-42" in err.error_text
    assert "boom-42" in str(err)
    assert any("boom-42" in ln for ln in lines)  # the traceback was streamed too
    (link,) = links
    _assert_nothing_left(link, run_dir)


# ------------------------------------------------------------------------------------------------
# No processes
# ------------------------------------------------------------------------------------------------


def test_federation_config_whole_cpus_and_gpus() -> None:
    cfg = SimulationResources(num_cpus_per_client=2, num_gpus_per_client=0.25).federation_config(6)
    assert cfg == {"num-supernodes": 6, "backend": "ray", "client-resources-num-cpus": 2,
                   "client-resources-num-gpus": 0.25}
    assert isinstance(cfg["client-resources-num-cpus"], int)
    assert SimulationResources().ray_env == "local"


def test_federation_config_emulates_fractional_cpus_on_a_private_ray() -> None:
    cfg = SimulationResources(num_cpus_per_client=0.5, ray_num_cpus=2).federation_config(4)
    assert cfg["client-resources-num-cpus"] == 1 and cfg["init-args-num-cpus"] == 4
    cfg = SimulationResources(num_cpus_per_client=1.5, ray_num_cpus=4).federation_config(4)
    assert cfg["client-resources-num-cpus"] == 1 and cfg["init-args-num-cpus"] == 2


def test_existing_ray_cluster_gets_no_init_args() -> None:
    res = SimulationResources(num_cpus_per_client=1, num_gpus_per_client=0.5, ray_address="10.0.0.5:6379")
    assert res.ray_env == "10.0.0.5:6379"
    assert not any(k.startswith("init-args") for k in res.federation_config(3))
    with pytest.raises(ValueError, match="fraction"):
        SimulationResources(num_cpus_per_client=0.5, ray_address="10.0.0.5:6379")
    with pytest.raises(ValueError):
        SimulationResources(ray_address="10.0.0.5:6379", ray_num_cpus=4)
    with pytest.raises(ValueError):
        SimulationResources(num_cpus_per_client=0)
    with pytest.raises(ValueError):
        SimulationResources().federation_config(0)


def test_write_connection_keeps_other_connections(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "other"\n\n[superlink.other]\naddress = "h:1"\n')
    cli = FlwrCli(home, SuperLinkConnection("sim", "127.0.0.1:5555"))
    cli.write_connection()
    data = tomllib.loads((home / "config.toml").read_text())
    assert data["superlink"]["default"] == "sim"
    assert data["superlink"]["sim"] == {"address": "127.0.0.1:5555", "insecure": True}
    assert data["superlink"]["other"] == {"address": "h:1"}
    tls = FlwrCli(home, SuperLinkConnection("prod", "10.0.0.1:8000", insecure=False,
                                            root_certificates=tmp_path / "ca.crt"))
    tls.write_connection(make_default=False)
    data = tomllib.loads((home / "config.toml").read_text())
    assert data["superlink"]["default"] == "sim"
    assert data["superlink"]["prod"] == {"address": "10.0.0.1:8000", "root-certificates": str(tmp_path / "ca.crt")}


def test_check_fab_lists_sources_and_never_bundles_a_run_dir(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    (app / "data.bin").write_bytes(b"\0" * 1000)
    names = dict(check_fab(app))
    assert set(names) == {"pyproject.toml", "tiny_server/__init__.py", "tiny_server/app.py",
                          "tiny_client/__init__.py", "tiny_client/app.py"}
    ignored = app / "runs" / "r1" / "flwr_home"  # runs/ is in the app's .gitignore
    ignored.mkdir(parents=True)
    (ignored / "config.toml").write_text("x = 1\n")
    assert dict(check_fab(app, forbidden=[app / "runs" / "r1"])) == names
    # not ignored either: the bundle is built from a clean copy of the code (launch/bundle.py)
    bundled = app / "out" / "flwr_home"
    bundled.mkdir(parents=True)
    (bundled / "config.toml").write_text("x = 1\n")
    (app / "out" / "history.json").write_text("{}")
    assert dict(check_fab(app, forbidden=[app / "out"])) == names


def test_error_text_takes_the_last_traceback() -> None:
    lines = ["INFO :      Starting", "[tiny] nodes: 2", "ERROR :     Simulation raised an exception",
             "Traceback (most recent call last):", '  File "x.py", line 1, in main',
             "RuntimeError: boom", "ERROR :     Exit Code: 700"]
    text = launcher.error_text(lines)
    assert text.startswith("ERROR :     Simulation raised an exception") and "RuntimeError: boom" in text
    assert launcher.error_text(["INFO : fine"]) == ""


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_superlink_config_refuses_auth_without_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS"):
        SuperLinkConfig(run_dir=tmp_path, enable_supernode_auth=True)
    link = SuperLinkProcess(SuperLinkConfig(run_dir=tmp_path, port=9999, simulation=True))
    cmd = link.command()
    assert cmd[1:] == ["--host", "127.0.0.1", "--port", "9999", "--insecure", "--simulation", "--isolation",
                       "subprocess", "--database", str(tmp_path / "state.db"),
                       "--disable-runtime-dependency-installation"]
    assert link.env()["FLWR_HOME"] == str(tmp_path / "flwr_home")
    assert link.env()[launcher.ENV_TAG] == link.tag


def test_unknown_run_config_keys_are_refused_before_anything_starts(tiny_app: Path, tmp_path: Path, links) -> None:
    assert launcher.app_config_keys(tiny_app) == {"rounds", "fail", "label", "nodes"}
    with pytest.raises(ValueError, match="nonexistent"):
        run_simulation_app(tiny_app, tmp_path / "run", {"rounds": 1, "nonexistent": 2}, num_supernodes=2)
    assert links == []


# ------------------------------------------------------------------------------------------------
# The simulation's message pump (launch/simulation_main.py)
# ------------------------------------------------------------------------------------------------
class _FakeLinkState:
    """Flower's in-memory link state as the pump sees it: messages by id, a lock, get_message_ins."""

    def __init__(self, dst_nodes: list[int]) -> None:
        import threading
        from types import SimpleNamespace

        self.lock = threading.RLock()
        self.message_ins_store = {f"m{i}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n, delivered_at=""))
                                  for i, n in enumerate(dst_nodes)}
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int | None) -> list:
        self.asked.append(node_id)
        out = [m for m in self.message_ins_store.values() if m.metadata.dst_node_id == node_id
               and m.metadata.delivered_at == ""][:limit]
        for m in out:
            m.metadata.delivered_at = "now"
        return out


class _StopAfter:
    """f_stop for the pump: set after `sweeps` waits."""

    def __init__(self, sweeps: int) -> None:
        self.left = sweeps

    def is_set(self) -> bool:
        return self.left <= 0

    def wait(self, _timeout: float) -> None:
        self.left -= 1


def test_pump_asks_only_nodes_with_a_message_waiting_one_per_sweep_in_node_order() -> None:
    import queue

    state = _FakeLinkState([7, 3, 3, 9])
    nodes = {n: i for i, n in enumerate([1, 3, 5, 7, 9, 11])}
    got: queue.Queue = queue.Queue()
    flower_calls: list[object] = []
    make_pump(lambda *a: flower_calls.append(a))(state, got, nodes, _StopAfter(3))
    assert not flower_calls
    # sweep 1: nodes 3, 7, 9 in the mapping's order; sweep 2: node 3's second message; sweep 3: nothing
    assert state.asked == [3, 7, 9, 3]
    order = [got.get_nowait().metadata.dst_node_id for _ in range(got.qsize())]
    assert order == [3, 7, 9, 3] and waiting_nodes(state) == set()


def test_pump_falls_back_to_flowers_for_another_link_state() -> None:
    calls: list[tuple] = []
    args = (object(), None, {1: 0}, _StopAfter(1))
    make_pump(lambda *a: calls.append(a))(*args)
    assert calls == [args] and waiting_nodes(object()) is None


def test_pump_patch_fits_the_installed_flower(tmp_path: Path) -> None:
    """The shim fedmtl puts on the SuperLink's PATH loads the patch, and its guard accepts the
    installed Flower's pump (a Flower upgrade that changes the sweep fails here; the simulation
    would then run with Flower's own pump, still correctly)."""
    import subprocess
    import sys

    from launch.simulation_main import SHIM_NAME, write_shim

    shim = write_shim(tmp_path / "bin")
    assert shim.name == SHIM_NAME and os.access(shim, os.X_OK)
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('m', sys.argv[1]); m = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "from flwr.server.superlink.fleet.vce import vce_api\n"
            "flower = vce_api.add_messages_to_queue\n"
            "assert m.install() is None and vce_api.add_messages_to_queue is not flower\n")
    done = subprocess.run([sys.executable, "-c", code, str(Path(launcher.__file__).with_name("simulation_main.py"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "simulation_main.py" in shim.read_text()
