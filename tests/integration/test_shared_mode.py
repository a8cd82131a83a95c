"""deploy.mode: shared on the sandbox's two nginx load balancers (through sshd and rsync)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from epages_testlib import (
    fresh_sandbox,
    make_lineage,
    poll,
    served,
    shop_sites,
    write_inventory,
)
from shared_fleet import BIN, Fleet, deploy, https_status

from certbot_epages.resources import templates_dir
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

@pytest.fixture
def platform() -> Iterator[Sandbox]:
    with fresh_sandbox() as sandbox:
        yield sandbox


def _raw_sni_fingerprint(address: str, sni: str) -> str | None:
    """The certificate served for an SNI value sent as it is (openssl s_client sends any)."""
    hello = subprocess.run(["openssl", "s_client", "-connect", f"{address}:443",
                            "-servername", sni], input="", capture_output=True, timeout=30,
                           check=False)
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=hello.stdout,
                         capture_output=True, timeout=30, check=False)
    return hashlib.sha256(der.stdout).hexdigest() if der.returncode == 0 else None


def test_shared_mode_serves_every_name_from_maps_with_worker_readable_keys(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()
    for lb in platform.lbs:
        root = Path(lb.root)
        assert shop_sites(lb.root) == ["_epages-shared.conf"]  # one file, no site per shop
        text = (root / "current" / "sites" / "_epages-shared.conf").read_text()
        assert "map $ssl_server_name $epages_certdir" in text
        assert "a.platform.test" not in text.split("map $host")[0]  # riders: no cert lines
        # Certificates live outside the releases, by lineage and fingerprint, mode 0640 with
        # the workers' group.
        key = root / "certs" / "one.test" / fleet.fingerprints["one.test"][:16] / "privkey.pem"
        stat = key.stat()
        assert stat.st_mode & 0o777 == 0o640 and stat.st_gid == 65534  # nogroup
        assert not (root / "current" / "certs" / "one.test").exists()
        # The shops' own upstream answers through the map.
        assert https_status(lb.address, "one.test").split()[1] != "421"
    # Hostile SNI values (sent raw: Python's ssl refuses them) never pick a file: they get
    # the load balancer's default certificate.
    default = served(platform, "nowhere.test")
    for evil in ("../../one.test", "..", "one.test/../../certs/one.test", "one.test%2f..",
                 "one.test/", "one.test\\"):
        for lb in platform.lbs:
            got = _raw_sni_fingerprint(lb.address, evil)
            assert got in (default[lb.name], None), evil
    # A literal "*.platform.test" is the map's own wildcard key: the wildcard's certificate.
    assert _raw_sni_fingerprint(platform.lbs[0].address, "*.platform.test") == fleet.wildcard


def test_a_renewal_in_shared_mode_is_a_new_version_and_a_map_line(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    old = fleet.fingerprints["two.test"]
    fleet.fingerprints["two.test"] = make_lineage(
        fleet.certbot_dir, "two.test", ["two.test", "www.two.test"], SandboxCA(fleet.base / "n"))
    # Hold lb1's phase-1 test: `current` points at the candidate, nothing reloaded yet.
    started, go = fleet.base / "started", fleet.base / "go"
    data = yaml.safe_load(fleet.config.read_text())
    lb1 = data["deploy"]["load_balancers"][0]
    lb1["test"] = ["sh", "-c", f'touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; '
                   'exec "$@"', "test", *lb1["test"]]
    fleet.config.write_text(yaml.safe_dump(data))
    hook = subprocess.Popen([str(BIN / "certbot-epages"), "--config", str(fleet.config),
                             "deploy", "--lineage", "two.test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll("lb1's test started", lambda: started.exists() or None, timeout=60)
        # Flipping `current` for the test changes nothing that is served.
        assert served(platform, "two.test")["lb1"] == old
        go.write_text("go")
        out, err = hook.communicate(timeout=120)
    finally:
        if hook.poll() is None:
            hook.send_signal(signal.SIGKILL)
            hook.communicate()
    assert hook.returncode == 0, out + err
    fleet.assert_serves()
    for lb in platform.lbs:
        versions = Path(lb.root) / "certs" / "two.test"
        # The old version stays while a kept release still uses it.
        assert {p.name for p in versions.iterdir()} >= {old[:16],
                                                        fleet.fingerprints["two.test"][:16]}


def test_switching_modes_is_one_deploy_all_each_way(platform: Sandbox) -> None:
    fleet = Fleet(platform, mode="sites")
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()
    fleet.set_deploy(mode="shared")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    assert "would remove" not in done.stderr
    fleet.assert_serves()
    # Back to sites mode while two.test cannot ship (a new alias no certificate covers): its
    # line of the maps becomes a file of its own, rendered from what the manifest recorded,
    # with the certificate version it served from.
    fleet.shops[2]["aliases"] = ["www.two.test", "new.two.test"]
    write_inventory(fleet.inventory, fleet.shops)
    fleet.set_deploy(mode="sites")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    fleet.assert_serves()
    version = f"two.test/{fleet.fingerprints['two.test'][:16]}"
    for lb in platform.lbs:
        assert {"one.test.conf", "two.test.conf"} <= set(shop_sites(lb.root))
        current = Path(lb.root) / "current"
        assert version in (current / "certs.list").read_text().split()
        assert f"/certs/{version}/" in (current / "sites" / "two.test.conf").read_text()
        assert (Path(lb.root) / "certs" / version / "privkey.pem").is_file()  # not pruned


def _spool(fleet: Fleet) -> Path:
    return Path(yaml.safe_load(fleet.config.read_text())["deploy"]["spool"])


def test_a_lost_spool_and_shops_that_cannot_ship_lose_nothing_in_shared_mode(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    # A new deploy host: no spool, no staged certificates. lb2 lost one certificate version
    # (a restored backup). one.test cannot ship (a new alias no certificate covers), two.test's
    # entry is invalid, and three.test's renewal came with a key that is not its own.
    shutil.rmtree(_spool(fleet))
    one = f"one.test/{fleet.fingerprints['one.test'][:16]}"
    lb2_version = Path(platform.lbs[1].root) / "certs" / one
    shutil.rmtree(lb2_version)
    fleet.shops[1]["aliases"] = ["www.one.test", "new.one.test"]
    fleet.shops[2]["vars"] = {"upstream": platform.backend, "note": "a;b"}
    write_inventory(fleet.inventory, fleet.shops)
    make_lineage(fleet.certbot_dir, "three.test", ["three.test", "www.three.test"],
                 SandboxCA(fleet.base / "n"))
    live = fleet.certbot_dir / "live"
    (live / "three.test" / "privkey.pem").write_bytes((live / "one.test" / "privkey.pem")
                                                      .read_bytes())
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "private key does not belong" in done.stdout + done.stderr
    fleet.assert_serves()  # every shop serves what it served, on both load balancers
    key = lb2_version / "privkey.pem"
    assert key.stat().st_gid == 65534 and key.stat().st_mode & 0o777 == 0o640  # sent again


def test_a_kept_shop_with_a_server_of_its_own_keeps_its_certificate(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    packaged = (templates_dir() / "nginx" / "custom-domain.conf.j2").read_text()
    (own / "own.conf.j2").write_text("{# epages: own_server #}\n" + packaged)
    (own / "plain.conf.j2").write_text(packaged)
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    fleet.shops[1]["template"] = "own"
    fleet.shops[3]["template"] = "plain"
    write_inventory(fleet.inventory, fleet.shops)
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()
    # one.test cannot ship now; another lineage renews: one.test's file stays, and so does
    # the certificate version it names (the release lists it, so no prune removes it).
    fleet.shops[1]["aliases"] = ["www.one.test", "new.one.test"]
    write_inventory(fleet.inventory, fleet.shops)
    fleet.fingerprints["two.test"] = make_lineage(
        fleet.certbot_dir, "two.test", ["two.test", "www.two.test"], SandboxCA(fleet.base / "n"))
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    # Its own lineage renews, still covering the names it serves: its file is rendered anew
    # from the manifest's record, naming the new version.
    fleet.fingerprints["one.test"] = make_lineage(
        fleet.certbot_dir, "one.test", ["one.test", "www.one.test"], SandboxCA(fleet.base / "m"))
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    # The templates go away while shops still serve with them. one.test keeps its own file;
    # three.test is a line of the maps that no template can render any more: refused,
    # nothing changes.
    before = {lb.name: os.readlink(Path(lb.root) / "current") for lb in platform.lbs}
    (own / "own.conf.j2").unlink()
    (own / "plain.conf.j2").unlink()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "template 'plain' is gone but three.test" in done.stderr
    assert "'own' is gone" not in done.stderr
    assert {lb.name: os.readlink(Path(lb.root) / "current") for lb in platform.lbs} == before
    fleet.assert_serves()


def test_a_config_change_whose_reload_does_not_take_effect_is_caught_in_shared_mode(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    data = yaml.safe_load(fleet.config.read_text())
    data["deploy"]["load_balancers"][0]["reload"] = ["true"]
    data["deploy"]["probe_timeout"] = 2
    fleet.config.write_text(yaml.safe_dump(data))
    fleet.shops[1]["vars"] = {"upstream": "127.0.0.1:9"}
    write_inventory(fleet.inventory, fleet.shops)
    done = deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "lb1: probe of the release marker" in done.stderr


def test_a_deploy_user_that_cannot_set_the_worker_group_gets_a_clear_error(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    data = yaml.safe_load(fleet.config.read_text())
    for lb in data["deploy"]["load_balancers"]:
        lb["worker_group"] = "nosuchgroup"
    fleet.config.write_text(yaml.safe_dump(data))
    done = deploy(fleet.config, "--all")
    assert done.returncode == 1
    assert "worker_group" in done.stderr and "nosuchgroup" in done.stderr
    for lb in platform.lbs:
        assert not (Path(lb.root) / "current").exists()  # nothing went live
    assert os.path.isdir(platform.directory)
