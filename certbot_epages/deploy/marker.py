"""The release marker: how phase 2 tells that nginx runs the new configuration.

Every release holds a server for the reserved name ``epages-release.invalid`` (RFC 2606: it
can never be a shop's) whose certificate is made for the release's *generation* (a hash of its
site configs and the certificates they use). After a reload, a TLS handshake with that name
shows which generation nginx runs, so a reload that did not take effect is caught even when no
shop's certificate changed, and a run can tell whether nginx runs what ``current`` holds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAME = "epages-release.invalid"
SITE = "_epages-release.conf"  # "_" never starts a domain's site file: no collision
CERT_DIR = "_epages-release"  # never a lineage name (those start with a letter or digit)


def generation(sites: Iterable[tuple[str, bytes]], certificates: Iterable[str]) -> str:
    """The generation of what nginx loads.

    A sha256 over every site file's name and content and the fingerprints of the
    certificates the sites use.
    """
    return generation_of_digests(((name, hashlib.sha256(data).digest()) for name, data in sites),
                                 certificates)


def generation_of_digests(sites: Iterable[tuple[str, bytes]], certificates: Iterable[str]) -> str:
    """:func:`generation` from each site file's sha256 digest instead of its content."""
    digest = hashlib.sha256()
    for name, file_digest in sorted(sites):
        digest.update(name.encode() + b"\0" + file_digest)
    for fingerprint in sorted(set(certificates)):
        digest.update(b"cert\0" + fingerprint.encode())
    return digest.hexdigest()


def make(generation_id: str, *, name: str = NAME) -> tuple[bytes, bytes, str]:
    """A self-signed certificate for ``name`` (the marker's) naming ``generation_id``.

    Returns (certificate PEM, key PEM, sha256 fingerprint of the certificate in hex).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"generation {generation_id[:32]}"),
    ])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, key_pem, cert.fingerprint(hashes.SHA256()).hex()
