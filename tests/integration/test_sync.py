"""certbot-epages sync against the sandbox: 30 shops, real certbot, pebble, BIND and both LBs.

The tests of this module build on each other in file order (first sync, second sync, changes);
they share one sandbox.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from epages_testlib import fresh_sandbox, leaf_certificate, served, shop_sites, write_inventory

from certbot_epages.fleet.locks import held
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
BROKEN = {"nodns.custom.test": "no A", "elsewhere.custom.test": "127.0.0.99",
          "caa.custom.test": "CAA"}


def _shops(sandbox: Sandbox) -> list[dict[str, Any]]:
    up = {"upstream": sandbox.backend}

    def shop(domain: str, *aliases: str, template: str = "custom-domain") -> dict[str, Any]:
        return {"domain": domain, "aliases": list(aliases), "template": template, "vars": up,
                "shop": f"id-{domain}"}

    return [
        {**shop("*.platform.test", template="platform-wildcard"), "shop": "platform"},
        *(shop(f"p{i:02d}.platform.test") for i in range(1, 17)),  # ride on the wildcard
        *(shop(f"h{i}.custom.test", f"www.h{i}.custom.test") for i in range(1, 5)),  # HTTP-01
        *(shop(f"d{i}.custom.test", f"www.d{i}.custom.test") for i in range(1, 5)),  # DNS-01
        shop("shop.test", "www.shop.test"),
        shop("direct.test", "www.direct.test"),
        *(shop(domain, f"www.{domain}") for domain in BROKEN),
        {**shop("invalid.custom.test"), "template": "../../etc/passwd"},  # never used
    ]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Sandbox]:
    with fresh_sandbox() as sandbox:
        write_inventory(sandbox.inventory_path, _shops(sandbox))
        yield sandbox


def _sync(sandbox: Sandbox, *args: str, config: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sandbox.env()}
    return subprocess.run(
        [str(BIN / "certbot-epages"), "--config", str(config or sandbox.config_path), "sync",
         *args], env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def _status(sandbox: Sandbox) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "certbot-epages"), "--config", str(sandbox.config_path), "status", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _fingerprint(sandbox: Sandbox, lineage: str) -> str:
    cert = leaf_certificate(sandbox.certbot_config_dir / "live" / lineage / "cert.pem")
    return cert.fingerprint(hashes.SHA256()).hex()


def _lineages(sandbox: Sandbox) -> set[str]:
    live = sandbox.certbot_config_dir / "live"
    return {p.name for p in live.iterdir() if p.is_dir()} if live.exists() else set()


def test_first_sync_issues_the_good_deploys_them_and_orders_nothing_for_the_broken(
    fleet: Sandbox,
) -> None:
    plan = _sync(fleet, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "would run" in plan.stdout and not _lineages(fleet)

    done = _sync(fleet)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sync: 11 done, 0 kept, 0 failed, 3 blocked" in done.stdout
    assert "[11/11]" in done.stdout and "ETA" in done.stdout
    expected = {"wildcard_.platform.test", "shop.test", "direct.test",
                *(f"h{i}.custom.test" for i in range(1, 5)),
                *(f"d{i}.custom.test" for i in range(1, 5))}
    assert _lineages(fleet) == expected  # nothing ordered for the broken ones
    ledger = json.loads((fleet.directory / "fleet" / "ledger.json").read_text())
    assert len(ledger["orders"]) == 11

    wildcard = _fingerprint(fleet, "wildcard_.platform.test")
    for name, lineage in (("p07.platform.test", "wildcard_.platform.test"),
                          ("h2.custom.test", "h2.custom.test"),
                          ("www.d3.custom.test", "d3.custom.test"),
                          ("www.shop.test", "shop.test")):
        assert set(served(fleet, name).values()) == {_fingerprint(fleet, lineage)}, name
    assert set(served(fleet, "p16.platform.test").values()) == {wildcard}

    status = _status(fleet)["domains"]
    assert status["h1.custom.test"]["challenge"] == "http-01"
    assert status["d1.custom.test"]["challenge"] == "dns-01"
    assert status["p03.platform.test"]["lineage"] == "wildcard_.platform.test"
    assert set(status["h1.custom.test"]["live"]) == {"lb1", "lb2"}
    for domain, reason in BROKEN.items():
        entry = status[domain]
        assert entry["state"] == "blocked" and not entry["certificate"]
        assert reason in entry["last_error"] and entry["fix"], entry
    invalid = status["invalid.custom.test"]
    assert invalid["state"] == "invalid" and "template" in invalid["last_error"]
    metrics = (fleet.directory / "fleet" / "certbot_epages.prom").read_text()
    assert 'certbot_epages_certificate_expiry_seconds{domain="h1.custom.test"}' in metrics
    assert 'certbot_epages_domain_failing{domain="caa.custom.test"} 1' in metrics
    assert "certbot_epages_last_sync_timestamp_seconds" in metrics


def test_a_second_sync_is_a_no_op(fleet: Sandbox) -> None:
    before = {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)}
    done = _sync(fleet)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sync: 0 done, 11 kept, 0 failed, 3 blocked" in done.stdout
    assert "the live releases are up to date" in done.stdout
    assert {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)} == before


def test_changed_aliases_reissue_only_that_lineage(fleet: Sandbox) -> None:
    before = {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)}
    shops = _shops(fleet)
    h1 = next(s for s in shops if s["domain"] == "h1.custom.test")
    h1["aliases"] = ["www.h1.custom.test", "shop-h1.custom.test"]
    write_inventory(fleet.inventory_path, shops)
    done = _sync(fleet)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reissue h1.custom.test (http-01) done" in done.stdout
    assert "sync: 1 done, 10 kept" in done.stdout
    after = {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)}
    assert [name for name in after if after[name] != before[name]] == ["h1.custom.test"]
    assert set(served(fleet, "shop-h1.custom.test").values()) == {after["h1.custom.test"]}


def test_a_deleted_shop_disappears_from_the_load_balancers(fleet: Sandbox) -> None:
    shops = _shops(fleet)
    next(s for s in shops if s["domain"] == "h1.custom.test")["aliases"] = [
        "www.h1.custom.test", "shop-h1.custom.test"]
    next(s for s in shops if s["domain"] == "d4.custom.test")["status"] = "deleted"
    write_inventory(fleet.inventory_path, shops)
    done = _sync(fleet)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "d4.custom.test" not in _lineages(fleet)
    for lb in fleet.lbs:
        sites = set(shop_sites(lb.root))
        assert "d4.custom.test.conf" not in sites and "d3.custom.test.conf" in sites
    assert _status(fleet)["domains"]["d4.custom.test"]["state"] == "deleted"


def test_an_order_budget_of_five_orders_five_of_ten_and_says_when_the_rest_go(
    fleet: Sandbox, tmp_path: Path
) -> None:
    data = yaml.safe_load(fleet.config_path.read_text())
    data["fleet"]["state_dir"] = str(tmp_path / "fleet")  # a fresh ledger
    data["fleet"]["limits"] = {"orders_per_account": 5}
    # Ten new shops beside the ones the load balancers serve (a deploy never drops those
    # unless the inventory does).
    shops = yaml.safe_load(Path(data["inventory"]).read_text())
    inventory = write_inventory(tmp_path / "inventory.yaml", shops + [
        {"domain": f"new{i}.custom.test", "template": "custom-domain",
         "vars": {"upstream": fleet.backend}} for i in range(10)])
    data["inventory"] = str(inventory)
    config = tmp_path / "epages.yaml"
    config.write_text(yaml.safe_dump(data))
    done = _sync(fleet, config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"sync: 5 done, \d+ kept, 0 failed, \d+ blocked, 5 waiting", done.stdout)
    waiting = [line for line in done.stdout.splitlines() if line.startswith("  waiting")]
    assert len(waiting) == 5
    assert all("account order budget: 5/5" in line and "next slot at" in line
               for line in waiting)
    assert len({n for n in _lineages(fleet) if n.startswith("new")}) == 5


def test_sync_domain_issues_and_deploys_one_new_shop_beside_a_running_full_sync(
    fleet: Sandbox,
) -> None:
    shops = yaml.safe_load(fleet.inventory_path.read_text())
    shops.append({"domain": "quick.custom.test", "aliases": ["www.quick.custom.test"],
                  "template": "custom-domain", "vars": {"upstream": fleet.backend},
                  "shop": "id-quick"})
    write_inventory(fleet.inventory_path, shops)
    state = fleet.directory / "fleet"
    before = {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)}
    sites = {lb.name: set(shop_sites(lb.root)) for lb in fleet.lbs}
    recorded = json.loads((state / "status.json").read_text())
    orders = len(json.loads((state / "ledger.json").read_text())["orders"])
    # A full sync is running and ordering h2.custom.test: it holds sync.lock and that
    # lineage's lock for as long as this test needs.
    with held(state / "sync.lock") as running, \
            held(state / "locks" / "h2.custom.test.lock") as ordering:
        assert running and ordering
        second = _sync(fleet)
        assert second.returncode == 1 and "another sync is running" in second.stderr
        done = _sync(fleet, "--domain", "www.quick.custom.test")  # named by its alias
    assert done.returncode == 0, done.stdout + done.stderr
    assert "issue quick.custom.test (http-01) done" in done.stdout
    assert "sync: 1 done, 0 kept, 0 failed, 0 blocked" in done.stdout
    assert "deployed 1 shop(s)" in done.stdout

    after = {lineage: _fingerprint(fleet, lineage) for lineage in _lineages(fleet)}
    assert set(after) - set(before) == {"quick.custom.test"}
    assert {n: after[n] for n in before} == before  # nothing else ordered
    for name in ("quick.custom.test", "www.quick.custom.test"):
        assert served(fleet, name) == {"lb1": after["quick.custom.test"],
                                       "lb2": after["quick.custom.test"]}, name
    for lb in fleet.lbs:
        assert set(shop_sites(lb.root)) == sites[lb.name] | {"quick.custom.test.conf"}
    assert len(json.loads((state / "ledger.json").read_text())["orders"]) == orders + 1
    # status.json: the new shop's entry is written, every other one is left as it was.
    now = json.loads((state / "status.json").read_text())
    entry = now["domains"].pop("quick.custom.test")
    assert entry["state"] == "ok" and entry["challenge"] == "http-01" and entry["certificate"]
    assert now == recorded


def test_sync_domain_of_a_name_no_entry_lists_is_an_error(fleet: Sandbox) -> None:
    before = _lineages(fleet)
    done = _sync(fleet, "--domain", "quick.custom.test", "--domain", "nowhere.custom.test")
    assert done.returncode == 1
    assert "not in" in done.stderr and "nowhere.custom.test" in done.stderr
    assert "quick.custom.test" not in done.stderr.split("not in", 1)[1]
    assert _lineages(fleet) == before
