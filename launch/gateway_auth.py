"""Check a Fleet request's SuperNode signature at the gateway, from its headers alone.

Why: the SuperLink verifies a SuperNode's signed headers only *after* it has read and parsed
the whole request body (its `NodeAuthMiddleware` needs the parsed protobuf), so every stranger's
request, however large, used to be buffered twice (gateway, then SuperLink) before anyone looked
at who sent it. Flower's SuperNode signs every Fleet request the same way
(`flwr/supernode/node_auth_http_interceptor.py`): header `flwr-public-key` (base64 of the PEM
public key), `flwr-timestamp` (ISO time) and `flwr-signature` (base64 ECDSA-SHA256 signature of
the timestamp). The gateway can therefore refuse, before reading a single body byte, every
request that is not signed within the time window by one of the coordinator's authorized keys.

This is a pre-filter, strictly narrower than the SuperLink's own check (which still runs and
also binds the key to the node id): the SuperLink stays the authority. The key set is the
coordinator's authorized-keys folder (`*.pub`, OpenSSH lines, what `fedmtl keys register`
writes), re-read when its files change, so a key registered or revoked while the coordinator
runs is honoured within a second.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import logging
import os
import time
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "PUBLIC_KEY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TIMESTAMP_TOLERANCE_S",
    "SYSTEM_TIME_TOLERANCE_S",
    "AuthorizedKeys",
    "AuthVerdict",
    "check_signed_headers",
]

LOG = logging.getLogger("fedmtl.fleet_gateway")

#: Flower's header names and time window (flwr 1.42: `flwr.supercore.constant`,
#: `flwr.common.constant`; tests/test_gateway_limits.py pins them to the installed flwr).
PUBLIC_KEY_HEADER = "flwr-public-key"
SIGNATURE_HEADER = "flwr-signature"
TIMESTAMP_HEADER = "flwr-timestamp"
TIMESTAMP_TOLERANCE_S = 300
SYSTEM_TIME_TOLERANCE_S = 5

#: Header values longer than this are not a key, timestamp or signature Flower would send.
_MAX_HEADER_VALUE = 4096


def _pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """The bytes Flower puts (base64) in `flwr-public-key`: PEM SubjectPublicKeyInfo."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class AuthorizedKeys:
    """The set of public keys the coordinator accepts, read from a folder of `*.pub` files.

    `lookup(pem)` answers from memory; the folder is re-scanned (one `stat` per file) at most
    every `refresh_s` seconds, and re-read only when a file was added, removed or changed. A
    file that does not hold an ECDSA public key is skipped with a warning (once per change).
    """

    def __init__(self, folder: str | os.PathLike[str], refresh_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.refresh_s = refresh_s
        self._keys: dict[bytes, str] = {}  # PEM -> name (file stem)
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._checked = -1e9
        self.reload(force=True)

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = sorted(self.folder.glob("*.pub"))
        except OSError:
            return ()
        out = []
        for p in entries:
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self, force: bool = False) -> bool:
        """Re-read the folder if it changed (or `force`); True if the key set was re-read."""
        self._checked = time.monotonic()
        signature = self._scan()
        if not force and signature == self._signature:
            return False
        keys: dict[bytes, str] = {}
        for name, _mtime, _size in signature:
            path = self.folder / name
            try:
                key = serialization.load_ssh_public_key(path.read_bytes())
            except (OSError, ValueError, UnsupportedAlgorithm) as exc:
                LOG.warning("authorized keys: skipping %s (not an OpenSSH public key: %s)", path, exc)
                continue
            if not isinstance(key, ec.EllipticCurvePublicKey):
                LOG.warning("authorized keys: skipping %s (Flower needs an ECDSA key)", path)
                continue
            keys[_pem(key)] = path.stem
        if self._signature is not None and set(keys.values()) != set(self._keys.values()):
            LOG.info("authorized keys: now %d (%s)", len(keys), ", ".join(sorted(keys.values())) or "none")
        self._keys = keys
        self._signature = signature
        return True

    def lookup(self, pem: bytes) -> str | None:
        """The name of the authorized key with this PEM encoding, or None."""
        if time.monotonic() - self._checked >= self.refresh_s:
            self.reload()
        name = self._keys.get(pem)
        if name is None and time.monotonic() - self._checked >= min(0.2, self.refresh_s):
            # A miss may be a key registered a moment ago: look again (cheap, rate-limited).
            self.reload()
            name = self._keys.get(pem)
        return name

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class AuthVerdict:
    """Outcome of the header check: `ok`, else why not and whether the key is simply unknown."""

    ok: bool
    reason: str = ""
    key_name: str | None = None
    unknown_key: bool = False


def check_signed_headers(headers: Mapping[str, str], keys: AuthorizedKeys,
                         now: _dt.datetime | None = None) -> AuthVerdict:
    """Verify Flower's SuperNode signature headers against the authorized keys.

    Cheap checks first (presence, sizes, base64, key in the set, time window), the ECDSA
    verification last, so a stranger costs a dictionary lookup, not a signature check.
    """
    raw_key = headers.get(PUBLIC_KEY_HEADER)
    raw_sig = headers.get(SIGNATURE_HEADER)
    stamp = headers.get(TIMESTAMP_HEADER)
    if raw_key is None or raw_sig is None or stamp is None:
        return AuthVerdict(False, "no SuperNode signature headers")
    if max(len(raw_key), len(raw_sig), len(stamp)) > _MAX_HEADER_VALUE:
        return AuthVerdict(False, "oversized signature headers")
    try:
        pem = b64decode(raw_key, validate=True)
        signature = b64decode(raw_sig, validate=True)
    except (binascii.Error, ValueError):
        return AuthVerdict(False, "malformed signature headers (not base64)")
    name = keys.lookup(pem)
    if name is None:
        return AuthVerdict(False, "public key not among the coordinator's authorized keys", unknown_key=True)
    try:
        signed_at = _dt.datetime.fromisoformat(stamp)
        if signed_at.tzinfo is None:
            raise ValueError("naive timestamp")
    except ValueError:
        return AuthVerdict(False, "malformed timestamp header", name)
    age = ((now or _dt.datetime.now(tz=_dt.UTC)) - signed_at).total_seconds()
    if not -SYSTEM_TIME_TOLERANCE_S < age < TIMESTAMP_TOLERANCE_S + SYSTEM_TIME_TOLERANCE_S:
        return AuthVerdict(False, f"signed timestamp outside the allowed window (age {age:.0f}s)", name)
    try:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return AuthVerdict(False, "not an ECDSA key", name)
        key.verify(signature, stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm, UnicodeError):
        return AuthVerdict(False, "invalid signature", name)
    return AuthVerdict(True, key_name=name)
