"""Reading certbot's lineages with the spool's record of what they said."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from epages_testlib import make_lineage

from certbot_epages.deploy import lineages
from certbot_epages.sandbox.pki import SandboxCA

pytestmark = pytest.mark.unit


def _later(monkeypatch: pytest.MonkeyPatch, seconds: int = 60) -> None:
    """Let the scan's clock run ahead: files written so far count as settled."""
    now = time.time_ns() + seconds * 10**9
    monkeypatch.setattr(lineages, "_clock", lambda: now)


def test_unchanged_lineages_are_not_parsed_again_and_changed_ones_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    certbot_dir, cache = tmp_path / "le", tmp_path / "spool" / "lineages.parsed"
    ca = SandboxCA(tmp_path / "ca")
    for name in ("one.test", "two.test", "three.test"):
        make_lineage(certbot_dir, name, [name, f"www.{name}"], ca)
    _later(monkeypatch)
    plain = lineages.scan(certbot_dir)
    assert lineages.scan(certbot_dir, cache) == plain and cache.stat().st_mode & 0o077 == 0

    parsed: list[str] = []
    real_load = lineages.load

    def load(live: Path) -> lineages.Lineage:
        parsed.append(live.name)
        return real_load(live)

    monkeypatch.setattr(lineages, "load", load)
    assert lineages.scan(certbot_dir, cache) == plain and parsed == []
    # A renewal, a removed key, a new lineage: each is read anew or left out.
    renewed = make_lineage(certbot_dir, "one.test", ["one.test", "www.one.test"], ca)
    (certbot_dir / "live" / "two.test" / "privkey.pem").unlink()
    make_lineage(certbot_dir, "four.test", ["four.test"], ca)
    monkeypatch.setattr(lineages, "_clock", time.time_ns)  # back to now
    found = {lin.name: lin for lin in lineages.scan(certbot_dir, cache)}
    assert sorted(found) == ["four.test", "one.test", "three.test"]
    assert found["one.test"].fingerprint == renewed
    assert sorted(parsed) == ["four.test", "one.test"]
    # Files of the last two seconds (all of them here) are not kept: a rewrite within the
    # file system's clock tick cannot be taken as the same file.
    parsed.clear()
    lineages.scan(certbot_dir, cache)
    assert sorted(parsed) == ["four.test", "one.test", "three.test"]
    # A restore (rsync -a, tar) can set a file's mtime back, never its ctime: a miss.
    _later(monkeypatch, 120)
    lineages.scan(certbot_dir, cache)
    three = certbot_dir / "live" / "three.test" / "cert.pem"
    mtime = three.stat().st_mtime_ns
    three.write_bytes(three.read_bytes())
    os.utime(three, ns=(mtime, mtime))
    parsed.clear()
    lineages.scan(certbot_dir, cache)
    assert parsed == ["three.test"]


def test_a_damaged_record_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certbot_dir, cache = tmp_path / "le", tmp_path / "lineages.parsed"
    make_lineage(certbot_dir, "one.test", ["one.test"], SandboxCA(tmp_path / "ca"))
    _later(monkeypatch)
    expected = lineages.scan(certbot_dir, cache)
    cache.write_bytes(b"\x00garbage")
    assert lineages.scan(certbot_dir, cache) == expected
