"""Deploys to the sandbox's two nginx load balancers over sshd and rsync."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from epages_testlib import (
    certbot,
    deploy_config,
    fresh_sandbox,
    leaf_certificate,
    make_lineage,
    served,
    shop_sites,
    write_inventory,
)

from certbot_epages.deploy import hook
from certbot_epages.resources import templates_dir
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    """A sandbox of its own: deploys change the load balancers' state."""
    with fresh_sandbox() as sandbox:
        yield sandbox


def _deploy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "certbot-epages"), "--config", str(config), "deploy", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def _shop(domain: str, upstream: str, **extra: object) -> dict[str, object]:
    return {"domain": domain, "aliases": [f"www.{domain}"], "template": "custom-domain",
            "vars": {"upstream": upstream}, **extra}


def _current(sandbox: Sandbox) -> dict[str, str]:
    return {lb.name: os.readlink(Path(lb.root) / "current") for lb in sandbox.lbs}


def _releases(sandbox: Sandbox) -> dict[str, list[str]]:
    return {lb.name: sorted(p.name for p in (Path(lb.root) / "releases").iterdir())
            for lb in sandbox.lbs}


def test_issuance_with_the_deploy_hook_serves_the_certificate_on_both_lbs(
    platform: Sandbox,
) -> None:
    domain = platform.zones.customer
    certbot(platform, "certonly", "--authenticator", "epages-dns", "--cert-name", domain,
            "-d", domain, "-d", f"www.{domain}", "--deploy-hook", str(BIN / "deploy-hook"))
    live = platform.certbot_config_dir / "live" / domain
    fingerprint = leaf_certificate(live / "cert.pem").fingerprint(hashes.SHA256()).hex()
    for name in (domain, f"www.{domain}"):
        assert set(served(platform, name).values()) == {fingerprint}
    key = next(Path(lb.root) for lb in platform.lbs) / "current" / "certs" / domain / "privkey.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    # The renewal runs the stored deploy hook again and ships the new certificate.
    certbot(platform, "renew", "--cert-name", domain, "--force-renewal",
            "--no-random-sleep-on-renew")
    renewed = leaf_certificate(live / "cert.pem").fingerprint(hashes.SHA256()).hex()
    assert renewed != fingerprint
    assert set(served(platform, domain).values()) == {renewed}


def _two_lineages(platform: Sandbox, base: Path) -> tuple[Path, Path, dict[str, str]]:
    certbot_dir = base / "le"
    ca = SandboxCA(base)
    fingerprints = {d: make_lineage(certbot_dir, d, [d, f"www.{d}"], ca)
                    for d in ("one.test", "two.test")}
    inventory = write_inventory(base / "inventory.yaml",
                                [_shop(d, platform.backend) for d in fingerprints])
    return certbot_dir, inventory, fingerprints


def _live_pair(platform: Sandbox, **deploy: object
               ) -> tuple[Path, Path, Path, dict[str, str], Path]:
    """one.test and two.test deployed to both load balancers: (base, certbot_dir, inventory,
    fingerprints, config). A ``spool`` given as a relative name goes below base."""
    base = platform.directory / "t"
    base.mkdir()
    certbot_dir, inventory, fingerprints = _two_lineages(platform, base)
    if "spool" in deploy:
        deploy["spool"] = str(base / str(deploy["spool"]))
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir), **deploy)
    done = _deploy(config, "--all")
    assert done.returncode == 0, done.stderr
    return base, certbot_dir, inventory, fingerprints, config


def test_a_template_that_breaks_nginx_on_one_lb_changes_nothing_anywhere(
    platform: Sandbox,
) -> None:
    base, certbot_dir, inventory, old, config = _live_pair(platform)
    before, releases = _current(platform), _releases(platform)

    templates = base / "templates" / "nginx"
    templates.mkdir(parents=True)
    packaged = (templates_dir() / "nginx" / "custom-domain.conf.j2").read_text()
    (templates / "custom-domain.conf.j2").write_text(
        packaged + "{% if lb.name == 'lb2' %}bogus_directive on;{% endif %}\n")
    ca = SandboxCA(base / "ca2")
    new = make_lineage(certbot_dir, "one.test", ["one.test", "www.one.test"], ca)
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir), templates=str(base / "templates"))
    done = _deploy(config, "--all")
    assert done.returncode == 1
    assert 'unknown directive "bogus_directive"' in done.stderr
    assert "nothing went live anywhere" in done.stderr
    assert _current(platform) == before and _releases(platform) == releases
    assert set(served(platform, "one.test").values()) == {old["one.test"]} != {new}


def test_an_unreachable_lb_in_phase_one_switches_nothing(platform: Sandbox) -> None:
    base, certbot_dir, inventory, fingerprints, config = _live_pair(platform)
    before = _current(platform)
    make_lineage(certbot_dir, "two.test", ["two.test", "www.two.test"], SandboxCA(base / "n"))
    data = yaml.safe_load(config.read_text())
    data["deploy"]["load_balancers"][1]["ssh_options"] += ["-p", "2"]  # nothing listens there
    config.write_text(yaml.safe_dump(data))
    done = _deploy(config, "--all")
    assert done.returncode == 1
    assert "lb2" in done.stderr and "ssh" in done.stderr
    assert _current(platform) == before
    assert set(served(platform, "two.test").values()) == {fingerprints["two.test"]}


def test_a_failed_probe_switches_that_lb_back(platform: Sandbox) -> None:
    base, certbot_dir, inventory, fingerprints, config = _live_pair(platform, probe_timeout=1)
    before = _current(platform)
    make_lineage(certbot_dir, "one.test", ["one.test", "www.one.test"], SandboxCA(base / "n"))
    data = yaml.safe_load(config.read_text())
    data["deploy"]["load_balancers"][0]["reload"] = ["true"]  # a reload that does nothing
    config.write_text(yaml.safe_dump(data))
    done = _deploy(config, "--all")
    assert done.returncode == 1
    assert "lb1: probe of one.test" in done.stderr and "switched back" in done.stderr
    after = _current(platform)
    assert after["lb1"] == before["lb1"] and after["lb2"] != before["lb2"]
    assert served(platform, "one.test")["lb1"] == fingerprints["one.test"]


def test_hundred_deferred_renewals_ship_in_one_release_and_one_reload(
    platform: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = platform.directory / "t"
    base.mkdir()
    certbot_dir = base / "le"
    ca = SandboxCA(base)
    domains = [f"shop{i:03d}.test" for i in range(100)]
    fingerprints = {d: make_lineage(certbot_dir, d, [d, f"www.{d}"], ca) for d in domains}
    inventory = write_inventory(base / "inventory.yaml",
                                [_shop(d, platform.backend) for d in domains])
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir))
    data = yaml.safe_load(config.read_text())
    for lb in data["deploy"]["load_balancers"]:
        count = base / f"reloads-{lb['name']}"
        lb["reload"] = ["sh", "-c", f'echo >> {count} && exec "$@"', "reload", *lb["reload"]]
    config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CERTBOT_EPAGES_CONFIG", str(config))
    for domain in domains:
        monkeypatch.setenv("RENEWED_LINEAGE", str(certbot_dir / "live" / domain))
        monkeypatch.setenv("RENEWED_DOMAINS", f"{domain} www.{domain}")
        assert hook.hook_main(["--defer"]) == 0
    assert _releases(platform) == {"lb1": [], "lb2": []}  # deferred: nothing shipped yet
    done = _deploy(config, "--pending")
    assert done.returncode == 0, done.stderr
    assert {k: len(v) for k, v in _releases(platform).items()} == {"lb1": 1, "lb2": 1}
    for lb in platform.lbs:
        assert (base / f"reloads-{lb.name}").read_text().count("\n") == 1
    for domain in (domains[0], domains[57], domains[-1]):
        assert set(served(platform, domain).values()) == {fingerprints[domain]}
    assert _deploy(config, "--pending").stdout.strip() == "nothing pending"


def test_malicious_inventory_entries_never_reach_a_config(platform: Sandbox) -> None:
    base = platform.directory / "t"
    base.mkdir()
    certbot_dir = base / "le"
    ca = SandboxCA(base)
    good = make_lineage(certbot_dir, "good.test", ["good.test", "www.good.test"], ca)
    make_lineage(certbot_dir, "gone.test", ["gone.test", "www.gone.test"], ca)
    # Certificates exist for the bad entries too: only validation can keep them out.
    for name in ("newline.test", "dollar.test", "traversal.test"):
        make_lineage(certbot_dir, name, [name, f"www.{name}"], ca)
    shops: list[dict[str, object]] = [
        _shop("good.test", platform.backend),
        _shop("gone.test", platform.backend),
        {"domain": "evil.com; include /etc/shadow", "template": "custom-domain",
         "vars": {"upstream": platform.backend}},
        _shop("newline.test", "127.0.0.1:80;\n include /etc/shadow"),
        {**_shop("dollar.test", "$host"), "aliases": []},
        {**_shop("traversal.test", platform.backend), "template": "../../../etc/passwd"},
    ]
    inventory = write_inventory(base / "inventory.yaml", shops)
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir))
    done = _deploy(config, "--all")
    assert done.returncode == 0, done.stderr
    for index, bad in ((2, "evil.com"), (3, "newline.test"), (4, "dollar.test"),
                       (5, "traversal.test")):
        line = next(x for x in done.stdout.splitlines() if f"inventory entry {index} " in x)
        assert bad in line, line
    for lb in platform.lbs:
        sites = Path(lb.root) / "current" / "sites"
        assert shop_sites(lb.root) == ["gone.test.conf", "good.test.conf"]
        text = "".join(p.read_text() for p in sites.iterdir())
        assert "shadow" not in text
        assert not any(bad in text for bad in ("evil.com", "newline.test", "dollar.test"))
    assert set(served(platform, "good.test").values()) == {good}

    # A shop the shop software deletes disappears from the load balancers.
    shops[1]["status"] = "deleted"
    write_inventory(inventory, shops)
    assert _deploy(config, "--all").returncode == 0
    for lb in platform.lbs:
        assert shop_sites(lb.root) == ["good.test.conf"]
        assert not (Path(lb.root) / "current" / "certs" / "gone.test").exists()


def test_local_lbs_and_pruning_beyond_keep_releases(platform: Sandbox) -> None:
    base = platform.directory / "t"
    base.mkdir()
    certbot_dir, inventory, _ = _two_lineages(platform, base)
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir), keep_releases=1)
    data = yaml.safe_load(config.read_text())
    data["deploy"]["load_balancers"][0]["ssh"] = "local"  # this machine, no ssh
    data["deploy"]["load_balancers"][0]["ssh_options"] = []
    config.write_text(yaml.safe_dump(data))
    served_by: list[str] = []
    for round_ in range(3):
        fingerprint = make_lineage(certbot_dir, "one.test", ["one.test", "www.one.test"],
                                   SandboxCA(base / f"ca{round_}"))
        done = _deploy(config, "--all")
        assert done.returncode == 0, done.stderr
        assert set(served(platform, "one.test").values()) == {fingerprint}
        served_by.append(fingerprint)
    releases = _releases(platform)
    current = _current(platform)
    for lb in platform.lbs:
        # keep_releases 1, but the release that served before is kept for a switch back.
        assert len(releases[lb.name]) == 2
        assert current[lb.name].rsplit("/", 1)[-1] in releases[lb.name]
    assert len(set(served_by)) == 3


def test_a_full_deploy_keeps_what_cannot_be_deployed_now(platform: Sandbox) -> None:
    base, certbot_dir, inventory, fingerprints, config = _live_pair(platform)
    # one.test gains an alias no certificate covers yet (its re-issue is still to come), and
    # two.test's template breaks for it alone: both keep serving what they served.
    shops = [_shop("one.test", platform.backend), _shop("two.test", platform.backend)]
    shops[0]["aliases"] = ["www.one.test", "new.one.test"]
    write_inventory(inventory, shops)
    templates = base / "templates" / "nginx"
    templates.mkdir(parents=True)
    packaged = (templates_dir() / "nginx" / "custom-domain.conf.j2").read_text()
    (templates / "custom-domain.conf.j2").write_text(
        "{% if domain == 'two.test' %}{{ vars.missing }}{% endif %}\n" + packaged)
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir), templates=str(base / "templates"))
    done = _deploy(config, "--all")
    assert done.returncode == 0, done.stderr
    assert "one.test: no certificate" in done.stdout and "stays" in done.stdout
    assert "two.test" in done.stdout and "undefined" in done.stdout
    for name in ("one.test", "two.test"):
        assert set(served(platform, name).values()) == {fingerprints[name]}

    # An inventory that suddenly lists nobody does not empty the load balancers...
    write_inventory(inventory, [])
    done = _deploy(config, "--all")
    assert done.returncode == 1 and "would remove 2 of 2 sites" in done.stderr
    assert set(served(platform, "one.test").values()) == {fingerprints["one.test"]}
    # ...unless the operator says so.
    assert _deploy(config, "--all", "--force").returncode == 0
    for lb in platform.lbs:
        assert shop_sites(lb.root) == []
        assert served(platform, "one.test")[lb.name] != fingerprints["one.test"]
