from __future__ import annotations

from collections.abc import Callable

import dns.name
import pytest

from certbot_epages.dns.chain import (
    Location,
    choose_zone,
    follow_chain,
    locate,
    validation_name,
)
from certbot_epages.errors import DelegationError, DNSError

pytestmark = pytest.mark.unit

N = dns.name.from_text
TEMPLATE = "_acme-challenge.{domain}.dyn.platform.example"
ZONES = [N("dyn.platform.example."), N("platform.example."), N("direct.example.")]


def lookup(cnames: dict[str, str]) -> Callable[[dns.name.Name], dns.name.Name | None]:
    table = {N(k): N(v) for k, v in cnames.items()}

    def cname(name: dns.name.Name) -> dns.name.Name | None:
        return table.get(name)

    return cname


def test_validation_name_plain_wildcard_case_and_idna() -> None:
    assert validation_name("Shop.Example") == N("_acme-challenge.shop.example.")
    assert str(validation_name("Shop.Example.")) == "_acme-challenge.shop.example."
    assert validation_name("*.shop.example") == validation_name("shop.example")
    assert str(validation_name("bücher.example")) == "_acme-challenge.xn--bcher-kva.example."


@pytest.mark.parametrize("bad", ["", "*.", "a.*.example", "*"])
def test_validation_name_rejects(bad: str) -> None:
    with pytest.raises(DNSError):
        validation_name(bad)


def test_follow_chain_hops() -> None:
    cname = lookup({"a.example.": "b.example.", "b.example.": "C.example."})
    expected = (N("a.example."), N("b.example."), N("c.example."))
    assert follow_chain(N("a.example."), cname) == expected
    assert follow_chain(N("x.example."), cname) == (N("x.example."),)


def test_follow_chain_loop() -> None:
    cname = lookup({"a.example.": "b.example.", "b.example.": "a.example."})
    with pytest.raises(DelegationError, match="loop: a.example. -> b.example. -> a.example."):
        follow_chain(N("a.example."), cname)


def test_follow_chain_too_long() -> None:
    cname = lookup({f"h{i}.example.": f"h{i + 1}.example." for i in range(20)})
    assert len(follow_chain(N("h12.example."), cname)) == 9  # 8 hops are fine
    with pytest.raises(DelegationError, match="more than 8 CNAME hops: h0.example. -> h1.example."):
        follow_chain(N("h0.example."), cname)
    with pytest.raises(DelegationError, match="more than 2"):
        follow_chain(N("h0.example."), cname, max_hops=2)


def test_choose_zone_longest_suffix_on_label_boundaries() -> None:
    assert choose_zone(N("x.dyn.platform.example."), ZONES) == N("dyn.platform.example.")
    assert choose_zone(N("x.platform.example."), ZONES) == N("platform.example.")
    assert choose_zone(N("x.otherplatform.example."), ZONES) is None
    assert choose_zone(N("platform.example."), ZONES) == N("platform.example.")
    assert choose_zone(N("x.example."), []) is None


def test_locate_follows_cname_into_managed_zone() -> None:
    cname = lookup(
        {"_acme-challenge.shop.example.": "_acme-challenge.shop.example.dyn.platform.example."}
    )
    location = locate("*.shop.example", cname, ZONES, TEMPLATE)
    assert location == Location(
        domain="*.shop.example",
        chain=(
            N("_acme-challenge.shop.example."),
            N("_acme-challenge.shop.example.dyn.platform.example."),
        ),
        zone=N("dyn.platform.example."),
        record=N("_acme-challenge.shop.example.dyn.platform.example."),
    )


def test_locate_direct_zone_without_cname() -> None:
    location = locate("www.direct.example", lookup({}), ZONES, TEMPLATE)
    assert location.chain == (N("_acme-challenge.www.direct.example."),)
    assert location.record == N("_acme-challenge.www.direct.example.")
    assert location.zone == N("direct.example.")


def test_locate_without_delegation_tells_record_to_create() -> None:
    with pytest.raises(DelegationError) as info:
        locate("*.Shop.example", lookup({}), ZONES, TEMPLATE)
    message = str(info.value)
    assert (
        "_acme-challenge.shop.example. CNAME _acme-challenge.shop.example.dyn.platform.example."
        in message
    )
    assert "has no CNAME" in message


def test_locate_dangling_into_unmanaged_zone() -> None:
    cname = lookup(
        {
            "_acme-challenge.shop.example.": "x.oldprovider.example.",
            "x.oldprovider.example.": "y.oldprovider.example.",
        }
    )
    with pytest.raises(DelegationError) as info:
        locate("shop.example", cname, ZONES, TEMPLATE)
    message = str(info.value)
    assert (
        "_acme-challenge.shop.example. -> x.oldprovider.example. -> y.oldprovider.example."
        in message
    )
    assert (
        "_acme-challenge.shop.example. CNAME _acme-challenge.shop.example.dyn.platform.example."
        in message
    )
    assert "Replace the CNAME" in message


def test_locate_bad_template() -> None:
    with pytest.raises(DNSError, match="delegation template"):
        locate("shop.example", lookup({}), ZONES, "{host}.dyn.platform.example")


@pytest.mark.parametrize(
    "target",
    ["_dmarc.dyn.platform.example.", "dyn.platform.example.", "www.direct.example."],
)
def test_a_cname_cannot_steer_writes_to_names_that_are_not_acme_challenge(target: str) -> None:
    cnames = lookup({"_acme-challenge.shop.example.": target})
    with pytest.raises(DelegationError) as caught:
        locate("shop.example", cnames, ZONES, TEMPLATE)
    assert "not an _acme-challenge name" in str(caught.value)
    assert "_acme-challenge.shop.example.dyn.platform.example." in str(caught.value)


def test_the_delegation_target_itself_is_allowed_whatever_its_labels() -> None:
    template = "acme-{domain}.dyn.platform.example"
    target = "acme-shop.example.dyn.platform.example."
    found = locate("shop.example", lookup({"_acme-challenge.shop.example.": target}), ZONES,
                   template)
    assert found.record == N(target)
