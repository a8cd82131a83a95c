"""Whole-file writes and flock locks: the helpers every state file and lock goes through."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from certbot_epages.files import atomic_write, held

pytestmark = pytest.mark.unit


def test_atomic_write_replaces_with_mode_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"
    atomic_write(target, "one\n", dir_mode=0o700)
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    atomic_write(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_atomic_write_never_writes_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "state"
    link.symlink_to(victim)
    atomic_write(link, "new")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == "new"


def test_atomic_write_fails_without_leftovers(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "state", "x", dir_mode=None)
    target = tmp_path / "dir"
    target.mkdir()  # a rename over a directory fails
    with pytest.raises(OSError):
        atomic_write(target, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_held_waits_for_the_holder_or_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    waited: list[bool] = []
    with held(path) as first:
        assert first
        with held(path, wait=0, on_wait=lambda: waited.append(True)) as second:
            assert not second
        assert not waited  # no wait, no notice
        with held(path, wait=0.05) as late:
            assert not late
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_held_without_deadline_blocks_until_released(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    release = threading.Event()
    result: list[bool] = []
    # flock locks belong to the open file, so another open file in this process competes.
    with held(path) as first:
        assert first

        def waiter() -> None:
            with held(path, wait=None, on_wait=release.set) as got:
                result.append(got)

        thread = threading.Thread(target=waiter)
        thread.start()
        assert release.wait(10)  # it found the lock taken
        assert not result
    thread.join(10)
    assert result == [True]


def test_held_can_refuse_a_linked_lock_file(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    link = tmp_path / "x.lock"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), held(link, nofollow=True):
        pass
    with held(link) as got:
        assert got
    assert os.path.islink(link)
