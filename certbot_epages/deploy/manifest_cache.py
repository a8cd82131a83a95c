"""The live manifest, parsed once: a renewal reads it back without parsing JSON again.

At 100,000 shops a manifest is ~35 MB of JSON; parsing and checking it takes over a second per
load balancer, in every deploy. A deploy that makes a release live, or that parsed the live
manifest and changed nothing, keeps its records here, keyed by the manifest's sha256 and this
package's version; the next deploy uses them only when the load balancer's live manifest still
has that checksum, so the manifest itself stays the truth.

The file lives in the spool (root's, mode 0700, beside the keys it stages) and is written with
:mod:`marshal`, which rebuilds plain values only and never runs code; anything that does not
read back as expected is a miss, and the manifest is parsed as before.
"""

from __future__ import annotations

import contextlib
import marshal
from pathlib import Path

from certbot_epages import __version__
from certbot_epages.deploy.manifest import Manifest, SiteRecord
from certbot_epages.files import atomic_write

VERSION = f"1 {__version__}"  # what reads back must have been checked by this very code


def load(path: Path, sha256: str | None) -> Manifest | None:
    """The manifest kept at ``path`` if it is the one with ``sha256``, else None."""
    if sha256 is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        version, key, head, claims, rows = marshal.loads(data)
        if version != VERSION or key != sha256:
            return None
        generation, marker, mode, fmt = head
        if type(claims) is not dict or not _texts(mode):
            return None
        sites = {}
        for site, domain, names, owner, lineage, fingerprint, template, values, text in rows:
            if not (_texts(site, domain, owner, lineage, fingerprint, text, *names)
                    and type(names) is tuple and (template is None or type(template) is str)
                    and (values is None or type(values) is dict)):
                return None
            record = SiteRecord(domain, names, owner, lineage, fingerprint, template, values)
            record.__dict__["json_text"] = text  # what json_text would compute, kept
            sites[site] = record
        return Manifest(sites=sites, claims=claims, generation=generation, marker=marker,
                        mode=mode, format=fmt)
    except (ValueError, TypeError, EOFError):
        return None


def _texts(*values: object) -> bool:
    return all(type(v) is str for v in values)


def store(path: Path, sha256: str, manifest: Manifest) -> None:
    """Keep ``manifest`` (whose bytes have ``sha256``) at ``path``; a failure only costs time."""
    rows = [(site, r.domain, r.names, r.owner, r.lineage, r.fingerprint, r.template,
             dict(r.vars) if r.vars is not None else None, r.json_text)
            for site, r in manifest.sites.items()]
    head = (manifest.generation, manifest.marker, manifest.mode, manifest.format)
    data = marshal.dumps((VERSION, sha256, head, dict(manifest.claims), rows))
    with contextlib.suppress(OSError):
        atomic_write(path, data, mode=0o600)


def shared_records(manifest: Manifest, like: Manifest) -> Manifest:
    """``manifest`` with each record that equals one of ``like`` replaced by that one.

    The load balancers' manifests hold equal records; sharing the objects lets each record's
    JSON text be made once for all of them.
    """
    theirs = like.sites
    sites = {}
    for site, record in manifest.sites.items():
        other = theirs.get(site)
        sites[site] = other if other is not None and _same(other, record) else record
    return Manifest(sites=sites, claims=manifest.claims, generation=manifest.generation,
                    marker=manifest.marker, mode=manifest.mode, format=manifest.format)


def _same(one: SiteRecord, other: SiteRecord) -> bool:
    """Equal, with values of the same types (``1 == True`` in Python, not in a config)."""
    if one != other:
        return False
    mine, theirs = one.vars or {}, other.vars or {}
    return all(type(value) is type(theirs[var]) for var, value in mine.items())
