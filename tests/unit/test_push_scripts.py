"""The scripts run on a load balancer: quoting, and the locks they take (run with sh here)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from epages_testlib import poll

from certbot_epages.config import LoadBalancerConfig
from certbot_epages.deploy import push, scripts

pytestmark = pytest.mark.unit


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                          check=False)


def test_a_step_refuses_to_run_once_its_run_no_longer_holds_the_deploy_lock(
    tmp_path: Path,
) -> None:
    root = tmp_path / "it's; touch pwned"  # quotes and separators stay data
    done = _sh(scripts.step(str(root), "echo ran", "host pid 1 run ab"))
    assert done.returncode == scripts.NOT_OURS and "ran" not in done.stdout
    assert "no longer holds the deploy lock" in done.stdout
    assert not (tmp_path / "pwned").exists() and (root / "releases").is_dir()


def test_a_step_runs_while_its_run_holds_the_deploy_lock(tmp_path: Path) -> None:
    root = tmp_path / "lb"
    owner = "host pid 1 run ab"
    holder = subprocess.Popen(["sh", "-c", scripts.script_hold_lock(str(root), owner, 10)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "LOCKED"
        done = _sh(scripts.step(str(root), "echo ran", owner))
        assert done.returncode == 0 and done.stdout.strip() == "ran"
        other = _sh(scripts.step(str(root), "echo ran", "another run"))
        assert other.returncode == scripts.NOT_OURS
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    # The session ended: the lock is free, and the step no longer runs.
    assert _sh(scripts.step(str(root), "echo ran", owner)).returncode == scripts.NOT_OURS


def test_the_test_writes_the_commands_whole_output_to_its_file_first(tmp_path: Path) -> None:
    root = tmp_path / "lb"
    (root / "releases" / "20260101T000000Z-abcd").mkdir(parents=True)
    script = scripts.script_test(str(root), "20260101T000000Z-abcd", None,
                              ["sh", "-c", "echo out; echo err >&2; exit 3"])
    done = _sh(script)
    assert done.returncode == 3
    assert done.stdout.split() == ["out", "err"] and done.stderr == ""
    assert not (root / "current").exists()  # put back: there was no live release


def test_the_versions_listed_are_those_the_workers_group_can_use(tmp_path: Path) -> None:
    import grp
    import os

    root = tmp_path / "lb"
    mine = grp.getgrgid(os.getgid()).gr_name
    versions = {"one": "one.test/0123456789abcdef", "two": "two.test/fedcba9876543210",
                "three": "three.test/0123456789abcdef", "four": "four.test/0123456789abcdef",
                "five": "five.test/0123456789abcdef"}
    for label, version in versions.items():
        (root / "certs" / version).mkdir(parents=True)
        for pem in ("fullchain.pem", "privkey.pem"):
            if label == "three" and pem == "fullchain.pem":
                continue  # a botched restore: the chain is gone
            path = root / "certs" / version / pem
            path.write_text("")
            path.chmod({"four": 0o600, "five": 0o644}.get(label, 0o640))
    (root / "certs" / "one.test" / ".0123456789abcdef.tmp").mkdir()
    listed = _sh(scripts.script_list_versions(str(root), mine))
    assert listed.returncode == 0
    # four.test's key lost its group read bit, five.test's is world-readable: sent again.
    assert sorted(listed.stdout.split()) == [f"./{versions['one']}", f"./{versions['two']}"]
    anyhow = _sh(scripts.script_list_versions(str(root), None))
    assert sorted(anyhow.stdout.split()) == sorted(
        f"./{v}" for k, v in versions.items() if k != "three")
    missing = _sh(scripts.script_list_versions(str(root), "no-such-group-here"))
    assert missing.returncode == scripts.NO_GROUP
    assert _sh(scripts.script_list_versions(str(tmp_path / "none"), None)).returncode == 0


def _local_lb(root: Path) -> LoadBalancerConfig:
    return LoadBalancerConfig(name="lb1", ssh="local", root=str(root))


def test_the_lock_session_reports_what_the_load_balancer_serves(tmp_path: Path) -> None:
    import grp
    import os

    root = tmp_path / "lb"
    live = "20260101T000000Z-abcd"
    (root / "releases" / live).mkdir(parents=True)
    manifest = root / "releases" / live / "manifest.json"
    manifest.write_text('{"sites": {}}')
    (root / "current").symlink_to(f"releases/{live}")
    version = root / "certs" / "one.test" / "0123456789abcdef"
    version.mkdir(parents=True)
    for pem in ("fullchain.pem", "privkey.pem"):
        (version / pem).write_text("")
        (version / pem).chmod(0o640)
    mine = grp.getgrgid(os.getgid()).gr_name
    target = push.Target(_local_lb(root), tmp_path)
    with target.locked("host pid 1 run ab", 10, group=mine):
        truth = target.truth()
    assert truth.live == push.Live(live, exists=True,
                                   manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest())
    assert truth.versions == {"one.test/0123456789abcdef"}
    # The session ended with the block: the lock is free again, and nothing is read without it.
    assert _sh(f"flock -n {root}/.deploy.lock true").returncode == 0
    with pytest.raises(push.PushError, match="without the deploy lock"):
        target.truth()


def test_the_manifest_checksum_recorded_at_go_live_holds_until_the_manifest_changes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lb"
    live = "20260101T000000Z-abcd"
    (root / "releases" / live).mkdir(parents=True)
    manifest = root / "releases" / live / "manifest.json"
    manifest.write_text('{"sites": {}}')
    target = push.Target(_local_lb(root), tmp_path)

    def reported() -> str | None:
        with target.locked("host pid 1 run ab", 10):
            return target.truth().live.manifest_sha256

    recorded = "ab" * 32  # not the manifest's: shows the record is what the session reads
    assert _sh(scripts.script_go_live(str(root), live, ["true"], recorded)).returncode == 0
    assert (root / "current").resolve() == (root / "releases" / live).resolve()
    assert reported() == recorded
    # Changed in place (same size, even the same modification time): hashed again, and kept.
    stat = manifest.stat()
    manifest.write_text('{"sites": []}')
    import os
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    real = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert reported() == real
    assert (root / scripts.MANIFEST_SUM).read_text().endswith(f"|{real}\n")
    # A record of another release, or a damaged one, is not believed either.
    (root / scripts.MANIFEST_SUM).write_text(
        (root / scripts.MANIFEST_SUM).read_text().replace(live, "20260101T000000Z-ffff"))
    assert reported() == real
    (root / scripts.MANIFEST_SUM).write_text(
        (root / scripts.MANIFEST_SUM).read_text().replace("ffff|", "abcd|").replace(real, "z" * 64))
    assert reported() == real
    # A checksum that is not one is never recorded.
    (root / scripts.MANIFEST_SUM).unlink()
    assert _sh(scripts.script_go_live(str(root), live, ["true"], "'; touch pwned")).returncode == 0
    assert not (root / scripts.MANIFEST_SUM).exists() and not (root / "pwned").exists()


def test_the_lock_session_names_a_missing_workers_group(tmp_path: Path) -> None:
    target = push.Target(_local_lb(tmp_path / "lb"), tmp_path)
    with target.locked("host pid 1 run ab", 10, group="no-such-group-here"), \
            pytest.raises(push.PushError, match="there is no group 'no-such-group-here'"):
        target.truth()


def test_the_lock_session_reports_nothing_deployed_yet(tmp_path: Path) -> None:
    target = push.Target(_local_lb(tmp_path / "lb"), tmp_path)
    with target.locked("host pid 1 run ab", 10):
        truth = target.truth()
    assert truth.live == push.Live(None) and truth.versions == frozenset()
    assert (tmp_path / "lb" / "releases").is_dir()


def test_the_test_stops_before_switching_when_the_keys_lack_the_workers_group(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lb"
    (root / "releases" / "20260101T000000Z-abcd").mkdir(parents=True)
    key = root / "certs" / "one.test" / "0123456789abcdef" / "privkey.pem"
    key.parent.mkdir(parents=True)
    key.write_text("")
    script = scripts.script_test(str(root), "20260101T000000Z-abcd", None,
                                 ["sh", "-c", f"touch {tmp_path}/tested"],
                                 group_of=(str(key), "no-such-group-here"))
    done = _sh(script)
    assert done.returncode == scripts.WRONG_GROUP
    assert done.stdout.strip() == key.group()  # the group it has, for the error message
    assert not (tmp_path / "tested").exists() and not (root / "current").exists()


def test_a_changed_file_of_the_same_size_and_second_is_sent_not_linked(tmp_path: Path) -> None:
    """A renewed key is as long as the old one; a deploy within the same second must send it."""
    import os
    import time

    from certbot_epages.deploy import release

    spool = tmp_path / "spool"
    first = release.build(spool, None, {"certs/one.test/privkey.pem": release.FileSpec(
        data=b"old key\n", mode=0o600)}, keep_previous_files=False)
    old_key = first.path / "certs" / "one.test" / "privkey.pem"
    now = time.time_ns()
    os.utime(old_key, ns=(now, now))  # written this very second
    root = tmp_path / "lb"
    target = push.Target(_local_lb(root), tmp_path)
    target.rsync(first.path, first.id, None)
    second = release.build(spool, first.path, {"certs/one.test/privkey.pem": release.FileSpec(
        data=b"new key\n", mode=0o600)}, keep_previous_files=False)
    new_key = second.path / "certs" / "one.test" / "privkey.pem"
    assert new_key.stat().st_mtime_ns // 10**9 > old_key.stat().st_mtime_ns // 10**9
    target.rsync(second.path, second.id, first.id)  # rsync compares times to the second
    assert (root / "releases" / second.id / "certs" / "one.test" / "privkey.pem").read_text() \
        == "new key\n"


def test_a_step_lock_that_cannot_be_opened_is_named_and_ends_nothing_silently(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lb"
    (root / ".step.lock").mkdir(parents=True)  # cannot be opened for writing
    target = push.Target(_local_lb(root), tmp_path)
    with target.locked("host pid 1 run ab", 10), \
            pytest.raises(push.PushError, match=r"\.step\.lock: .*[Ii]s a directory"):
        target.truth()


def test_without_waiting_a_taken_lock_is_busy_at_once_and_says_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lb"
    holder = push.Target(_local_lb(root), tmp_path)
    said: list[str] = []
    with holder.locked("first run", 10):
        other = push.Target(_local_lb(root), tmp_path)
        with pytest.raises(push.LockBusy), other.locked("second run", 10, said.append,
                                                        wait=False):
            pass
    assert said == []


def test_a_run_that_finds_one_lock_taken_lets_go_and_waits_in_order(tmp_path: Path) -> None:
    """The all-at-once try gets lb1 but not lb2: it lets go, then waits for both in order."""
    import contextlib
    import threading
    from concurrent.futures import Future
    from types import SimpleNamespace

    from certbot_epages.deploy import deployer

    roots = [tmp_path / "lb1", tmp_path / "lb2"]
    lbs = []
    for index, root in enumerate(roots):
        lb = deployer._Lb(push.Target(
            LoadBalancerConfig(name=f"lb{index + 1}", ssh="local", root=str(root)), tmp_path))
        lb.connected = Future()
        lb.connected.set_result(None)
        lbs.append(lb)
    other = push.Target(_local_lb(roots[1]), tmp_path)
    said: list[str] = []
    run = deployer.Deployer.__new__(deployer.Deployer)
    run.deploy = SimpleNamespace(mode="sites")  # type: ignore[assignment]
    run.say = said.append
    with contextlib.ExitStack() as stack:
        with other.locked("another run", 10):
            waiter = threading.Thread(target=run._lock, args=(lbs, "this run", stack))
            waiter.start()
            poll("the run to wait for lb2", lambda: said or None, timeout=20)
            assert "waiting for another deploy" in said[0] and "another run" in said[0]
            # Waiting for lb2, in order, it holds lb1 (taken again after letting go).
            assert _sh(f"flock -n {roots[0]}/.deploy.lock true").returncode != 0
        waiter.join(timeout=20)
        assert not waiter.is_alive()
        assert all((r / ".deploy.owner").read_text().strip() == "this run" for r in roots)
        assert all(_sh(f"flock -n {r}/.deploy.lock true").returncode != 0 for r in roots)
    assert all(_sh(f"flock -n {r}/.deploy.lock true").returncode == 0 for r in roots)
