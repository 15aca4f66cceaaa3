"""Throwaway Flower apps for tests and benchmarks: a pyproject plus a few modules, as a folder
`flwr run` accepts. One writer, so every test app declares its components the same way."""

from __future__ import annotations

from pathlib import Path

import tomli_w


def write_flower_app(root: Path, name: str, modules: dict[str, str], serverapp: str, clientapp: str,
                     config: dict[str, object] | None = None) -> Path:
    """Write `root/pyproject.toml` for app `name` (components `serverapp`/`clientapp`, e.g.
    "pkg.server:app"; run config defaults `config`) and each `modules` entry ("pkg/server.py" ->
    source); every folder of a module becomes a package. Returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": name, "version": "0.1.0", "description": f"fedmtl test app {name}",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {"app": {"publisher": "fedmtl", "components": {"serverapp": serverapp, "clientapp": clientapp},
                             "config": dict(config or {})}},
        },
    }
    (root / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    (root / ".gitignore").write_text("__pycache__/\nruns/\n")
    for rel, source in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source)
    return root
