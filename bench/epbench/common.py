"""What every part of the benchmark uses: paths, progress, timed child processes, the clock."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from epages_testlib import poll as _poll

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
WORK = BENCH / "work"
BIN = Path(sys.executable).parent
CHALLENGE_ZONE = "dyn.platform.test"
TIME_LIMIT = 14.75 * 60.0  # make bench must stay under 15 min, with deps/install/pip first
SAFETY = 35.0  # seconds kept free at the end: teardown, results, slower-than-estimated steps

# What each zone issues for: apex + wildcard.
ZONES = {
    "cname": ("shop.test", "*.shop.test"),  # _acme-challenge CNAMEs into dyn.platform.test
    "direct": ("direct.test", "*.direct.test"),  # updated in place, served by the primary only
    "lagzone": ("lag.dyn.platform.test", "*.lag.dyn.platform.test"),  # inside the challenge zone
}


def log(message: str) -> None:
    """Progress for the person waiting (stderr, flushed)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One measured child process."""

    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    maxrss_kb: int

    @property
    def ok(self) -> bool:  # noqa: D102
        return self.returncode == 0


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600.0) -> Run:
    """Run ``argv``; wall time (monotonic) and the peak RSS of its process tree (wait4)."""
    if argv[0].startswith(str(BIN)):
        # Someone may be reinstalling the venv (make install) right now: wait for it.
        poll(f"{argv[0]} to exist", lambda: True if Path(argv[0]).exists() else None, 300)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # a hook's leftover children (sleep) never outlive the step
        out.seek(0)
        err.seek(0)
        return Run(argv, proc.returncode, seconds, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), int(usage.ru_maxrss))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def poll(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """The tests' poll (every 20 ms until a value), with TimeoutError at the deadline."""
    try:
        return _poll(what, check, timeout)
    except AssertionError as e:
        raise TimeoutError(str(e)) from None


def line_starting(text: str, prefix: str) -> str:
    """The first line starting with ``prefix`` (empty if none)."""
    return next((ln for ln in text.splitlines() if ln.startswith(prefix)), "")


def first_line(text: str, *needles: str) -> str:
    """The first line containing any needle, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for needle in needles:
        for line in lines:
            if needle in line:
                return line
    return lines[-1] if lines else ""


class Budget:
    """The benchmark's clock against its time limit."""

    def __init__(self, limit: float) -> None:
        self.started = time.monotonic()
        self.limit = limit

    def elapsed(self) -> float:  # noqa: D102
        return time.monotonic() - self.started

    def left(self) -> float:  # noqa: D102
        return self.limit - self.elapsed()


# ------------------------------------------------------------------------------ DNS helpers

