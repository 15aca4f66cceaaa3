"""The app bundle (FAB) is built from a clean copy of the project's code, never from its folder.

`flwr run APP_DIR` zips every `*.py/*.toml/*.md/*.json/*.yaml` under APP_DIR that `.gitignore`
does not exclude, and ships the zip to the SuperLink and from there to every client. A client
data folder (`manifest.json`), a run folder (`history.json`, `run_config.toml`, an unpacked
Flower home full of `*.py`) or a key folder (`*.json` records) that happens to lie inside the
project would travel with it, to the coordinator and to every other client.

So fedmtl never hands Flower its project folder: `staged_app` copies, into a fresh temporary
folder, only

* `pyproject.toml` and `README.md` at the top, and
* the `*.py` files of the project's Python packages (the `[tool.setuptools.packages.find]`
  `include` patterns of pyproject.toml), descending only into folders that are packages
  themselves (hold an `__init__.py`): a data, key or run folder inside a package is not one,

and `flwr run` bundles that copy. Both `fedmtl simulate` and `fedmtl coordinator` submit this
way. The bundle is deterministic (Flower fixes the zip dates): the same code gives the same FAB
hash on every machine.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import shutil
import tempfile
import tomllib
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "TOP_FILES",
    "app_packages",
    "bundle_entries",
    "build_bundle",
    "stage_app",
    "staged_app",
]

#: Files of the project folder itself that go into the bundle (pyproject.toml is required).
TOP_FILES = ("pyproject.toml", "README.md")


def app_packages(app_dir: Path) -> list[str]:
    """Top-level package folders of the project: those matching pyproject's setuptools `include`
    patterns (or, without any, every top-level folder holding an `__init__.py`)."""
    app_dir = Path(app_dir)
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    patterns = (data.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
                .get("include")) or ["*"]
    out = []
    for entry in sorted(app_dir.iterdir()):
        if not entry.is_dir() or not (entry / "__init__.py").is_file() or entry.name.startswith("."):
            continue
        if any(fnmatch.fnmatchcase(entry.name, pat) for pat in patterns):
            out.append(entry.name)
    return out


def _package_files(root: Path, package: str, exclude: Sequence[Path]) -> Iterator[Path]:
    """`*.py` files of a package, recursing only into sub-packages (folders with `__init__.py`)."""
    folder = root / package
    stack = [folder]
    while stack:
        current = stack.pop()
        if any(current == ex or current.is_relative_to(ex) for ex in exclude):
            continue
        for entry in sorted(current.iterdir()):
            if entry.is_symlink():
                continue  # a link could point anywhere (a key folder, another project)
            if entry.is_dir():
                if entry.name != "__pycache__" and (entry / "__init__.py").is_file():
                    stack.append(entry)
            elif entry.suffix == ".py" and entry.is_file():
                yield entry


def stage_app(app_dir: Path, dest: Path, exclude: Sequence[Path] = ()) -> Path:
    """Copy the bundle's files of `app_dir` into `dest/<project folder name>` and return that folder.

    `exclude`: folders never copied even if they were a package (e.g. the run and output
    folders, belt and braces)."""
    app_dir = Path(app_dir).resolve()
    excluded = [Path(p).resolve() for p in exclude]
    target = Path(dest) / app_dir.name
    target.mkdir(parents=True, exist_ok=False)
    for name in TOP_FILES:
        if (app_dir / name).is_file():
            shutil.copy2(app_dir / name, target / name)
    if not (target / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} has no pyproject.toml: the app folder is the one holding [tool.flwr.app]")
    for package in app_packages(app_dir):
        for path in _package_files(app_dir, package, excluded):
            out = target / path.relative_to(app_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
    return target


@contextlib.contextmanager
def staged_app(app_dir: Path, exclude: Sequence[Path] = ()) -> Iterator[Path]:
    """`stage_app` into a temporary folder, removed afterwards: hand the yielded folder to
    `flwr run` (it reads the files while building the bundle, then needs them no more)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedmtl-app-"))
    try:
        yield stage_app(app_dir, tmp, exclude)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_bundle(app_dir: Path, exclude: Sequence[Path] = ()) -> bytes:
    """The FAB `flwr run` would submit for `app_dir` through `staged_app` (same bytes)."""
    with warnings.catch_warnings():  # typer/click/pathspec deprecations on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.cli.build import build_fab_from_disk  # noqa: PLC0415 - heavy import

        with staged_app(app_dir, exclude) as staged:
            try:
                return build_fab_from_disk(staged)
            except ValueError as err:
                raise ValueError(f"cannot bundle the Flower app in {app_dir}: {err}") from err


def bundle_entries(fab: bytes) -> list[tuple[str, int]]:
    """(path, size) of the files in a FAB, without Flower's `.info/` manifest."""
    with zipfile.ZipFile(io.BytesIO(fab)) as zf:
        return [(i.filename, i.file_size) for i in zf.infolist() if not i.filename.startswith(".info/")]
