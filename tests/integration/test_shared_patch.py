"""Shared mode's renewal fast path (deploy.patch) on the sandbox's two nginx load balancers.

A renewal patches the live releases only where that is provably what a full build makes; the
proof here is that a full build (``deploy --all``) right after it finds nothing to change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from epages_testlib import fresh_sandbox, make_lineage, served
from shared_fleet import Fleet, deploy

from certbot_epages.deploy import patch
from certbot_epages.deploy.release import is_release_id
from certbot_epages.deploy.spool import Spool
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

FAST = "renewal fast path"


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    with fresh_sandbox() as sandbox:
        yield sandbox


def _patch_base(fleet: Fleet) -> Path:
    return Path(yaml.safe_load(fleet.config.read_text())["deploy"]["spool"]) / "patch-base"


def _current(platform: Sandbox) -> dict[str, str]:
    return {lb.name: os.readlink(Path(lb.root) / "current") for lb in platform.lbs}


def test_a_renewal_patches_the_live_releases_into_what_a_full_build_makes(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stderr
    assert _patch_base(fleet).stat().st_mode & 0o777 == 0o600
    # One lineage, then another on top of the patched releases, then the platform wildcard
    # (its riders are probed through it).
    for domain, tag in (("two.test", "n"), ("one.test", "m"), ("two.test", "o")):
        fleet.renew(domain, tag)
        done = deploy(fleet.config, "--lineage", domain)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{FAST}: 1 lineage(s) patched" in done.stdout, done.stdout
        fleet.assert_serves()
    fleet.wildcard = make_lineage(fleet.certbot_dir, "wildcard_.platform.test",
                                  ["*.platform.test"], SandboxCA(fleet.base / "w"))
    done = deploy(fleet.config, "--lineage", "wildcard_.platform.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{FAST}: 1 lineage(s) patched" in done.stdout, done.stdout
    fleet.assert_serves()
    # Several at once (deploy --pending after deferred hooks, say).
    for domain, tag in (("one.test", "p"), ("two.test", "q"), ("three.test", "r")):
        fleet.renew(domain, tag)
    done = deploy(fleet.config, "--lineage", "one.test", "--lineage", "two.test",
                  "--lineage", "three.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{FAST}: 3 lineage(s) patched" in done.stdout, done.stdout
    fleet.assert_serves()
    # The same renewal again: nothing to do, nothing pushed.
    before = _current(platform)
    done = deploy(fleet.config, "--lineage", "three.test")
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    assert _current(platform) == before
    # A full build from the same inventory finds every file as the patches left it (manifest,
    # maps, certificate list, release marker): byte for byte what it would have built.
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout, done.stdout
    assert _current(platform) == before
    # The base it kept records the spool's live files as they now are, so the next renewal
    # need not hash them again.
    base = patch.load(_patch_base(fleet))
    assert base is not None
    spool = Spool(_patch_base(fleet).parent)
    for lb in platform.lbs:
        live = spool.live(lb.name)
        assert live is not None and patch.file_stats(live) == base.lbs[lb.name].stats


def test_a_renewal_takes_the_full_path_whenever_a_patch_is_not_provably_right(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    # The inventory changed since the last clean deploy: the renewal renders the lineage's
    # shops from the new entries.
    fleet.shop("two.test")["vars"] = {"upstream": "127.0.0.1:9"}
    fleet.write()
    fleet.renew("two.test", "n")
    done = deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert FAST not in done.stdout
    fleet.assert_serves()
    for lb in platform.lbs:
        shared = (Path(lb.root) / "current" / "sites" / "_epages-shared.conf").read_text()
        assert "127.0.0.1:9" in shared
    # A lineage that covers another's shop: which one serves it may change with a renewal.
    assert deploy(fleet.config, "--all").returncode == 0
    make_lineage(fleet.certbot_dir, "both", ["one.test", "www.one.test", "x.test"],
                 SandboxCA(fleet.base / "b"))
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.renew("one.test", "m")
    done = deploy(fleet.config, "--lineage", "one.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert FAST not in done.stdout
    fleet.assert_serves()
    # A renewal on the full path leaves no base: the next full deploy makes one.
    fleet.renew("two.test", "o")
    done = deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 0 and FAST not in done.stdout, done.stdout + done.stderr
    assert deploy(fleet.config, "--all").returncode == 0
    # An operator rolled lb1 back by hand (`current` to the release before): the base no
    # longer describes what serves, so the next renewal builds from what lb1 really serves.
    fleet.renew("three.test", "t")
    done = deploy(fleet.config, "--lineage", "three.test")
    assert f"{FAST}: 1 lineage(s) patched" in done.stdout, done.stdout + done.stderr
    lb1 = Path(platform.lbs[0].root)
    releases = sorted(p.name for p in (lb1 / "releases").iterdir())
    previous = releases[releases.index(os.readlink(lb1 / "current").rsplit("/", 1)[-1]) - 1]
    (lb1 / "current.tmp").symlink_to(f"releases/{previous}")
    (lb1 / "current.tmp").replace(lb1 / "current")
    fleet.renew("three.test", "u")
    done = deploy(fleet.config, "--lineage", "three.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert FAST not in done.stdout
    fleet.assert_serves()
    assert len(set(served(platform, "three.test").values())) == 1
    # The patched releases built while the locks were taken were never sent: none is left.
    spool = Spool(Path(yaml.safe_load(fleet.config.read_text())["deploy"]["spool"]))
    for lb in platform.lbs:
        built = {p.name for p in spool.releases(lb.name).iterdir() if is_release_id(p.name)}
        assert built <= {p.name for p in (Path(lb.root) / "releases").iterdir()}, lb.name
    # A load balancer lost another lineage's certificate version (a rebuilt box): the
    # renewal sends it again, as a full build would.
    assert deploy(fleet.config, "--all").returncode == 0
    lost = Path(platform.lbs[1].root) / "certs" / "one.test" / fleet.fingerprints["one.test"][:16]
    shutil.rmtree(lost)
    fleet.renew("two.test", "v")
    done = deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    assert (lost / "privkey.pem").is_file()
