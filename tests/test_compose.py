"""docker-compose.yml and Dockerfile, checked without a Docker engine (none runs here).

What can be checked is checked: the YAML parses; every service's command is a real `fedmtl`
subcommand whose options fedmtl's own argparse parser accepts (the coordinator's run config,
inline in the file, is validated like `fedmtl coordinator` validates it); every path a command
names lies on a volume or config mounted into that service; volumes are declared and used; each
client has its own data and key volumes, written by the setup jobs at the paths the clients read;
the certificate covers the name clients dial; ports line up; the image creates every mount point
for its non-root user and runs `fedmtl`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from coordinator.commands import coordinator as coordinator_cmd
from coordinator.config import RunConfig
from fedmtl import cli

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CLIENTS = ["client-1", "client-2", "client-3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _parse(service: dict[str, Any]) -> argparse.Namespace:
    """The service's command through fedmtl's parser (the image's ENTRYPOINT is `fedmtl`)."""
    parser = cli.build_parser()

    def refuse(message: str) -> None:
        raise AssertionError(f"fedmtl {' '.join(_command(service))}: {message}")

    for action in parser._subparsers._group_actions:  # noqa: SLF001 - make every subparser raise
        for sub in action.choices.values():
            sub.error = refuse  # type: ignore[method-assign]
            for subaction in getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []:
                for subsub in subaction.choices.values():
                    subsub.error = refuse  # type: ignore[method-assign]
    parser.error = refuse  # type: ignore[method-assign]
    return parser.parse_args(_command(service))


def _mounts(compose: dict[str, Any], service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for volumes and configs."""
    out: dict[str, tuple[str, bool]] = {}
    for item in service.get("volumes", []):
        parts = item.split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, len(parts) > 2 and "ro" in parts[2].split(","))
    for item in service.get("configs", []):
        out[item["target"]] = (f"config:{item['source']}", True)
    return out


def _volume_at(compose: dict[str, Any], name: str, path: str) -> tuple[str, str]:
    """(volume source, path inside it) of an absolute path in service `name`; fails if unmounted."""
    mounts = _mounts(compose, compose["services"][name])
    p = PurePosixPath(path)
    best = max((t for t in mounts if p == PurePosixPath(t) or PurePosixPath(t) in p.parents),
               key=len, default=None)
    assert best is not None, f"{name}: {path} is on no volume or config (mounts: {sorted(mounts)})"
    return mounts[best][0], str(p.relative_to(best))


def _abs_paths(args: argparse.Namespace) -> list[str]:
    out = []
    for value in vars(args).values():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (str, Path)) and str(v).startswith("/"):
                out.append(str(v))
    return out


def test_every_service_runs_a_valid_fedmtl_command(compose: dict[str, Any], services: dict[str, Any]) -> None:
    assert set(services) == {"setup-tls", "setup-keys", "setup-data", "coordinator", *CLIENTS}
    for name, service in services.items():
        args = _parse(service)
        assert args.command in {"certs", "keys", "prepare-data", "coordinator", "client"}, name
        for path in _abs_paths(args):  # every path a command names is on a mount of its service
            if "{name}" in path:  # keys create --out /keys/{name}
                paths = [path.replace("{name}", n) for n in args.names]
            elif args.command == "prepare-data":  # writes OUT/client_0 .. client_{N-1}
                paths = [f"{path}/client_{i}" for i in range(args.clients)]
            else:
                paths = [path]
            for p in paths:
                _volume_at(compose, name, p)
        assert service.get("init") is True, f"{name}: needs an init process to reap Flower's children"
        assert service.get("build") == "." and service.get("image") == "fedmtl:latest"


def test_documented_resume_command_parses() -> None:
    text = COMPOSE.read_text()
    m = re.search(r"docker compose run --rm --service-ports coordinator (coordinator [^#\n]+)", text)
    assert m, "the header documents how to resume"
    args = cli.build_parser().parse_args(shlex.split(m.group(1)))
    assert args.resume and str(args.run_dir_pos) == "/fedmtl-run"


def test_coordinator_run_config_is_valid(compose: dict[str, Any], services: dict[str, Any], tmp_path: Path) -> None:
    coord = services["coordinator"]
    args = _parse(coord)
    source, rel = _volume_at(compose, "coordinator", str(args.config))
    assert source == "config:run-config" and rel == "."
    (tmp_path / "run.toml").write_text(compose["configs"]["run-config"]["content"])
    args.config = tmp_path / "run.toml"
    args.run_dir = tmp_path / "run"
    settings, config = coordinator_cmd.build(args)  # what `fedmtl coordinator` validates first
    RunConfig.from_dict(config)
    assert config["min-clients"] == len(CLIENTS)
    assert settings.host == "0.0.0.0" and not settings.insecure
    setup = _parse(services["setup-data"])
    assert setup.suite == config["suite"] and setup.clients == len(CLIENTS)


def test_volumes_ports_names_and_keys_line_up(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {src for s in services.values() for src, _ro in _mounts(compose, s).values() if not src.startswith("config:")}
    assert used == declared, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"

    tls, keys, data = _parse(services["setup-tls"]), _parse(services["setup-keys"]), _parse(services["setup-data"])
    coord = _parse(services["coordinator"])
    # TLS: the coordinator reads what setup-tls writes; clients get ca.crt from --copy-ca-to
    assert _volume_at(compose, "coordinator", str(coord.tls_dir)) == _volume_at(compose, "setup-tls", str(tls.out))
    (ca_dir,) = tls.copy_ca_to
    ca_volume = _volume_at(compose, "setup-tls", str(ca_dir))
    assert ca_volume[0] != _volume_at(compose, "setup-tls", str(tls.out))[0], "clients must not see ca.key"
    assert _mounts(compose, services["coordinator"])["/pki"][1], "the coordinator mounts its TLS files read-only"
    # accepted keys: setup-keys --pub-dir == coordinator --authorized-keys
    assert _volume_at(compose, "setup-keys", str(keys.pub_dir)) == _volume_at(compose, "coordinator",
                                                                            str(coord.authorized_keys))
    # the coordinator's published port is its --port, the address clients dial, and in the certificate
    assert f"{coord.port}:{coord.port}" in services["coordinator"]["ports"]
    sans = [h for item in tls.host for h in item.split(",")]
    assert sorted(keys.names) == sorted(CLIENTS)

    data_volumes, key_volumes = set(), set()
    for i, name in enumerate(CLIENTS):
        args = _parse(services[name])
        host, port = args.coordinator.rsplit(":", 1)
        assert host == "coordinator" and host in services and int(port) == coord.port
        assert host in sans, "the certificate must cover the name clients dial"
        assert not args.insecure and args.name == name
        # own data: the volume prepare-data fills at OUT/client_<i>
        vol, rel = _volume_at(compose, name, str(args.data))
        assert (vol, rel) == _volume_at(compose, "setup-data", f"{data.out}/client_{i}")
        data_volumes.add(vol)
        # own key: written by setup-keys as <out with {name}>/<name>.key
        kvol, krel = _volume_at(compose, name, str(args.key))
        written = f"{keys.out.replace('{name}', name)}/{name}.key"
        assert (kvol, krel) == _volume_at(compose, "setup-keys", written)
        key_volumes.add(kvol)
        assert _volume_at(compose, name, str(args.ca)) == (ca_volume[0], "ca.crt")
        mounts = _mounts(compose, services[name])
        assert all(ro for target, (_src, ro) in mounts.items()), f"{name}: clients mount everything read-only"
        assert {"pki", "authorized-keys", "coordinator-run"}.isdisjoint(src for src, _ in mounts.values())
        deps = services[name]["depends_on"]
        assert {"setup-tls", "setup-keys", "setup-data", "coordinator"} <= set(deps)
    assert len(data_volumes) == len(key_volumes) == len(CLIENTS), "each client has its own data and key volumes"
    deps = services["coordinator"]["depends_on"]
    assert deps["setup-tls"]["condition"] == deps["setup-keys"]["condition"] == "service_completed_successfully"


def test_dockerfile_matches_compose(compose: dict[str, Any], services: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["fedmtl"\]', text, re.M)
    assert "download.pytorch.org/whl/cpu" in text and "pip install -e ." in text
    assert re.search(r"^USER fedmtl", text, re.M)
    created = set()
    for m in re.finditer(r"mkdir -p ((?:[^&\\]|\\\n)+)", text):
        created |= {p for p in m.group(1).replace("\\\n", " ").split() if p.startswith("/")}
    targets = {t for s in services.values() for t, (src, _ro) in _mounts(compose, s).items()
               if not src.startswith("config:")}
    missing = sorted(t for t in targets if t not in created)
    assert not missing, f"mount points the image does not create for its user: {missing}"
    exposed = re.search(r"^EXPOSE (\d+)", text, re.M)
    assert exposed and int(exposed.group(1)) == _parse(services["coordinator"]).port
    for folder in ("fedmtl", "coordinator", "client", "launch", "strategies", "tasks", "common"):
        assert f"COPY {folder} ./{folder}" in text
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "runs" in ignore and ".venv" in ignore  # never bundled into the image (or the app)
