"""`fedmtl keys`: client key pairs and which of them the coordinator accepts.

  fedmtl keys create NAME [NAME ...] --out DIR      NAME.key (secret, stays on the client), NAME.pub
  fedmtl keys register NAME.pub [...] --run-dir DIR  accept these clients (now, if the coordinator runs,
                                                     and at every later start)
  fedmtl keys list --run-dir DIR                     accepted keys and their nodes' status
  fedmtl keys revoke NAME [...] --run-dir DIR        stop accepting a client (for good: Flower never
                                                     accepts a revoked key again; make a new key pair)

The coordinator accepts exactly the public keys in its authorized-keys folder
(RUN_DIR/authorized_keys by default); `register` copies keys there and, when the coordinator of
RUN_DIR is running, registers them on its SuperLink right away (over its loopback connection:
registration is impossible from any other host).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from launch.flwr_cli import FlwrCliError
from launch.security import SecurityError, create_client_keypair, load_client_public_key, public_key_fingerprint
from launch.service import (
    AUTHORIZED_KEYS_DIR,
    DeploymentError,
    authorized_key_files,
    coordinator_connection,
    key_name,
    read_registered,
    register_keys,
    write_registered,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="client key pairs: create, register with the coordinator, list, revoke",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    c = ksub.add_parser("create", help="create client key pairs (NAME.key + NAME.pub)")
    c.add_argument("names", nargs="+", metavar="NAME", help="client names (letters, digits, . _ -)")
    c.add_argument("--out", required=True,
                   help="folder for the key files; '{name}' in it is replaced by each NAME (one folder per client)")
    c.add_argument("--pub-dir", type=Path, default=None,
                   help="also copy every NAME.pub here (e.g. the coordinator's authorized-keys folder)")
    group = c.add_mutually_exclusive_group()
    group.add_argument("--if-missing", action="store_true", help="keep key pairs that already exist")
    group.add_argument("--force", action="store_true", help="replace existing key pairs (re-register them!)")
    c.set_defaults(func=run_create)

    r = ksub.add_parser("register", help="let clients with these public keys join the coordinator of RUN_DIR")
    r.add_argument("public_keys", nargs="+", type=Path, metavar="NAME.pub")
    _add_run_dir(r)
    r.set_defaults(func=run_register)

    ls = ksub.add_parser("list", help="the keys the coordinator of RUN_DIR accepts")
    _add_run_dir(ls)
    ls.set_defaults(func=run_list)

    rv = ksub.add_parser("revoke", help="stop accepting these clients")
    rv.add_argument("names", nargs="+", metavar="NAME")
    _add_run_dir(rv)
    rv.set_defaults(func=run_revoke)


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, required=True, help="the coordinator's run directory")
    p.add_argument("--authorized-keys", type=Path, default=None,
                   help=f"the coordinator's authorized-keys folder (default RUN_DIR/{AUTHORIZED_KEYS_DIR})")


def _auth_dir(args: argparse.Namespace) -> Path:
    return args.authorized_keys or args.run_dir / AUTHORIZED_KEYS_DIR


def run_create(args: argparse.Namespace) -> int:
    for name in args.names:
        out = Path(args.out.replace("{name}", name))
        priv, pub = out / f"{name}.key", out / f"{name}.pub"
        if args.if_missing and priv.exists() and pub.exists():
            print(f"kept {priv} ({public_key_fingerprint(pub)})")
        else:
            try:
                kp = create_client_keypair(out, name, overwrite=args.force)
            except SecurityError as exc:
                raise ValueError(str(exc)) from None
            print(f"created {kp.private_key_path} (secret, 0600: stays on client {name}) and {kp.public_key_path} "
                  f"({kp.fingerprint})")
        if args.pub_dir is not None:
            args.pub_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pub, args.pub_dir / pub.name)
            print(f"  copied {pub.name} to {args.pub_dir}")
    if args.pub_dir is None:
        print("next: on the coordinator host, fedmtl keys register NAME.pub --run-dir RUN_DIR")
    return 0


def run_register(args: argparse.Namespace) -> int:
    auth = _auth_dir(args)
    registered = read_registered(args.run_dir)
    revoked = {v.get("fingerprint"): name for name, v in registered.items() if v.get("revoked")}
    names = [key_name(p) for p in args.public_keys if p.is_file()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several keys carry the client name(s) {twice}: each client needs its own name")
    for pub in args.public_keys:
        try:
            load_client_public_key(pub)
        except SecurityError as exc:
            raise ValueError(str(exc)) from None
        if public_key_fingerprint(pub) in revoked:
            raise ValueError(f"the key {pub} ({revoked[public_key_fingerprint(pub)]}) was revoked, and Flower never "
                             f"accepts a revoked key again: make a new key pair on the client "
                             f"(`fedmtl keys create {key_name(pub)} --force`) and register its .pub")
        name = key_name(pub)
        target = auth / f"{name}.pub"
        if target.is_file() and pub.resolve() != target.resolve() and \
                public_key_fingerprint(target) != public_key_fingerprint(pub):
            raise ValueError(f"the name {name!r} is already bound to another accepted key ({target}, "
                             f"{public_key_fingerprint(target)}): a second client may not take a registered name. "
                             f"Give this client its own name (`fedmtl keys create OTHER_NAME` on it), or revoke the "
                             f"old key first (`fedmtl keys revoke {name} --run-dir {args.run_dir}`)")
    auth.mkdir(parents=True, exist_ok=True)
    copied = []
    for pub in args.public_keys:
        name = key_name(pub)
        target = auth / f"{name}.pub"
        if pub.resolve() != target.resolve():
            shutil.copyfile(pub, target)
        copied.append(target)
        print(f"accepted {name} ({public_key_fingerprint(target)}): {target}")
    try:
        cli, _info = coordinator_connection(args.run_dir)
    except DeploymentError as exc:
        print(f"{exc}: the keys will be registered when it starts")
        return 0
    for target in copied:
        try:
            for name, _fp, node in register_keys(cli, args.run_dir, [target]):
                print(f"registered {name} on the running coordinator" + (f" (node {node})" if node else ""))
        except DeploymentError as exc:
            target.unlink(missing_ok=True)  # a refused key must not stay accepted (it would fail the next start)
            raise ValueError(str(exc)) from None
    return 0


def run_list(args: argparse.Namespace) -> int:
    registered = read_registered(args.run_dir)
    status: dict[str, str] = {}
    try:
        cli, _info = coordinator_connection(args.run_dir)
        status = {str(n["node-id"]): str(n["status"]) for n in cli.list_supernodes()}
        running = True
    except (DeploymentError, FlwrCliError):
        running = False
    files = authorized_key_files(_auth_dir(args))
    if not files:
        print(f"no client keys in {_auth_dir(args)}")
    for pub in files:
        name = key_name(pub)
        node = (registered.get(name) or {}).get("node_id")
        state = status.get(str(node), "?") if running and node is not None else "-"
        print(f"{name:<20} {public_key_fingerprint(pub)}  node {node if node is not None else '-':<20} {state}")
    if not running:
        print("(the coordinator is not running: node status unknown)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    auth = _auth_dir(args)
    registered = read_registered(args.run_dir)
    try:
        cli, _info = coordinator_connection(args.run_dir)
    except DeploymentError:
        cli = None
    for name in args.names:
        pub = auth / f"{name}.pub"
        if pub.exists():
            pub.unlink()
            print(f"removed {pub}")
        else:
            print(f"{pub} was not there")
        record = registered.get(name) or {}
        node = record.get("node_id")
        if node is None or record.get("revoked"):
            continue
        if cli is None:
            print(f"  the coordinator is not running: it unregisters node {node} when it starts")
            continue
        try:
            cli.unregister_supernode(int(node))
            print(f"  unregistered node {node}")
        except FlwrCliError as exc:
            raise ValueError(f"unregistering node {node} failed: {exc}") from None
        registered[name]["revoked"] = True  # Flower never accepts this key again (see `register`)
        write_registered(args.run_dir, registered)
    return 0
