"""Shared mode's renewal fast path: the live release with a few map values changed.

A renewal in shared mode changes, of everything a release holds, only where the renewed
lineages' names point in the certificate map, the certificate list, the renewed sites'
fingerprints in the manifest and the release marker. Building the release anew reads the
inventory, resolves ownership and renders 100,000 shops (seconds at that scale); patching the
live release costs what the renewed lineages hold.

A patch is made only where it is provably what a full build would make. After a *clean* full
deploy (every shop of the inventory shipped as it is, nothing kept, refused or noted) the
deploy keeps a :class:`PatchBase` in the spool: what it was built from (the inputs' digest:
inventory, templates, settings, code), what each load balancer serves (release, manifest
checksum, generation, marker, site files' checksums) and, per lineage, how many manifest
records and certificate map lines it has and which names it is probed by. A renewal patches
only when

- the inputs are the same, and every load balancer serves the release the base describes
  (manifest checksum), running its config (release marker);
- every renewed lineage is in the base with the names it had, serves only shops of its own
  (no shop's certificate could move to or from it: no other lineage covers any of its
  shops, nor it any other's), through the shared server only (no site file of its own);
- the old directory and fingerprint occur in the live files exactly as often as the base
  counted (a tenant's value that happens to hold one makes the count differ).

Anything else takes the full path, which is always right. The result of a patch is a clean
release again, so the next renewal patches too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from certbot_epages import __version__
from certbot_epages.deploy import marker, release, shared
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import FILENAME as MANIFEST
from certbot_epages.deploy.manifest import FORMAT, SiteRecord
from certbot_epages.files import atomic_write

FILENAME = "patch-base"  # in the spool
VERSION = f"2 {__version__}"
CERT_MAP_START = f"map $ssl_server_name {shared.CERT_VAR} {{\n".encode()


class NoPatch(Exception):  # noqa: N818 - not an error: the full path runs
    """The renewal cannot be patched; the message says why (the full build runs instead)."""


@dataclass(frozen=True)
class LineageInfo:
    """One lineage as the base serves it."""

    fingerprint: str
    names: tuple[str, ...]  # the names its certificate holds
    served: tuple[str, ...]  # every name its sites serve
    records: int  # its sites in the manifest
    map_lines: int  # its lines in the certificate map
    probe: tuple[str, ...]  # its names with a line of their own in the map
    own_server: bool  # a site of it has a file of its own


@dataclass(frozen=True)
class LbState:
    """What one load balancer serves, as the base was made."""

    release: str
    manifest_sha256: str
    generation: str
    marker: str
    sites: Mapping[str, str]  # "sites/<file>" -> sha256 of its content, hex
    # The spool's copies as they were when the base was kept: "manifest.json" and each
    # "sites/<file>" -> (device, inode, size, change time in ns; any write moves that): while
    # those are unchanged, the copy is not hashed again.
    stats: Mapping[str, tuple[int, int, int, int]]


@dataclass(frozen=True)
class PatchBase:
    """What a clean release was made from and holds (see the module's docstring)."""

    inputs: str
    lbs: Mapping[str, LbState]
    lineages: Mapping[str, LineageInfo]
    contested: frozenset[str]  # lineages that cover a shop another lineage covers too
    fingerprints: frozenset[str]  # of every site's certificate

    def changes(self, renewed: Sequence[Lineage]) -> list[tuple[Lineage, LineageInfo]]:
        """The renewed lineages whose certificate changed, with what the base knows of each.

        Raises :class:`NoPatch` when any of them cannot be patched.
        """
        out = []
        for lineage in renewed:
            info = self.lineages.get(lineage.name)
            if info is None:
                raise NoPatch(f"lineage {lineage.name} serves no shop of the live release")
            if lineage.name in self.contested:
                raise NoPatch(f"lineage {lineage.name} covers shops another lineage covers too")
            if info.own_server:
                raise NoPatch(f"a shop of lineage {lineage.name} has a server of its own")
            if tuple(sorted(lineage.names)) != info.names:
                raise NoPatch(f"the names of lineage {lineage.name} changed")
            if lineage.fingerprint != info.fingerprint:
                out.append((lineage, info))
        return out


# --- the base ------------------------------------------------------------------------------

def load(path: Path) -> PatchBase | None:
    """The base kept at ``path``, if one reads back as this code wrote it."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        version, inputs, lbs, lineages, contested, fingerprints = marshal.loads(data)
        if version != VERSION or type(inputs) is not str:
            return None
        states = {name: LbState(rel, sha, gen, mark, dict(sites),
                                {k: (int(a), int(b), int(c), int(d))
                                 for k, (a, b, c, d) in stats.items()})
                  for name, (rel, sha, gen, mark, sites, stats) in lbs.items()}
        infos = {name: LineageInfo(fp, tuple(names), tuple(served), int(records),
                                   int(lines), tuple(probe), bool(own))
                 for name, (fp, names, served, records, lines, probe, own) in lineages.items()}
        for state in states.values():
            if not all(type(v) is str for v in (state.release, state.manifest_sha256,
                                                 state.generation, state.marker,
                                                 *state.sites, *state.sites.values())):
                return None
        return PatchBase(inputs, states, infos, frozenset(contested), frozenset(fingerprints))
    except (ValueError, TypeError, EOFError, AttributeError):
        return None


def store(path: Path, base: PatchBase) -> None:
    """Keep ``base`` at ``path`` (mode 0600); a failure only costs the next renewal time."""
    data = marshal.dumps((
        VERSION, base.inputs,
        {name: (s.release, s.manifest_sha256, s.generation, s.marker, dict(s.sites),
                dict(s.stats))
         for name, s in base.lbs.items()},
        {name: (i.fingerprint, i.names, i.served, i.records, i.map_lines, i.probe, i.own_server)
         for name, i in base.lineages.items()},
        sorted(base.contested), sorted(base.fingerprints)))
    with contextlib.suppress(OSError):
        atomic_write(path, data, mode=0o600)


def file_stats(release_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """What :attr:`LbState.stats` records of a release in the spool."""
    out = {}
    for rel in (MANIFEST, *(f"sites/{p.name}" for p in (release_dir / "sites").iterdir())):
        st = (release_dir / rel).stat()
        out[rel] = (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
    return out


def forget(path: Path) -> None:
    """Drop the base: what goes live next is not known to be clean."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def inputs_digest(material: Mapping[str, object]) -> str:
    """A digest of everything a release is built from (JSON-able ``material``)."""
    text = json.dumps({"code": _code(), **material}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _code() -> list[str]:
    """The package's version, the source of the code that builds releases, jinja2's version."""
    import jinja2

    here = Path(__file__).parent.parent
    source = hashlib.sha256()
    for path in sorted([*here.glob("deploy/*.py"), *here.glob("*.py")]):
        with contextlib.suppress(OSError):
            source.update(path.name.encode() + b"\0" + path.read_bytes())
    return [VERSION, source.hexdigest(), jinja2.__version__]


def tree_digest(folders: Iterable[Path]) -> list[tuple[str, str]]:
    """Every file below ``folders``, with the sha256 of its content (templates)."""
    out = []
    seen: set[str] = set()
    for folder in folders:
        for dirpath, dirs, names in os.walk(folder, followlinks=True):  # as jinja2 does
            real = os.path.realpath(dirpath)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            for name in sorted(names):
                path = Path(dirpath) / name
                try:
                    out.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
                except OSError:
                    out.append((str(path), "unreadable"))
    return sorted(out)


def describe_lineages(sites: Mapping[str, SiteRecord], own_files: set[str],
                      certs: Mapping[str, Lineage], shared_conf: bytes,
                      root: str) -> dict[str, LineageInfo]:
    """Per lineage of a release's sites, what :class:`LineageInfo` holds.

    ``own_files``: the sites with a file of their own; ``certs``: certbot's lineages (for the
    names their certificates hold); ``shared_conf``: the release's shared config.
    """
    by_lineage: dict[str, list[SiteRecord]] = {}
    own: set[str] = set()
    for site, record in sites.items():
        by_lineage.setdefault(record.lineage, []).append(record)
        if site in own_files:
            own.add(record.lineage)
    bases = wildcards(sites.values())
    counts = _map_counts(shared_conf)
    out = {}
    for name, records in by_lineage.items():
        fingerprints = {r.fingerprint for r in records}
        lineage = certs.get(name)
        if len(fingerprints) != 1 or lineage is None:
            continue  # not patchable: absent from the base means the full path
        fingerprint = fingerprints.pop()
        directory = shared.cert_dir(root, name, fingerprint) + "/"
        probe: list[str] = []
        for record in records:
            probe.extend(probe_names(record, bases))
        out[name] = LineageInfo(
            fingerprint, tuple(sorted(lineage.names)),
            tuple(sorted({n for r in records for n in r.names})), len(records),
            counts.get(directory, 0), tuple(sorted(set(probe))), name in own)
    return out


def _map_counts(conf: bytes) -> dict[str, int]:
    """How many lines of the certificate map point to each directory."""
    start, end = cert_map_block(conf)
    counts: dict[str, int] = {}
    for line in conf[start:end].decode().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].endswith(";") and parts[0] != "default":
            directory = parts[1][:-1]
            counts[directory] = counts.get(directory, 0) + 1
    return counts


def cert_map_block(conf: bytes) -> tuple[int, int]:
    """Where the certificate map is in a shared config (start, end offsets)."""
    start = conf.find(CERT_MAP_START)
    end = conf.find(b"\n}\n", start) if start >= 0 else -1
    if start < 0 or end < 0:
        raise NoPatch(f"the live {shared.SITE} has no certificate map")
    return start, end + 1


def wildcards(records: Iterable[SiteRecord]) -> dict[str, set[str]]:
    """Per lineage, the bases of the wildcards its sites serve."""
    out: dict[str, set[str]] = {}
    for record in records:
        for name in record.names:
            if name.startswith("*."):
                out.setdefault(record.lineage, set()).add(name[2:])
    return out


def probe_names(record: SiteRecord, bases: Mapping[str, set[str]]) -> list[str]:
    """A record's names that have a line of their own in the certificate map.

    ``bases``: per lineage, the bases of the wildcards its sites serve (riders of one of
    them are probed through it).
    """
    mine = bases.get(record.lineage, set())
    return [n for n in record.names
            if n.startswith("*.") or n.split(".", 1)[-1] not in mine]


# --- the patch -------------------------------------------------------------------------------

@dataclass
class Patched:
    """One load balancer's patched release, before it is built."""

    files: dict[str, release.FileSpec]
    generation: str
    marker: str
    manifest_sha256: str
    sites: dict[str, str]  # "sites/<file>" -> sha256 hex, for the next base


def patch(base_dir: Path, state: LbState, base: PatchBase, root: str,
          changes: Sequence[tuple[Lineage, LineageInfo]]) -> Patched:
    """The files of the release that serves ``changes`` on top of the live ``base_dir``.

    Raises :class:`NoPatch` when the live files are not what the base says.
    """
    manifest = _checked(base_dir, MANIFEST, state.manifest_sha256, state)
    conf_path = f"sites/{shared.SITE}"
    conf = _checked(base_dir, conf_path, state.sites.get(conf_path), state)
    for rel, digest in state.sites.items():
        if rel != conf_path:
            _checked(base_dir, rel, digest, state)
    if {f"sites/{p.name}" for p in (base_dir / "sites").iterdir()} != set(state.sites):
        raise NoPatch(f"the spool's sites/ of release {state.release} changed")
    start, end = cert_map_block(conf)
    versions = set(_read(base_dir / shared.VERSIONS).decode("ascii", "replace").split())
    fingerprints = set(base.fingerprints)
    directories: dict[bytes, bytes] = {}  # a map line's value: old -> new
    swaps: dict[bytes, bytes] = {}  # fingerprint: old -> new
    for lineage, info in changes:
        old = shared.cert_dir(root, lineage.name, info.fingerprint)
        new = shared.cert_dir(root, lineage.name, lineage.fingerprint)
        directories[f"{old}/;".encode()] = f"{new}/;".encode()
        swaps[info.fingerprint.encode()] = lineage.fingerprint.encode()
        version = shared.cert_version(lineage.name, info.fingerprint)
        if version not in versions:
            raise NoPatch(f"the live {shared.VERSIONS} lacks {version}")
        versions.discard(version)
        versions.add(shared.cert_version(lineage.name, lineage.fingerprint))
    fingerprints -= {info.fingerprint for _, info in changes}
    fingerprints |= {lineage.fingerprint for lineage, _ in changes}
    # One pass over each file, however many lineages renewed.
    block, moved = _swap_map_values(conf[start:end], directories)
    manifest, swapped = _swap_fingerprints(manifest, swaps)
    for lineage, info in changes:
        lines = moved.get(f"{shared.cert_dir(root, lineage.name, info.fingerprint)}/;".encode())
        if not info.map_lines or lines != info.map_lines:
            raise NoPatch(f"the certificate map holds {lineage.name}'s directory "
                          f"{lines or 0} times, not {info.map_lines}")
        records = swapped.get(info.fingerprint.encode())
        if records != info.records:
            raise NoPatch(f"the manifest names {lineage.name}'s fingerprint "
                          f"{records or 0} times, not {info.records}")
    conf = conf[:start] + block + conf[end:]
    sites = dict(state.sites)
    sites[conf_path] = hashlib.sha256(conf).hexdigest()
    generation = marker.generation_of_digests(
        ((name, bytes.fromhex(digest)) for name, digest in sites.items()), fingerprints)
    pem, key_pem, marker_fp = marker.make(generation)
    head = (f',"format":{FORMAT},"generation":"{state.generation}","marker":"{state.marker}",'
            f'"mode":"shared","sites":{{').encode()
    if manifest.count(head) != 1:
        raise NoPatch("the live manifest's generation and marker are not where expected")
    manifest = manifest.replace(head, (
        f',"format":{FORMAT},"generation":"{generation}","marker":"{marker_fp}",'
        f'"mode":"shared","sites":{{').encode())
    files = {rel: release.FileSpec(source=base_dir / rel,
                                   mode=(base_dir / rel).stat().st_mode & 0o777)
             for rel in release.files_of(base_dir)}
    # Each of these holds a value that changed (counted above): no need to compare them.
    files[conf_path] = release.FileSpec(data=conf, new=True)
    files[shared.VERSIONS] = release.FileSpec(
        data="".join(f"{v}\n" for v in sorted(versions)).encode(), new=True)
    files[MANIFEST] = release.FileSpec(data=manifest, new=True)
    files[f"certs/{marker.CERT_DIR}/fullchain.pem"] = release.FileSpec(data=pem)
    files[f"certs/{marker.CERT_DIR}/privkey.pem"] = release.FileSpec(data=key_pem, mode=0o600)
    return Patched(files, generation, marker_fp, hashlib.sha256(manifest).hexdigest(), sites)


def _swap_map_values(block: bytes, new: Mapping[bytes, bytes]) -> tuple[bytes, dict[bytes, int]]:
    """The certificate map with the values in ``new`` replaced; how often each one was.

    Only a line's value (after its last space) is looked at: a name never holds a space.
    """
    counts: dict[bytes, int] = {}
    if len(new) <= _FEW:  # a pass per value is quicker than splitting 100,000 lines
        for value, replacement in new.items():
            old_text, new_text = b" " + value + b"\n", b" " + replacement + b"\n"
            counts[value] = block.count(old_text)
            block = block.replace(old_text, new_text)
        return block, counts
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        name, space, value = line.rpartition(b" ")
        swap = new.get(value) if space else None
        if swap is not None:
            lines[i] = name + space + swap
            counts[value] = counts.get(value, 0) + 1
    return b"\n".join(lines), counts


_FINGERPRINT_KEY = b'"fingerprint":"'
_FEW = 4  # renewed lineages up to which a pass per lineage is quicker than one split


def _swap_fingerprints(manifest: bytes,
                       new: Mapping[bytes, bytes]) -> tuple[bytes, dict[bytes, int]]:
    """The manifest with each ``"fingerprint"`` value in ``new`` replaced; how often each was.

    A JSON string cannot hold the key's text unescaped, so every occurrence is a key: a
    record's, or one of a shop's ``vars`` (counted too, so the caller refuses the patch).
    """
    counts: dict[bytes, int] = {}
    if len(new) <= _FEW:
        for value, replacement in new.items():
            old_text = _FINGERPRINT_KEY + value + b'"'
            counts[value] = manifest.count(old_text)
            manifest = manifest.replace(old_text, _FINGERPRINT_KEY + replacement + b'"')
        return manifest, counts
    parts = manifest.split(_FINGERPRINT_KEY)
    for i in range(1, len(parts)):
        part = parts[i]
        old = part[:64]
        swap = new.get(old)
        if swap is not None and part[64:65] == b'"':
            parts[i] = swap + part[64:]
            counts[old] = counts.get(old, 0) + 1
    return _FINGERPRINT_KEY.join(parts), counts


def _checked(base_dir: Path, rel: str, digest: str | None, state: LbState) -> bytes:
    """The spool's copy of a live file, NoPatch unless it is what went live.

    Hashed only if it is not the very file the base recorded (same inode, size, change time).
    """
    path = base_dir / rel
    try:
        with path.open("rb") as f:
            data = f.read()
            st = os.fstat(f.fileno())  # of the bytes read: a write since moved the change time
    except OSError as e:
        raise NoPatch(f"cannot read {path}: {e.strerror or e}") from None
    if state.stats.get(rel) != (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns) \
            and hashlib.sha256(data).hexdigest() != digest:
        raise NoPatch(f"the spool's {rel} of release {state.release} is not what went live")
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise NoPatch(f"cannot read {path}: {e.strerror or e}") from None
