"""Launch Flower runs on a private SuperLink: the simulation engine without `run_simulation`.

Flower 1.41 runs a simulation like this: a SuperLink started with `--simulation` hands every
submitted run to its SuperExec, which starts one `flwr-simulation` process per run; that process
unpacks the run's app bundle (FAB), starts Ray (`ray.init`), runs the ServerApp in a thread and
every ClientApp call in a Ray actor. fedmtl drives that machinery from Python in four modules:

* `launch/processes.py`: the processes we start, found again through a marker in their
  environment (`ProcessFamily`, `ENV_TAG`) and killed, also by a reaper process if we are
  SIGKILLed (`spawn_reaper`).
* `launch/superlink.py`: `SuperLinkProcess` starts `flower-superlink` on a port of our
  choosing with its state, Flower home and log under a run directory, and on `stop()` tears
  down the SuperLink *and everything it started*.
* `launch/flwr_cli.py`: `FlwrCli` runs the `flwr` command line against that SuperLink
  (submit runs, stream their logs, read their status, stop them, register SuperNode keys).
* this module: `run_simulation_app` puts it together for `fedmtl simulate`: private SuperLink,
  one run, live progress lines, final status, `SimulationFailed` with the ServerApp's error,
  full tear-down. `follow_run` and `error_text` serve the deployed coordinator too
  (`launch/service.py`), and `check_fab` checks an app bundle before it is submitted.

The names of the other three modules stay importable from here.

Facts this relies on (checked against flwr 1.41, re-checked with 1.42, and ray 2.55 on this machine):

* The simulation's federation config only carries `num-supernodes`, `client-resources-num-cpus`
  (an *integer*), `client-resources-num-gpus` (a float), `backend`, `verbose` and
  `init-args-{num-cpus,num-gpus,logging-level,log-to-driver}`. There is no `address`: Flower calls
  `ray.init(runtime_env=..., **init_args)` with no address, and Ray then reads `RAY_ADDRESS`
  from the environment. We set `RAY_ADDRESS` in the SuperLink's environment (inherited by
  SuperExec and `flwr-simulation`): `"local"` always starts a fresh private Ray instance (never
  joining a stale cluster recorded in Ray's `ray_current_cluster` file), `"HOST:PORT"` joins an
  existing cluster.
* `flwr log --stream` ends normally when the run fails: the outcome comes from `flwr ls`.
* The ServerApp and the ClientApps import the app's packages from the unpacked FAB copy under
  `$FLWR_HOME/apps/...` (Flower puts that folder first on `sys.path`), not from the installed
  package. fedmtl builds the FAB from a clean copy holding only pyproject.toml, README.md and the
  `*.py` files of the project's packages (`launch/bundle.py`), at most 10 MB: package data such
  as `tasks/data/*.gz` is NOT in it, so data must be found through an explicit path in the run
  config; and nothing else that lies in the project folder (data, keys, run folders) travels.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.signals import install_stop_handlers
from launch.bundle import build_bundle, bundle_entries, staged_app
from launch.flwr_cli import FlwrCli, FlwrCliError, iter_log_lines, strip_ansi
from launch.processes import (
    ENV_TAG,
    ProcessFamily,
    find_tagged_processes,
    free_port,
    log_tail,
    process_start_time,
    spawn_reaper,
)
from launch.superlink import (
    IN_MEMORY_DATABASE,
    QUIET_ENV,
    SuperLinkConfig,
    SuperLinkConnection,
    SuperLinkError,
    SuperLinkProcess,
    TlsFiles,
    child_env,
    flower_bin_dir,
)
from launch.simulation_main import write_shim as write_simulation_shim

__all__ = [
    "COMPLETED",
    "ENV_TAG",
    "FAB_MAX_SIZE",
    "FlwrCli",
    "FlwrCliError",
    "IN_MEMORY_DATABASE",
    "NOISE_PATTERNS",
    "ProcessFamily",
    "QUIET_ENV",
    "SimulationFailed",
    "SimulationResources",
    "SimulationTimeout",
    "SuperLinkConfig",
    "SuperLinkConnection",
    "SuperLinkError",
    "SuperLinkProcess",
    "TlsFiles",
    "app_config_keys",
    "check_fab",
    "child_env",
    "error_text",
    "find_tagged_processes",
    "flower_bin_dir",
    "follow_run",
    "free_port",
    "is_noise",
    "iter_log_lines",
    "process_start_time",
    "run_simulation_app",
    "spawn_reaper",
    "strip_ansi",
]

#: Flower's FAB size limit (`flwr.common.constant.FAB_MAX_SIZE`).
FAB_MAX_SIZE = 10 * 1024 * 1024

_FINISHED = "finished"
COMPLETED = "finished:completed"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class SimulationFailed(RuntimeError):
    """A simulated run did not complete.

    Attributes: `status` (Flower's run status, e.g. `finished:failed`), `details` (Flower's
    status details, e.g. `Simulation failed with exception: ...`), `error_text` (the ServerApp's
    traceback as streamed, if any), `run_id`, and `log_tail` (the last streamed lines).
    """

    def __init__(
        self,
        message: str,
        *,
        status: str = "",
        details: str = "",
        error_text: str = "",
        run_id: int | None = None,
        log_tail: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details
        self.error_text = error_text
        self.run_id = run_id
        self.log_tail = list(log_tail)


class SimulationTimeout(SimulationFailed):
    """A simulated run ran past its time limit (it was stopped)."""


# ---------------------------------------------------------------------------------------------
# FAB checks
# ---------------------------------------------------------------------------------------------


def check_fab(app_dir: Path, forbidden: Sequence[Path] = ()) -> list[tuple[str, int]]:
    """Build the app's FAB the way fedmtl submits it (`launch/bundle.py`: from a clean copy of the
    project's packages, pyproject.toml and README.md) and return its (path, size) entries.

    Raises ValueError if it is over Flower's 10 MB limit, or if it would contain files under one
    of the `forbidden` folders (e.g. the run directory; staging leaves them out, this checks it).
    """
    app_dir = Path(app_dir).resolve()
    fab = build_bundle(app_dir, exclude=forbidden)
    entries = bundle_entries(fab)
    for folder in forbidden:
        folder = Path(folder).resolve()
        if not folder.is_relative_to(app_dir):
            continue
        rel = folder.relative_to(app_dir).as_posix() + "/"
        inside = [name for name, _ in entries if name.startswith(rel)]
        if inside:
            raise ValueError(
                f"the Flower app bundle of {app_dir} would include {len(inside)} file(s) under {folder} "
                f"(e.g. {inside[0]}); use a folder outside the app"
            )
    if len(fab) > FAB_MAX_SIZE:
        biggest = ", ".join(f"{n} ({s:,} B)" for n, s in sorted(entries, key=lambda e: -e[1])[:5])
        raise ValueError(f"the Flower app bundle is {len(fab):,} bytes, over Flower's {FAB_MAX_SIZE:,}; "
                         f"largest files: {biggest}")
    return entries


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResources:
    """Ray resources of a simulation.

    `num_cpus_per_client` / `num_gpus_per_client`: what each simulated ClientApp reserves (Ray
    runs `total / per-client` of them at a time; Ray hides GPUs from a client that reserves
    none). `ray_address=None` starts a fresh private Ray for the run (`RAY_ADDRESS=local`);
    `"HOST:PORT"` joins an existing cluster (`ray start --head` plus `ray start --address` on
    other nodes), whose nodes all run clients: this process must run on a node of the cluster,
    and every node needs the same Python, Ray, flwr and fedmtl installed. A client on another
    node imports the app from this machine's FAB copy where that path exists (a shared file
    system), else from the fedmtl installed there. `ray_num_cpus`/`ray_num_gpus` cap a private
    Ray instance (default: all of this machine). See docs/deployment.md, "Simulation on your own Ray cluster".

    Flower 1.41 carries the per-client CPU count as an integer. A fractional value is emulated
    on a private Ray: each client reserves 1 logical CPU and Ray is told it has
    `floor(total / num_cpus_per_client)` CPUs, which runs the same number of clients at a time.
    """

    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    ray_num_gpus: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus_per_client <= 0:
            raise ValueError(f"num_cpus_per_client={self.num_cpus_per_client}: must be > 0")
        if self.num_gpus_per_client < 0:
            raise ValueError(f"num_gpus_per_client={self.num_gpus_per_client}: must be >= 0")
        if self.ray_address is not None and (self.ray_num_cpus is not None or self.ray_num_gpus is not None):
            raise ValueError("ray_num_cpus/ray_num_gpus size a private Ray; an existing cluster keeps its own")
        if self.ray_address is not None and not float(self.num_cpus_per_client).is_integer():
            raise ValueError(f"num_cpus_per_client={self.num_cpus_per_client}: Flower 1.41 passes whole CPUs "
                             "per client, and an existing Ray cluster cannot be rescaled to emulate a fraction")

    @property
    def ray_env(self) -> str:
        """The `RAY_ADDRESS` the simulation's `ray.init()` will use."""
        return self.ray_address or "local"

    def federation_config(self, num_supernodes: int) -> dict[str, Any]:
        """Flower's federation (simulation) config for `flwr run --federation-config`."""
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes={num_supernodes}: must be >= 1")
        cfg: dict[str, Any] = {"num-supernodes": int(num_supernodes), "backend": "ray"}
        cpus = float(self.num_cpus_per_client)
        ray_cpus = self.ray_num_cpus
        if cpus.is_integer():
            cfg["client-resources-num-cpus"] = int(cpus)
        else:
            total = ray_cpus if ray_cpus is not None else (os.cpu_count() or 1)
            cfg["client-resources-num-cpus"] = 1
            ray_cpus = max(1, int(total / cpus))
        cfg["client-resources-num-gpus"] = float(self.num_gpus_per_client)
        if self.ray_address is None:
            if ray_cpus is not None:
                cfg["init-args-num-cpus"] = int(ray_cpus)
            if self.ray_num_gpus is not None:
                cfg["init-args-num-gpus"] = int(self.ray_num_gpus)
        return cfg


def app_config_keys(app_dir: Path) -> set[str]:
    """The run-config keys the app declares (`[tool.flwr.app.config]`, nested tables dotted)."""
    import tomllib

    data = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text())
    config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})

    def flat(d: Mapping[str, Any], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for k, v in d.items():
            keys |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return keys

    return flat(config)


def error_text(lines: Sequence[str], max_lines: int = 80) -> str:
    """The last traceback in the streamed log (with the `ERROR` line announcing it), if any."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        errors = [line for line in lines if line.startswith("ERROR")]
        return "\n".join(errors[-5:])
    start = starts[-1]
    if start > 0 and lines[start - 1].startswith("ERROR"):
        start -= 1
    return "\n".join(lines[start:start + max_lines]).strip()


#: Lines Flower and Ray print on every simulation that tell nothing about the run.
NOISE_PATTERNS = (
    re.compile(r"^WARNING :\s+Since flwr 1\.32, default simulated SuperNodes changed"),
    re.compile(r"^INFO :\s+To change federation size, use the following command:"),
    re.compile(r"^INFO :\s+\s*flwr federation simulation-config "),
    re.compile(r"FutureWarning: Tip: In future versions of Ray, Ray will no longer override accelerator"),
    re.compile(r"^\s+warnings\.warn\($"),
    re.compile(r"^INFO :\s*$"),
    re.compile(r"^\(ClientAppActor pid=\d+\) WARNING :\s+Manually terminating ClientAppActor$"),
)


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISE_PATTERNS)


def follow_run(link: SuperLinkProcess, cli: FlwrCli, run_id: int, on_line: Callable[[str], None],
                tail: deque[str], deadline: float | None, timeout_s: float | None,
                filter_noise: bool) -> dict[str, Any]:
    """Stream the run's log to `on_line` until the run is finished; return its `flwr ls` record.

    Raises SimulationTimeout past `deadline`, SimulationFailed if the SuperLink dies.
    """
    lines: queue.Queue[str | BaseException | None] = queue.Queue()
    log_proc = cli.log_stream_process(run_id)

    def pump() -> None:
        try:
            for ln in iter_log_lines(log_proc, cli.log_stderr_path(run_id)):
                lines.put(ln)
            lines.put(None)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            lines.put(err)

    reader = threading.Thread(target=pump, name=f"flwr-log-{run_id}", daemon=True)
    reader.start()
    streaming = True
    next_poll = 0.0
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise SimulationTimeout(f"run {run_id} ran past its {timeout_s:.0f}s limit and was stopped",
                                        status="timeout", run_id=run_id, log_tail=list(tail))
            if not link.is_running():
                raise SimulationFailed(f"the SuperLink died during run {run_id}; its log ({link.log_path}) "
                                       f"ends:\n{log_tail(link.log_path)}", run_id=run_id, log_tail=list(tail))
            if streaming:
                try:
                    item = lines.get(timeout=0.5)
                except queue.Empty:
                    continue
                if isinstance(item, str):
                    tail.append(item)
                    if not (filter_noise and is_noise(item)):
                        on_line(item)
                    continue
                # The stream ends when the run is finished (or if `flwr log` failed).
                streaming = False
                if isinstance(item, BaseException):
                    on_line(f"[launcher] log stream of run {run_id} broke ({item}); polling its status")
            elif time.monotonic() < next_poll:
                time.sleep(0.2)
                continue
            info = cli.run_info(run_id)
            if str(info.get("status", "")).startswith(_FINISHED):
                return info
            next_poll = time.monotonic() + 1.0
    finally:
        if log_proc.poll() is None:
            log_proc.kill()
        reader.join(timeout=5)


def run_simulation_app(
    app_dir: Path,
    run_dir: Path,
    run_config: Mapping[str, Any],
    num_supernodes: int,
    num_cpus_per_client: float = 1.0,
    num_gpus_per_client: float = 0.0,
    ray_address: str | None = None,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] = print,
    *,
    ray_num_cpus: int | None = None,
    ray_num_gpus: int | None = None,
    check_bundle: bool = True,
    keep_out_of_bundle: Sequence[Path] = (),
    filter_noise: bool = True,
) -> str:
    """Run the Flower app in `app_dir` on the simulation engine (Ray); return its final status.

    Starts a private SuperLink (`--simulation`, loopback, free port; state, Flower home and log
    under `run_dir`), submits one run with `run_config` and `num_supernodes` simulated nodes,
    calls `on_line` with each line of the ServerApp's log as it arrives (ClientApp prints come
    along too: Ray forwards them; Flower's and Ray's boilerplate lines are dropped unless
    `filter_noise=False`; the launcher's own lines start with `[launcher]`), and returns
    `"finished:completed"`. Raises `SimulationFailed` (with Flower's status details and the
    streamed traceback) if the run failed or was stopped, `SimulationTimeout` after `timeout_s`
    (counted from the call). Everything it started is gone when it returns or raises, also on
    Ctrl-C (KeyboardInterrupt) and SIGTERM (turned into SystemExit(143) while it runs in the
    main thread); if this process is SIGKILLed, the SuperLink's reaper process kills all of it
    within about 10 s (Linux).

    `app_dir` is the folder holding the app's `pyproject.toml`. The apps import the app's
    packages from the bundle (FAB), which holds only source and config files: pass data
    locations explicitly in `run_config`. See `SimulationResources` for the Ray settings.
    With `check_bundle`, the bundle is built once beforehand and refused (ValueError) if it is
    over 10 MB or would contain files under `run_dir` or any of `keep_out_of_bundle` (e.g. the
    run's output folder: its *.json would be shipped with every later run unless ignored).
    """
    t_start = time.monotonic()
    deadline = None if timeout_s is None else t_start + timeout_s
    app_dir = Path(app_dir).resolve()
    run_dir = Path(run_dir).resolve()
    resources = SimulationResources(num_cpus_per_client, num_gpus_per_client, ray_address, ray_num_cpus, ray_num_gpus)
    federation = resources.federation_config(num_supernodes)
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} has no pyproject.toml: the app folder is the one holding [tool.flwr.app]")
    unknown = sorted(set(run_config) - app_config_keys(app_dir))
    if unknown:  # Flower would only say "Invalid run configuration."
        raise ValueError(f"run config keys {unknown} are not declared in [tool.flwr.app.config] of "
                         f"{app_dir / 'pyproject.toml'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home: Path | None = None
    tmp_home: str | None = None
    if run_dir.is_relative_to(app_dir):
        # Keep the Flower home (unpacked bundles: *.py, *.toml) out of the app's own bundle.
        tmp_home = tempfile.mkdtemp(prefix="fedmtl-flwr-home-")
        flwr_home = Path(tmp_home)
    if check_bundle:
        check_fab(app_dir, forbidden=[run_dir, *keep_out_of_bundle])

    # SuperExec starts `flwr-simulation` by name: ours first on PATH (a faster message pump, see
    # launch/simulation_main.py), then Flower's.
    shim_dir = write_simulation_shim(run_dir / "bin").parent
    path = os.pathsep.join([str(shim_dir), child_env()["PATH"]])
    link = SuperLinkProcess(SuperLinkConfig(
        run_dir=run_dir, simulation=True, flwr_home=flwr_home, env={"RAY_ADDRESS": resources.ray_env, "PATH": path},
    ))
    restore_sigterm = install_stop_handlers(as_exit=True, sigint=False)  # SIGTERM -> SystemExit: `finally` tears down
    tail: deque[str] = deque(maxlen=400)
    run_id: int | None = None
    finished = False
    try:
        link.start()
        # The CLI's children carry the SuperLink's marker: stop() kills them too.
        cli = FlwrCli(link.flwr_home, link.connection("fedmtl-sim"), env={ENV_TAG: link.tag})
        cli.write_connection()
        on_line(f"[launcher] SuperLink on {link.address} (log {link.log_path}); RAY_ADDRESS={resources.ray_env}; "
                f"federation config {federation}")
        try:
            # The bundle is built from a clean copy of the code only (launch/bundle.py).
            with staged_app(app_dir, exclude=[run_dir, *keep_out_of_bundle]) as staged:
                run_id = cli.submit_run(staged, dict(run_config), federation, stream=False, files_dir=link.flwr_home)
        except FlwrCliError as err:
            raise SimulationFailed(f"the run was not accepted: {err}", status="not-submitted",
                                   details=str(err)) from err
        on_line(f"[launcher] run {run_id} submitted ({time.monotonic() - t_start:.1f}s)")
        info = follow_run(link, cli, run_id, on_line, tail, deadline, timeout_s, filter_noise)
        finished = True
        status = str(info.get("status", "unknown"))
        details = str(info.get("status-details", ""))
        if status != COMPLETED:
            text = error_text(list(tail))
            raise SimulationFailed(
                f"run {run_id} ended with status {status}: {details}" + (f"\n{text}" if text else ""),
                status=status, details=details, error_text=text, run_id=run_id, log_tail=list(tail))
        on_line(f"[launcher] run {run_id}: {status} ({time.monotonic() - t_start:.1f}s)")
        return status
    finally:
        try:
            if run_id is not None and not finished and link.is_running():
                # Ask for a clean stop first (flwr-simulation then shuts Ray down itself).
                with contextlib.suppress(Exception):
                    FlwrCli(link.flwr_home, link.connection("fedmtl-sim"), env={ENV_TAG: link.tag},
                            command_timeout_s=15).stop_run(run_id)
        finally:
            link.stop()
            restore_sigterm()
            if tmp_home is not None:
                shutil.rmtree(tmp_home, ignore_errors=True)
