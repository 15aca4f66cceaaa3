"""Run only app bundles this client chose: `flwr-clientapp` with the bundle's hash checked first.

A Flower client runs the code of the app bundle (FAB) the coordinator sends: its SuperNode
unpacks the bundle and `flwr-clientapp` imports the ClientApp from it. Whoever controls the
coordinator's code therefore controls what every client executes, whatever checks that code
claims to make. Flower's own remedy, `--trusted-entities`, accepts only bundles signed by Flower
Hub, i.e. apps published there and started by name, never one a coordinator submits from its
own folder (docs/security.md).

fedmtl's remedy for its own app: the bundle is deterministic (`launch/bundle.py`), so a client
can compute the hash of the bundle built from the fedmtl installed on it and refuse any other.
`fedmtl client --pin-app` (or `--app-hash SHA256`) puts a small `flwr-clientapp` in front of
Flower's on the SuperNode's `PATH` (its SuperExec starts `flwr-clientapp` by name): it runs
Flower's own `flwr-clientapp`, but checks the SHA-256 of the bundle's bytes before the bundle is
even unpacked, so none of a foreign bundle's code runs. The refusal goes back to the coordinator
as the ClientApp's error, with the hashes in it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ENV_PINNED", "SHIM_NAME", "UntrustedAppBundle", "allowed_hashes", "main", "write_shim"]

#: Environment variable carrying the accepted bundle hashes (comma-separated SHA-256 hex).
ENV_PINNED = "FEDMTL_PINNED_APP_HASHES"
SHIM_NAME = "flwr-clientapp"


class UntrustedAppBundle(RuntimeError):
    """The coordinator sent an app bundle this client does not run."""


def allowed_hashes(env: dict[str, str] | None = None) -> set[str]:
    value = (env if env is not None else os.environ).get(ENV_PINNED, "")
    return {h.strip().lower() for h in value.split(",") if h.strip()}


def _checked(install: Callable[..., Any], allowed: set[str]) -> Callable[..., Any]:
    def install_if_pinned(content: bytes, *args: Any, **kwargs: Any) -> Any:
        digest = hashlib.sha256(content).hexdigest()
        if digest not in allowed:
            why = (f"this client runs only the app bundle(s) {', '.join(sorted(h[:16] for h in allowed))}... "
                   f"(fedmtl client --pin-app / --app-hash), but the coordinator sent {digest}: it runs other code "
                   "than this client installed; nothing of it was run")
            print(f"fedmtl: refused app bundle {digest[:16]}: {why}", file=sys.stderr, flush=True)
            raise UntrustedAppBundle(why)
        return install(content, *args, **kwargs)

    return install_if_pinned


def main() -> Any:
    """`flwr-clientapp`, with the bundle checked against `$FEDMTL_PINNED_APP_HASHES`."""
    import flwr.supernode.runtime.run_clientapp as run_clientapp  # noqa: PLC0415

    allowed = allowed_hashes()
    if not allowed:  # misconfigured: refuse everything rather than run anything
        allowed = {"none"}
    run_clientapp.install_from_fab = _checked(run_clientapp.install_from_fab, allowed)  # type: ignore[attr-defined]
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp  # noqa: PLC0415

    sys.argv[0] = SHIM_NAME
    return flwr_clientapp()


def write_shim(folder: Path, python: str | None = None, code_root: Path | None = None) -> Path:
    """Write the `flwr-clientapp` stand-in into `folder` (put it first on the SuperNode's PATH)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(code_root or Path(__file__).resolve().parents[1])
    shim = folder / SHIM_NAME
    shim.write_text(f"#!{python or sys.executable}\n"
                    "import sys\n"
                    f"sys.path.insert(0, {str(root)!r})\n"
                    "from launch.pinned_clientapp import main\n"
                    "sys.exit(main())\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


def pinned_env(base_env: dict[str, str], hashes: Sequence[str], shim_dir: Path) -> dict[str, str]:
    """`base_env` with the shim first on PATH and the accepted hashes set."""
    env = dict(base_env)
    env[ENV_PINNED] = ",".join(h.lower() for h in hashes)
    env["PATH"] = os.pathsep.join([str(shim_dir), env.get("PATH", "")])
    return env
