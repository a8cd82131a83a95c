"""Starting, polling and stopping the sandbox's server processes.

Every process is recorded with its PID and kernel start time, so teardown (possibly from another
process, ``certbot-epages sandbox down``) stops exactly what was started and never a recycled PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from certbot_epages.errors import SandboxError

T = TypeVar("T")


@dataclass(frozen=True)
class Recorded:
    """A started server: name, PID, kernel start time (to detect PID reuse), and its log."""

    name: str
    pid: int
    start_time: int
    log: str


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if the PID is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has stopped; only its parent's wait() is missing
        return None
    return int(fields[19])


def start(name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Recorded:
    """Start ``argv`` in its own session (it outlives the caller), output appended to ``log``."""
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                close_fds=True,
            )
        except OSError as e:
            raise SandboxError(f"cannot start {name} ({argv[0]}): {e.strerror}") from None
    started = _start_time(proc.pid)
    _children[proc.pid] = proc
    return Recorded(name, proc.pid, started if started is not None else -1, str(log))


# Popen objects of processes this process started, so stopping them also reaps them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def alive(rec: Recorded) -> bool:
    """Whether the recorded process still runs (and is the same process, not a reused PID)."""
    child = _children.get(rec.pid)
    if child is not None and child.poll() is not None:
        return False
    return _start_time(rec.pid) == rec.start_time


def stop(records: Sequence[Recorded], timeout: float = 10.0) -> list[str]:
    """SIGTERM every live process, SIGKILL what is left at the deadline; names of the killed."""
    for rec in records:
        if alive(rec):
            _signal(rec, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = []
    for rec in records:
        if alive(rec):
            _signal(rec, signal.SIGKILL)
            killed.append(rec.name)
    deadline = time.monotonic() + 5.0
    while any(alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(0.02)
    for rec in records:
        child = _children.pop(rec.pid, None)
        if child is not None:
            # alive() may have seen the zombie in /proc before poll() reaped it: reap it now.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)
    return killed


def _signal(rec: Recorded, sig: signal.Signals) -> None:
    try:
        # The whole session: nginx's workers and sshd's children go with their parent.
        os.killpg(rec.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        raise SandboxError(f"cannot stop {rec.name} (pid {rec.pid}): {e.strerror}") from None


def wait_until(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    watch: Sequence[Recorded] = (),
    tolerate: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """Poll ``check`` until it returns a value, failing early if a watched process died.

    An exception of a ``tolerate`` type from ``check`` means "not yet" (a readiness probe of a
    server that is still starting); others propagate.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            result = check()
        except tolerate as e:
            result, last_error = None, f"{type(e).__name__}: {e}"
        if result is not None:
            return result
        for rec in watch:
            if not alive(rec):
                raise SandboxError(f"{rec.name} exited while waiting for {what}; see {rec.log}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise SandboxError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def run(argv: list[str]) -> str:
    """Run a setup tool (ssh-keygen, ip) and return its output; SandboxError if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise SandboxError(f"cannot run {argv[0]}: {e.strerror}") from None
    if done.returncode != 0:
        raise SandboxError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout
