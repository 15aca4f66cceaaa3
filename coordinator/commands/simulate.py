"""`fedmtl simulate`: a whole federation on this machine, on Flower's simulation engine (Ray).

It starts a private SuperLink in simulation mode, submits the fedmtl app to it (the same
ServerApp and ClientApp a real deployment runs), shows the coordinator's progress (a progress
bar on a terminal, plain lines otherwise, --json lines for scripts, --quiet for nothing but the
result), and tears everything down at the end, also on Ctrl-C. --dashboard serves the live
dashboard of the run meanwhile (see `fedmtl dashboard`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.commands.common import add_run_options, check_output_folder, run_config_from_args
from fedmtl.commands.dashboard import add_dashboard_options, start_for_run
from fedmtl.progress import RunReporter, add_output_options, output_mode
from launch.simulation import SimulationFailed, run_simulation_app
from tasks.registry import builtin_data_root

DEFAULTS = {"suite": "default", "rounds": 15, "out": "runs/simulate"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a federation locally on Flower's simulation engine (Ray)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--clients", type=int, default=6, help="number of simulated clients (SuperNodes), default 6")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPU cores reserved per simulated client, default 1")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per simulated client (e.g. 0.25), default 0")
    p.add_argument("--ray-address", default=None,
                   help="run the clients on an existing Ray cluster (the head's HOST:PORT, from `ray start --head`; "
                        "run this command on a node of that cluster) instead of a private Ray on this machine")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    add_dashboard_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def app_dir() -> Path:
    """The Flower app: the project folder whose pyproject.toml declares [tool.flwr.app]."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FileNotFoundError(
            f"fedmtl's Flower app config was not found at {pyproject}; install fedmtl from its source folder (pip install -e .)"
        )
    return root


def run(args: argparse.Namespace) -> int:
    if args.clients < 1:
        raise ValueError(f"--clients = {args.clients}: must be >= 1")
    # On a private Ray every client runs here: point them at this copy's data. On a cluster the
    # clients run on other nodes, where this machine's paths need not exist: each node then finds
    # the built-in suites' data in its own install (tasks.images.resolve_data_root), unless the
    # user passes a data-root valid on every node (--set data-root=/shared/path).
    defaults = dict(DEFAULTS, **({"data-root": builtin_data_root()} if args.ray_address is None else {}))
    config = run_config_from_args(args, defaults)
    if config["min-clients"] > args.clients:
        config["min-clients"] = args.clients
    out = Path(config["out"]).resolve()
    config["out"] = str(out)
    check_output_folder(out, config, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    dashboard = start_for_run(args, out)
    with RunReporter(output_mode(args), rounds=config["rounds"], title="simulate") as report:
        report.say(f"fedmtl simulate: {args.clients} clients, suite {config['suite']!r}, mode {config['mode']!r}, "
                   f"{config['rounds']} rounds -> {out}", clients=args.clients, suite=config["suite"],
                   mode=config["mode"], rounds=config["rounds"], out=str(out))
        if dashboard is not None:
            report.say(f"fedmtl simulate: dashboard at {dashboard.url}", dashboard=dashboard.url)
        try:
            status = run_simulation_app(
                app_dir=app_dir(),
                run_dir=out / ".flower",
                run_config=config,
                num_supernodes=args.clients,
                num_cpus_per_client=args.num_cpus,
                num_gpus_per_client=args.num_gpus,
                ray_address=args.ray_address,
                timeout_s=args.timeout,
                on_line=report.on_line,
            )
        except SimulationFailed as exc:
            report.result(f"fedmtl simulate: the run failed: {exc}", status="failed", error=str(exc))
            return 1
        finally:
            if dashboard is not None:
                dashboard.stop()
                report.say(f"fedmtl simulate: the dashboard stopped with the run; `fedmtl dashboard {out}` serves it again")
        report.result(f"fedmtl simulate: {status}; history in {out / 'history.json'}, plots in {out / 'plots'}",
                      status=status, out=str(out), last_round=(report.last or {}).get("round"),
                      mean_accuracy=(report.last or {}).get("mean_accuracy"))
    return 0
