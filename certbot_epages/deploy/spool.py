"""The deploy host's spool: a cache of what each load balancer serves, the --defer queue, a lock.

::

    <spool>/deploy.lock                       one deploy at a time on this host
    <spool>/pending/<lineage>.json            lineages recorded by ``deploy-hook --defer``
    <spool>/lbs/<lb>/releases/<id>/           releases built here (or copied from the LB)
    <spool>/lbs/<lb>/live -> releases/<id>    the release the LB served after the last run

The load balancers are the truth: every run compares this cache with what each one serves and
copies the live release back when the two differ (a new deploy host, a restored backup, a
spool deleted by hand). Losing the spool loses nothing but the --defer queue, and
``certbot-epages deploy --all`` ships every certificate that differs from what is served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from certbot_epages.errors import EpagesError
from certbot_epages.files import held

LOCK_TIMEOUT = 600.0
CONTROL_PREFIX = "cbe-ssh-"


class SpoolError(EpagesError):
    """The spool cannot be used (locked by another deploy for too long, not writable)."""


class Spool:
    """The layout of ``deploy.spool``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def pending(self) -> Path:
        """Where ``deploy-hook --defer`` records lineages."""
        return self.root / "pending"

    def lb(self, name: str) -> Path:
        """The cache of one load balancer."""
        return self.root / "lbs" / name

    def releases(self, name: str) -> Path:
        """The releases of one load balancer built here or copied from it."""
        return self.lb(name) / "releases"

    @property
    def scanned(self) -> Path:
        """What certbot's lineages said when last read (:func:`.lineages.scan`)."""
        return self.root / "lineages.parsed"

    @property
    def patch_base(self) -> Path:
        """What a renewal in shared mode may patch (:mod:`.patch`)."""
        return self.root / "patch-base"

    def parsed(self, name: str) -> Path:
        """The live manifest of one load balancer, parsed (:mod:`.manifest_cache`)."""
        return self.lb(name) / "live-manifest.parsed"

    def live(self, name: str) -> Path | None:
        """The release the load balancer served after the last run, if known."""
        link = self.lb(name) / "live"
        if not link.is_symlink():
            return None
        target = self.releases(name) / os.readlink(link).rsplit("/", 1)[-1]
        return target if target.is_dir() else None

    def set_live(self, name: str, release_id: str | None) -> None:
        """Record the release the load balancer serves (None: nothing)."""
        base = self.lb(name)
        base.mkdir(parents=True, exist_ok=True)
        if release_id is None:
            (base / "live").unlink(missing_ok=True)
            return
        tmp = base / ".live.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"releases/{release_id}")
        tmp.replace(base / "live")

    def remove_unfinished(self, name: str) -> None:
        """Delete half-built releases and pulls a killed run left (``.<id>.tmp``, ``.old``)."""
        releases = self.releases(name)
        if releases.is_dir():
            for leftover in [*releases.glob(".*.tmp"), *releases.glob(".*.old")]:
                shutil.rmtree(leftover, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, say: Callable[[str], None] = print,
               timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold ``deploy.lock`` for the ``with`` block; wait up to ``timeout`` for it."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with hold_flock(self.root / "deploy.lock", timeout,
                        on_wait=lambda: say("waiting for another deploy to finish")):
            yield


@contextlib.contextmanager
def hold_flock(path: Path, timeout: float, on_wait: Callable[[], None] | None = None,
               poll: float = 0.1) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600) for the ``with`` block."""
    with held(path, wait=timeout, on_wait=on_wait, poll=poll, dir_mode=None) as got:
        if not got:
            raise SpoolError(f"another process has held {path} for over {timeout:g}s")
        yield


def sha256_of(path: Path) -> str | None:
    """The sha256 of a file in hex, or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@contextlib.contextmanager
def control_dir() -> Iterator[Path]:
    """A short private directory for ssh control sockets, removed afterwards.

    A socket path may have at most 107 bytes, which a spool below a long path would exceed,
    hence the temporary directory; its name carries the PID, so the next run removes what a
    killed one left.
    """
    remove_stale_control_dirs()
    path = Path(tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_control_dirs(tmp: Path | None = None) -> list[Path]:
    """Remove control directories of runs that no longer exist; the ones removed."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{CONTROL_PREFIX}*-*"):
        pid = path.name[len(CONTROL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)) or not path.is_dir() or path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_uid != os.getuid():
                continue
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
