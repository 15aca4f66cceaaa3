"""`fedmtl client`: join a coordinator with this machine's private data folder.

It checks the data folder (format: docs/deployment.md; `fedmtl prepare-data` writes examples),
then runs a Flower SuperNode that connects to the coordinator's address over TLS with this
client's key, trains the task groups the coordinator sends on the local data and returns only
model updates and metrics. The data never leave this machine.

The client serves the coordinator's runs until you stop it (Ctrl-C). It exits with status 1 and
one clear line when the coordinator refuses it (key not registered, certificate not trusted or
not matching the address) or cannot be reached for --max-wait seconds.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client.data import validated_env
from client.folder import ClientDataError, folder_fingerprint, read_client_dir
from common.signals import install_stop_handlers
from launch.gateway import parse_hostport
from launch.service import insecure_banner
from launch.supernode import (
    EXECUTORS,
    LogFollower,
    SuperNodeConfig,
    SuperNodeProcess,
    classify_supernode_output,
)
from launch.supernode_main import DEFAULT_REPLY_POLL_S, REPLY_POLL_RANGE_S

#: SuperNode lines that tell nothing on a console (shown with --verbose only).
_NOISE = tuple(re.compile(p) for p in (
    r"^INFO :\s*$", r"^=== \d{4}-", r"^INFO:\s{4}", r"FastAPI lifespan", r"Received successfully",
    r"Sent successfully", r"Start `flwr-clientapp` process", r"^INFO :\s+Sending: ", r"^Successfully installed ",
    r"^INFO :\s+Starting Flower Super(Node|Exec)", r"^INFO :\s+\[RUN \d+(, ROUND [^\]]*)?\]$",
))
_RECEIVING = re.compile(r"Receiving: (\S+) message")
_RUN_HEADER = re.compile(r"\[RUN (\d+)(?:, ROUND ([^\]]*))?\]")
#: SuperNode lines after which it stops (or hangs): refusals, give-ups, Flower exit codes.
_TRIGGERS = ("Exit Code:", "Giving up reconnection", "CERTIFICATE_VERIFY_FAILED", "Failed to activate SuperNode")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="join a coordinator with a private data folder (Flower SuperNode)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="(required) the coordinator's address, as covered by its TLS certificate (e.g. coord.example.org:9092)")
    p.add_argument("--data", type=Path, metavar="DIR", help="this client's data folder (required)")
    p.add_argument("--name", default=None, help="name shown by the coordinator (default: the folder manifest's name)")
    p.add_argument("--key", type=Path, default=None, metavar="NAME.key",
                   help="this client's private key (`fedmtl keys create NAME`); required unless --insecure")
    p.add_argument("--ca", type=Path, default=None, metavar="CA.crt",
                   help="the federation's CA certificate (from the coordinator's `fedmtl certs`)")
    p.add_argument("--insecure", action="store_true",
                   help="NO TLS and NO authentication (only against a coordinator started with --insecure)")
    p.add_argument("--max-wait", type=float, default=300.0, metavar="S",
                   help="give up when the coordinator cannot be reached for this many seconds (default 300; "
                        "long enough to ride out a coordinator restart)")
    p.add_argument("--runtime-port", type=int, default=None,
                   help="loopback port of the SuperNode's local Runtime API (default: a free one)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="Flower home and SuperNode log (default: a temporary folder, removed at exit)")
    p.add_argument("--executor", choices=EXECUTORS, default="fork",
                   help="how ClientApps run: 'fork' (default) forks each message's process from one that imported "
                        "torch once; 'flower' uses Flower's SuperExec, a fresh process importing everything per "
                        "message (3-5 s more per message)")
    p.add_argument("--task-poll", type=float, default=None, metavar="S",
                   help="how often the executor asks the SuperNode for a new message to run (default: 0.5 s for "
                        "'fork', which also asks as soon as the SuperNode has received a message; 0.05 s for "
                        "'flower', whose own default is 1 s)")
    p.add_argument("--reply-poll", type=float, default=DEFAULT_REPLY_POLL_S, metavar="S",
                   help=f"how often the SuperNode looks for the ClientApp's reply (default {DEFAULT_REPLY_POLL_S:g} s; "
                        "Flower's own SuperNode always waits 0.5 s: pass 0.5 to keep that)")
    p.add_argument("--allow-suite", action="append", default=[], metavar="SPEC",
                   help="also run this suite when a run config names it ('module:function' or "
                        "'file.py:function'; repeatable). Without it only built-in suites and suites "
                        "installed on this machine (entry points) run: a suite is code this client imports")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--pin-app", action="store_true",
                     help="run only the app bundle built from the fedmtl installed here (same code as this "
                          "machine's): a coordinator running other code gets an error reply, and none of it runs")
    pin.add_argument("--app-hash", action="append", default=[], metavar="SHA256",
                     help="run only app bundles with this SHA-256 (repeatable; `fedmtl client --print-app-hash` "
                          "on a machine with the expected code prints it)")
    p.add_argument("--print-app-hash", action="store_true",
                   help="print the SHA-256 of the app bundle of the fedmtl installed here, and exit")
    p.add_argument("--trusted-entities", type=Path, default=None, metavar="YAML",
                   help="Flower's app verification: run only app bundles signed by one of these entities "
                        "({id: 'ssh-ed25519 KEY'}). Flower signs bundles it serves from Flower Hub only, so "
                        "an app a coordinator submits from its own folder is then refused (docs/security.md)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print only fedmtl's own status lines")
    out.add_argument("--verbose", action="store_true", help="print every line of the SuperNode")
    p.set_defaults(func=run)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str) -> int:
    print(f"fedmtl client: error: {message}", file=sys.stderr, flush=True)
    return 1


def check(args: argparse.Namespace) -> tuple[str, dict[str, Any], dict]:
    """Validate everything before connecting; returns (name, manifest, tasks). Raises ValueError."""
    for flag, value in (("--coordinator", args.coordinator), ("--data", args.data)):
        if value is None:
            raise ValueError(f"{flag} is required")
    try:
        parse_hostport(args.coordinator)
    except ValueError as exc:
        raise ValueError(f"--coordinator: {exc}") from None
    low, high = REPLY_POLL_RANGE_S
    if not low <= args.reply_poll <= high:
        raise ValueError(f"--reply-poll {args.reply_poll:g}: must be between {low:g} and {high:g} seconds "
                         f"({high:g} is Flower's own)")
    try:
        manifest, tasks = read_client_dir(args.data)
    except ClientDataError as exc:
        raise ValueError(f"--data: {exc}") from None
    try:  # a built-in or importable suite: check the tasks against it as the coordinator will
        from tasks.registry import load_suite

        suite = load_suite(str(manifest["suite"]))
    except Exception:  # noqa: BLE001 - a suite only the coordinator knows: it checks on query
        suite = None
    if suite is not None:
        try:
            read_client_dir(args.data, suite=suite)
        except ClientDataError as exc:
            raise ValueError(f"--data: {exc}") from None
    if args.insecure:
        if args.key is not None:
            raise ValueError("--key with --insecure: client authentication needs TLS (drop --insecure and pass --ca)")
    else:
        if args.key is None:
            raise ValueError("TLS and client authentication are on: pass --key NAME.key (create it with "
                             "`fedmtl keys create NAME --out DIR` and register NAME.pub on the coordinator), "
                             "or --insecure against an insecure test coordinator")
        _check_private_key(args.key)
        if args.ca is not None:
            _check_ca(args.ca)
    name = args.name or str(manifest["name"])
    if not name.strip():
        raise ValueError("--name must not be empty")
    for spec in args.allow_suite:
        _check_allowed_suite(spec)
    if args.trusted_entities is not None:
        _check_trusted_entities(args.trusted_entities)
    return name, manifest, tasks


def _check_allowed_suite(spec: str) -> None:
    from client.trust import normalize_suite_spec

    module_part, sep, attr = spec.strip().rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"--allow-suite {spec!r}: expected 'module:function' or 'file.py:function'")
    if module_part.endswith(".py"):
        path = Path(normalize_suite_spec(spec).rpartition(":")[0])
        if not path.is_file():
            raise ValueError(f"--allow-suite {spec!r}: {path} does not exist on this machine")


def _check_trusted_entities(path: Path) -> None:
    """What `flower-supernode --trusted-entities` checks, before anything connects."""
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if not path.is_file():
        raise ValueError(f"--trusted-entities {path}: no such file")
    try:
        entities = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--trusted-entities {path}: not YAML ({exc})") from None
    if not isinstance(entities, dict) or not entities:
        raise ValueError(f"--trusted-entities {path}: expected a mapping {{public key id: 'ssh-ed25519 KEY'}}")
    for key_id, key in entities.items():
        try:
            loaded = load_ssh_public_key(str(key).encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--trusted-entities {path}: {key_id}: not an OpenSSH public key ({exc})") from None
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise ValueError(f"--trusted-entities {path}: {key_id}: Flower needs an Ed25519 key")


def _check_private_key(path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    if not path.is_file():
        raise ValueError(f"--key {path}: no such file")
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except Exception as exc:  # noqa: BLE001 - any parse error
        raise ValueError(f"--key {path}: not an unencrypted OpenSSH private key ({exc}); "
                         "create one with `fedmtl keys create NAME`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"--key {path}: Flower needs an ECDSA key on a NIST curve (`fedmtl keys create` makes one)")


def _check_ca(path: Path) -> None:
    from cryptography import x509

    if not path.is_file():
        raise ValueError(f"--ca {path}: no such file")
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"--ca {path}: not a PEM certificate ({exc})") from None


def installed_app_hash() -> str:
    """SHA-256 of the bundle `fedmtl coordinator` / `simulate` would submit from this machine's fedmtl."""
    import hashlib

    from coordinator.commands.simulate import app_dir
    from launch.bundle import build_bundle

    return hashlib.sha256(build_bundle(app_dir())).hexdigest()


def _app_hashes(args: argparse.Namespace) -> list[str]:
    if args.pin_app:
        return [installed_app_hash()]
    out = []
    for h in args.app_hash:
        h = h.strip().lower()
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise ValueError(f"--app-hash {h!r}: expected a SHA-256 in hex (64 characters)")
        out.append(h)
    return out


def _task_poll(args: argparse.Namespace) -> float | None:
    """--task-poll, or the executor's default: the fork server's own, 0.05 s for Flower's SuperExec."""
    if args.task_poll is not None or args.executor == "fork":
        return args.task_poll
    return 0.05


def run(args: argparse.Namespace) -> int:
    if args.print_app_hash:
        print(installed_app_hash())
        return 0
    fingerprint = folder_fingerprint(args.data)  # before validating: see client/data.py
    name, _manifest, tasks = check(args)
    app_hashes = _app_hashes(args)
    if args.insecure:
        print(insecure_banner("CLIENT"), file=sys.stderr, flush=True)
    elif args.ca is None:
        _say("fedmtl client: no --ca given: the coordinator's certificate is checked against this system's "
             "trusted CAs (a private federation CA is not among them)")
    summary = ", ".join(f"{t}:{d.num_train}" for t, d in sorted(tasks.items()))
    security = "INSECURE" if args.insecure else f"TLS, key {args.key.name}"
    _say(f"fedmtl client: {name} ({summary} training examples) -> coordinator {args.coordinator} ({security})")
    if args.allow_suite:
        _say(f"fedmtl client: besides built-in and installed suites, runs {', '.join(args.allow_suite)}")
    if args.trusted_entities is not None:
        _say(f"fedmtl client: runs only app bundles signed by an entity of {args.trusted_entities}")
    if app_hashes:
        what = "this machine's fedmtl" if args.pin_app else "--app-hash"
        _say(f"fedmtl client: runs only the app bundle(s) {', '.join(h[:16] for h in app_hashes)}... ({what})")

    tmp = None
    work_dir = args.work_dir
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix=f"fedmtl-client-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-")
        work_dir = Path(tmp)
    node = SuperNodeProcess(SuperNodeConfig(
        superlink=args.coordinator, data_dir=args.data, name=name, work_dir=work_dir,
        private_key=None if args.insecure else args.key, root_certificates=args.ca, insecure=args.insecure,
        max_wait_s=args.max_wait, runtime_port=args.runtime_port, executor=args.executor,
        task_poll_s=_task_poll(args), reply_poll_s=args.reply_poll, env=validated_env(args.data, fingerprint),
        allow_suites=tuple(args.allow_suite),
        trusted_entities=args.trusted_entities, app_hashes=tuple(app_hashes),
    ))
    restore_signals = install_stop_handlers()  # SIGTERM and SIGINT stop the client like Ctrl-C
    follower: LogFollower | None = None
    try:
        node.log_path.parent.mkdir(parents=True, exist_ok=True)
        node.log_path.touch()
        follower = LogFollower(node.log_path, start_at_end=True)
        node.start()
        return _watch(node, follower, args, name)
    finally:
        if follower is not None:
            follower.close()
        node.stop()
        restore_signals()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _watch(node: SuperNodeProcess, follower: LogFollower, args: argparse.Namespace, name: str) -> int:
    """Relay the SuperNode's output; return when it is refused, loses the coordinator, or exits."""
    connected = False
    recent: list[str] = []
    key = str(args.key) if args.key else None
    t0 = time.monotonic()
    checked = t0
    while True:
        line = follower.get(timeout=0.5)
        if line is None or time.monotonic() - checked > 2.0:
            checked = time.monotonic()
            revived = node.revive_executor()
            if revived is not None:
                _say(f"fedmtl client: {revived}")
            if not node.is_running():
                lines = follower.drain()
                for ln in lines:
                    _relay(ln, args)
                recent += lines
                text = "\n".join(recent)
                why = classify_supernode_output(text, args.coordinator, connected=connected, key=key)
                return _fail(why or f"{node.exit_description()}; its last lines:\n" + "\n".join(recent[-15:]))
            if line is None:
                continue
        recent = (recent + [line])[-200:]
        _relay(line, args)
        why = None
        if not connected and "SuperNode ID:" in line:
            connected = True
            node_id = line.rsplit(":", 1)[1].strip()
            _say(f"fedmtl client: {name} joined as node {node_id} ({time.monotonic() - t0:.1f}s); "
                 "serving the coordinator's runs until Ctrl-C")
        if any(t in line for t in _TRIGGERS):
            # The explanation may be spread over the next lines: read them, then look at all together.
            time.sleep(0.5)
            more = follower.drain()
            for ln in more:
                _relay(ln, args)
            recent += more
            why = classify_supernode_output("\n".join(recent[-60:]), args.coordinator, connected=connected, key=key)
        if why is not None:
            return _fail(why)


_last_header: list[str] = [""]


def _relay(line: str, args: argparse.Namespace) -> None:
    """Print a SuperNode line: all with --verbose; a short line per message and anything unusual otherwise."""
    if args.verbose:
        print(line, flush=True)
        return
    header = _RUN_HEADER.search(line)
    if header:
        _last_header[0] = f"run {header.group(1)}" + (f", {header.group(2)}" if header.group(2) else "")
    if args.quiet:
        return
    if "FAB could not be verified" in line or "FAB verification failed" in line:
        print(f"fedmtl client: {_last_header[0]}: refused to run the coordinator's app bundle: it is not signed by "
              "an entity of --trusted-entities (Flower signs only bundles served from Flower Hub); the "
              "coordinator gets an error reply", flush=True)
    if line.startswith("fedmtl: refused app bundle"):
        print(f"fedmtl client: {_last_header[0]}: {line.removeprefix('fedmtl: ')}", flush=True)
        return
    if "UntrustedSuiteError" in line or "does not run the suite" in line:
        print(f"fedmtl client: {_last_header[0]}: refused a suite it does not trust (see the error above; "
              "--allow-suite SPEC allows one)", flush=True)
    received = _RECEIVING.search(line)
    if received:
        print(f"fedmtl client: {_last_header[0]}: {received.group(1)}", flush=True)
        return
    if any(p.search(line) for p in _NOISE):
        return
    print(line, flush=True)

