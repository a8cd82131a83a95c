"""The locks fleet runs share, all ``flock`` files under ``fleet.state_dir``.

::

    sync.lock               one *full* sync at a time (a second one stops at once)
    locks/<lineage>.lock    held while a run re-checks and orders that lineage
    locks/_certbot.lock     one certbot process at a time: certbot itself refuses to run
                            twice on one --config-dir ("Another instance of Certbot is
                            already running")
    locks/_certbot.queue    ``sync --domain`` runs waiting for certbot hold it shared; a full
                            sync takes it exclusively (and lets go) before each certbot run,
                            so a waiting ``sync --domain`` goes next: it never waits behind
                            more than the one certbot run in progress
    locks/_status.lock      a short lock around each read-modify-write of status.json
    ledger.json.lock        likewise for the ledger (:func:`certbot_epages.fleet.limits.update`)

A lineage name starts with a letter or digit, so no lineage's lock file is one of the
``_``-prefixed ones. flock locks belong to the open file: they go with the process, however
it ends, so a killed run leaves nothing held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from certbot_epages.errors import EpagesError

POLL = 0.05  # seconds between attempts: flock offers no wait with a deadline


class LockTimeout(EpagesError):
    """Another process held a lock for longer than this run would wait."""


@contextlib.contextmanager
def held(path: Path, *, shared: bool = False, wait: float = 0.0,
         on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold a flock on ``path`` (created 0600) for the ``with`` block.

    Waits up to ``wait`` seconds (0: not at all) and yields True once held, or False when
    another process still holds it then (nothing is held in that case). ``on_wait`` is
    called once when the lock is not free at the first attempt.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + wait
        first = True
        while not _try(fd, mode):
            if time.monotonic() >= deadline:
                yield False
                return
            if first and on_wait is not None:
                on_wait()
            first = False
            time.sleep(POLL)
        yield True
    finally:
        os.close(fd)


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def must_hold(path: Path, *, shared: bool = False, wait: float,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Like :func:`held`, but raise :class:`LockTimeout` naming ``path`` if it stays busy."""
    with held(path, shared=shared, wait=wait, on_wait=on_wait) as got:
        if not got:
            raise LockTimeout(f"another process held {path} for over {wait:g}s; see which "
                              f"with 'fuser -v {path}'")
        yield


class FleetLocks:
    """The lock files of one ``fleet.state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / "locks"

    def lineage_path(self, lineage: str) -> Path:
        """The lock file of one certbot lineage."""
        from certbot_epages.deploy.lineages import LINEAGE_NAME_RE

        if not LINEAGE_NAME_RE.fullmatch(lineage):
            raise ValueError(f"{lineage!r} is not a lineage name")
        return self.directory / f"{lineage}.lock"

    def lineage(self, lineage: str, *, wait: float = 0.0,
                on_wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[
                    bool]:
        """Hold the lineage's lock (see :func:`held`): True once held, False if busy."""
        return held(self.lineage_path(lineage), wait=wait, on_wait=on_wait)

    @contextlib.contextmanager
    def certbot_turn(self, *, first: bool, wait: float,
                     on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the one-certbot-at-a-time lock; ``first``: go before full syncs waiting.

        Raises :class:`LockTimeout` after ``wait`` seconds.
        """
        queue = self.directory / "_certbot.queue"
        lock = self.directory / "_certbot.lock"
        if first:
            with must_hold(queue, shared=True, wait=wait), \
                    must_hold(lock, wait=wait, on_wait=on_wait):
                yield
            return
        with must_hold(queue, wait=wait, on_wait=on_wait):
            pass  # every sync --domain that queued up has had its turn
        with must_hold(lock, wait=wait, on_wait=on_wait):
            yield

    def status(self, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """The short lock around a read-modify-write of status.json."""
        return must_hold(self.directory / "_status.lock", wait=wait)
