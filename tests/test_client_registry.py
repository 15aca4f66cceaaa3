"""Client identity bound to its key: the registry file, name binding at registration, the run config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.client_registry import (
    ClientRegistryError,
    bind_identity,
    load_registry,
    registry_from_registered,
    write_registry,
)
from fedmtl import cli
from launch.flwr_cli import FlwrCliError
from launch.security import create_client_keypair, public_key_fingerprint
from launch.service import (
    CLIENT_REGISTRY,
    DeploymentError,
    read_registered,
    register_keys,
    write_registered,
)


def test_load_registry_tolerates_absence_and_fails_closed_on_damage(tmp_path: Path) -> None:
    assert load_registry("") == {} and load_registry(None) == {}
    assert load_registry(tmp_path / "missing.json") == {}
    path = tmp_path / "r.json"
    write_registry(path, {16936497820988182807: "site-b", 7: "site-a"})
    assert json.loads(path.read_text()) == {"16936497820988182807": "site-b", "7": "site-a"}
    assert load_registry(path) == {16936497820988182807: "site-b", 7: "site-a"}
    for bad, why in (("{", "not JSON"), ("[1]", "expected an object"), ('{"x": "a"}', "not a node id"),
                     ('{"1": ""}', "no name"), ('{"1": "a", "2": "a"}', "more than one node")):
        path.write_text(bad)
        with pytest.raises(ClientRegistryError, match=why):
            load_registry(path)


def test_registry_from_registered_keeps_live_registered_keys_only() -> None:
    registered = {
        "site-a": {"fingerprint": "SHA256:a", "node_id": 11},
        "site-b": {"fingerprint": "SHA256:b", "node_id": 12, "revoked": True},
        "site-c": {"fingerprint": "SHA256:c", "node_id": None},
    }
    assert registry_from_registered(registered) == {11: "site-a"}


def test_bind_identity() -> None:
    registry = {11: "site-a", 12: "site-b"}
    # with a registry the registered name wins, whatever the node claims
    assert bind_identity(11, "site-a", registry, {}).name == "site-a"
    got = bind_identity(12, "site-a", registry, {11: "site-a"})
    assert got.name == "site-b" and "reports the name 'site-a'" in got.note
    refused = bind_identity(13, "site-a", registry, {11: "site-a"})
    assert refused.name is None and "not in the client registry" in refused.refused
    # without one (simulation, --insecure) the first holder of a name keeps it
    assert bind_identity(5, "p0", None, {4: "p1"}).name == "p0"
    second = bind_identity(5, "p1", None, {4: "p1"})
    assert second.name is None and "already used by node 4" in second.refused
    assert bind_identity(4, "p1", None, {4: "p1"}).name == "p1"  # the same node asking again


class _FakeCli:
    """What register_keys needs of FlwrCli: node ids for new keys, 'already in use' for old ones."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}

    def register_supernode(self, public_key: Path, name: str | None = None) -> int:
        fp = public_key_fingerprint(public_key)
        if fp in self.keys:
            raise FlwrCliError("flwr supernode register failed", "Public key already in use")
        self.keys[fp] = 1000 + len(self.keys)
        return self.keys[fp]


def test_registration_binds_names_to_keys_and_refuses_a_second_key_for_a_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    fake = _FakeCli()
    a = create_client_keypair(tmp_path / "a", "site-a")
    b = create_client_keypair(tmp_path / "b", "site-b")
    impostor = create_client_keypair(tmp_path / "evil", "site-a")  # same name, another key
    out = register_keys(fake, run, [a.public_key_path, b.public_key_path])  # type: ignore[arg-type]
    assert [(n, node) for n, _fp, node in out] == [("site-a", 1000), ("site-b", 1001)]
    assert load_registry(run / CLIENT_REGISTRY) == {1000: "site-a", 1001: "site-b"}
    with pytest.raises(DeploymentError, match="'site-a' is already bound to another key"):
        register_keys(fake, run, [impostor.public_key_path])  # type: ignore[arg-type]
    assert read_registered(run)["site-a"]["fingerprint"] == a.fingerprint
    register_keys(fake, run, [a.public_key_path])  # the same key again is fine (restart)
    # a revoked name may get a new key (Flower never takes the old one back)
    registered = read_registered(run)
    registered["site-a"]["revoked"] = True
    write_registered(run, registered)
    assert load_registry(run / CLIENT_REGISTRY) == {1001: "site-b"}
    register_keys(fake, run, [impostor.public_key_path])  # type: ignore[arg-type]
    assert load_registry(run / CLIENT_REGISTRY) == {1001: "site-b", 1002: "site-a"}


def test_keys_register_refuses_a_name_taken_by_another_key(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    a = create_client_keypair(tmp_path / "a", "site-a")
    impostor = create_client_keypair(tmp_path / "evil", "site-a")
    assert cli.main(["keys", "register", str(a.public_key_path), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "register", str(impostor.public_key_path), "--run-dir", str(run)]) == 2
    assert "'site-a' is already bound to another accepted key" in capsys.readouterr().err
    assert public_key_fingerprint(run / "authorized_keys" / "site-a.pub") == a.fingerprint
    other = create_client_keypair(tmp_path / "c", "site-c")
    twin = create_client_keypair(tmp_path / "d", "site-c")
    assert cli.main(["keys", "register", str(other.public_key_path), str(twin.public_key_path),
                     "--run-dir", str(run)]) == 2
    assert "each client needs its own name" in capsys.readouterr().err


def test_coordinator_passes_the_registry_path_in_the_run_config(tmp_path: Path) -> None:
    from coordinator.commands import coordinator as cmd

    parser = cli.build_parser()
    _settings, config = cmd.build(parser.parse_args(["coordinator", str(tmp_path / "run"), "--suite", "tiny"]))
    assert config["client-registry"] == str((tmp_path / "run").resolve() / CLIENT_REGISTRY)
    _settings, config = cmd.build(parser.parse_args(["coordinator", str(tmp_path / "run"), "--suite", "tiny",
                                                     "--insecure"]))
    assert config["client-registry"] == ""
