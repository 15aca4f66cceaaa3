"""TLS certificates and SuperNode keys for a fedmtl federation.

Everything here uses the ``cryptography`` package; no ``openssl`` or
``ssh-keygen`` binary is needed.

* :func:`create_ca` writes a private certificate authority (``ca.crt`` and
  ``ca.key``). Clients receive ``ca.crt`` only (``flower-supernode
  --root-certificates ca.crt``); ``ca.key`` stays with whoever issues server
  certificates.
* :func:`create_server_cert` writes ``server.crt`` / ``server.key`` signed by
  that CA, with a subjectAltName for every host name and IP address clients
  dial. ``127.0.0.1`` and ``localhost`` are always added: the SuperLink's own
  SuperExec dials the Runtime API at ``--host`` (``127.0.0.1`` in the fedmtl
  layout, see ``docs/security.md``) and, without that SAN, dies on "IP address
  mismatch" so runs stay pending for ever.
* :func:`create_client_keypair` writes ``NAME.key`` (OpenSSH private key,
  ECDSA P-384) and ``NAME.pub`` (one-line OpenSSH public key
  ``ecdsa-sha2-nistp384 AAAA... NAME``). These are the formats Flower 1.41
  loads: ``flower-supernode --auth-supernode-private-key NAME.key`` goes
  through ``cryptography``'s ``load_ssh_private_key`` and ``flwr supernode
  register NAME.pub`` through ``load_ssh_public_key`` (NIST curves only).

Private keys are written with mode 0600 and never overwritten unless
``overwrite=True``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import re
from base64 import b64decode, b64encode
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic import write_bytes_atomic

__all__ = [
    "SecurityError",
    "CertificateAuthority",
    "ServerCertificate",
    "ClientKeyPair",
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "SERVER_CERT_NAME",
    "SERVER_KEY_NAME",
    "LOOPBACK_HOSTNAMES",
    "LOOPBACK_IPS",
    "create_ca",
    "load_ca",
    "create_server_cert",
    "create_client_keypair",
    "load_client_public_key",
    "public_key_fingerprint",
    "certificate_sans",
    "certificate_covers",
    "split_hosts",
]

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
SERVER_CERT_NAME = "server.crt"
SERVER_KEY_NAME = "server.key"

#: Always put into server certificates: the SuperExec started by the SuperLink
#: dials the Runtime API on the loopback address, and so does the Fleet gateway.
LOOPBACK_HOSTNAMES: tuple[str, ...] = ("localhost",)
LOOPBACK_IPS: tuple[str, ...] = ("127.0.0.1", "::1")

_CURVE = ec.SECP384R1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# RFC 1123 host name, optionally a wildcard in the left-most label.
_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*\.?$")


class SecurityError(Exception):
    """A certificate or key could not be created, read or used."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA on disk: ``cert_path`` is public, ``key_path`` is secret (0600)."""

    cert_path: Path
    key_path: Path

    def load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Return the parsed CA certificate and private key."""
        return _load_cert(self.cert_path), _load_private_key_pem(self.key_path)


@dataclass(frozen=True)
class ServerCertificate:
    """Server certificate files, ready for ``flower-superlink``.

    ``flower-superlink --ssl-certfile cert_path --ssl-keyfile key_path
    --ssl-ca-certfile ca_cert_path``.
    """

    cert_path: Path
    key_path: Path
    ca_cert_path: Path
    hostnames: tuple[str, ...]
    ips: tuple[str, ...]


@dataclass(frozen=True)
class ClientKeyPair:
    """A SuperNode authentication key pair.

    ``flower-supernode --auth-supernode-private-key private_key_path`` and
    ``flwr supernode register public_key_path <connection>``.
    """

    name: str
    private_key_path: Path
    public_key_path: Path
    fingerprint: str  # "SHA256:..." like ssh-keygen -l


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _prepare_dir(out_dir: str | os.PathLike[str]) -> Path:
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SecurityError(f"Cannot create directory '{path}': {exc}") from exc
    if not path.is_dir():
        raise SecurityError(f"'{path}' is not a directory")
    return path


def _check_free(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise SecurityError(
            "Refusing to overwrite existing file(s): "
            + ", ".join(existing)
            + " (pass overwrite=True / --force to replace them; replacing a CA or "
            "a client key invalidates everything issued for or registered with it)"
        )


def _write_key_and_cert(key_path: Path, key: ec.EllipticCurvePrivateKey, cert_path: Path, cert: x509.Certificate) -> None:
    """PEM files: the private key readable by its owner only, the certificate by anyone."""
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(key_path, pem_key, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` so that the file never exists with wider permissions."""
    try:
        write_bytes_atomic(path, data, mode=mode)
    except OSError as exc:
        raise SecurityError(f"Cannot write '{path}': {exc}") from exc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise SecurityError(f"Certificate file '{path}' does not exist") from exc
    except (OSError, ValueError) as exc:
        raise SecurityError(f"'{path}' is not a PEM X.509 certificate: {exc}") from exc


def _load_private_key_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except FileNotFoundError as exc:
        raise SecurityError(f"Private key file '{path}' does not exist") from exc
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SecurityError(
            f"'{path}' is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecurityError(f"'{path}' is not an elliptic-curve private key")
    return key


def split_hosts(
    names: Iterable[str],
) -> tuple[list[str], list[str]]:
    """Split host names and IP literals (either may come from ``--host``).

    Returns ``(hostnames, ips)``, normalised and de-duplicated, order kept.
    Raises :class:`SecurityError` for something that is neither.
    """
    hostnames: list[str] = []
    ips: list[str] = []
    for raw in names:
        item = str(raw).strip()
        if item.startswith("[") and item.endswith("]"):  # [::1]
            item = item[1:-1]
        if not item:
            raise SecurityError("Empty host name or IP address")
        try:
            ip = str(ipaddress.ip_address(item))
        except ValueError:
            if not _HOSTNAME_RE.match(item) or item.replace(".", "").isdigit():
                raise SecurityError(
                    f"'{raw}' is neither a valid host name nor an IP address"
                ) from None
            name = item.rstrip(".").lower()
            if name not in hostnames:
                hostnames.append(name)
        else:
            if ip in ("0.0.0.0", "::"):
                raise SecurityError(
                    f"'{raw}' is a wildcard bind address, not an address clients "
                    "can dial; give the host's real IP address or DNS name"
                )
            if ip not in ips:
                ips.append(ip)
    return hostnames, ips


# --------------------------------------------------------------------------- #
# CA
# --------------------------------------------------------------------------- #
def create_ca(
    out_dir: str | os.PathLike[str],
    *,
    common_name: str = "fedmtl federation CA",
    valid_days: int = 3650,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Create a private CA: ``out_dir/ca.crt`` (0644) and ``out_dir/ca.key`` (0600).

    Raises :class:`SecurityError` if the files exist and ``overwrite`` is false.
    """
    if valid_days < 1:
        raise SecurityError("valid_days must be >= 1")
    out = _prepare_dir(out_dir)
    cert_path, key_path = out / CA_CERT_NAME, out / CA_KEY_NAME
    _check_free((cert_path, key_path), overwrite)

    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA384())
    )
    _write_key_and_cert(key_path, key, cert_path, cert)
    return CertificateAuthority(cert_path=cert_path, key_path=key_path)


def load_ca(ca_dir: str | os.PathLike[str]) -> CertificateAuthority:
    """Return the CA stored in ``ca_dir`` (``ca.crt`` + ``ca.key``), checked."""
    d = Path(ca_dir).expanduser()
    ca = CertificateAuthority(d / CA_CERT_NAME, d / CA_KEY_NAME)
    _check_ca(ca)
    return ca


def _check_ca(ca: CertificateAuthority) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = ca.load()
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise SecurityError(f"'{ca.cert_path}' is not a CA certificate")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise SecurityError(
            f"CA key '{ca.key_path}' does not belong to CA certificate '{ca.cert_path}'"
        )
    if cert.not_valid_after_utc <= _now():
        raise SecurityError(f"CA certificate '{ca.cert_path}' has expired")
    return cert, key


# --------------------------------------------------------------------------- #
# Server certificate
# --------------------------------------------------------------------------- #
def create_server_cert(
    ca: CertificateAuthority | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    hostnames: Sequence[str],
    ips: Sequence[str],
    *,
    include_loopback: bool = True,
    valid_days: int = 825,
    overwrite: bool = False,
) -> ServerCertificate:
    """Issue ``out_dir/server.crt`` (0644) and ``out_dir/server.key`` (0600).

    ``ca`` is a :class:`CertificateAuthority` or the directory holding
    ``ca.crt``/``ca.key``. Every entry of ``hostnames`` becomes a DNS SAN and
    every entry of ``ips`` an IP SAN (an IP literal given among ``hostnames``
    is moved to the IP SANs: a DNS SAN never matches an IP address). With
    ``include_loopback`` (default) ``localhost``, ``127.0.0.1`` and ``::1`` are
    added, which the coordinator needs: the SuperLink's SuperExec and the
    Fleet gateway both dial the SuperLink at 127.0.0.1.

    ``ca.crt`` is copied next to the server files when ``out_dir`` differs
    from the CA directory, so ``ca_cert_path`` is always in ``out_dir``.
    """
    if isinstance(ca, (str, os.PathLike)):
        ca = load_ca(ca)
    ca_cert, ca_key = _check_ca(ca)
    if valid_days < 1:
        raise SecurityError("valid_days must be >= 1")
    if isinstance(hostnames, str) or isinstance(ips, str):
        raise SecurityError("hostnames and ips must be lists of strings, not a string")

    dns, ip_list = split_hosts([*hostnames, *ips])
    if include_loopback:
        for h in LOOPBACK_HOSTNAMES:
            if h not in dns:
                dns.append(h)
        for ip in LOOPBACK_IPS:
            if ip not in ip_list:
                ip_list.append(ip)
    if not dns and not ip_list:
        raise SecurityError(
            "A server certificate needs at least one host name or IP address"
        )

    out = _prepare_dir(out_dir)
    cert_path, key_path = out / SERVER_CERT_NAME, out / SERVER_KEY_NAME
    ca_copy = out / CA_CERT_NAME
    _check_free((cert_path, key_path), overwrite)

    key = ec.generate_private_key(_CURVE())
    cn = (dns + ip_list)[0]
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_list]
    now = _now()
    not_after = min(now + _dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_key_and_cert(key_path, key, cert_path, cert)
    if ca_copy.resolve() != Path(ca.cert_path).resolve():
        _write(ca_copy, Path(ca.cert_path).read_bytes(), 0o644)
    return ServerCertificate(
        cert_path=cert_path,
        key_path=key_path,
        ca_cert_path=ca_copy,
        hostnames=tuple(dns),
        ips=tuple(ip_list),
    )


def certificate_sans(cert_path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Return ``(dns_names, ip_addresses)`` of a PEM certificate's SAN."""
    cert = _load_cert(Path(cert_path))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        list(san.get_values_for_type(x509.DNSName)),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


def certificate_covers(cert_path: str | os.PathLike[str], host: str) -> bool:
    """Whether a TLS client dialling ``host`` would accept this certificate's SAN.

    ``host`` may be ``HOST`` or ``HOST:PORT`` (``[v6]:PORT``). Use it as a
    pre-flight check before starting a SuperLink or SuperNode, to report a
    clear error instead of Flower's retries or a SuperExec that dies silently.
    """
    h = host.strip()
    if h.startswith("["):
        h = h[1 : h.index("]")]
    elif h.count(":") == 1:
        h = h.rsplit(":", 1)[0]
    dns, ips = certificate_sans(cert_path)
    try:
        return str(ipaddress.ip_address(h)) in ips
    except ValueError:
        pass
    h = h.rstrip(".").lower()
    for name in dns:
        name = name.lower()
        if name == h:
            return True
        if name.startswith("*.") and "." in h and h.split(".", 1)[1] == name[2:]:
            return True
    return False


# --------------------------------------------------------------------------- #
# SuperNode authentication keys
# --------------------------------------------------------------------------- #
def create_client_keypair(
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    overwrite: bool = False,
) -> ClientKeyPair:
    """Create ``out_dir/NAME.key`` (0600) and ``out_dir/NAME.pub`` (0644).

    ECDSA P-384; private key in OpenSSH format (what ``flower-supernode
    --auth-supernode-private-key`` loads), public key as one OpenSSH line with
    ``NAME`` as comment (what ``flwr supernode register`` loads). Equivalent to
    ``ssh-keygen -t ecdsa -b 384 -N "" -C NAME``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SecurityError(
            f"Invalid client name {name!r}: use 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    out = _prepare_dir(out_dir)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    _check_free((priv_path, pub_path), overwrite)

    key = ec.generate_private_key(_CURVE())
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(priv_path, priv, 0o600)
    _write(pub_path, pub + b" " + name.encode("ascii") + b"\n", 0o644)
    return ClientKeyPair(
        name=name,
        private_key_path=priv_path,
        public_key_path=pub_path,
        fingerprint=public_key_fingerprint(pub_path),
    )


def load_client_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """Load an OpenSSH public key the way ``flwr supernode register`` does.

    Raises :class:`SecurityError` with the reason Flower would refuse it.
    """
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise SecurityError(f"Public key file '{p}' does not exist") from exc
    except OSError as exc:
        raise SecurityError(f"Cannot read public key file '{p}': {exc}") from exc
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SecurityError(
            f"'{p}' is not an OpenSSH public key line "
            f"('ecdsa-sha2-nistp384 AAAA... name'): {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SecurityError(
            f"'{p}' holds a {type(key).__name__}; Flower needs an ECDSA key on a "
            "NIST curve (P-384 recommended)"
        )
    if not isinstance(
        key.curve,
        (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1, ec.SECP224R1, ec.SECP192R1),
    ):
        raise SecurityError(f"'{p}': EC curve {key.curve.name} is not a NIST curve")
    return key


def public_key_fingerprint(path: str | os.PathLike[str]) -> str:
    """``SHA256:<base64>`` fingerprint of an OpenSSH public key (as ``ssh-keygen -l``)."""
    load_client_public_key(path)  # validates
    fields = Path(path).expanduser().read_text(encoding="ascii").split()
    blob = b64decode(fields[1])
    return "SHA256:" + b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
