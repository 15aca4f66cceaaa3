"""Find a suite by name: built-ins, installed entry points, or a `module:function` path.

A user's own suite is any zero-argument function returning a `tasks.Suite`, named either
  * `my_package.my_module:make_suite` (importable module),
  * `/path/to/file.py:make_suite` (a file on disk), or
  * a name registered in the `fedmtl.suites` entry-point group of an installed package.
Suites are cached per process: clients load them once and reuse them every round.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from tasks.suite import Suite

BUILTIN_SUITES: dict[str, str] = {
    "default": "tasks.images:make_default_suite",
    "images8": "tasks.images:make_default_suite",
    "tiny": "tasks.images:make_tiny_suite",
    "planted": "tasks.planted:make_planted_suite",
    # Text suites need the optional `text` extra (pip install -e .[text]; scripts/setup.sh --text).
    "text": "tasks.text.suite:make_default_text_suite",
    "text-coldfusion": "tasks.text.suite:make_coldfusion_text_suite",
    "text-tiny": "tasks.text.suite:make_tiny_text_suite",
}

ENTRY_POINT_GROUP = "fedmtl.suites"


def builtin_data_root() -> str:
    """Absolute path of the data shipped inside the `tasks` package. Flower runs apps from an
    unpacked copy of the code without data files, so commands pass this path in the run config."""
    return str((Path(__file__).resolve().parent / "data"))


class SuiteLoadError(ValueError):
    """A suite name or path that cannot be turned into a Suite."""


def _import_factory(target: str) -> Callable[[], Suite]:
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise SuiteLoadError(
            f"suite {target!r}: expected a built-in name ({', '.join(sorted(BUILTIN_SUITES))}), "
            f"an entry point in group {ENTRY_POINT_GROUP!r}, or 'module:function' / 'file.py:function'"
        )
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).expanduser().resolve()
            if not path.is_file():
                raise SuiteLoadError(f"suite {target!r}: file {path} does not exist")
            mod_name = f"fedmtl_user_suite_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except SuiteLoadError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why
        raise SuiteLoadError(f"suite {target!r}: importing {module_part!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SuiteLoadError(f"suite {target!r}: {module_part!r} has no callable {attr!r}")
    return factory


@lru_cache(maxsize=16)
def load_suite(name: str) -> Suite:
    """Return the suite called `name` (see module docstring for the accepted forms)."""
    if not name:
        raise SuiteLoadError("suite name is empty")
    if name in BUILTIN_SUITES:
        factory = _import_factory(BUILTIN_SUITES[name])
    else:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        factory = eps[0].load() if eps else _import_factory(name)
    try:
        suite = factory()
    except Exception as exc:
        raise SuiteLoadError(f"suite {name!r}: its factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(suite, Suite):
        raise SuiteLoadError(f"suite {name!r}: factory returned {type(suite).__name__}, expected tasks.Suite")
    return suite
