"""One owner per name: every ownership and reservation rule, as a hostile tenant would try it."""

from __future__ import annotations

from collections.abc import Mapping

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
    assert "served for shop 1" in conflict.reason and conflict.other == "1"
    assert "shop 666" in conflict.fix
    assert result.claims["victim.test"] == "1"


def test_an_alias_of_another_shops_name_refuses_the_whole_entry() -> None:
    result = resolved(entry("victim.test", "1"), entry("mine.test", "2", aliases=("victim.test",)),
                      live={"victim.test": "1", "mine.test": "2"})
    assert granted(result) == ["victim.test"]
    assert "victim.test is served for shop 1" in refused(result)["mine.test"]


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
    assert deleted.claims == {"shared.test": "2"}
    gone = resolved(entry("shared.test", "2"), live=live)
    assert granted(gone) == ["shared.test"] and gone.claims == {"shared.test": "2"}


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


def test_the_same_owner_listing_a_name_twice_keeps_the_first() -> None:
    result = resolved(entry("a.test", "1"), entry("b.test", "1", aliases=("a.test",)))
    assert granted(result) == ["a.test"]
    assert "listed twice by shop 1" in refused(result)["b.test"]


def test_entries_without_shop_ids_are_their_own_owners() -> None:
    result = resolved(entry("a.test"), entry("b.test", aliases=("a.test",)),
                      live={"a.test": "a.test"})
    assert granted(result) == ["a.test"]
    assert "served for shop a.test" in refused(result)["b.test"]


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
