"""certbot's lineages (``live/<name>/``): which certificate covers which shop."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages import compat
from certbot_epages.errors import EpagesError
from certbot_epages.inventory import Shop

LINEAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


class LineageError(EpagesError):
    """A lineage is missing, unreadable, or not where certbot keeps lineages."""


@dataclass(frozen=True)
class Lineage:
    """One certbot lineage: its name, live directory, names, expiry and fingerprint."""

    name: str
    live: Path
    names: tuple[str, ...]
    not_after: datetime
    fingerprint: str  # sha256 of the leaf, hex
    not_before: datetime | None = None

    @property
    def fullchain(self) -> Path:  # noqa: D102
        return self.live / "fullchain.pem"

    @property
    def privkey(self) -> Path:  # noqa: D102
        return self.live / "privkey.pem"

    def covers(self, name: str) -> bool:
        """Whether the certificate is valid for ``name`` (exactly or by a wildcard SAN)."""
        if name in self.names:
            return True
        if name.startswith("*."):
            return False
        parent = name.split(".", 1)[1] if "." in name else ""
        return f"*.{parent}" in self.names


def load(live: Path) -> Lineage:
    """Read one lineage directory (``<certbot_dir>/live/<name>``)."""
    name = live.name
    if not LINEAGE_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise LineageError(f"{live}: not a certbot lineage name")
    try:
        leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    except (OSError, ValueError) as e:
        raise LineageError(f"{live}: cannot read the certificate: {e}") from None
    for required in ("fullchain.pem", "privkey.pem"):
        if not (live / required).is_file():
            raise LineageError(f"{live}: {required} is missing")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sorted(n.lower() for n in san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        names = ()
    return Lineage(
        name=name,
        live=live,
        names=names,
        not_after=compat.not_valid_after(leaf),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        not_before=compat.not_valid_before(leaf),
    )


def from_renewed(path: str, certbot_dir: Path) -> Lineage:
    """The lineage certbot names in ``RENEWED_LINEAGE``: must be ``<certbot_dir>/live/<name>``."""
    live = Path(path)
    if not live.is_absolute() or live.parent.resolve() != (certbot_dir / "live").resolve():
        raise LineageError(
            f"RENEWED_LINEAGE: {path!r} is not a lineage under {certbot_dir / 'live'}; set "
            "deploy.certbot_dir to certbot's --config-dir"
        )
    return load(live)


def scan(certbot_dir: Path) -> list[Lineage]:
    """Every readable lineage under ``<certbot_dir>/live``; unreadable ones are skipped."""
    live = certbot_dir / "live"
    found = []
    try:
        entries = sorted(p for p in live.iterdir() if p.is_dir())
    except OSError:
        return []
    for entry in entries:
        try:
            found.append(load(entry))
        except LineageError:
            continue
    return found


def covering(shop: Shop, lineages: Iterable[Lineage]) -> Lineage | None:
    """The lineage for a shop: covers all its names; the one named after it, else the latest."""
    candidates = [lin for lin in lineages if all(lin.covers(n) for n in shop.server_names)]
    if not candidates:
        return None
    candidates.sort(key=lambda lin: (lin.name == shop.domain, lin.not_after), reverse=True)
    return candidates[0]
