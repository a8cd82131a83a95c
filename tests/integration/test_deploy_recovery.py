"""Deploys that go wrong, and the repair command after each: what serves must keep serving.

Every test injects one fault into a real deploy to the sandbox's two nginx load balancers
(reached through sshd and rsync), then runs the repair command the README names
(``certbot-epages deploy --all``) and asserts what every load balancer serves for every name.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from epages_testlib import (
    deploy_config,
    fresh_sandbox,
    http_server,
    make_lineage,
    poll,
    served,
    shop_sites,
    write_inventory,
)

from certbot_epages import config as epages_config
from certbot_epages.deploy import push
from certbot_epages.deploy.deployer import Deployer, DeployError
from certbot_epages.deploy.manifest import loads
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
FIVE = ("one.test", "two.test", "three.test", "four.test", "five.test")


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    """A sandbox of its own: every test breaks its load balancers in its own way."""
    with fresh_sandbox() as sandbox:
        yield sandbox


def _shop(domain: str, upstream: str, **extra: object) -> dict[str, object]:
    return {"domain": domain, "aliases": [f"www.{domain}"], "template": "custom-domain",
            "vars": {"upstream": upstream}, **extra}


def _deploy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "certbot-epages"), "--config", str(config), "deploy", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def _start_deploy(config: Path, *args: str, killed: bool = False) -> subprocess.Popen[str]:
    """A deploy in the background; one to be killed writes nowhere (its ssh children, left
    running, would hold pipes open)."""
    out = subprocess.DEVNULL if killed else subprocess.PIPE
    return subprocess.Popen(
        [str(BIN / "certbot-epages"), "--config", str(config), "deploy", *args],
        stdout=out, stderr=out, text=True,
    )


def _current(sandbox: Sandbox) -> dict[str, str]:
    return {lb.name: os.readlink(Path(lb.root) / "current") for lb in sandbox.lbs}


class Fleet:
    """Five shops with certificates, deployed to both load balancers."""

    def __init__(self, sandbox: Sandbox, domains: tuple[str, ...] = FIVE) -> None:
        self.sandbox = sandbox
        self.base = sandbox.directory / "t"
        self.base.mkdir()
        self.certbot_dir = self.base / "le"
        self.spool = self.base / "spool"
        self.inventory = self.base / "inventory.yaml"
        ca = SandboxCA(self.base)
        self.fingerprints = {d: make_lineage(self.certbot_dir, d, [d, f"www.{d}"], ca)
                             for d in domains}
        self.shops = [_shop(d, sandbox.backend) for d in domains]
        write_inventory(self.inventory, self.shops)
        self.config = deploy_config(sandbox, self.base / "epages.yaml", inventory=self.inventory,
                                    certbot_dir=str(self.certbot_dir), spool=str(self.spool))
        done = _deploy(self.config, "--all")
        assert done.returncode == 0, done.stderr

    def renew(self, domain: str, tag: str) -> str:
        """A new certificate for ``domain``'s lineage; its fingerprint."""
        self.fingerprints[domain] = make_lineage(
            self.certbot_dir, domain, [domain, f"www.{domain}"], SandboxCA(self.base / tag))
        return self.fingerprints[domain]

    def set_lb(self, index: int, **changes: Any) -> None:
        """Change keys of load balancer ``index`` in the config."""
        data = yaml.safe_load(self.config.read_text())
        data["deploy"]["load_balancers"][index].update(changes)
        self.config.write_text(yaml.safe_dump(data))

    def set_deploy(self, **changes: Any) -> None:
        """Change keys of the deploy section in the config."""
        data = yaml.safe_load(self.config.read_text())
        data["deploy"].update(changes)
        self.config.write_text(yaml.safe_dump(data))

    def assert_serves(self, expected: dict[str, str] | None = None) -> None:
        """Every load balancer serves each shop's certificate for both of its names."""
        for domain, fingerprint in (expected or self.fingerprints).items():
            for name in (domain, f"www.{domain}"):
                assert set(served(self.sandbox, name).values()) == {fingerprint}, name

    def gate(self, name: str) -> tuple[Path, Path, list[str]]:
        """A command prefix that signals it started, then waits until released.

        The deploy's own test or reload command is held at a known point, so a test can act
        (kill the deploy, start another) exactly there.
        """
        started, release_file = self.base / f"{name}.started", self.base / f"{name}.go"
        finished = self.base / f"{name}.finished"
        script = (f'touch {started}; while [ ! -e {release_file} ]; do sleep 0.05; done; '
                  f'touch {finished}; [ "$(cat {release_file})" = fail ] && exit 1; exec "$@"')
        return started, release_file, ["sh", "-c", script, name]


def _lb_nginx(sandbox: Sandbox, index: int, *args: str) -> list[str]:
    return sandbox.nginx_argv(sandbox.lbs[index], *args)


# --------------------------------------------------------------------------- lost deploy state


def test_a_lost_spool_loses_nothing_that_serves(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    shutil.rmtree(fleet.spool)  # a new deploy host, a restored backup
    # one.test becomes invalid, two.test asks for an alias no certificate covers yet,
    # three.test's certificate was renewed meanwhile: only that may change.
    fleet.shops[0]["vars"] = {"upstream": "127.0.0.1:80;"}
    fleet.shops[1]["aliases"] = ["www.two.test", "new.two.test"]
    write_inventory(fleet.inventory, fleet.shops)
    renewed = fleet.renew("three.test", "renewal")
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    assert "copied it from the load balancer" in done.stdout
    assert "inventory entry 0 (one.test)" in done.stdout
    assert "two.test: no certificate" in done.stdout
    fleet.assert_serves()
    assert set(served(platform, "three.test").values()) == {renewed}
    for lb in platform.lbs:
        assert shop_sites(lb.root) == sorted(f"{d}.conf" for d in FIVE)


def test_a_truncated_inventory_after_a_lost_spool_removes_nothing_without_force(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    before = _current(platform)
    shutil.rmtree(fleet.spool)
    write_inventory(fleet.inventory, fleet.shops[:1])
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "would remove 4 of 5 sites" in done.stderr and "--force" in done.stderr
    assert _current(platform) == before
    fleet.assert_serves()


def test_a_partial_deploy_after_a_lost_spool_builds_on_what_the_lbs_serve(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    shutil.rmtree(fleet.spool)
    renewed = fleet.renew("two.test", "renewal")
    done = _deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()
    assert set(served(platform, "two.test").values()) == {renewed}
    for lb in platform.lbs:
        assert shop_sites(lb.root) == sorted(f"{d}.conf" for d in FIVE)


def test_load_balancers_that_diverged_each_keep_what_they_serve(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    # lb2 alone gets two.test's renewal (a partial deploy with lb1 left out of the config).
    data = yaml.safe_load(fleet.config.read_text())
    only_lb2 = fleet.base / "only-lb2.yaml"
    data["deploy"]["load_balancers"] = data["deploy"]["load_balancers"][1:]
    only_lb2.write_text(yaml.safe_dump(data))
    old = fleet.fingerprints["two.test"]
    renewed = fleet.renew("two.test", "renewal")
    assert _deploy(only_lb2, "--lineage", "two.test").returncode == 0
    assert served(platform, "two.test") == {"lb1": old, "lb2": renewed}
    fleet.renew("one.test", "second")
    done = _deploy(fleet.config, "--lineage", "one.test")
    assert done.returncode == 0, done.stderr
    assert "serve different configurations" in done.stdout
    expected = dict(fleet.fingerprints)
    expected.pop("two.test")
    fleet.assert_serves(expected)
    assert served(platform, "two.test") == {"lb1": old, "lb2": renewed}
    # The repair command brings both to what the inventory and the certificates say.
    assert _deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()


# --------------------------------------------------------------------------- corrupt manifest


def test_a_corrupt_manifest_stops_partial_deploys_and_deploy_all_rebuilds_it(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    for lb in platform.lbs:
        manifest = Path(lb.root) / "current" / "manifest.json"
        data = manifest.read_bytes()
        manifest.unlink()  # a hard link shared with the spool: replace, don't truncate
        manifest.write_bytes(data[: len(data) // 2])
    renewed = fleet.renew("two.test", "renewal")
    done = _deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 1
    assert "not valid JSON" in done.stderr and "deploy --all" in done.stderr
    expected = dict(fleet.fingerprints)
    expected.pop("two.test")
    fleet.assert_serves(expected)
    # one.test turns invalid meanwhile: deploy --all still keeps it, owner read off its site.
    fleet.shops[0]["vars"] = {"upstream": "bad;value"}
    write_inventory(fleet.inventory, fleet.shops)
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    assert "rebuilt what it can" in done.stdout
    fleet.assert_serves()
    assert set(served(platform, "two.test").values()) == {renewed}
    for lb in platform.lbs:
        rebuilt = loads((Path(lb.root) / "current" / "manifest.json").read_bytes())
        assert set(rebuilt.sites) == {f"{d}.conf" for d in FIVE}


def test_a_long_invalid_domain_keeps_its_site(platform: Sandbox) -> None:
    long_name = "a" * 60 + "." + "b" * 30 + ".test"  # over 80 characters
    fleet = Fleet(platform, domains=(long_name, "two.test"))
    fleet.shops[0]["vars"] = {"upstream": "x;y"}
    write_inventory(fleet.inventory, fleet.shops)
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()
    for lb in platform.lbs:
        assert f"{long_name}.conf" in shop_sites(lb.root)


# --------------------------------------------------------------------------- killed deploys


def test_a_deploy_killed_in_phase_one_leaves_the_live_release_and_the_repair_ships(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    before = _current(platform)
    started, go, gate = fleet.gate("test")
    fleet.set_lb(0, test=[*gate, *_lb_nginx(platform, 0, "-t")])
    old = fleet.fingerprints["one.test"]
    renewed = fleet.renew("one.test", "renewal")
    proc = _start_deploy(fleet.config, "--all", killed=True)
    poll("lb1's test started", lambda: started.exists() or None, timeout=60)
    # lb1's `current` points at the candidate while its test runs.
    assert _current(platform)["lb1"] != before["lb1"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    go.write_text("go")
    # The test on lb1 finishes on its own and puts `current` back.
    poll("lb1's current put back", lambda: _current(platform)["lb1"] == before["lb1"] or None,
         timeout=60)
    assert _current(platform) == before
    assert set(served(platform, "one.test").values()) == {old}
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()
    assert set(served(platform, "one.test").values()) == {renewed}


def test_a_deploy_killed_in_phase_two_is_finished_by_the_repair(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    started, go, gate = fleet.gate("reload")
    fleet.set_lb(0, reload=[*gate, *_lb_nginx(platform, 0, "-s", "reload")])
    old = fleet.fingerprints["one.test"]
    renewed = fleet.renew("one.test", "renewal")
    proc = _start_deploy(fleet.config, "--all", killed=True)
    poll("lb1's reload started", lambda: started.exists() or None, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    go.write_text("fail")  # the reload never happens: `current` is new, nginx runs the old
    poll("the gate released", lambda: (fleet.base / "reload.finished").exists() or None,
         timeout=30)
    assert served(platform, "one.test")["lb1"] == old
    fleet.set_lb(0, reload=_lb_nginx(platform, 0, "-s", "reload"))
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    assert "nginx does not run the config of the live release" in done.stdout
    fleet.assert_serves()
    assert set(served(platform, "one.test").values()) == {renewed}


# --------------------------------------------------------------------------- failures in phases


def test_a_load_balancer_unreachable_between_the_phases(
    platform: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet(platform)
    old = fleet.fingerprints["one.test"]
    renewed = fleet.renew("one.test", "renewal")
    real_run = push.Target.run

    def run(self: push.Target, script: str) -> push.Result:
        if self.name == "lb2" and "mv -Tf" in script and ".test-output" not in script \
                and "rm -rf" not in script:
            raise push.PushError("ssh to lb2 failed: Connection timed out")  # the fault
        return real_run(self, script)

    monkeypatch.setattr(push.Target, "run", run)
    settings = epages_config.load(fleet.config)
    with pytest.raises(DeployError) as failure:
        Deployer(settings, say=lambda _: None).everything()
    assert "lb2" in str(failure.value) and "Connection timed out" in str(failure.value)
    assert served(platform, "one.test") == {"lb1": renewed, "lb2": old}
    monkeypatch.setattr(push.Target, "run", real_run)
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()


def test_a_build_that_fails_after_another_lb_got_its_candidate_removes_that_candidate(
    platform: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lb1's phase 1 runs while lb2's release is built; lb2's build fails: nothing stays."""
    fleet = Fleet(platform)
    old = fleet.fingerprints["one.test"]
    fleet.renew("one.test", "renewal")
    before = _current(platform)
    releases = {lb.name: set(os.listdir(Path(lb.root) / "releases")) for lb in platform.lbs}
    staged = threading.Event()
    real_build, real_stage = Deployer._build, Deployer._stage

    def stage(self: Deployer, lb: Any) -> Any:
        try:
            return real_stage(self, lb)
        finally:
            staged.set()

    def build(self: Deployer, lb: Any, *args: Any) -> None:
        if lb.name == "lb2":
            assert staged.wait(timeout=60), "lb1's phase 1 never ran"
            assert set(os.listdir(Path(platform.lbs[0].root) / "releases")) > releases["lb1"]
            raise DeployError("lb2: injected build failure")
        real_build(self, lb, *args)

    monkeypatch.setattr(Deployer, "_build", build)
    monkeypatch.setattr(Deployer, "_stage", stage)
    with pytest.raises(DeployError, match="injected build failure"):
        Deployer(epages_config.load(fleet.config), say=lambda _: None).everything()
    assert _current(platform) == before
    assert {lb.name: set(os.listdir(Path(lb.root) / "releases"))
            for lb in platform.lbs} == releases  # lb1's candidate is gone again
    assert set(served(platform, "one.test").values()) == {old}
    monkeypatch.undo()
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()


def test_a_failing_reload_switches_that_lb_back_and_the_repair_ships(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    flag = fleet.base / "reloaded-once"
    nginx = " ".join(_lb_nginx(platform, 0, "-s", "reload"))
    fleet.set_lb(0, reload=["sh", "-c", f"[ -e {flag} ] && exec {nginx}; touch {flag}; "
                                        "echo 'nginx: [emerg] injected failure'; exit 1"])
    old = fleet.fingerprints["one.test"]
    renewed = fleet.renew("one.test", "renewal")
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "injected failure" in done.stderr and "switched back" in done.stderr
    assert served(platform, "one.test") == {"lb1": old, "lb2": renewed}
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()


def test_a_config_change_whose_reload_does_not_take_effect_is_caught(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    fleet.set_deploy(probe_timeout=2)
    fleet.set_lb(0, reload=["true"])  # reports success, reloads nothing
    before = _current(platform)
    fleet.shops[0]["vars"] = {"upstream": "127.0.0.1:9"}  # config only: same certificate
    write_inventory(fleet.inventory, fleet.shops)
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "lb1: probe of the release marker epages-release.invalid" in done.stderr
    assert _current(platform)["lb1"] == before["lb1"]
    fleet.set_lb(0, reload=_lb_nginx(platform, 0, "-s", "reload"))
    done = _deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    for lb in platform.lbs:
        text = (Path(lb.root) / "current" / "sites" / "one.test.conf").read_text()
        assert "127.0.0.1:9" in text


# --------------------------------------------------------------------------- locks, inventory


def test_two_deploy_hosts_take_turns_on_the_load_balancers(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    started, go, gate = fleet.gate("test")
    fleet.set_lb(0, test=[*gate, *_lb_nginx(platform, 0, "-t")])
    first_renewal = fleet.renew("one.test", "first")
    first = _start_deploy(fleet.config, "--lineage", "one.test")
    poll("the first deploy's test started", lambda: started.exists() or None, timeout=60)
    # Another deploy host: its own spool, the same load balancers.
    other = yaml.safe_load(fleet.config.read_text())
    other["deploy"]["spool"] = str(fleet.base / "other-spool")
    other["deploy"]["load_balancers"][0]["test"] = _lb_nginx(platform, 0, "-t")
    other_config = fleet.base / "other.yaml"
    other_config.write_text(yaml.safe_dump(other))
    second_renewal = fleet.renew("two.test", "second")
    second = _start_deploy(other_config, "--lineage", "two.test")
    assert second.stdout is not None
    waiting = second.stdout.readline()
    assert "waiting for another deploy" in waiting and "pid" in waiting
    go.write_text("go")
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    # The second built on what the first made live: both renewals serve.
    assert set(served(platform, "one.test").values()) == {first_renewal}
    assert set(served(platform, "two.test").values()) == {second_renewal}


class _Drip(http.server.BaseHTTPRequestHandler):
    body = b"[]"
    connected = threading.Event()
    hung_up = threading.Event()  # the client gave up

    def do_GET(self) -> None:
        self.connected.set()
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body) + 1000))
        self.end_headers()
        stop = self.server.stop  # type: ignore[attr-defined]
        while not stop.wait(0.2):  # a byte every 200 ms, never the whole body
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                self.hung_up.set()
                return

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_inventory_url_that_drips_fails_in_time_without_holding_the_lock(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    with http_server(_Drip) as httpd:
        data = yaml.safe_load(fleet.config.read_text())
        data["inventory"] = f"http://127.0.0.1:{httpd.port}/shops.json"
        data["inventory_timeout"] = 20
        dripping = fleet.base / "dripping.yaml"
        dripping.write_text(yaml.safe_dump(data))
        slow = _start_deploy(dripping, "--all")
        poll("the dripping fetch began", lambda: _Drip.connected.is_set() or None, timeout=30)
        # Meanwhile the deploy hook's path (same spool, same load balancers) is not blocked.
        renewed = fleet.renew("one.test", "renewal")
        done = _deploy(fleet.config, "--lineage", "one.test")
        assert done.returncode == 0, done.stderr
        assert "waiting for another deploy" not in done.stdout
        # ...while the dripping fetch still went on.
        assert not _Drip.hung_up.is_set(), "the dripping fetch ended before the other deploy"
        _, message = slow.communicate(timeout=120)
        assert slow.returncode == 1
        assert "did not arrive within 20s" in message and "inventory_timeout" in message
        poll("the server saw the client give up", lambda: _Drip.hung_up.is_set() or None)
        assert set(served(platform, "one.test").values()) == {renewed}


def test_status_asks_the_load_balancers_after_a_lost_spool(platform: Sandbox) -> None:
    fleet = Fleet(platform, domains=("one.test",))
    shutil.rmtree(fleet.spool)
    data = yaml.safe_load(fleet.config.read_text())
    state = Path(data["fleet"]["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    (state / "status.json").write_text(json.dumps({"last_sync": None, "domains": {
        "one.test": {"domain": "one.test", "state": "ok", "lineage": "one.test"}}}))
    done = subprocess.run([str(BIN / "certbot-epages"), "--config", str(fleet.config), "status",
                           "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    current = _current(platform)
    assert document["domains"]["one.test"]["live"] == {
        name: target.rsplit("/", 1)[-1] for name, target in current.items()}


def test_a_killed_deploy_leaves_no_control_directory_behind(platform: Sandbox) -> None:
    stale = Path("/tmp") / "cbe-ssh-999999-leftover"  # a PID that does not run
    stale.mkdir(exist_ok=True)
    try:
        Fleet(platform, domains=("one.test",))
        assert not stale.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)

