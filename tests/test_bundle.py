"""Nothing of a client's data folder, keys or run folders is packed into the app bundle, wherever they lie."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from launch import simulation
from launch.bundle import app_packages, build_bundle, bundle_entries
from launch.service import CoordinatorService, CoordinatorSettings

REPO = Path(__file__).resolve().parents[1]


def _code_files(root: Path) -> set[str]:
    """What the bundle must hold: pyproject.toml, README.md, the *.py of the project's packages."""
    out = {"pyproject.toml", "README.md"}
    for package in app_packages(root):
        for path in (root / package).rglob("*.py"):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts or path.is_symlink():
                continue
            if all((root / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(1, len(rel.parts))):
                out.add(rel.as_posix())
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this project with a client data folder, keys and run folders inside it."""
    proj = tmp_path / "fedmtl"
    proj.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, proj / name)
    for package in app_packages(REPO):
        shutil.copytree(REPO / package, proj / package, ignore=shutil.ignore_patterns("__pycache__"))
    junk = {
        "data/client_0/manifest.json": '{"format": "fedmtl-client-data/1", "name": "site-a"}',
        "data/client_0/notes.md": "private",
        "keys/site-a/site-a.key": "-----BEGIN OPENSSH PRIVATE KEY-----",
        "keys/registered_keys.json": "{}",
        "runs/coord/history.json": "{}",
        "runs/coord/run_config.toml": 'suite = "x"',
        "runs/coord/flwr_home/apps/fedmtl.fedmtl.0-1-0.abc/client/app.py": "print('unpacked app')",
        "tasks/data/client_1/manifest.json": "{}",  # a data folder inside a package
        "coordinator/run_here/history.json": "{}",  # a run folder inside a package ...
        "coordinator/run_here/flwr_home/apps/x/coordinator/app.py": "print('old bundle')",  # ... with code in it
        "client/keys.json": '{"secret": 1}',  # a non-code file directly in a package
        "client/config.yaml": "secret: 1",
    }
    for rel, text in junk.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    os.symlink(proj / "keys" / "site-a" / "site-a.key", proj / "client" / "linked.py")
    return proj


def test_the_bundle_holds_exactly_the_code(project: Path) -> None:
    fab = build_bundle(project)
    names = {name for name, _ in bundle_entries(fab)}
    assert names == _code_files(REPO), sorted(names ^ _code_files(REPO))
    for bad in ("manifest", "site-a", "history.json", "run_config", "flwr_home", "keys.json", "config.yaml",
                "linked.py", "docs/", "tests/", "benchmarks/"):
        assert not any(bad in n for n in names), bad
    # deterministic: the same code gives the same bundle, whatever else lies around it
    assert hashlib.sha256(fab).digest() == hashlib.sha256(build_bundle(REPO)).digest()


def test_check_fab_refuses_nothing_it_would_not_ship(project: Path) -> None:
    entries = simulation.check_fab(project, forbidden=[project / "runs" / "coord", project / "coordinator" / "run_here"])
    assert {n for n, _ in entries} == _code_files(REPO)


class _RecordingCli:
    """Stands in for FlwrCli: records the files of the folder `flwr run` would bundle."""

    submitted: list[set[str]] = []

    def __init__(self, *_a: Any, **_k: Any) -> None:
        pass

    def write_connection(self) -> None:
        pass

    def submit_run(self, app_dir: Path, *_a: Any, **_k: Any) -> int:
        files = {p.relative_to(app_dir).as_posix() for p in Path(app_dir).rglob("*") if p.is_file()}
        _RecordingCli.submitted.append(files)
        return 7


def test_coordinator_submits_the_staged_copy(project: Path) -> None:
    run = project / "runs" / "coord"
    service = CoordinatorService(CoordinatorSettings(run_dir=run, insecure=True), project, on_line=lambda _l: None)
    service.cli = _RecordingCli()  # type: ignore[assignment]
    _RecordingCli.submitted.clear()
    assert service.submit({"rounds": 1}) == 7
    assert _RecordingCli.submitted == [_code_files(REPO)]


def test_simulate_submits_the_staged_copy(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class _Link:
        def __init__(self, config: Any) -> None:
            self.flwr_home = Path(config.run_dir) / "flwr_home"
            self.tag, self.address, self.log_path = "t", "127.0.0.1:1", Path(config.run_dir) / "l.log"

        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

        def is_running(self) -> bool:
            return False

        def connection(self, name: str) -> None:
            return None

    monkeypatch.setattr(simulation, "SuperLinkProcess", _Link)
    monkeypatch.setattr(simulation, "FlwrCli", _RecordingCli)
    monkeypatch.setattr(simulation, "follow_run", lambda *a, **k: {"status": simulation.COMPLETED})
    _RecordingCli.submitted.clear()
    status = simulation.run_simulation_app(project, project / "runs" / "sim" / ".flower", {"rounds": 1}, 2,
                                           on_line=lambda _l: None)
    assert status == simulation.COMPLETED
    assert _RecordingCli.submitted == [_code_files(REPO)]
