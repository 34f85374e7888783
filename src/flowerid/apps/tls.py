"""HTTPS for `serve`: a self-signed certificate made once and kept, or the user's own files, checked up front.

Phones allow a page the live camera only over HTTPS. A self-signed certificate makes the phone
warn once; the SHA-256 fingerprint printed at start lets its owner check that the certificate the
phone shows is this one before accepting it. The certificate is kept under the cache folder
(`$FLOWERID_CACHE/tls/`), so it stays the same from run to run and the phone need not be asked
again, and is made afresh only when it is missing, damaged, near its end or lacks an address
it is now served on. `cryptography` is imported only to make one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_bytes
from ..errors import UsageError

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 397  # the longest a browser accepts for a server certificate
RENEW_DAYS = 30  # made afresh when fewer days than this are left


@dataclass(frozen=True)
class TLSFiles:
    """A certificate and its key, as uvicorn takes them, and what to print about them."""

    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate, AA:BB:... as browsers show it
    self_signed: bool
    made: bool = False  # made by this run


def tls_dir() -> Path:
    from ..backbones.cache import cache_root

    return cache_root() / "tls"


def fingerprint_of(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file, colon-separated upper-case hex."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii", "replace"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _check_pair(cert: Path, key: Path) -> None:
    """Load the pair as the server will; a problem is a UsageError that names the file and the fix."""
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise UsageError(f"the {what} file {path} does not exist; check --cert and --key")
        if not os.access(path, os.R_OK):
            raise UsageError(f"the {what} file {path} cannot be read (permissions); check --cert and --key")
    head = key.read_bytes()[:4096]
    if b"ENCRYPTED" in head:
        raise UsageError(f"the key {key} is protected by a passphrase; give a key file without one")
    if b"-----BEGIN CERTIFICATE-----" not in cert.read_bytes():
        raise UsageError(f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give --cert a .pem file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        why = "the key does not belong to the certificate" if "MISMATCH" in str(exc).upper() else str(exc)
        raise UsageError(
            f"{cert} and {key} cannot serve HTTPS: {why}; give the key made with this certificate"
        ) from None


def given_files(cert: str | os.PathLike, key: str | os.PathLike) -> TLSFiles:
    """The user's own certificate and key (--cert/--key), checked before the server starts."""
    cert, key = Path(cert).expanduser(), Path(key).expanduser()
    _check_pair(cert, key)
    pem = cert.read_bytes()
    return TLSFiles(cert, key, fingerprint_of(pem), self_signed=_is_self_signed(pem))


def _is_self_signed(pem: bytes) -> bool:
    from cryptography import x509

    c = x509.load_pem_x509_certificate(pem)
    return c.issuer == c.subject


def _usable(cert: Path, key: Path, names: set[str]) -> bool:
    """Whether a kept certificate can serve again: it loads with its key, is not near its end, covers `names`."""
    from cryptography import x509

    try:
        _check_pair(cert, key)
        c = x509.load_pem_x509_certificate(cert.read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (UsageError, ValueError, OSError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    left = c.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return names <= have and left > dt.timedelta(days=RENEW_DAYS)


def _make(names: set[str]) -> tuple[bytes, bytes]:
    """A new self-signed P-256 certificate for `names` (host names and IP addresses) and its key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowerid serve (self-signed)")])
    alt: list[x509.GeneralName] = []
    for name in sorted(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Not a CA: Firefox refuses a CA certificate as a server's own (CA_CERT_USED_AS_END_ENTITY).
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digital_signature: an ECDSA key signs the handshake
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def self_signed_files(names: Iterable[str], directory: Path | None = None) -> TLSFiles:
    """The kept self-signed certificate for `names`, made (or made afresh) when it cannot serve them."""
    folder = directory or tls_dir()
    cert, key = folder / CERT_NAME, folder / KEY_NAME
    wanted = {"localhost", "127.0.0.1", "::1", *names}
    made = False
    if not _usable(cert, key, wanted):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)  # the key passes through a world-readable mode while it is written
            cert_pem, key_pem = _make(wanted)
            atomic_write_bytes(key, key_pem)
            os.chmod(key, 0o600)
            atomic_write_bytes(cert, cert_pem)
        except OSError as exc:
            raise UsageError(
                f"cannot keep a certificate in {folder} ({exc.strerror or exc}); "
                "set FLOWERID_CACHE to a writable folder, or give --cert and --key"
            ) from None
        made = True
    return TLSFiles(cert, key, fingerprint_of(cert.read_bytes()), self_signed=True, made=made)


def choose_tls(
    host: str, https: bool = False, cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None
) -> TLSFiles | None:
    """What `--https` or `--cert/--key` ask for: None (plain HTTP), the given pair, or the kept self-signed one."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together: give the certificate and its private key")
    if cert is not None and key is not None:
        return given_files(cert, key)
    if not https:
        return None
    from .announce import reachable_hosts

    return self_signed_files(reachable_hosts(host))
