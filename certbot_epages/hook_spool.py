"""Where the manual hook calls of one certbot run meet: the run's process and its spool file.

certbot starts a process per hook call. The calls of one run find each other by the certbot
process above them (:func:`run_process`), and keep the run's DNS-01 values and their states
(pending, published, removed) in one small file under a directory only this user can enter
(:func:`pending`). Standard library only: a call that only records its value loads nothing
else.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from certbot_epages import proc
from certbot_epages.errors import EpagesError

PENDING_MAX_AGE = 3600.0  # seconds; older entries belong to a run that died
# The states of a DNS-01 value in the spool.
PENDING, PUBLISHED, REMOVED = "pending", "published", "removed"


def spool_dir() -> Path:
    """A directory only this user can enter: $XDG_RUNTIME_DIR, /run, or the temp dir."""
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        base = Path(runtime)
    elif os.access("/run", os.W_OK):
        base = Path("/run")
    else:
        import tempfile

        base = Path(tempfile.gettempdir())
    spool = base / f"certbot-epages-{uid}"
    try:
        spool.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise EpagesError(f"cannot create {spool}: {e.strerror}") from None
    st = os.lstat(spool)  # not stat(): a planted symlink must not pass
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise EpagesError(
            f"{spool}: must be a directory (not a link) of user {uid} with mode 0700; remove it"
        )
    return spool


# Programs that may stand between certbot and the hook (certbot runs hooks with `sh -c`).
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "ash", "busybox", "env"})


def runs_certbot(argv: Sequence[str]) -> bool:
    """Whether a command line runs certbot.

    ``certbot ...``, ``python /path/certbot ...``, ``python -m certbot ...``, or
    ``python -c '...certbot...'`` (how a venv over a distribution's certbot 2.1, which has no
    ``-m certbot``, may run it).
    """
    if any(Path(arg).name == "certbot" for arg in argv[:2]):
        return True
    return len(argv) >= 3 and (
        (argv[1] == "-m" and argv[2] == "certbot") or (argv[1] == "-c" and "certbot" in argv[2])
    )


def choose_run_process(
    ancestors: Sequence[tuple[int, Sequence[str]]],
) -> tuple[int, bool] | None:
    """From (pid, argv) of the hook's ancestors, nearest first: the run's certbot process.

    The nearest one that runs certbot (True: certain), else the nearest that is not a shell
    (False: a guess; a hook run through a wrapper script gets the wrapper's parent).
    """
    for pid, argv in ancestors:
        if runs_certbot(argv):
            return pid, True
    for pid, argv in ancestors:
        if argv and Path(argv[0]).name not in SHELLS:
            return pid, False
    return None


@functools.cache
def run_process() -> tuple[int, bool]:
    """The PID of the certbot process that runs this hook, and whether it surely is certbot.

    It keys the spool: every call of one run finds the others' values, and two certbot runs
    for the same names never share them.
    """
    ancestors: list[tuple[int, list[str]]] = []
    pid: int | None = os.getppid()
    while pid is not None and pid > 1 and len(ancestors) < 8:
        argv, above = proc.command_line(pid), proc.parent(pid)
        if argv is None or above is None:
            break
        ancestors.append((pid, argv))
        pid = above
    return choose_run_process(ancestors) or (os.getppid(), False)


@contextlib.contextmanager
def pending(all_domains: Sequence[str]) -> Iterator[list[dict[str, str | float]]]:
    """The run's DNS-01 values and their states, locked for the block, saved after it."""
    key = f"{run_process()[0]}:{','.join(sorted(all_domains))}"
    run = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = spool_dir() / f"dns01-{run}.json"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise EpagesError(f"cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            entries = json.loads(f.read() or "[]")
        except json.JSONDecodeError:
            entries = []
        now = time.time()
        entries = [e for e in entries if now - float(e.get("time", 0)) < PENDING_MAX_AGE]
        yield entries
        f.seek(0)
        f.truncate()
        f.write(json.dumps(entries))
        # The file is left in place, even when empty: unlinking a file that another hook is
        # waiting to lock would let that hook write into a file nobody reads again.
    sweep(path.parent)


def sweep(spool: Path) -> None:
    """Remove spool files of runs that ended more than PENDING_MAX_AGE ago."""
    cutoff = time.time() - PENDING_MAX_AGE
    for old in spool.glob("dns01-*.json"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
