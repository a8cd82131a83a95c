"""Hostile tenants: inventories that try to take another shop's names, or the platform's.

``sync`` and ``deploy --all`` run against the sandbox's real DNS, pebble and load balancers;
every test asserts what the load balancers serve for each name afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.update
import pytest
import yaml
from epages_testlib import (
    deploy_config,
    fresh_sandbox,
    make_lineage,
    served,
    shop_sites,
    txt_at,
    write_inventory,
)

from certbot_epages.dns.keys import load_key_file
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
EVIL_UPSTREAM = "127.0.0.1:9"


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    with fresh_sandbox() as sandbox:
        yield sandbox


def _run(sandbox: Sandbox, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sandbox.env()}
    return subprocess.run([str(BIN / "certbot-epages"), "--config", str(config), *args],
                          env=env, capture_output=True, text=True, timeout=600, check=False)


def _site(sandbox: Sandbox, domain: str) -> dict[str, str]:
    """Each load balancer's site config of ``domain`` ("" when it has none)."""
    out = {}
    for lb in sandbox.lbs:
        path = Path(lb.root) / "current" / "sites" / f"{domain}.conf"
        out[lb.name] = path.read_text() if path.exists() else ""
    return out


def _lineages(sandbox: Sandbox) -> set[str]:
    live = sandbox.certbot_config_dir / "live"
    return {p.name for p in live.iterdir() if p.is_dir()} if live.is_dir() else set()


def _shop(domain: str, shop: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"domain": domain, "shop": shop, "template": "custom-domain",
            "vars": {"upstream": upstream}, **extra}


def test_sync_refuses_hostile_claims_and_a_released_name_moves_on_a_later_run(
    platform: Sandbox,
) -> None:
    legit = yaml.safe_load(platform.inventory_path.read_text())
    config = platform.config_path
    done = _run(platform, config, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    victim = served(platform, "shop.test")
    assert "1001" in json.dumps(legit)

    hostile = [
        # Listed before the live shop, its domain, another upstream.
        _shop("shop.test", "666", EVIL_UPSTREAM),
        *legit,
        # A wildcard over the live shop's names (shop.test delegates to the platform).
        _shop("*.shop.test", "667", EVIL_UPSTREAM),
        # The platform's own apex and a name deep below it.
        _shop("platform.test", "668", EVIL_UPSTREAM),
        _shop("a.b.platform.test", "669", EVIL_UPSTREAM),
    ]
    write_inventory(platform.inventory_path, hostile)
    done = _run(platform, config, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "refused: shop.test (shop 666): shop.test belongs to shop 1001" in out
    assert "refused: *.shop.test (shop 667): *.shop.test would cover shop.test" in out
    assert "refused: platform.test (shop 668): platform.test belongs to the platform" in out
    assert "refused: a.b.platform.test (shop 669)" in out
    # Never ordered...
    assert not {"wildcard_.shop.test", "platform.test", "a.b.platform.test"} & _lineages(platform)
    # ...never deployed: the victim serves as before, with its own upstream.
    assert served(platform, "shop.test") == victim
    for text in _site(platform, "shop.test").values():
        assert platform.backend in text and EVIL_UPSTREAM not in text
    for lb in platform.lbs:
        assert "_wildcard_.shop.test.conf" not in shop_sites(lb.root)
        assert "platform.test.conf" not in shop_sites(lb.root)
    # ...and shown in status and the Prometheus file, with the shop ids.
    status = json.loads(_run(platform, config, "status", "--json").stdout)["domains"]
    conflict = status["shop.test (shop 666)"]
    assert conflict["state"] == "conflict" and conflict["shop"] == "666"
    assert conflict["owner"] == "1001" and "remove shop.test" in conflict["fix"]
    assert status["shop.test"]["shop"] == "1001" and status["shop.test"]["state"] == "ok"
    prometheus = (platform.directory / "fleet" / "certbot_epages.prom").read_text()
    assert 'certbot_epages_ownership_conflict{domain="*.shop.test",shop="667"} 1' in prometheus

    # The owner lets the name go (the shop is deleted): on a later run shop 666 may have it.
    released = [e for e in hostile if e.get("shop") not in ("1001", "667", "668", "669")]
    released.append({**next(e for e in legit if e.get("shop") == "1001"), "status": "deleted"})
    write_inventory(platform.inventory_path, released)
    done = _run(platform, config, "sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused" not in done.stdout
    for text in _site(platform, "shop.test").values():
        assert EVIL_UPSTREAM in text


def _lineage_fleet(platform: Sandbox, base: Path) -> tuple[Path, Path, dict[str, str]]:
    certbot_dir = base / "le"
    ca = SandboxCA(base)
    fingerprints = {d: make_lineage(certbot_dir, d, [d], ca)
                    for d in ("one.test", "mine.test")}
    inventory = base / "inventory.yaml"
    config = deploy_config(platform, base / "epages.yaml", inventory=inventory,
                           certbot_dir=str(certbot_dir), spool=str(base / "spool"))
    return inventory, config, fingerprints


def test_deploy_all_keeps_names_with_their_owner_even_after_a_lost_spool(
    platform: Sandbox,
) -> None:
    base = platform.directory / "t"
    base.mkdir()
    inventory, config, fingerprints = _lineage_fleet(platform, base)
    write_inventory(inventory, [_shop("one.test", "1", platform.backend),
                                _shop("mine.test", "2", platform.backend)])
    assert _run(platform, config, "deploy", "--all").returncode == 0
    shutil.rmtree(base / "spool")  # ownership lives on the load balancers, not in the spool
    write_inventory(inventory, [
        _shop("one.test", "666", EVIL_UPSTREAM),  # listed first
        _shop("one.test", "1", platform.backend),
        _shop("mine.test", "2", platform.backend, aliases=["one.test"]),  # an alias grab
    ])
    done = _run(platform, config, "deploy", "--all")
    assert done.returncode == 0, done.stderr
    assert "one.test (shop 666): one.test belongs to shop 1" in done.stdout
    assert "mine.test (shop 2): one.test belongs to shop 1" in done.stdout
    for name in ("one.test", "mine.test"):
        assert set(served(platform, name).values()) == {fingerprints[name]}
    for lb in platform.lbs:
        assert shop_sites(lb.root) == ["mine.test.conf", "one.test.conf"]
        text = (Path(lb.root) / "current" / "sites" / "one.test.conf").read_text()
        assert platform.backend in text and EVIL_UPSTREAM not in text
        mine = (Path(lb.root) / "current" / "sites" / "mine.test.conf").read_text()
        assert "one.test" not in mine  # shop 2's refused entry keeps what it served


def test_load_balancers_that_disagree_about_an_owner_hold_the_name(platform: Sandbox) -> None:
    base = platform.directory / "t"
    base.mkdir()
    inventory, config, fingerprints = _lineage_fleet(platform, base)
    write_inventory(inventory, [_shop("one.test", "1", platform.backend)])
    assert _run(platform, config, "deploy", "--all").returncode == 0
    # lb2 alone is told that shop 1 is gone and shop 2 has one.test.
    data = yaml.safe_load(config.read_text())
    data["deploy"]["load_balancers"] = data["deploy"]["load_balancers"][1:]
    only_lb2 = base / "only-lb2.yaml"
    only_lb2.write_text(yaml.safe_dump(data))
    write_inventory(inventory, [_shop("one.test", "2", EVIL_UPSTREAM)])
    assert _run(platform, only_lb2, "deploy", "--all", "--force").returncode == 0
    # Both shops list it now: the name is held, and each load balancer keeps what it serves.
    write_inventory(inventory, [_shop("one.test", "1", platform.backend),
                                _shop("one.test", "2", EVIL_UPSTREAM)])
    done = _run(platform, config, "deploy", "--all")
    assert done.returncode == 0, done.stderr
    assert "one.test is held: the load balancers record different owners" in done.stdout
    sites = _site(platform, "one.test")
    assert platform.backend in sites["lb1"] and EVIL_UPSTREAM in sites["lb2"]
    assert set(served(platform, "one.test").values()) == {fingerprints["one.test"]}


def test_the_cleanup_hook_deletes_only_challenge_names(platform: Sandbox) -> None:
    key = load_key_file(platform.key_file, "acme-update", allow_weak=False)
    zone = platform.zones.challenge
    dmarc = f"_dmarc.{zone}."
    update = dns.update.UpdateMessage(zone)
    update.use_tsig(key.as_dnspython())
    update.add(dmarc, 60, "TXT", '"v=DMARC1; p=reject"')
    assert dns.query.tcp(update, platform.ip.primary, timeout=5).rcode() == dns.rcode.NOERROR
    value = "x" * 43
    for record in (dmarc, f"{zone}."):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBOT_")}
        env.update(platform.env())
        env.update({
            "CERTBOT_DOMAIN": platform.zones.customer, "CERTBOT_VALIDATION": value,
            "CERTBOT_REMAINING_CHALLENGES": "0",
            "CERTBOT_AUTH_OUTPUT": json.dumps({
                "challenge": "dns-01", "domain": platform.zones.customer, "zone": f"{zone}.",
                "record": record, "value": value}),
        })
        done = subprocess.run([str(BIN / "manual-cleanup-hook")], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        # Nothing deleted or added there; the cleanup went to the real challenge name.
        assert ".empty" not in txt_at(platform.ip.primary, record)
    assert txt_at(platform.ip.primary, dmarc) == {"v=DMARC1; p=reject"}
    challenge = f"_acme-challenge.{platform.zones.customer}.{zone}."
    assert value not in txt_at(platform.ip.primary, challenge)
