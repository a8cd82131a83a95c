"""Reading a live release back: its manifest, or what its files say when the manifest is lost."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages.deploy import marker, shared
from certbot_epages.deploy.decide import Base
from certbot_epages.deploy.manifest import FILENAME as MANIFEST
from certbot_epages.deploy.manifest import Manifest, ManifestError, SiteRecord, loads
from certbot_epages.names import legacy_owner


def base_of(release_id: str, local: Path) -> Base:
    """What the live release (mirrored at ``local``) holds, read off its manifest.

    A release whose manifest is lost is read back from its site files; one that served a shared
    config cannot be (its shops are lines of maps), so deploying over it needs ``--force``.
    """
    try:
        data = (local / MANIFEST).read_bytes()
    except OSError:
        problem = f"the live release {release_id} has no readable {MANIFEST}"
    else:
        try:
            return Base(release_id, loads(data, f"release {release_id}'s {MANIFEST}"))
        except ManifestError as e:
            problem = f"{e}; rebuilt what it can from the release's files"
    if (local / "sites" / shared.SITE).is_file():
        return Base(release_id, None, f"{problem}; it serves a shared config, whose shops "
                    "cannot be read back from its files", recover(local), missing=True)
    return Base(release_id, None, problem, recover(local))


_SERVER_NAME = re.compile(rb"^\s*server_name\s+([^;]+);", re.MULTILINE)
_CERT_PATH = re.compile(rb"/certs/([A-Za-z0-9][A-Za-z0-9._-]*)/(?:[0-9a-f]{16}/)?fullchain\.pem")


def recover(local: Path) -> Manifest:
    """A manifest read off a release's site files, for a release whose manifest is lost."""
    sites: dict[str, SiteRecord] = {}
    for path in sorted((local / "sites").glob("*.conf")):
        if path.name in (marker.SITE, shared.SITE):
            continue
        try:
            text = path.read_bytes()
        except OSError:
            continue
        domain = path.name[: -len(".conf")].replace("_wildcard_", "*")
        names_match = _SERVER_NAME.search(text)
        names = tuple(names_match[1].decode(errors="replace").split()) if names_match else ()
        if "~" in path.name and names:  # a shortened name (see names.site_file)
            domain = names[0]
        cert = _CERT_PATH.search(text)
        lineage = cert[1].decode() if cert else ""
        fingerprint = "0" * 64
        if lineage:
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The chain's first certificate (the plural loader needs cryptography 39).
                leaf = x509.load_pem_x509_certificate(
                    (local / "certs" / lineage / "fullchain.pem").read_bytes())
                fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        sites[path.name] = SiteRecord(domain, names or (domain,), legacy_owner(domain),
                                      lineage or "-", fingerprint)
    return Manifest(sites=sites, claims={n: r.owner for r in sites.values() for n in r.names})


def versions_of(release_dir: Path) -> set[str]:
    """The certificate versions a release uses, from its list."""
    try:
        text = (release_dir / shared.VERSIONS).read_text()
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}
