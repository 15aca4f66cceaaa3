"""`fedmtl certs`: a private CA and the coordinator's TLS server certificate.

Writes OUT/ca.crt + OUT/ca.key (the CA; kept if they exist) and OUT/server.crt + OUT/server.key
with a subjectAltName for every --host (DNS names and IP addresses clients dial; localhost,
127.0.0.1 and ::1 are always added: the coordinator's own services dial them). Give ca.crt to
every client (`fedmtl client --ca ca.crt`); ca.key and server.key never leave the coordinator.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from launch.security import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    SERVER_CERT_NAME,
    SERVER_KEY_NAME,
    SecurityError,
    certificate_covers,
    certificate_sans,
    create_ca,
    create_server_cert,
    load_ca,
    split_hosts,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="create a CA and the coordinator's TLS certificate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="folder for server.crt, server.key and a copy of ca.crt (and the CA itself unless --ca-dir)")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="a DNS name or IP address clients dial (repeat, or comma-separate); loopback is always added")
    p.add_argument("--ca-dir", type=Path, default=None,
                   help="where the CA (ca.crt, ca.key) lives or is created (default: --out)")
    p.add_argument("--copy-ca-to", type=Path, action="append", default=[], metavar="DIR",
                   help="also copy ca.crt into DIR (e.g. a folder handed to clients); repeatable")
    p.add_argument("--days", type=int, default=825, help="validity of the server certificate in days (default 825)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--if-missing", action="store_true",
                       help="keep an existing server certificate if it covers every --host (for re-run setup jobs)")
    group.add_argument("--force", action="store_true", help="replace an existing server certificate (the CA is kept)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [part.strip() for item in args.host for part in item.split(",") if part.strip()]
    try:
        split_hosts(names)  # refuses 0.0.0.0 and malformed names before anything is written
    except SecurityError as exc:
        raise ValueError(f"--host: {exc}") from None
    out: Path = args.out
    ca_dir: Path = args.ca_dir or out
    if (ca_dir / CA_CERT_NAME).exists() or (ca_dir / CA_KEY_NAME).exists():
        try:
            ca = load_ca(ca_dir)
        except SecurityError as exc:
            raise ValueError(f"existing CA in {ca_dir}: {exc}") from None
        print(f"using the existing CA in {ca_dir}")
    else:
        ca = create_ca(ca_dir)
        print(f"created CA: {ca.cert_path} (give to clients), {ca.key_path} (secret, 0600)")

    cert = out / SERVER_CERT_NAME
    if cert.exists() and args.if_missing:
        missing = [h for h in names if not certificate_covers(cert, h)]
        if missing:
            raise ValueError(f"{cert} exists but does not cover {', '.join(missing)}: use --force to replace it")
        print(f"kept the existing server certificate {cert}")
    else:
        try:
            srv = create_server_cert(ca, out, hostnames=names, ips=[], valid_days=args.days, overwrite=args.force)
        except SecurityError as exc:
            raise ValueError(str(exc)) from None
        print(f"created server certificate: {srv.cert_path}, {srv.key_path} (secret, 0600)")
    if (out / CA_CERT_NAME).resolve() != ca.cert_path.resolve():
        shutil.copyfile(ca.cert_path, out / CA_CERT_NAME)
    for folder in args.copy_ca_to:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.cert_path, folder / CA_CERT_NAME)
        print(f"copied {CA_CERT_NAME} to {folder}")
    dns, ips = certificate_sans(cert)
    print(f"clients may dial: {', '.join(dns + ips)}")
    if not [h for h in dns + ips if h not in ("localhost", "127.0.0.1", "::1")]:
        print("note: only loopback addresses are covered; clients on other machines need --host NAME_OR_IP")
    print(f"next: fedmtl coordinator --tls-dir {out} ...   (server key: {out / SERVER_KEY_NAME})")
    return 0
