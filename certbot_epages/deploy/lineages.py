"""certbot's lineages (``live/<name>/``): which certificate covers which shop."""

from __future__ import annotations

import contextlib
import marshal
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages import compat
from certbot_epages.errors import EpagesError
from certbot_epages.files import atomic_write
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


def scan(certbot_dir: Path, cache: Path | None = None) -> list[Lineage]:
    """Every readable lineage under ``<certbot_dir>/live``; unreadable ones are skipped.

    ``cache``: a file that keeps what each lineage's certificate said, keyed by the file's
    identity (device, inode, size, modification and change times in ns): a lineage that did
    not change is not parsed again (10,000 lineages take a second to parse). A renewal writes
    a new file that ``cert.pem`` points to, which is a miss.
    """
    live = certbot_dir / "live"
    try:
        entries = sorted(p for p in live.iterdir() if p.is_dir())
    except OSError:
        return []
    kept = _read_scan_cache(cache, str(live)) if cache is not None else {}
    # A file rewritten within the file system's clock tick keeps its time: rows of files
    # changed in the last seconds are not kept, so such a rewrite is never taken as the same.
    settled = _clock() - 2_000_000_000
    found = []
    rows: dict[str, _ScanRow] = {}
    for entry in entries:
        key = _identity(entry)
        if key is None:
            continue  # what load() would refuse: no certificate, or a key file missing
        row = kept.get(entry.name)
        if row is not None and row[0] == key:
            lineage = Lineage(entry.name, entry, row[1], datetime.fromisoformat(row[2]), row[3],
                              datetime.fromisoformat(row[4]) if row[4] else None)
        else:
            try:
                lineage = load(entry)
            except LineageError:
                continue
        found.append(lineage)
        if max(key[3], key[4]) < settled:
            rows[entry.name] = (key, lineage.names, lineage.not_after.isoformat(),
                                lineage.fingerprint,
                                lineage.not_before.isoformat() if lineage.not_before else "")
    if cache is not None and rows != kept:
        with contextlib.suppress(OSError):
            atomic_write(cache, marshal.dumps((_SCAN_VERSION, str(live), rows)), mode=0o600)
    return found


_SCAN_VERSION = 2
_clock = time.time_ns
# identity of cert.pem, names, not_after, fingerprint, not_before ("" if unknown)
_ScanRow = tuple[tuple[int, int, int, int, int], tuple[str, ...], str, str, str]


def _identity(entry: Path) -> tuple[int, int, int, int, int] | None:
    """What identifies a lineage's certificate file (None: it or a key file is missing)."""
    try:
        st = (entry / "cert.pem").stat()
        if not ((entry / "fullchain.pem").is_file() and (entry / "privkey.pem").is_file()):
            return None
    except OSError:
        return None
    # ctime: unlike mtime, no restore (rsync -a, tar, cp -p) can set it back.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_scan_cache(path: Path, live: str) -> dict[str, _ScanRow]:
    """The kept rows of a scan of ``live`` ({} if there are none or they do not read back)."""
    try:
        version, where, rows = marshal.loads(path.read_bytes())
    except (OSError, ValueError, TypeError, EOFError):
        return {}
    if version != _SCAN_VERSION or where != live or type(rows) is not dict:
        return {}
    for row in rows.values():
        if not (type(row) is tuple and len(row) == 5 and type(row[0]) is tuple
                and type(row[1]) is tuple and all(type(n) is str for n in row[1])
                and all(type(v) is str for v in row[2:])):
            return {}
    return rows


def covering(shop: Shop, lineages: Iterable[Lineage] | Index) -> Lineage | None:
    """The lineage for a shop: covers all its names; the one named after it, else the latest."""
    index = lineages if isinstance(lineages, Index) else Index(lineages)
    return index.covering(shop)


class Index:
    """Lineages by the names their certificates hold, so finding a shop's is not a scan.

    A deploy asks for every shop (100,000) among every lineage (10,000): only the lineages
    that cover the shop's domain (by that name, or the wildcard over it) are looked at.
    """

    def __init__(self, lineages: Iterable[Lineage]) -> None:
        self.by_name: dict[str, list[Lineage]] = {}
        self.position: dict[Lineage, int] = {}  # ties go to the first given, as in a scan
        for lin in lineages:
            self.position.setdefault(lin, len(self.position))
            for name in lin.names:
                self.by_name.setdefault(name, []).append(lin)

    def covering(self, shop: Shop) -> Lineage | None:
        """See :func:`covering`."""
        candidates = self.coverers(shop)
        if not candidates:
            return None
        candidates.sort(key=lambda lin: (lin.name == shop.domain, lin.not_after), reverse=True)
        return candidates[0]

    def coverers(self, shop: Shop) -> list[Lineage]:
        """Every lineage that covers all of a shop's names, in the order they were given."""
        domain = shop.domain
        found = list(self.by_name.get(domain, ()))
        if not domain.startswith("*.") and "." in domain:
            found += self.by_name.get(f"*.{domain.split('.', 1)[1]}", ())
        return sorted((lin for lin in dict.fromkeys(found)
                       if all(lin.covers(n) for n in shop.server_names)),
                      key=self.position.__getitem__)
