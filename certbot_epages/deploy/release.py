"""Releases built on the deploy host, one tree per load balancer, before anything is pushed.

A release is the whole managed tree of a load balancer::

    releases/<id>/sites/<domain>.conf
    releases/<id>/certs/<lineage>/fullchain.pem   (0644)
    releases/<id>/certs/<lineage>/privkey.pem     (0600)

Files equal to the previous release's are hard links to them, here and (by rsync's
``--link-dest``) on the load balancers, so a one-domain renewal writes and sends only that
domain's files however many shops there are.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

RELEASE_ID_LENGTH = len("20260101T000000Z-abcd")


def new_id() -> str:
    """A release id that sorts by creation time: ``20261127T141400Z-1a2b``."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{secrets.token_hex(2)}"


def is_release_id(text: str) -> bool:
    """Whether ``text`` looks like an id from :func:`new_id` (safe in paths and commands)."""
    return (
        len(text) == RELEASE_ID_LENGTH
        and text[8] == "T"
        and text[15:17] == "Z-"
        and text.replace("T", "").replace("Z-", "").isalnum()
    )


@dataclass(frozen=True)
class FileSpec:
    """The content of one file of a release: bytes, or a local file to copy, and its mode."""

    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o644
    new: bool = False  # known to differ from the previous release's file: not compared

    def read(self) -> bytes:
        """The file's bytes."""
        if self.data is not None:
            return self.data
        assert self.source is not None
        return self.source.read_bytes()


@dataclass
class Built:
    """A release built locally: where it is, and which of its files differ from the previous."""

    id: str
    path: Path
    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    previous: set[str] = field(default_factory=set)  # the files of the release before
    files: set[str] = field(default_factory=set)  # the files of this release


def files_of(tree: Path) -> set[str]:
    """Relative paths of every file below ``tree``."""
    if not tree.is_dir():
        return set()
    out: set[str] = set()
    for dirpath, _dirs, names in os.walk(tree):
        base = Path(dirpath).relative_to(tree)
        out.update(str(base / n) if str(base) != "." else n for n in names)
    return out


def build(
    releases: Path,
    previous: Path | None,
    files: Mapping[str, FileSpec],
    *,
    keep_previous_files: bool,
    drop: set[str] | None = None,
) -> Built:
    """Build a new release below ``releases``.

    With ``keep_previous_files`` the new release starts as the previous one (minus ``drop``)
    and ``files`` replace or add to it; without, it holds exactly ``files``. A file whose
    content and mode equal the previous release's is hard-linked to it.
    """
    release_id = new_id()
    target = releases / release_id
    tmp = releases / f".{release_id}.tmp"
    tmp.mkdir(parents=True)
    old = files_of(previous) if previous is not None else set()
    wanted = set(files)
    if keep_previous_files:
        wanted |= old - (drop or set())
    built = Built(id=release_id, path=target)
    try:
        for rel in sorted(wanted):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            prev = previous / rel if previous is not None and rel in old else None
            spec = files.get(rel)
            if spec is None or (prev is not None and spec.source == prev
                                and (prev.stat().st_mode & 0o777) == spec.mode):
                assert prev is not None
                os.link(prev, dest)  # the very same file: no need to compare contents
                continue
            data = spec.read()
            if prev is not None and not spec.new and _same(prev, data, spec.mode):
                os.link(prev, dest)
                continue
            _write(dest, data, spec.mode)
            if prev is not None:
                _later_than(dest, prev)
            built.changed.add(rel)
        for directory in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    built.removed = old - wanted
    built.previous = old
    built.files = wanted
    return built


def _same(path: Path, data: bytes, mode: int) -> bool:
    try:
        st = path.stat()
        same_meta = (st.st_mode & 0o777) == mode and st.st_size == len(data)
        return same_meta and path.read_bytes() == data
    except OSError:
        return False


def _later_than(path: Path, prev: Path) -> None:
    """Give a changed file a modification time in a later second than the file it replaces.

    rsync takes a file whose size and time (to the second, with receivers before 3.1.3 or file
    systems without nanoseconds) match the ``--link-dest`` one as unchanged and links the old
    one: a renewed key is as long as the old one, and written within the same second as the
    previous release's it would not be sent. Never earlier than now, at most a second ahead.
    """
    try:
        before = prev.stat().st_mtime_ns // 1_000_000_000
    except OSError:
        return
    now = time.time_ns()
    if now // 1_000_000_000 <= before:
        stamp = (before + 1) * 1_000_000_000
        os.utime(path, ns=(stamp, stamp))


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # regardless of the umask


def prune(releases: Path, keep: int, protect: set[str]) -> list[str]:
    """Delete the oldest releases beyond ``keep``, never one in ``protect``; the ids deleted."""
    if not releases.is_dir():
        return []
    ids = sorted(p.name for p in releases.iterdir() if is_release_id(p.name))
    doomed = [i for i in ids[: max(len(ids) - keep, 0)] if i not in protect]
    for release_id in doomed:
        shutil.rmtree(releases / release_id, ignore_errors=True)
    return doomed
