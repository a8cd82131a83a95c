"""Facts about the machine a run measured on: CPU, memory, versions, load."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any


def _version(argv: list[str], pattern: str = r"[\d][\w.+~:-]*") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    text = (done.stdout + done.stderr).strip()
    m = re.search(pattern, text)
    return m[0] if m else text[:60]


def _dpkg(package: str) -> str:
    return _version(["dpkg-query", "-W", "-f", "${Version}", package], r".+")


def machine() -> dict[str, Any]:
    """CPU, cores, memory, date, versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": model[1].strip() if model else "?",
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem[1]) / 1024 / 1024, 1) if mem else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "certbot-epages": dist("certbot-epages"),
            "certbot": dist("certbot"),
            "certbot-dns-rfc2136": dist("certbot-dns-rfc2136"),
            "dnspython": dist("dnspython"),
            "pebble": _dpkg("pebble"),
            "bind9": _version(["named", "-v"], r"BIND [\d.]+\S*"),
            "nginx": _version(["nginx", "-v"], r"nginx/[\d.]+"),
            "rsync": _version(["rsync", "--version"], r"version [\d.]+"),
            "openssh": _version(["ssh", "-V"], r"OpenSSH_[\w.]+"),
        },
        "load_average_at_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------ results.md

