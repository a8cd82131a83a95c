"""What /proc says about a process: its parent, its command line, when it started.

The start time tells a live process from a later one that got the same PID. Standard library
only (the manual hooks use it on their short path).
"""

from __future__ import annotations

from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if the process is gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":  # a zombie has ended; only its parent's wait() is due
        return None
    return int(fields[19])


def parent(pid: int) -> int | None:
    """The PID of the process's parent; None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def command_line(pid: int) -> list[str] | None:
    """The process's arguments (undecodable bytes replaced); None if it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode("utf-8", "replace") for arg in raw.rstrip(b"\0").split(b"\0")]
