"""One owner per name: every ownership and reservation rule, as a hostile tenant would try it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from certbot_epages.inventory import Inventory, parse_inventory
from certbot_epages.ownership import Resolution, Rules, resolve

pytestmark = pytest.mark.unit

RULES = Rules(platform_domains=("platform.test",), platform_shop="platform",
              challenge_zone="dyn.platform.test")


def entry(domain: str, shop: str | None = None, *, aliases: tuple[str, ...] = (),
          status: str = "active", template: str = "custom-domain") -> dict[str, object]:
    data: dict[str, object] = {"domain": domain, "aliases": list(aliases), "template": template,
                               "vars": {"upstream": "10.0.0.5:80"}, "status": status}
    if shop is not None:
        data["shop"] = shop
    return data


def inventory(*entries: dict[str, object]) -> Inventory:
    return parse_inventory(list(entries), templates=["custom-domain", "platform-wildcard"])


def resolved(*entries: dict[str, object], live: Mapping[str, str] | None = None,
             lbs: list[Mapping[str, str]] | None = None) -> Resolution:
    recorded = lbs if lbs is not None else ([live] if live is not None else [])
    return resolve(inventory(*entries), recorded, RULES)


def granted(resolution: Resolution) -> list[str]:
    return [s.domain for s in resolution.inventory.shops]


def refused(resolution: Resolution) -> dict[str, str]:
    return {c.shop.domain: c.reason for c in resolution.conflicts}


# --------------------------------------------------------------------------- sticky ownership


@pytest.mark.parametrize("attacker_first", [True, False])
def test_a_live_name_stays_with_its_owner_whatever_the_order(attacker_first: bool) -> None:
    victim = entry("victim.test", "1", aliases=("www.victim.test",))
    attacker = entry("victim.test", "666")
    entries = (attacker, victim) if attacker_first else (victim, attacker)
    result = resolved(*entries, live={"victim.test": "1", "www.victim.test": "1"})
    assert granted(result) == ["victim.test"]
    assert [c.shop.owner for c in result.conflicts] == ["666"]
    conflict = result.conflicts[0]
    assert "belongs to shop 1" in conflict.reason and conflict.other == "1"
    assert "shop 666" in conflict.fix
    assert result.claims["victim.test"] == "1"


def test_an_alias_of_another_shops_name_refuses_the_whole_entry() -> None:
    result = resolved(entry("victim.test", "1"), entry("mine.test", "2", aliases=("victim.test",)),
                      live={"victim.test": "1", "mine.test": "2"})
    assert granted(result) == ["victim.test"]
    assert "victim.test belongs to shop 1" in refused(result)["mine.test"]


def test_a_suspended_owner_keeps_its_names() -> None:
    result = resolved(entry("victim.test", "1", status="suspended"), entry("victim.test", "2"),
                      live={"victim.test": "1"})
    assert [c.shop.owner for c in result.conflicts] == ["2"]
    assert result.claims == {"victim.test": "1"}


def test_a_released_name_can_be_claimed_by_another_owner() -> None:
    live = {"old.test": "1", "shared.test": "1"}
    dropped = resolved(entry("old.test", "1"), entry("shared.test", "2"), live=live)
    assert granted(dropped) == ["old.test", "shared.test"]
    deleted = resolved(entry("old.test", "1", aliases=("shared.test",), status="deleted"),
                       entry("shared.test", "2"), live=live)
    assert refused(deleted) == {}
    assert granted(deleted) == ["old.test", "shared.test"]
    assert deleted.claims == {}  # shop 2's once it serves it
    gone = resolved(entry("shared.test", "2"), live=live)
    assert granted(gone) == ["shared.test"] and gone.claims == {}


def test_a_deleted_entry_for_another_shops_name_is_refused() -> None:
    # Sync deletes the lineage of a deleted shop: never for a name someone else has.
    result = resolved(entry("victim.test", "666", status="deleted"),
                      entry("victim.test", "1", status="suspended"), live={"victim.test": "1"})
    assert "deleted entry for victim.test" in refused(result)["victim.test"]
    assert [s.owner for s in result.inventory.shops] == ["1"]


def test_an_invalid_entry_of_the_owner_still_holds_its_names() -> None:
    result = resolved(entry("victim.test", "1", template="broken"), entry("victim.test", "2"),
                      live={"victim.test": "1"})
    assert [c.shop.owner for c in result.conflicts] == ["2"]
    assert result.claims == {"victim.test": "1"}


def test_a_new_name_claimed_by_two_owners_goes_to_neither() -> None:
    result = resolved(entry("new.test", "1"), entry("new.test", "2"))
    assert granted(result) == []
    assert all("at once" in reason for reason in refused(result).values())


def test_the_same_owner_listing_a_name_twice_gets_neither_entry() -> None:
    # Neither entry wins by its place in the list.
    result = resolved(entry("a.test", "1"), entry("b.test", "1", aliases=("a.test",)))
    assert granted(result) == []
    assert "listed by more than one entry of shop 1" in refused(result)["b.test"]


def test_an_entry_without_an_id_cannot_pose_as_another_entry_without_one() -> None:
    # Both own "shop.test (no shop id)": listed first, the copy must not win.
    result = resolved(entry("shop.test", aliases=()),
                      entry("shop.test", aliases=("www.shop.test",)),
                      live={"shop.test": "shop.test (no shop id)"})
    assert granted(result) == []
    suspended = resolved(entry("shop.test", status="suspended"), entry("shop.test"),
                         live={"shop.test": "shop.test (no shop id)"})
    assert granted(suspended) == []


def test_an_id_cannot_spell_an_entry_without_one() -> None:
    result = resolved(entry("victim.test"), entry("evil.test", "victim.test",
                                                  aliases=("victim.test",)),
                      live={"victim.test": "victim.test (no shop id)"})
    assert granted(result) == ["victim.test"]


def test_names_recorded_before_shop_ids_go_to_the_one_entry_that_lists_them() -> None:
    legacy = {"shop.test": "shop.test (before shop ids)"}
    migrated = resolved(entry("shop.test", "4711"), live=legacy)
    assert granted(migrated) == ["shop.test"]
    # Two entries list it: nobody can tell which one had it; it is held.
    contested = resolved(entry("shop.test", "4711"), entry("shop.test"), live=legacy)
    assert granted(contested) == [] and "before shop ids" in contested.held["shop.test"]


def test_entries_without_shop_ids_are_their_own_owners() -> None:
    result = resolved(entry("a.test"), entry("b.test", aliases=("a.test",)),
                      live={"a.test": "a.test (no shop id)"})
    assert granted(result) == ["a.test"]
    assert "belongs to shop a.test (no shop id)" in refused(result)["b.test"]


def test_load_balancers_that_disagree_hold_the_name() -> None:
    result = resolved(entry("x.test", "1"), entry("x.test", "2"),
                      lbs=[{"x.test": "1"}, {"x.test": "2"}])
    assert granted(result) == []
    assert "held" in refused(result)["x.test"]
    assert "x.test" in result.held
    # Once one of them drops it, the other keeps it.
    settled = resolved(entry("x.test", "1"), lbs=[{"x.test": "1"}, {"x.test": "2"}])
    assert granted(settled) == ["x.test"] and settled.held == {}


def test_ownership_survives_a_lost_spool_because_it_lives_on_the_load_balancers() -> None:
    # The recorded claims come from each load balancer's manifest, not from the deploy host.
    result = resolved(entry("victim.test", "666"), entry("victim.test", "1", status="suspended"),
                      lbs=[{"victim.test": "1"}, {"victim.test": "1"}])
    assert [c.shop.owner for c in result.conflicts] == ["666"]


# --------------------------------------------------------------------------- wildcards


def test_a_wildcard_over_another_owners_names_is_refused() -> None:
    result = resolved(entry("*.shop.test", "666"), entry("shop.test", "1"),
                      live={"shop.test": "1"})
    assert "*.shop.test would cover shop.test" in refused(result)["*.shop.test"]
    deeper = resolved(entry("*.shop.test", "666"), live={"a.b.shop.test": "1"},
                      lbs=None)
    assert granted(deeper) == ["*.shop.test"]  # a.b.shop.test released: nobody lists it
    listed = resolved(entry("*.shop.test", "666"), entry("a.shop.test", "1"))
    assert "*.shop.test" in refused(listed) and granted(listed) == ["a.shop.test"]


def test_a_name_under_another_owners_live_wildcard_is_refused() -> None:
    result = resolved(entry("*.shop.test", "1"), entry("evil.shop.test", "666"),
                      live={"*.shop.test": "1"})
    assert "lies under *.shop.test" in refused(result)["evil.shop.test"]
    assert granted(result) == ["*.shop.test"]
    own = resolved(entry("*.shop.test", "1"), entry("www.shop.test", "1"),
                   live={"*.shop.test": "1"})
    assert granted(own) == ["*.shop.test", "www.shop.test"]


# --------------------------------------------------------------------------- reserved names


@pytest.mark.parametrize("domain", ["platform.test", "*.platform.test", "a.b.platform.test",
                                    "*.x.platform.test"])
def test_platform_names_belong_to_the_platform_shop(domain: str) -> None:
    result = resolved(entry(domain, "666"))
    assert "belongs to the platform" in refused(result)[domain]
    assert "fleet.platform_shop (platform)" in result.conflicts[0].fix
    assert granted(resolved(entry(domain, "platform"))) == [domain] or domain.startswith("*.x")


def test_tenants_may_ride_on_the_platform_wildcard() -> None:
    result = resolved(entry("*.platform.test", "platform", template="platform-wildcard"),
                      entry("myshop.platform.test", "7"), live={"*.platform.test": "platform"})
    assert granted(result) == ["*.platform.test", "myshop.platform.test"]


def test_names_in_the_challenge_zone_are_never_shop_names() -> None:
    for owner in ("666", "platform"):
        result = resolved(entry("x.dyn.platform.test", owner))
        assert "challenge zone" in refused(result)["x.dyn.platform.test"]


def test_without_a_platform_shop_nobody_has_the_platform_names() -> None:
    rules = Rules(platform_domains=("platform.test",))
    result = resolve(inventory(entry("*.platform.test", template="platform-wildcard")), [],
                     rules)
    assert result.inventory.shops == ()
    assert "set fleet.platform_shop" in result.conflicts[0].fix


def test_the_challenge_zone_is_what_the_delegation_puts_after_the_domain(
    tmp_path: Path,
) -> None:
    from certbot_epages import config
    from certbot_epages.errors import ConfigError
    from certbot_epages.ownership import rules_for

    def settings(delegation: str, platform: str) -> config.Config:
        key = tmp_path / "k.key"
        key.write_text('key "k" { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0c2VjcmV0"; };\n')
        key.chmod(0o600)
        return config.parse({
            "dns": {"tsig_keys": {"k": {"file": str(key)}},
                    "zones": [{"name": "platform.example", "primaries": ["127.0.0.1"],
                               "key": "k"}],
                    "delegation": delegation},
            "fleet": {"platform_domains": [platform], "platform_shop": "p"},
        }, tmp_path / "epages.yaml")

    # The managed zone is the whole platform domain; the challenge names live below dyn.
    rules = rules_for(settings("_acme-challenge.{domain}.dyn.platform.example",
                               "platform.example"))
    assert rules.challenge_zone == "dyn.platform.example"
    result = resolve(inventory(entry("shop.platform.example", "7")), [], rules)
    assert [s.domain for s in result.inventory.shops] == ["shop.platform.example"]
    with pytest.raises(ConfigError, match="lies in the challenge zone"):
        rules_for(settings("_acme-challenge.{domain}.platform.example", "x.platform.example"))
