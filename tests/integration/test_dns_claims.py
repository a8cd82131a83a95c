"""Runs on one host that write the same challenge name, and values left by killed runs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from epages_testlib import certbot, epages, poll, txt_at, verify_chain, write_config

from certbot_epages import config
from certbot_epages.dns.journal import Journal, Run
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

PLACEHOLDER = ".empty"
BIN = Path(sys.executable).parent


def record(sandbox: Sandbox, domain: str) -> str:
    return f"_acme-challenge.{domain}.{sandbox.zones.challenge}."


def journal_of(sandbox: Sandbox) -> Journal:
    settings = config.load(sandbox.config_path)
    assert settings.dns is not None
    return Journal(settings.dns.state_dir, stale_after=settings.dns.stale_after)


@contextlib.contextmanager
def running_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that runs until the block ends: a stand-in for another certbot run."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


def start_certbot(sandbox: Sandbox, output: Path, *args: str) -> subprocess.Popen[str]:
    with open(output, "w") as out:
        return subprocess.Popen(sandbox.certbot_argv(*args), env={**os.environ, **sandbox.env()},
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def test_a_run_waits_while_a_running_run_holds_the_name(sandbox: Sandbox, tmp_path: Path) -> None:
    domain = "d7.custom.test"
    name = record(sandbox, domain)
    journal = journal_of(sandbox)
    output = tmp_path / "certbot.out"
    with running_process() as holder:
        other = Run.of(holder.pid)
        journal.claim([(f"{sandbox.zones.challenge}.", name, "held-elsewhere")], other, timeout=0)
        run = start_certbot(sandbox, output, "certonly", "--authenticator", "epages-dns",
                            "--cert-name", "claimed", "-d", domain)
        poll("certbot to wait for the claim", lambda: True if (
            f"{name} is claimed by certbot run PID {holder.pid}" in output.read_text()) else None,
            timeout=60)
        assert run.poll() is None
        assert txt_at(sandbox.ip.primary, name) <= {PLACEHOLDER}  # nothing written meanwhile
    assert run.wait(120) == 0, output.read_text()
    live = sandbox.certbot_config_dir / "live" / "claimed"
    assert verify_chain(sandbox, live / "fullchain.pem") == [domain]
    # The holder's entry stays until it is stale (its run has ended, but only just).
    assert [e.value for e in journal.entries()] == ["held-elsewhere"]
    journal.forget([(f"{sandbox.zones.challenge}.", name, "held-elsewhere")])


def test_plugin_and_manual_hooks_for_one_name_at_once_both_issue(sandbox: Sandbox,
                                                                  tmp_path: Path) -> None:
    domain = "www.d7.custom.test"
    name = record(sandbox, domain)
    sandbox.hold_transfers(3)  # the first run stays in its propagation wait for 3 s
    try:
        first = start_certbot(sandbox, tmp_path / "first.out", "certonly", "--authenticator",
                              "epages-dns", "--cert-name", "first", "-d", domain)
        poll("the first run's value at the primary",
             lambda: True if txt_at(sandbox.ip.primary, name) - {PLACEHOLDER} else None,
             timeout=60)
        # certbot locks its directories: a second certbot at once has its own (as another
        # tool or another certbot configuration on this host would).
        own = [f"--{kind}-dir={tmp_path / kind}" for kind in ("config", "work", "logs")]
        second = start_certbot(
            sandbox, tmp_path / "second.out", *own, "certonly", "--manual",
            "--preferred-challenges", "dns", "--manual-auth-hook", str(BIN / "manual-auth-hook"),
            "--manual-cleanup-hook", str(BIN / "manual-cleanup-hook"), "--cert-name", "second",
            "-d", domain)
        assert first.wait(120) == 0, (tmp_path / "first.out").read_text()
    finally:
        sandbox.hold_transfers(0)
    assert second.wait(120) == 0, (tmp_path / "second.out").read_text()
    # The second run's auth hook waited for the first run (the certbot process, not a hook).
    assert f"{name} is claimed by certbot run PID {first.pid}" in (
        tmp_path / "second.out").read_text()
    for live in (sandbox.certbot_config_dir / "live" / "first",
                 tmp_path / "config" / "live" / "second"):
        assert verify_chain(sandbox, live / "fullchain.pem") == [domain]
    poll("only the placeholder left", lambda: True if txt_at(sandbox.ip.primary, name)
         == txt_at(sandbox.ip.secondary, name) == {PLACEHOLDER} else None, timeout=20)


def test_values_of_a_killed_run_are_removed_once_stale(sandbox: Sandbox, tmp_path: Path) -> None:
    domain = "d8.custom.test"
    name = record(sandbox, domain)
    sandbox.hold_transfers(4)
    try:
        killed = start_certbot(sandbox, tmp_path / "killed.out", "certonly", "--authenticator",
                               "epages-dns", "--cert-name", "killed", "-d", domain)
        left = poll("the value at the primary",
                    lambda: txt_at(sandbox.ip.primary, name) - {PLACEHOLDER} or None, timeout=60)
        killed.kill()
        killed.wait(10)
    finally:
        sandbox.hold_transfers(0)
    assert left <= txt_at(sandbox.ip.primary, name)  # nothing removed it

    # Not stale yet (dns.stale_after: 3600): it stays.
    done = epages(sandbox, "check", "--clean")
    assert done.returncode == 0 and "nothing left by ended runs" in done.stdout, done.stderr
    assert left <= txt_at(sandbox.ip.primary, name)

    journal = journal_of(sandbox)
    zone = f"{sandbox.zones.challenge}."
    live_name = record(sandbox, "www.d8.custom.test")
    fresh = write_config(sandbox, tmp_path / "epages.yaml", stale_after=0.001)
    with running_process() as holder:
        journal.claim([(zone, live_name, "old-but-running")], Run.of(holder.pid), timeout=0)
        # A later run, for another name, first removes what the killed run left.
        certbot(sandbox, "certonly", "--authenticator", "epages-dns", "--epages-dns-config",
                str(fresh), "--cert-name", "later", "-d", "d9.custom.test")
        assert txt_at(sandbox.ip.primary, name) == {PLACEHOLDER}
        # A value whose run still runs is its own, however old.
        assert [e.value for e in journal.entries()] == ["old-but-running"]
    done = epages(sandbox, "check", "--clean", config=fresh)
    assert done.returncode == 0, done.stderr
    assert f'removed "old-but-running" at {live_name}' in done.stdout
    assert "which has ended" in done.stdout
    assert journal.entries() == []
