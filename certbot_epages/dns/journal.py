"""What this host wrote into the challenge zones, by which certbot run: claims and cleanup.

Two certbot runs that write the same challenge name at once step on each other (the CA's
resolver may serve the TXT set it cached for the other run). So a run *claims* every name it
writes, from publish until cleanup, and a second run on this host waits for the first. The
claim is the journal itself: a value written and not yet removed, by a run whose process still
runs, holds its name. A run is the certbot process (PID and kernel start time, so a reused PID
is not mistaken for it): the plugin lives in it and the manual hooks are its children, so one
claim spans every hook call of a run.

The journal (``journal.json`` in ``dns.state_dir``) also lets later runs clean up after runs
that were killed: values older than ``dns.stale_after`` whose run is gone are deleted. So are
values whose delete was sent but not confirmed: a delete that timed out may be applied later
and leave the name without any TXT, so cleaning them re-asserts the placeholder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from certbot_epages.errors import DNSError, EpagesError
from certbot_epages.files import atomic_write, held
from certbot_epages.proc import start_time

logger = logging.getLogger(__name__)

JOURNAL = "journal.json"
LOCK = "lock"

#: One value at one name: (zone, record, value), names as absolute DNS names in text.
Written = tuple[str, str, str]


class ClaimError(DNSError):
    """Another run on this host kept a challenge name longer than we could wait."""


class StateError(EpagesError):
    """``dns.state_dir`` cannot be used."""


@dataclass(frozen=True)
class Run:
    """A certbot run: host, PID and the PID's kernel start time (-1 where unknown)."""

    host: str
    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Run:
        """The run of process ``pid`` on this host."""
        started = start_time(pid)
        return cls(socket.gethostname(), pid, -1 if started is None else started)

    def alive(self) -> bool:
        """Whether the run's process still runs. A run of another host counts as running.

        (The state directory is per host; nothing here can tell whether a process elsewhere
        still runs, so its values are never taken for stale.)
        """
        if self.host != socket.gethostname():
            return True
        if self.start < 0:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return start_time(self.pid) == self.start

    def __str__(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"certbot run PID {self.pid}{where}"


@dataclass(frozen=True)
class Entry:
    """One value written: where, what, when, by which run; ``deleting`` once a delete failed."""

    zone: str
    record: str
    value: str
    time: float
    run: Run
    deleting: bool = False

    @property
    def written(self) -> Written:
        """(zone, record, value)."""
        return (self.zone, self.record, self.value)

    def to_json(self) -> dict[str, object]:
        """The entry as stored in the journal."""
        return {
            "zone": self.zone, "record": self.record, "value": self.value, "time": self.time,
            "run": {"host": self.run.host, "pid": self.run.pid, "start": self.run.start},
            "deleting": self.deleting,
        }

    @classmethod
    def from_json(cls, data: object) -> Entry:
        """Read an entry back; ValueError if it is malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
            raise ValueError("not an entry")
        run = data["run"]
        try:
            return cls(
                zone=str(data["zone"]), record=str(data["record"]), value=str(data["value"]),
                time=float(data["time"]),
                run=Run(str(run["host"]), int(run["pid"]), int(run["start"])),
                deleting=bool(data.get("deleting", False)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed entry: {e}") from None


# --- pure ------------------------------------------------------------------------------------


def holders(
    entries: Iterable[Entry], records: Iterable[str], me: Run, alive: Callable[[Run], bool]
) -> dict[str, Entry]:
    """For each of ``records`` held by another running run: its oldest entry there.

    Values whose delete failed hold nothing: their run is done with them.
    """
    wanted = set(records)
    held: dict[str, Entry] = {}
    for entry in sorted(entries, key=lambda e: e.time):
        if entry.record in wanted and not entry.deleting and entry.run != me:
            if entry.record not in held and alive(entry.run):
                held[entry.record] = entry
    return held


def to_clean(
    entries: Iterable[Entry], now: float, stale_after: float, alive: Callable[[Run], bool]
) -> list[Entry]:
    """Entries to delete from DNS now: unconfirmed deletes, and stale values of ended runs."""
    return [
        entry for entry in entries
        if entry.deleting or (now - entry.time > stale_after and not alive(entry.run))
    ]


def without(entries: Iterable[Entry], written: Iterable[Written]) -> list[Entry]:
    """``entries`` minus those for the given values."""
    gone = set(written)
    return [entry for entry in entries if entry.written not in gone]


# --- I/O -------------------------------------------------------------------------------------


class Journal:
    """The journal in one state directory; every change happens under an exclusive lock."""

    def __init__(
        self,
        directory: Path,
        *,
        stale_after: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        alive: Callable[[Run], bool] = Run.alive,
    ) -> None:
        self.directory = directory
        self.stale_after = stale_after
        self._clock = clock
        self._sleep = sleep
        self._alive = alive

    def claim(
        self, written: Sequence[Written], run: Run, *, timeout: float, interval: float = 0.2
    ) -> None:
        """Record ``written`` for ``run``, once no other running run holds any of its names.

        Waits for such runs (re-checking every ``interval``) up to ``timeout`` seconds, then
        raises ClaimError naming the run that holds the name.
        """
        deadline = self._clock() + timeout
        announced: set[Run] = set()
        while True:
            with self._locked() as entries:
                held = holders(entries, (w[1] for w in written), run, self._alive)
                if not held:
                    now = self._clock()
                    entries[:] = without(entries, written) + [
                        Entry(zone, record, value, now, run)
                        for zone, record, value in dict.fromkeys(written)
                    ]
                    return
            record, entry = sorted(held.items())[0]
            if self._clock() >= deadline:
                raise ClaimError(
                    f"{record} is still claimed by {entry.run} (writing since "
                    f"{time.strftime('%H:%M:%S', time.localtime(entry.time))}) after waiting "
                    f"{timeout:.0f} s; two runs writing one challenge name at once make the CA "
                    f"see the other run's values. Let that run finish or stop it; its values "
                    f"are cleaned up by a later run once it is gone"
                )
            if entry.run not in announced:
                announced.add(entry.run)
                logger.warning("%s is claimed by %s; waiting for it to finish (up to %.0f s)",
                               record, entry.run, timeout)
            self._sleep(interval)

    def forget(self, written: Iterable[Written]) -> None:
        """The values are gone from DNS: drop them (and so release their names)."""
        with self._locked() as entries:
            entries[:] = without(entries, written)

    def mark_deleting(self, written: Iterable[Written]) -> None:
        """A delete of these values was sent but not confirmed: a later run finishes it."""
        failed = set(written)
        with self._locked() as entries:
            entries[:] = [replace(e, deleting=True) if e.written in failed else e
                          for e in entries]

    def to_clean(self) -> list[Entry]:
        """What a run should delete now (see :func:`to_clean`)."""
        with self._locked() as entries:
            return to_clean(entries, self._clock(), self.stale_after, self._alive)

    def entries(self) -> list[Entry]:
        """Every entry, oldest first."""
        with self._locked() as entries:
            return sorted(entries, key=lambda e: e.time)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Entry]]:
        self._prepare()
        with held(self.directory / LOCK, wait=None, dir_mode=None, nofollow=True):
            entries = self._load()
            before = list(entries)
            yield entries
            if entries != before:
                self._save(entries)

    def _prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError as e:
            raise StateError(
                f"cannot create dns.state_dir {self.directory}: {e.strerror or e}; create it, "
                f"or set dns.state_dir in epages.yaml to a directory this user may write"
            ) from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StateError(
                f"dns.state_dir {self.directory} must be a directory (not a link) of user "
                f"{os.geteuid()} that no one else may write; fix with: chmod 700 {self.directory}"
            )

    def _load(self) -> list[Entry]:
        path = self.directory / JOURNAL
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError("not a list")
            return [Entry.from_json(item) for item in data]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, UnicodeDecodeError) as e:
            # Failing every run over a damaged journal would be worse than forgetting it.
            aside = path.with_name(f"{JOURNAL}.damaged")
            with contextlib.suppress(OSError):
                path.replace(aside)
            logger.warning("%s is damaged (%s); moved to %s, starting a new journal", path, e,
                           aside)
            return []

    def _save(self, entries: Sequence[Entry]) -> None:
        atomic_write(self.directory / JOURNAL,
                     json.dumps([e.to_json() for e in entries], indent=1), dir_mode=None)
