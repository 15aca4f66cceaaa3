"""`fedmtl coordinator`, `fedmtl client`, `fedmtl certs`, `fedmtl keys`: real deployments.

* Unit tests (no processes): the commands parse, certificates and keys are written where the
  docs say, clients and coordinators refuse bad inputs before starting anything, Flower's
  refusal messages become one clear sentence.
* ``slow`` (loopback): a coordinator and three clients, each its own process tree, TLS and
  client authentication on. While they run, a client with an unregistered key and a client
  without the CA are refused within seconds with a clear message; the 2-round MAS run (two task
  groups) completes and writes history, models and plots; everything is torn down. Then the
  coordinator is SIGKILLed after round 1 of a second run and `fedmtl coordinator --resume`
  finishes it with the same results as the uninterrupted run.
* ``netns`` (root): coordinator in one network namespace, clients in others, over veth
  addresses; a third client joins after round 1 and is trained in later rounds; from a client's
  namespace the coordinator's Control and Runtime APIs are unreachable while training works.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coordinator.history import read_history
from fedmtl import cli
from launch.processes import free_port
from launch.security import certificate_covers, certificate_sans
from launch.service import COORDINATOR_INFO
from launch.supernode import SuperNodeConfig, SuperNodeProcess, classify_supernode_output

try:  # works whether or not tests/ is a package
    from tests.netns import NetnsLan, skip_unless_netns, stop_processes
except ImportError:  # pragma: no cover
    from netns import NetnsLan, skip_unless_netns, stop_processes  # type: ignore

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEDMTL = [sys.executable, "-m", "fedmtl.cli"]

# A small federation: tiny suite, 2 local steps, MAS splits after round 1 into 2 groups.
RUN_ARGS = ["--suite", "tiny", "--mode", "mas", "--split-round", "1", "--max-groups", "2", "--rounds", "2",
            "--local-steps", "2", "--set", "affinity-every=1", "--seed", "3"]


def fedmtl(*args: str) -> int:
    return cli.main([str(a) for a in args])


# --------------------------------------------------------------------------- #
# Unit tests
# --------------------------------------------------------------------------- #
def test_parser_has_the_deployment_commands() -> None:
    parser = cli.build_parser()
    a = parser.parse_args(["coordinator", "--resume", "runs/x", "--port", "9100", "--min-clients", "3"])
    assert a.command == "coordinator" and a.resume and a.run_dir_pos == Path("runs/x") and a.port == 9100
    a = parser.parse_args(["client", "--coordinator", "h:1", "--data", "d", "--key", "k.key", "--ca", "ca.crt"])
    assert a.command == "client" and a.max_wait == 300.0
    a = parser.parse_args(["certs", "--out", "pki", "--host", "a", "--host", "10.0.0.1"])
    assert a.host == ["a", "10.0.0.1"]
    a = parser.parse_args(["keys", "create", "n1", "n2", "--out", "keys/{name}"])
    assert a.names == ["n1", "n2"]
    for argv in (["keys", "register", "x.pub", "--run-dir", "r"], ["keys", "list", "--run-dir", "r"],
                 ["keys", "revoke", "n1", "--run-dir", "r"]):
        assert parser.parse_args(argv).func is not None


def test_certs_and_keys_write_what_the_docs_say(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tls = tmp_path / "tls"
    assert fedmtl("certs", "--out", tls, "--host", "coord.example.org,10.1.2.3", "--copy-ca-to", tmp_path / "pub") == 0
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        assert (tls / name).is_file()
    assert (tls / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "pub" / "ca.crt").read_bytes() == (tls / "ca.crt").read_bytes()
    dns, ips = certificate_sans(tls / "server.crt")
    assert {"coord.example.org", "localhost"} <= set(dns) and {"10.1.2.3", "127.0.0.1"} <= set(ips)
    # setup jobs re-run: --if-missing keeps a covering certificate, refuses one that does not cover
    before = (tls / "server.crt").read_bytes()
    assert fedmtl("certs", "--out", tls, "--host", "10.1.2.3", "--if-missing") == 0
    assert (tls / "server.crt").read_bytes() == before
    assert fedmtl("certs", "--out", tls, "--host", "10.9.9.9", "--if-missing") == 2
    assert "does not cover 10.9.9.9" in capsys.readouterr().err
    assert fedmtl("certs", "--out", tls, "--host", "10.9.9.9") == 2  # no silent overwrite
    assert "overwrite" in capsys.readouterr().err
    assert fedmtl("certs", "--out", tls, "--host", "10.9.9.9", "--force") == 0
    assert certificate_covers(tls / "server.crt", "10.9.9.9:9092")
    assert fedmtl("certs", "--out", tmp_path / "x", "--host", "0.0.0.0") == 2
    assert "wildcard" in capsys.readouterr().err

    keys, run = tmp_path / "keys", tmp_path / "run"
    assert fedmtl("keys", "create", "site-a", "site-b", "--out", f"{keys}/{{name}}", "--pub-dir", tmp_path / "auth") == 0
    assert (keys / "site-a" / "site-a.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "auth").iterdir()) == ["site-a.pub", "site-b.pub"]
    assert fedmtl("keys", "create", "site-a", "--out", f"{keys}/{{name}}") == 2  # exists
    assert fedmtl("keys", "create", "site-a", "--out", f"{keys}/{{name}}", "--if-missing") == 0
    capsys.readouterr()
    # no coordinator yet: register only accepts the key for the next start
    assert fedmtl("keys", "register", keys / "site-a" / "site-a.pub", "--run-dir", run) == 0
    assert "registered when it starts" in capsys.readouterr().out
    assert (run / "authorized_keys" / "site-a.pub").is_file()
    assert fedmtl("keys", "register", keys / "site-a" / "site-a.key", "--run-dir", run) == 2
    assert fedmtl("keys", "list", "--run-dir", run) == 0
    assert "site-a" in capsys.readouterr().out
    assert fedmtl("keys", "revoke", "site-a", "--run-dir", run) == 0
    assert not (run / "authorized_keys" / "site-a.pub").exists()


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    assert fedmtl("prepare-data", "--suite", "tiny", "--clients", "3", "--out", out) == 0
    return out


def test_client_refuses_bad_inputs_before_connecting(tmp_path: Path, data_dirs: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fedmtl("keys", "create", "c0", "--out", tmp_path)
    key, data = tmp_path / "c0.key", data_dirs / "client_0"
    cases = [
        (["--data", tmp_path / "nope", "--key", key], "does not exist"),
        (["--data", data], "pass --key"),
        (["--data", data, "--key", tmp_path / "c0.pub"], "not an unencrypted OpenSSH private key"),
        (["--data", data, "--key", key, "--insecure"], "needs TLS"),
        (["--data", data, "--key", key, "--ca", tmp_path / "missing.crt"], "no such file"),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    cases.append((["--data", tmp_path / "bad", "--key", key], "format"))
    for extra, needle in cases:
        t0 = time.monotonic()
        assert fedmtl("client", "--coordinator", "127.0.0.1:1", *extra) == 2, extra
        err = capsys.readouterr().err
        assert needle in err and err.startswith("fedmtl client: error:"), (extra, err)
        assert time.monotonic() - t0 < 10
    assert fedmtl("client", "--coordinator", "no-port", "--data", data, "--key", key) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_coordinator_preflight_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert fedmtl("coordinator", run, "--suite", "tiny") == 2
    err = capsys.readouterr().err
    assert "fedmtl certs --out" in err and "lacks" in err
    fedmtl("certs", "--out", run / "tls", "--host", "10.1.2.3")
    assert fedmtl("coordinator", run, "--host", "10.9.9.9") == 2
    assert "does not cover --host 10.9.9.9" in capsys.readouterr().err
    assert fedmtl("coordinator", run, "--set", "nonsense=1") == 2
    assert "unknown key 'nonsense'" in capsys.readouterr().err
    assert fedmtl("coordinator", "--resume", tmp_path / "absent") == 2


def test_resume_reuses_the_saved_run_config(tmp_path: Path) -> None:
    from coordinator.commands import coordinator as cmd

    run = tmp_path / "run"
    parser = cli.build_parser()
    settings, config = cmd.build(parser.parse_args(["coordinator", str(run), *RUN_ARGS, "--port", "9300"]))
    assert config["out"] == str(run.resolve()) and config["rounds"] == 2 and not config["resume"]
    run.mkdir()
    cmd._save(settings, config)
    settings2, config2 = cmd.build(parser.parse_args(["coordinator", "--resume", str(run), "--rounds", "4"]))
    assert config2["resume"] and config2["rounds"] == 4 and config2["mode"] == "mas" and config2["seed"] == 3
    assert settings2.port == 9300 and settings2.tls_dir == run.resolve() / "tls"


def test_supernode_command_line(tmp_path: Path) -> None:
    node = SuperNodeProcess(SuperNodeConfig(superlink="coord:9092", data_dir=tmp_path, name='site "a"',
                                            work_dir=tmp_path / "w", private_key=tmp_path / "a.key",
                                            root_certificates=tmp_path / "ca.crt", max_wait_s=30,
                                            runtime_port=9555))
    cmd = node.command()
    assert cmd[cmd.index("--superlink") + 1] == "coord:9092" and cmd[cmd.index("--port") + 1] == "9555"
    assert cmd[cmd.index("--max-wait-time") + 1] == "30"
    assert "--auth-supernode-private-key" in cmd and "--root-certificates" in cmd and "--insecure" not in cmd
    with pytest.raises(ValueError, match="needs TLS"):
        SuperNodeConfig("c:1", tmp_path, "a", tmp_path, private_key=tmp_path / "k", insecure=True)
    with pytest.raises(ValueError, match="private key is required"):
        SuperNodeConfig("c:1", tmp_path, "a", tmp_path)


def test_refusal_messages() -> None:
    c = "10.0.0.1:9092"
    unreg = "ERROR :     Exit Code: 305\n[code: 2004] Failed to activate SuperNode."
    assert "not registered" in classify_supernode_output(unreg, c, key="/k/site-a.key")
    assert "site-a.pub" in classify_supernode_output(unreg, c, key="/k/site-a.key")
    no_ca = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate"
    assert "wrong or missing CA" in classify_supernode_output(no_ca, c)
    san = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid"
    assert "does not cover the address 10.0.0.1:9092" in classify_supernode_output(san, c)
    gone = "WARNING : Giving up reconnection after 6.00 seconds and 5 tries.\nERROR : [Errno 111] Connection refused"
    assert "unreachable" in classify_supernode_output(gone, c)
    assert "lost the coordinator" in classify_supernode_output(gone, c, connected=True)
    assert classify_supernode_output("INFO : Receiving: train message", c) is None


# --------------------------------------------------------------------------- #
# Real processes
# --------------------------------------------------------------------------- #
def _need_flower_bins() -> None:
    for name in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr"):
        if not (BIN / name).exists():
            pytest.skip(f"{name} not found next to {sys.executable}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    return env


@dataclass
class Proc:
    """A `fedmtl` command running in its own session, output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s; output ends:\n{self.text()[-4000:]}")


@dataclass
class Launcher:
    log_dir: Path
    prefix: list[str] = field(default_factory=list)
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: Any, prefix: list[str] | None = None) -> Proc:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen([*(prefix if prefix is not None else self.prefix), *FEDMTL, *map(str, args)],
                                 stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
        proc = Proc(name, p, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM (fedmtl stops what it started), then SIGKILL leftovers of each session."""
        stop_processes([p.popen for p in self.started], grace=20.0)


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.popen.poll() is not None:
            break
        time.sleep(0.3)
    tail = proc.text()[-4000:] if proc else ""
    raise AssertionError(f"timed out or exited waiting for {what}\n{tail}")


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment mentions `text` (e.g. a run directory)."""
    me = os.getpid()
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid == me:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rfind(")") + 2:].split()[0] == "Z":
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            blob = cmdline + b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(f"{pid}: {cmdline.replace(bytes(1), b' ')[:200]!r}")
    return found


def _wait_gone(text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    left = _processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_mentioning(text)
    assert not left, f"processes still running for {text}:\n" + "\n".join(left)


def _history(out: Path) -> dict[str, Any]:
    return read_history(out)  # history.jsonl while the run goes on, history.json once it ended


def _rounds_done(out: Path) -> int:
    try:
        return max(r["round"] for r in _history(out)["rounds"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return -1


@dataclass
class Federation:
    root: Path
    run: Path
    tls: Path
    keys: Path
    data: Path
    port: int
    launcher: Launcher
    coordinator: Proc
    clients: list[Proc]
    ca: Path
    t0: float


def _client_args(fed_keys: Path, data: Path, ca: Path, i: int, address: str, work: Path) -> list[Any]:
    return ["client", "--coordinator", address, "--data", data / f"client_{i}",
            "--key", fed_keys / f"client_{i}" / f"client_{i}.key", "--ca", ca,
            "--work-dir", work, "--max-wait", "240"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, data_dirs: Path) -> Iterator[Federation]:
    """A TLS + authenticated coordinator on 127.0.0.1 and three clients, separate processes."""
    _need_flower_bins()
    root = tmp_path_factory.mktemp("deploy")
    run, tls, keys = root / "run", root / "run" / "tls", root / "keys"
    # Clients get a copy of ca.crt (nothing of theirs may mention the run directory: teardown checks)
    assert fedmtl("certs", "--out", tls, "--host", "127.0.0.1", "--copy-ca-to", root / "public") == 0
    ca = root / "public" / "ca.crt"
    assert fedmtl("keys", "create", "client_0", "client_1", "client_2", "rogue", "--out", f"{keys}/{{name}}") == 0
    for i in range(3):
        assert fedmtl("keys", "register", keys / f"client_{i}" / f"client_{i}.pub", "--run-dir", run) == 0
    port = free_port()
    launcher = Launcher(root)
    t0 = time.monotonic()
    try:
        coord = launcher.start("coordinator", "coordinator", run, "--host", "127.0.0.1", "--port", port,
                               "--min-clients", "3", *RUN_ARGS)
        _wait_for(lambda: "submitted" in coord.text(), 120, "the coordinator to submit its run", coord)
        clients = [launcher.start(f"client_{i}", *_client_args(keys, data_dirs, ca, i, f"127.0.0.1:{port}",
                                                                 root / f"work_{i}"))
                   for i in range(3)]
        yield Federation(root, run, tls, keys, data_dirs, port, launcher, coord, clients, ca, t0)
    finally:
        launcher.stop_all()
    for proc in launcher.started:  # SIGTERM is a clean stop for every fedmtl process
        assert proc.popen.returncode in (0, 1, 130, -9), (proc.name, proc.popen.returncode, proc.text()[-2000:])
    for i in range(3):
        _wait_gone(str(root / f"work_{i}"))  # SuperNode, SuperExec, ClientApps of each client
    _wait_gone(str(run))


def _refused(fed: Federation, name: str, *args: Any) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = fed.launcher.start(name, *args)
    rc = proc.wait(timeout=90)  # a client that kept retrying instead of stopping fails here
    return rc, proc.text(), time.monotonic() - t0


@pytest.mark.slow
def test_unregistered_key_is_refused_fast(federation: Federation) -> None:
    fed = federation
    rc, out, dt = _refused(fed, "rogue", "client", "--coordinator", f"127.0.0.1:{fed.port}", "--data",
                           fed.data / "client_0", "--name", "rogue", "--key", fed.keys / "rogue" / "rogue.key",
                           "--ca", fed.ca, "--work-dir", fed.root / "work_rogue")
    assert rc == 1, out
    assert "fedmtl client: error: the coordinator at" in out and "not registered" in out
    assert "fedmtl keys register rogue.pub" in out
    print(f"unregistered key refused in {dt:.1f}s")


@pytest.mark.slow
def test_keys_register_list_revoke_on_the_running_coordinator(federation: Federation,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """After the refusal above: accept the rogue key live, see it listed, revoke it (it never connects,
    so the run is not disturbed)."""
    fed = federation
    capsys.readouterr()
    assert fedmtl("keys", "register", fed.keys / "rogue" / "rogue.pub", "--run-dir", fed.run) == 0
    out = capsys.readouterr().out
    node = re.search(r"registered rogue on the running coordinator \(node (\d+)\)", out)
    assert node, out
    deadline = time.monotonic() + 60
    while True:  # the clients connect within seconds of the coordinator's start
        assert fedmtl("keys", "list", "--run-dir", fed.run) == 0
        listing = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()
                   if ln.startswith(("client_", "rogue"))}
        if listing["client_0"][-1] == "online" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert set(listing) == {"client_0", "client_1", "client_2", "rogue"}, listing
    assert listing["rogue"][3] == node.group(1) and listing["rogue"][-1] == "registered", listing["rogue"]
    assert listing["client_0"][-1] == "online", listing["client_0"]
    assert fedmtl("keys", "revoke", "rogue", "--run-dir", fed.run) == 0
    assert f"unregistered node {node.group(1)}" in capsys.readouterr().out
    assert not (fed.run / "authorized_keys" / "rogue.pub").exists()
    assert json.loads((fed.run / "registered_keys.json").read_text())["rogue"]["revoked"] is True
    # Flower keeps a revoked key: accepting it again is refused with the remedy, not silently ignored
    assert fedmtl("keys", "register", fed.keys / "rogue" / "rogue.pub", "--run-dir", fed.run) == 2
    err = capsys.readouterr().err
    assert "was revoked" in err and "fedmtl keys create rogue --force" in err, err
    assert not (fed.run / "authorized_keys" / "rogue.pub").exists()


@pytest.mark.slow
def test_client_without_the_ca_is_refused_fast(federation: Federation) -> None:
    fed = federation
    rc, out, dt = _refused(fed, "no-ca", "client", "--coordinator", f"127.0.0.1:{fed.port}", "--data",
                           fed.data / "client_1", "--name", "no-ca", "--key",
                           fed.keys / "client_1" / "client_1.key", "--work-dir", fed.root / "work_noca")
    assert rc == 1, out
    assert "wrong or missing CA certificate" in out, out
    print(f"client without CA refused in {dt:.1f}s")


@pytest.mark.slow
def test_coordinator_and_three_clients_complete_a_run(federation: Federation) -> None:
    fed = federation
    rc = fed.coordinator.wait(timeout=480)
    out = fed.coordinator.text()
    assert rc == 0, out[-4000:]
    print(f"coordinator run completed in {time.monotonic() - fed.t0:.0f}s")
    for i in range(3):
        assert re.search(rf"joined: client_{i} \(node \d+, cpu\) tasks \w+:\d+", out), out
    assert "finished:completed" in out and "INSECURE" not in out
    assert out.index("joined: client_") < out.index("round   1/2")
    hist = _history(fed.run)
    assert [r["round"] for r in hist["rounds"]] == [0, 1, 2]
    assert len(hist["rounds"][-1]["groups"]) >= 2, hist["rounds"][-1]["groups"]
    assert all(len(r["clients"]) == 3 for r in hist["rounds"][1:])
    assert sorted(p.name for p in (fed.run / "models").glob("group_*.safetensors"))
    assert (fed.run / "plots" / "accuracy.png").is_file() and (fed.run / "metrics.csv").is_file()
    info = json.loads((fed.run / COORDINATOR_INFO).read_text())
    assert info["state"] == "stopped"
    # What the clients received and unpacked is the project's code and nothing else (launch/bundle.py)
    from launch.bundle import app_packages

    apps = sorted((fed.root / "work_0" / "flwr_home" / "apps").glob("*"))
    assert apps, "the client unpacked no app bundle"
    shipped = {q.relative_to(apps[0]).as_posix() for q in apps[0].rglob("*") if q.is_file()}
    packages = set(app_packages(REPO))
    stray = sorted(f for f in shipped if not (f in ("pyproject.toml", "README.md") or f.startswith(".info/")
                                               or (f.endswith(".py") and f.split("/")[0] in packages)))
    assert not stray, stray
    # ... and unpacked once: later tasks were given the folder (launch/clientapp_forkserver.py install_once)
    from launch.clientapp_forkserver import INSTALLED_DIR

    records = list((fed.root / "work_0" / "flwr_home" / INSTALLED_DIR).iterdir())
    assert [r.read_text() for r in records] == [apps[0].name], records
    # Identities: the registry the ServerApp was given holds the three registered clients
    registry = json.loads((fed.run / "client_registry.json").read_text())
    assert sorted(registry.values()) == ["client_0", "client_1", "client_2"], registry
    _wait_gone(str(fed.run))  # SuperLink, SuperExec, ServerApp, gateway, flwr log
    assert all(c.popen.poll() is None for c in fed.clients), "clients keep serving after a run"


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(federation: Federation) -> None:
    """Same run dir (registrations and node ids persist in state.db), results in --out second/."""
    fed = federation
    if fed.coordinator.popen.poll() is None or fed.coordinator.popen.returncode != 0:
        pytest.skip("needs the completed reference run of the previous test")
    second = fed.run / "second"
    args = ["coordinator", fed.run, "--host", "127.0.0.1", "--port", fed.port, "--min-clients", "3",
            *RUN_ARGS, "--out", second]
    t0 = time.monotonic()
    victim = fed.launcher.start("coordinator-killed", *args)
    _wait_for(lambda: _rounds_done(second) >= 1, 300, "round 1 of the second run", victim)
    os.kill(victim.popen.pid, signal.SIGKILL)  # no clean-up of its own: its reaper must do it
    victim.popen.wait(timeout=10)
    _wait_gone(str(fed.run), timeout=30)
    killed_at = time.monotonic() - t0
    resumed = fed.launcher.start("coordinator-resumed", "coordinator", "--resume", fed.run)
    rc = resumed.wait(timeout=300)
    out = resumed.text()
    assert rc == 0, out[-4000:]
    assert "resumed from" in out and "round_00001" in out, out
    # The killed run is either stopped by the resumed coordinator (which says so) or was already
    # marked finished by the SuperLink, when the killed ServerApp's exit reached it first: racy.
    killed_run = re.search(r"run (\d+) submitted", victim.text())
    stale = re.findall(r"stopped run (\d+), left unfinished by a previous coordinator", out)
    assert killed_run and set(stale) <= {killed_run.group(1)}, (stale, out[-2000:])
    print(f"killed after round 1 at {killed_at:.0f}s; resumed run finished {time.monotonic() - t0:.0f}s after start")

    ref, got = _history(fed.run), _history(second)
    assert [r["round"] for r in got["rounds"]] == [0, 1, 2]
    for a, b in zip(ref["rounds"], got["rounds"]):
        assert a["groups"] == b["groups"] and a["assignments"] == b["assignments"]
        for task, m in a["metrics"].items():
            for key, value in m.items():
                other = b["metrics"][task][key]
                assert (value is None and other is None) or math.isclose(value, other, rel_tol=1e-6, abs_tol=1e-9)
    # Fusion sums client updates in reply-arrival order, so weights may differ in the last bit.
    from safetensors.torch import load_file

    for path in sorted((fed.run / "models").glob("group_*.safetensors")):
        a, b = load_file(str(path)), load_file(str(second / "models" / path.name))
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] - b[k]).abs().max().item() < 1e-6, (path.name, k)


@pytest.mark.slow
def test_clients_stop_cleanly_on_ctrl_c_and_sigterm(federation: Federation) -> None:
    """Ctrl-C in a terminal (SIGINT to the foreground process group) and SIGTERM (docker stop)."""
    fed = federation
    t0 = time.monotonic()
    for i, client in enumerate(fed.clients):
        os.killpg(client.popen.pid, signal.SIGINT if i == 0 else signal.SIGTERM)
    for client in fed.clients:
        assert client.wait(timeout=30) == 130, client.text()[-2000:]
        assert "interrupted; everything it started has been stopped" in client.text()
    for i in range(3):
        _wait_gone(str(fed.root / f"work_{i}"), timeout=10)
    print(f"3 clients stopped in {time.monotonic() - t0:.1f}s")


@pytest.mark.slow
def test_insecure_coordinator_warns_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    _need_flower_bins()
    launcher = Launcher(tmp_path)
    run = tmp_path / "run"
    try:
        coord = launcher.start("coordinator", "coordinator", run, "--insecure", "--host", "127.0.0.1",
                               "--port", free_port(), "--suite", "tiny", "--min-clients", "1")
        _wait_for(lambda: "fedmtl: suite 'tiny'" in coord.text(), 120, "the ServerApp to start", coord)
        t0 = time.monotonic()
        os.killpg(coord.popen.pid, signal.SIGINT)
        assert coord.wait(timeout=60) == 130
        dt = time.monotonic() - t0
    finally:
        launcher.stop_all()
    out = coord.text()
    assert "!!! INSECURE COORDINATOR" in out and "WITHOUT TLS" in out
    assert "interrupted; everything it started has been stopped" in out
    assert json.loads((run / COORDINATOR_INFO).read_text())["state"] == "stopped"
    _wait_gone(str(run), timeout=5)
    print(f"coordinator stopped {dt:.1f}s after Ctrl-C")


# --------------------------------------------------------------------------- #
# Separate hosts: network namespaces
# --------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.netns
def test_separate_hosts_late_joiner_and_only_fleet_reachable(tmp_path: Path, data_dirs: Path) -> None:
    _need_flower_bins()
    skip_unless_netns()
    from tests.test_security import _PROBE, _run_all_to_exit  # as in the gateway's own netns test

    gw_port = 9092
    with NetnsLan(n_members=3, subnet_prefix="10.232.0") as lan:
        hub = lan.hub
        run, tls, keys = tmp_path / "run", tmp_path / "run" / "tls", tmp_path / "keys"
        assert fedmtl("certs", "--out", tls, "--host", hub.address, "--copy-ca-to", tmp_path / "public") == 0
        ca = tmp_path / "public" / "ca.crt"
        assert fedmtl("keys", "create", "client_0", "client_1", "client_2", "--out", f"{keys}/{{name}}",
                      "--pub-dir", run / "authorized_keys") == 0
        launcher = Launcher(tmp_path)
        try:
            # 5 rounds: a round is ~7 s here, and the late joiner, started after round 1, needs
            # time to start its SuperNode and join before the last round is scheduled.
            coord = launcher.start("coordinator", "coordinator", run, "--host", "0.0.0.0", "--port", gw_port,
                                   "--min-clients", "2", "--suite", "tiny", "--rounds", "5", "--local-steps", "2",
                                   prefix=hub.prefix())
            _wait_for(lambda: "submitted" in coord.text(), 120, "the coordinator to submit its run", coord)
            address = f"{hub.address}:{gw_port}"
            clients = [launcher.start(f"client_{i}", *_client_args(keys, data_dirs, ca, i, address,
                                                                     tmp_path / f"work_{i}"),
                                      prefix=lan.members[i].prefix()) for i in range(2)]
            # While the run goes on: from a client's namespace only the Fleet API answers. The
            # attempts run side by side from round 0 on, so they finish well before the run does.
            member = lan.members[0]
            _wait_for(lambda: _rounds_done(run) >= 0, 300, "round 0", coord)
            info = json.loads((run / COORDINATOR_INFO).read_text())
            superlink_port = info["superlink"].rsplit(":", 1)[1]
            home = tmp_path / "member-home"
            home.mkdir()
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "coord"\n\n[superlink.coord]\naddress = "{address}"\n'
                f'root-certificates = "{ca}"\n')
            env = {**_env(), "FLWR_HOME": str(home)}
            flwr = str(BIN / "flwr")
            attempts = {
                "ls": [flwr, "ls", "coord"],
                "stop": [flwr, "stop", str(info["run_id"]), "coord"],
                "register": [flwr, "supernode", "register", str(keys / "client_2" / "client_2.pub"), "coord"],
                "run": [flwr, "run", str(REPO), "coord"],
                "probe": [sys.executable, "-c", _PROBE, f"https://{address}", str(ca),
                          f"{hub.address}:{superlink_port}"],
            }
            (tmp_path / "attempts").mkdir()
            with ThreadPoolExecutor(1) as pool:
                tried = pool.submit(_run_all_to_exit, attempts, env, tmp_path / "attempts", 90, member.prefix())
                _wait_for(lambda: _rounds_done(run) >= 1, 300, "round 1", coord)
                late = launcher.start("client_2", *_client_args(keys, data_dirs, ca, 2, address,
                                                                  tmp_path / "work_2"),
                                      prefix=lan.members[2].prefix())
                results = {what: (rc, text) for what, (rc, text, _) in tried.result().items()}
            rc, probe = results.pop("probe")
            assert rc == 0, probe
            lines = [x for x in probe.splitlines() if x.startswith(("GET", "POST", "DIRECT"))]
            assert len(lines) == 5 and all(x.endswith(" 404") for x in lines[:4]), probe
            assert lines[4].startswith("DIRECT refused"), probe
            for what, (rc, text) in results.items():
                assert rc != 0 and "404" in text, f"{what} was not refused:\n{text}"

            assert coord.wait(timeout=420) == 0, coord.text()[-4000:]
            out = coord.text()
            node = re.search(r"joined: client_2 \(node (\d+)", out)
            assert node, out
            assert out.index("round   1/5") < node.start(), "client_2 must join after round 1"
            hist = _history(run)
            late_rounds = [r["round"] for r in hist["rounds"] if "client_2" in r["clients"]]  # clients by name
            assert late_rounds and min(late_rounds) >= 2, (late_rounds, hist["rounds"][-1]["clients"])
            assert all(c.popen.poll() is None for c in [*clients, late])
            assert hub.pids() == [], "the coordinator left processes in its namespace"
            gw_log = (run / "gateway.log").read_text()
            assert gw_log.count("Refused") >= 4
        finally:
            launcher.stop_all()
