"""Helpers for integration tests: polling with deadlines, certbot runs, DNS queries."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from certbot_epages.sandbox.platform import Sandbox

T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``check`` every 20 ms until it returns a value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def txt_at(server: str, name: str, port: int = 53) -> set[str]:
    """TXT strings at ``name`` as ``server`` answers them, asked without recursion."""
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, server, port=port, timeout=2)
    return {
        b"".join(rdata.strings).decode()
        for rrset in reply.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    }


def certbot(
    sandbox: Sandbox, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run certbot against the sandbox; on failure with ``check``, fail showing its output."""
    done = subprocess.run(
        sandbox.certbot_argv(*args),
        env={**os.environ, **sandbox.env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"certbot {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@contextlib.contextmanager
def sandbox_dir() -> Iterator[Path]:
    """A fresh directory for a sandbox, removed afterwards (pytest's tmp_path is mode 0700,
    which nginx workers running as nobody cannot enter)."""
    directory = Path(tempfile.mkdtemp(prefix="certbot-epages-test-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
