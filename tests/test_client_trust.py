"""Deployed clients run only suites they trust: built-in, installed, or allowed by their operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import trust
from client.data import client_suite, local_tasks
from client.trust import ALLOW_SUITES_KEY, UntrustedSuiteError, check_suite_trusted, encode_allowed
from fedmtl import cli
from launch.supernode import SuperNodeConfig, SuperNodeProcess

_SUITE = """\
from pathlib import Path
Path(__file__).with_suffix(".imported").write_text("imported")  # what an attacker's suite would do
from tasks.images import make_tiny_suite
def make_suite():
    return make_tiny_suite()
"""


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "their_suite.py"
    path.write_text(_SUITE)
    return path


def test_deployed_clients_refuse_suites_by_path_or_module_before_importing_them(
        tmp_path: Path, suite_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed = {"data-dir": str(tmp_path / "data"), "name": "site-a"}
    for ok in ("default", "tiny", "planted", "tasks.images:make_tiny_suite"):
        check_suite_trusted(ok, deployed)
    spec = f"{suite_file}:make_suite"
    for bad in (spec, "tasks.planted:not_builtin", "os:getcwd"):
        with pytest.raises(UntrustedSuiteError) as err:
            check_suite_trusted(bad, deployed)
        assert "--allow-suite" in str(err.value) and repr(bad) in str(err.value)
    with pytest.raises(UntrustedSuiteError):
        local_tasks(deployed, spec, 0, "")
    with pytest.raises(UntrustedSuiteError):
        client_suite(deployed, spec)
    assert not suite_file.with_suffix(".imported").exists(), "the untrusted suite was imported"

    # allowed by the client's operator (the path as they typed it, relative to their folder)
    monkeypatch.chdir(tmp_path)
    allowed = {**deployed, ALLOW_SUITES_KEY: encode_allowed([f"./{suite_file.name}:make_suite"])}
    assert client_suite(allowed, spec).name == "tiny"
    assert suite_file.with_suffix(".imported").exists()
    with pytest.raises(UntrustedSuiteError):
        check_suite_trusted(f"{suite_file}:other_function", allowed)

    # installed on the client (entry point of group fedmtl.suites)
    monkeypatch.setattr(trust, "installed_suites", lambda: {"their-suite"})
    check_suite_trusted("their-suite", deployed)


def test_simulated_clients_run_any_suite(suite_file: Path) -> None:
    check_suite_trusted(f"{suite_file}:make_suite", {"partition-id": 0, "num-partitions": 2})
    with pytest.raises(UntrustedSuiteError):  # a data folder makes it a deployed client
        check_suite_trusted(f"{suite_file}:make_suite", {"partition-id": 0, "num-partitions": 2, "data-dir": "/d"})


def test_allowed_suites_reach_the_node_config(tmp_path: Path, suite_file: Path) -> None:
    node = SuperNodeProcess(SuperNodeConfig(
        superlink="c:1", data_dir=tmp_path, name="a", work_dir=tmp_path / "w", private_key=tmp_path / "k",
        allow_suites=(f"{suite_file}:make_suite", "pkg.mod:make"), trusted_entities=tmp_path / "te.yaml"))
    assert node.node_config()[ALLOW_SUITES_KEY] == f"{suite_file.resolve()}:make_suite\npkg.mod:make"
    cmd = node.command()
    assert cmd[cmd.index("--trusted-entities") + 1] == str((tmp_path / "te.yaml").resolve())
    assert ALLOW_SUITES_KEY not in SuperNodeProcess(SuperNodeConfig(
        superlink="c:1", data_dir=tmp_path, name="a", work_dir=tmp_path, private_key=tmp_path / "k")).node_config()


def test_fedmtl_client_checks_its_trust_options_before_connecting(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prepare-data", "--suite", "tiny", "--clients", "1", "--out", str(tmp_path / "d")]) == 0
    assert cli.main(["keys", "create", "c0", "--out", str(tmp_path)]) == 0
    base = ["client", "--coordinator", "127.0.0.1:1", "--data", str(tmp_path / "d" / "client_0"),
            "--key", str(tmp_path / "c0.key")]
    (tmp_path / "rsa.yaml").write_text("fpk_1: 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 x'\n")
    (tmp_path / "list.yaml").write_text("- a\n")
    cases = [
        (["--allow-suite", "no-colon"], "expected 'module:function'"),
        (["--allow-suite", str(tmp_path / "absent.py:make")], "does not exist on this machine"),
        (["--trusted-entities", str(tmp_path / "missing.yaml")], "no such file"),
        (["--trusted-entities", str(tmp_path / "list.yaml")], "expected a mapping"),
        (["--trusted-entities", str(tmp_path / "rsa.yaml")], "not an OpenSSH public key|Ed25519"),
    ]
    capsys.readouterr()
    for extra, needle in cases:
        assert cli.main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("fedmtl client: error:"), err
        import re

        assert re.search(needle, err), (extra, err)
