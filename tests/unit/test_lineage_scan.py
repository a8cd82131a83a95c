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


def _age(certbot_dir: Path, name: str, seconds: int = 60) -> None:
    """Make a lineage's files look written a while ago (the scan keeps only settled rows)."""
    past = time.time() - seconds
    for pem in ("cert.pem", "fullchain.pem", "privkey.pem"):
        os.utime(certbot_dir / "live" / name / pem, (past, past))


def test_unchanged_lineages_are_not_parsed_again_and_changed_ones_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    certbot_dir, cache = tmp_path / "le", tmp_path / "spool" / "lineages.parsed"
    ca = SandboxCA(tmp_path / "ca")
    for name in ("one.test", "two.test", "three.test"):
        make_lineage(certbot_dir, name, [name, f"www.{name}"], ca)
        _age(certbot_dir, name)
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
    found = {lin.name: lin for lin in lineages.scan(certbot_dir, cache)}
    assert sorted(found) == ["four.test", "one.test", "three.test"]
    assert found["one.test"].fingerprint == renewed
    assert sorted(parsed) == ["four.test", "one.test"]
    # Just written: not kept, so a rewrite within the clock tick cannot be taken as the same.
    parsed.clear()
    lineages.scan(certbot_dir, cache)
    assert sorted(parsed) == ["four.test", "one.test"]


def test_a_damaged_record_is_ignored(tmp_path: Path) -> None:
    certbot_dir, cache = tmp_path / "le", tmp_path / "lineages.parsed"
    make_lineage(certbot_dir, "one.test", ["one.test"], SandboxCA(tmp_path / "ca"))
    _age(certbot_dir, "one.test")
    expected = lineages.scan(certbot_dir, cache)
    cache.write_bytes(b"\x00garbage")
    assert lineages.scan(certbot_dir, cache) == expected
