"""`fedmtl coordinator`: the coordinator service of a real deployment (clients on other machines).

It starts a Flower SuperLink on 127.0.0.1 (state in RUN_DIR/state.db), exposes ONLY its
client-facing Fleet API on --host:--port through fedmtl's gateway, registers the client keys of
RUN_DIR/authorized_keys, runs the fedmtl ServerApp with the run config (--config, flags, --set),
waits for --min-clients clients, prints who joined and each round's progress, and writes
history.json, metrics.csv, models/, plots/ and checkpoints/ to RUN_DIR (or --out). Ctrl-C stops
everything it started.

Secure by default: TLS with the certificate in --tls-dir (create it with `fedmtl certs`) and
client authentication (`fedmtl keys`). --insecure turns both off, for trusted test networks only.

After a crash or a kill, `fedmtl coordinator --resume RUN_DIR` continues from the last completed
round with the run config saved in RUN_DIR (flags given again override it); clients that stayed
up reconnect by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from common.signals import install_stop_handlers
from coordinator.commands.common import add_run_options, check_output_folder, run_config_from_args
from coordinator.commands.simulate import app_dir
from coordinator.config import RunConfig
from fedmtl.commands.dashboard import add_dashboard_options, start_for_run
from fedmtl.progress import RunReporter, add_output_options, output_mode
from launch.service import (
    OBJECT_STORES,
    RUN_CONFIG_FILE,
    CoordinatorService,
    CoordinatorSettings,
    DeploymentError,
    DeploymentFailed,
    client_registry_path,
    insecure_banner,
)
from launch.gateway import DEFAULT_PULL_HOLD_S
from launch.simulation import check_fab
from launch.superlink import SuperLinkError
from tasks.registry import builtin_data_root

DEFAULT_RUN_DIR = Path("runs/coordinator")
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9092
SETTINGS_FILE = "coordinator_settings.json"  # listening settings of the last start (defaults for --resume)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coordinator", help="start the coordinator service (SuperLink + fedmtl ServerApp)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir_pos", nargs="?", type=Path, default=None, metavar="RUN_DIR",
                   help="same as --run-dir")
    p.add_argument("--run-dir", type=Path, default=None,
                   help=f"state, logs and (unless --out) results of this coordinator (default {DEFAULT_RUN_DIR})")
    add_run_options(p)
    p.add_argument("--host", default=None, help=f"address the client-facing Fleet API listens on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=None, help=f"its port (default {DEFAULT_PORT})")
    p.add_argument("--min-clients", type=int, default=None, help="wait for this many clients before round 1")
    p.add_argument("--min-clients-timeout", type=float, default=None,
                   help="give up (exit 1) if they have not joined after this many seconds")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="folder with server.crt, server.key, ca.crt from `fedmtl certs` (default RUN_DIR/tls)")
    p.add_argument("--authorized-keys", type=Path, default=None,
                   help="folder of client public keys (*.pub) to accept (default RUN_DIR/authorized_keys)")
    p.add_argument("--insecure", action="store_true",
                   help="NO TLS and NO client authentication (trusted test networks only; loud warning)")
    p.add_argument("--superlink-port", type=int, default=None,
                   help="loopback port of the internal SuperLink (default: a free one)")
    p.add_argument("--pull-hold", type=float, default=None, metavar="S",
                   help=f"the gateway holds a client's empty message poll open up to S seconds, so a new message "
                        f"reaches it at once (default {DEFAULT_PULL_HOLD_S:g}; 0 = off: Flower's clients then "
                        "look for messages only every 3 s)")
    p.add_argument("--objects", choices=OBJECT_STORES, default=None,
                   help="where the SuperLink keeps the messages' objects (the models on their way): memory "
                        "(default; its runs, nodes and keys stay in RUN_DIR/state.db) or database (Flower's "
                        "own: everything in state.db, slower)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    add_dashboard_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir_pos is not None and args.run_dir is not None and args.run_dir_pos != args.run_dir:
        raise ValueError(f"two run directories given: {args.run_dir_pos} and --run-dir {args.run_dir}")
    return (args.run_dir or args.run_dir_pos or DEFAULT_RUN_DIR).resolve()


def _saved(run_dir: Path, resume: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config, listening settings) of the previous start, for --resume."""
    if not resume:
        return {}, {}
    config: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if (run_dir / RUN_CONFIG_FILE).is_file():
        config = tomllib.loads((run_dir / RUN_CONFIG_FILE).read_text())
    if (run_dir / SETTINGS_FILE).is_file():
        settings = json.loads((run_dir / SETTINGS_FILE).read_text())
    return config, settings


def build(args: argparse.Namespace) -> tuple[CoordinatorSettings, dict[str, Any]]:
    """The listening settings and the validated run config, from the arguments (no side effects)."""
    run_dir = _run_dir(args)
    if args.resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: {run_dir} does not exist")
    saved_config, saved = _saved(run_dir, args.resume)
    defaults = {"suite": "default", "rounds": 10, **saved_config,
                "out": saved_config.get("out", str(run_dir)), "data-root": builtin_data_root()}
    defaults.pop("resume", None)
    config = run_config_from_args(args, defaults)
    for key in ("min_clients", "min_clients_timeout"):
        value = getattr(args, key)
        if value is not None:
            config[key.replace("_", "-")] = value
    cfg = RunConfig.from_dict(config, where="options")
    from tasks.registry import load_suite  # the checks that need the suite, before anything starts

    cfg.validate_against_suite(load_suite(cfg.suite).task_names, where="options")
    config = cfg.to_dict()

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else saved.get(name, default)

    insecure = bool(args.insecure or saved.get("insecure", False))
    # Identities come from the registered keys (the ServerApp reads this file at every discovery).
    config["client-registry"] = "" if insecure else str(client_registry_path(run_dir))
    tls_dir = pick("tls_dir", None)
    keys = pick("authorized_keys", None)
    settings = CoordinatorSettings(
        run_dir=run_dir, host=str(pick("host", DEFAULT_HOST)), port=int(pick("port", DEFAULT_PORT)),
        tls_dir=Path(tls_dir) if tls_dir else None, insecure=insecure,
        authorized_keys=Path(keys) if keys else None, superlink_port=args.superlink_port,
        pull_hold_s=float(pick("pull_hold", DEFAULT_PULL_HOLD_S)), objects=str(pick("objects", "memory")),
    )
    return settings, config


def _save(settings: CoordinatorSettings, config: dict[str, Any]) -> None:
    run_dir = settings.run_dir
    saved = {k: v for k, v in config.items() if k != "resume"}
    (run_dir / RUN_CONFIG_FILE).write_text(tomli_w.dumps(saved))
    (run_dir / SETTINGS_FILE).write_text(json.dumps({
        "host": settings.host, "port": settings.port, "insecure": settings.insecure,
        "tls_dir": str(settings.tls_dir), "authorized_keys": str(settings.authorized_keys),
        "pull_hold": settings.pull_hold_s, "objects": settings.objects}, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    settings, config = build(args)
    try:
        sans = settings.check()
    except DeploymentError as exc:
        raise ValueError(str(exc)) from None
    app = app_dir()
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    out = Path(config["out"]).resolve()
    check_output_folder(out, config, args.overwrite)  # another run's checkpoints are not deleted silently
    out.mkdir(parents=True, exist_ok=True)
    check_fab(app, forbidden=[run_dir, out])  # nothing of the run directory may ship with the app
    _save(settings, config)

    dashboard = start_for_run(args, out)
    report = RunReporter(output_mode(args), rounds=config["rounds"], title="coordinator").__enter__()
    if dashboard is not None:
        report.say(f"  dashboard at {dashboard.url}", dashboard=dashboard.url)
    if settings.insecure:
        print(insecure_banner("COORDINATOR"), file=sys.stderr, flush=True)
    report.say(f"fedmtl coordinator: suite {config['suite']!r}, mode {config['mode']!r}, {config['rounds']} rounds, "
               f"min {config['min-clients']} clients -> {out}" + (" (resuming)" if config["resume"] else ""))
    if settings.insecure:
        report.say(f"  clients connect to {settings.public} WITHOUT TLS (fedmtl client --insecure)")
    else:
        report.say(f"  clients connect to {settings.public} over TLS; they must dial one of the certificate's "
                   f"names: {', '.join(sans)}")

    restore = install_stop_handlers()  # SIGTERM (docker stop, systemd) ends the coordinator like Ctrl-C
    service = CoordinatorService(settings, app, on_line=report.on_line)
    t0 = time.monotonic()
    try:
        try:
            service.start()
        except (SuperLinkError, DeploymentError) as exc:
            print(f"fedmtl coordinator: error: {exc}", file=sys.stderr, flush=True)
            return 1
        report.say(f"  SuperLink (Control and Runtime APIs, this host only) on {service.link.address}; state "
                   f"{run_dir / 'state.db'}; logs {service.link.log_path}, {run_dir / 'gateway.log'}")
        if not settings.insecure:
            try:
                keys, revoked = service.register_authorized_keys()
            except DeploymentError as exc:
                print(f"fedmtl coordinator: error: {exc}", file=sys.stderr, flush=True)
                return 1
            names = ", ".join(name for name, _fp, _node in keys) or "none yet"
            report.say(f"  accepted client keys ({settings.authorized_keys}): {names}")
            if revoked:
                report.say(f"  revoked (no longer in {settings.authorized_keys}): {', '.join(revoked)}")
            if not keys:
                report.say(f"  register clients with: fedmtl keys register NAME.pub --run-dir {run_dir}")
        try:
            for stale in service.stop_stale_runs():
                report.say(f"  stopped run {stale}, left unfinished by a previous coordinator")
            run_id = service.submit(config)
            report.say(f"  run {run_id} submitted; waiting for {config['min-clients']} clients "
                       f"(up to {config['min-clients-timeout']:.0f}s)")
            status = service.follow(timeout_s=args.timeout)
        except DeploymentFailed as exc:
            print(f"fedmtl coordinator: the run failed: {exc}", file=sys.stderr, flush=True)
            return 1
        report.result(f"fedmtl coordinator: run {run_id} {status} in {time.monotonic() - t0:.0f}s; history in "
                      f"{out / 'history.json'}, models in {out / 'models'}, plots in {out / 'plots'}",
                      status=status, run_id=run_id, out=str(out), last_round=(report.last or {}).get("round"))
        return 0
    finally:
        service.stop()
        restore()
        if dashboard is not None:
            dashboard.stop()
        report.__exit__()


