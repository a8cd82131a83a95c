"""State files written whole and locks held with ``flock``: the one way the package does both.

Standard library only: the manual hooks and the DNS journal use it on their short path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL = 0.05  # seconds between attempts: flock offers no wait with a deadline


def atomic_write(path: Path, data: str | bytes, *, mode: int = 0o600,
                 dir_mode: int | None = 0o777) -> None:
    """Replace ``path`` with ``data`` whole: temporary file, fsync, rename, fsync of the directory.

    Readers see the old content or the new one, never a part, even after a crash. The
    temporary file is created exclusively (never through a planted link) with ``mode``.
    ``dir_mode``: create missing parent directories with it (None: the directory must exist).
    OSError propagates; the temporary file is removed on any failure.
    """
    directory = path.parent
    if dir_mode is not None:
        directory.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the file system allows it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def held(path: Path, *, shared: bool = False, wait: float | None = 0.0,
         on_wait: Callable[[], None] | None = None, poll: float = POLL,
         dir_mode: int | None = 0o700, nofollow: bool = False) -> Iterator[bool]:
    """Hold a flock on ``path`` (created 0600) for the ``with`` block.

    Waits up to ``wait`` seconds (0: not at all; None: as long as it takes) and yields True
    once held, or False when another process still holds it then (nothing is held in that
    case). ``on_wait`` is called once when the lock is not free at the first attempt.
    ``dir_mode``: create missing parent directories with it (None: the directory must exist);
    ``nofollow``: refuse a lock file that is a symbolic link. flock locks belong to the open
    file: they go with the process, however it ends.
    """
    if dir_mode is not None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if _try(fd, mode | fcntl.LOCK_NB):
            yield True
            return
        if on_wait is not None and wait != 0:
            on_wait()
        if wait is None:
            fcntl.flock(fd, mode)
            yield True
            return
        deadline = time.monotonic() + wait
        while not _try(fd, mode | fcntl.LOCK_NB):
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(poll)
        yield True
    finally:
        os.close(fd)


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        return False
    return True
