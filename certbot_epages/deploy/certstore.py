"""Certificate versions for shared mode: staged on the deploy host, checked, never modified.

``<spool>/certs/<lineage>/<fingerprint[:16]>/{fullchain.pem,privkey.pem}`` mirrors what load
balancers hold below ``<root>/certs/``. A version is written once (copied from certbot's
lineage, or from the live release a kept site came with) and checked before anything can
switch to it: it parses, the key matches, it covers the names it serves, it is valid now.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certbot_epages import compat
from certbot_epages.deploy import shared
from certbot_epages.errors import EpagesError

_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*/[0-9a-f]{16}")


class CertificateError(EpagesError):
    """A certificate cannot be deployed: unreadable, wrong key, wrong names, not valid now."""


def check(fullchain: bytes, key: bytes, names: Iterable[str], now: datetime | None) -> str:
    """Check a certificate and its key; its sha256 fingerprint, or CertificateError why not.

    ``now`` None skips the validity check (a certificate that already serves, kept as it is).
    """
    try:
        leaf = x509.load_pem_x509_certificate(fullchain)
    except ValueError as e:
        raise CertificateError(f"the certificate does not parse: {e}") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"the private key does not parse: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise CertificateError("the private key does not belong to the certificate")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        dns_names = set()
    uncovered = [n for n in names if not _covers(dns_names, n)]
    if uncovered:
        raise CertificateError(f"it does not cover {', '.join(sorted(uncovered))}")
    start, end = compat.not_valid_before(leaf), compat.not_valid_after(leaf)
    if now is not None and not start <= now < end:
        raise CertificateError(f"it is valid from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
                               " UTC, not now")
    return leaf.fingerprint(hashes.SHA256()).hex()


def _covers(names: set[str], name: str) -> bool:
    if name in names:
        return True
    parent = name.split(".", 1)[1] if "." in name and not name.startswith("*.") else None
    return parent is not None and f"*.{parent}" in names


class CertStore:
    """The staged certificate versions below ``<spool>/certs``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, version: str) -> Path:
        """The staged directory of a version (``<lineage>/<fp16>``)."""
        if not _VERSION.fullmatch(version):
            raise CertificateError(f"{version!r} is not a certificate version")
        return self.root / version

    def has(self, version: str) -> bool:
        """Whether the version is staged (both files)."""
        directory = self.path(version)
        return (directory / "fullchain.pem").is_file() and (directory / "privkey.pem").is_file()

    def stage(self, lineage: str, fullchain: bytes, key: bytes, names: Iterable[str], *,
              check_validity: bool = True) -> str:
        """Check a certificate and write it as a new version (if new); the version."""
        fingerprint = check(fullchain, key, names,
                            datetime.now(timezone.utc) if check_validity else None)
        version = shared.cert_version(lineage, fingerprint)
        if self.has(version):
            return version
        directory = self.path(version)
        tmp = directory.parent / f".{directory.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, mode=0o700)
        for name, data in (("fullchain.pem", fullchain), ("privkey.pem", key)):
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        tmp.rename(directory)
        return version

    def default(self) -> str:
        """The certificate unknown names get (made once, self-signed, for a name no shop has)."""
        found = self.current_default()
        if found is not None:
            return found
        from certbot_epages.deploy import marker

        pem, key, _ = marker.make("default", name="epages-default.invalid")
        return self.stage(shared.DEFAULT_LINEAGE, pem, key, ["epages-default.invalid"])

    def current_default(self) -> str | None:
        """The default certificate's version, if one was made (see :meth:`default`)."""
        found = sorted(v for v in (f"{shared.DEFAULT_LINEAGE}/{p.parent.name}" for p in
                                   (self.root / shared.DEFAULT_LINEAGE).glob("*/fullchain.pem"))
                       if _VERSION.fullmatch(v) and self.has(v))
        return found[-1] if found else None

    def prune(self, keep: set[str]) -> None:
        """Remove staged versions not in ``keep`` (the default certificate always stays)."""
        if not self.root.is_dir():
            return
        for lineage in self.root.iterdir():
            if lineage.name == shared.DEFAULT_LINEAGE or not lineage.is_dir():
                continue
            for version in lineage.iterdir():
                if f"{lineage.name}/{version.name}" not in keep:
                    shutil.rmtree(version, ignore_errors=True)
            with contextlib.suppress(OSError):
                lineage.rmdir()
