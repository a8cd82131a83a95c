from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from certbot_epages.dns.client import DnsClient
from certbot_epages.errors import DelegationError, DNSError
from certbot_epages.fleet.preflight import (
    CaaRecord,
    DnsResolver,
    Resolver,
    Verdict,
    caa_outcome,
    check,
)

pytestmark = pytest.mark.unit


def caa_verdict(name: str, lookup: Callable[[str], list[CaaRecord] | None],
                identities: list[str]) -> tuple[bool, str | None]:
    """The production CAA decision (the one check() uses), as (allowed, reason and fix)."""
    outcome = caa_outcome(name, lookup, identities)
    return (True, None) if outcome.allowed else (False, f"{outcome.reason}; fix: {outcome.fix}")

LB = ["192.0.2.10", "2001:db8::10"]
PLATFORM = ["platform.example"]
DELEGATE = (
    "{name}: _acme-challenge.{name}. has no CNAME and is not in a managed zone (managed zones: "
    "dyn.platform.example.). Create this record in the DNS of {name}.: _acme-challenge.{name}. "
    "CNAME _acme-challenge.{name}.dyn.platform.example."
)


@dataclass
class FakeResolver:
    """DNS as dictionaries; names not listed have no records and no delegation."""

    addrs: dict[str, list[str]] = field(default_factory=dict)
    caas: dict[str, list[CaaRecord]] = field(default_factory=dict)
    delegated_names: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def addresses(self, name: str) -> list[str]:
        self.asked.append(("addresses", name))
        if name in self.failing:
            raise DNSError(f"DNS lookup of {name} A failed: SERVFAIL")
        return list(self.addrs.get(name, []))

    def caa(self, name: str) -> list[CaaRecord] | None:
        self.asked.append(("caa", name))
        return self.caas.get(name)

    def delegated(self, name: str) -> str | None:
        self.asked.append(("delegated", name))
        base = name.removeprefix("*.")
        return None if base in self.delegated_names else DELEGATE.format(name=base)


def run(names: Sequence[str], resolver: Resolver, **kwargs: Any) -> Verdict:
    return check(names, resolver=resolver, lb_addresses=LB, platform_domains=PLATFORM, **kwargs)


def caa_lookup(table: dict[str, list[CaaRecord]]) -> Any:
    asked: list[str] = []

    def lookup(name: str) -> list[CaaRecord] | None:
        asked.append(name)
        return table.get(name)

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


# --- challenge choice ----------------------------------------------------------------------


def test_http01_when_not_delegated_and_pointing_at_lbs() -> None:
    fake = FakeResolver(addrs={"shop.example": ["192.0.2.10"], "www.shop.example": LB})
    assert run(["shop.example", "www.shop.example"], fake) == Verdict(True, "http-01")


def test_http01_accepts_other_spellings_of_lb_addresses() -> None:
    fake = FakeResolver(addrs={"shop.example": ["2001:0db8:0000::0010"]})
    assert run(["Shop.Example."], fake) == Verdict(True, "http-01")


def test_dns01_when_every_name_is_delegated() -> None:
    fake = FakeResolver(delegated_names={"shop.example", "www.shop.example"})
    # DNS-01 does not care where the names point (e.g. a shop before its DNS moves).
    assert run(["shop.example", "www.shop.example"], fake) == Verdict(True, "dns-01")
    assert not any(kind == "addresses" for kind, _ in fake.asked)


def test_mixed_delegation_falls_back_to_http01() -> None:
    fake = FakeResolver(
        addrs={"shop.example": LB, "alias.example": ["192.0.2.10"]},
        delegated_names={"shop.example"},
    )
    assert run(["shop.example", "alias.example"], fake) == Verdict(True, "http-01")


def test_mixed_delegation_fails_when_a_name_points_elsewhere() -> None:
    fake = FakeResolver(
        addrs={"shop.example": ["198.51.100.7"], "alias.example": ["192.0.2.10"]},
        delegated_names={"shop.example"},
    )
    verdict = run(["shop.example", "alias.example"], fake)
    assert not verdict.ok and verdict.challenge is None
    assert verdict.reason is not None and "shop.example points at 198.51.100.7" in verdict.reason


def test_wildcard_requires_delegation() -> None:
    fake = FakeResolver(addrs={"shop.example": LB})
    verdict = run(["*.shop.example", "shop.example"], fake)
    assert not verdict.ok and verdict.challenge is None
    assert verdict.reason is not None and "wildcard *.shop.example" in verdict.reason
    expected_record = (
        "_acme-challenge.shop.example. CNAME _acme-challenge.shop.example.dyn.platform.example."
    )
    assert verdict.fix is not None and expected_record in verdict.fix


def test_wildcard_delegated_uses_dns01() -> None:
    fake = FakeResolver(delegated_names={"shop.example"})
    assert run(["*.shop.example", "shop.example"], fake) == Verdict(True, "dns-01")


def test_wildcard_makes_dns01_required_for_every_name() -> None:
    fake = FakeResolver(addrs={"other.example": LB}, delegated_names={"shop.example"})
    verdict = run(["*.shop.example", "other.example"], fake)
    assert not verdict.ok
    assert verdict.reason is not None and verdict.reason.startswith("other.example:")
    assert verdict.fix == DELEGATE.format(name="other.example")


def test_no_address() -> None:
    verdict = run(["shop.example"], FakeResolver())
    assert not verdict.ok and verdict.challenge is None
    assert verdict.reason is not None and "no A or AAAA records" in verdict.reason
    assert verdict.fix is not None
    assert "shop.example. A 192.0.2.10" in verdict.fix
    assert "shop.example. AAAA 2001:db8::10" in verdict.fix


def test_points_elsewhere_lists_found_and_expected() -> None:
    fake = FakeResolver(addrs={"shop.example": ["192.0.2.10", "198.51.100.7"]})
    verdict = run(["shop.example"], fake)
    assert not verdict.ok
    assert verdict.reason is not None
    assert "192.0.2.10, 198.51.100.7" in verdict.reason  # found
    assert "198.51.100.7 not a load balancer" in verdict.reason
    assert "192.0.2.10, 2001:db8::10" in verdict.reason  # expected
    assert verdict.fix is not None and "shop.example. A 192.0.2.10" in verdict.fix


def test_failures_of_several_names_are_all_reported() -> None:
    fake = FakeResolver(addrs={"b.example": ["198.51.100.7"]})
    verdict = run(["a.example", "b.example"], fake)
    assert verdict.reason is not None and verdict.fix is not None
    assert "a.example has no A" in verdict.reason and "b.example points at" in verdict.reason
    assert "a.example. A" in verdict.fix and "b.example. A" in verdict.fix


def test_dns_failure_is_a_failed_verdict() -> None:
    fake = FakeResolver(failing={"shop.example"})
    verdict = run(["shop.example"], fake)
    assert verdict == Verdict(False, None, "DNS lookup of shop.example A failed: SERVFAIL",
                              verdict.fix)
    assert verdict.fix


def test_invalid_or_empty_names() -> None:
    assert not run([], FakeResolver()).ok
    verdict = run(["a.*.example"], FakeResolver())
    assert not verdict.ok and verdict.reason is not None and "a.*.example" in verdict.reason


# --- platform names ------------------------------------------------------------------------


def test_platform_subdomain_rides_on_wildcard() -> None:
    fake = FakeResolver(
        addrs={"shop.platform.example": LB},
        caas={"platform.example": [CaaRecord(0, "issue", "other-ca.example")]},
    )
    assert run(["shop.platform.example"], fake) == Verdict(True, "dns-01")
    assert ("delegated", "shop.platform.example") not in fake.asked
    assert not any(kind == "caa" for kind, _ in fake.asked)  # no order of its own


def test_platform_subdomain_must_point_at_lbs() -> None:
    fake = FakeResolver(addrs={"shop.platform.example": ["198.51.100.7"]})
    verdict = run(["shop.platform.example"], fake)
    assert not verdict.ok
    assert verdict.reason is not None and "198.51.100.7" in verdict.reason


def test_platform_wildcard_needs_delegation_of_platform_domain() -> None:
    verdict = run(["*.platform.example"], FakeResolver())
    assert not verdict.ok
    assert verdict.fix == DELEGATE.format(name="platform.example")
    fake = FakeResolver(delegated_names={"platform.example"})
    assert run(["*.platform.example"], fake) == Verdict(True, "dns-01")


def test_deeper_platform_name_is_not_covered_by_wildcard() -> None:
    fake = FakeResolver(addrs={"a.b.platform.example": LB})
    # *.platform.example does not cover a.b.platform.example: it needs its own order.
    assert run(["a.b.platform.example"], fake) == Verdict(True, "http-01")
    assert ("delegated", "a.b.platform.example") in fake.asked


# --- CAA -----------------------------------------------------------------------------------


def test_caa_none_anywhere_allows() -> None:
    lookup = caa_lookup({})
    assert caa_verdict("www.shop.example", lookup, ["letsencrypt.org"]) == (True, None)
    assert lookup.asked == ["www.shop.example", "shop.example", "example"]  # never the root


def test_caa_issue_letsencrypt_allows() -> None:
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "issue", "letsencrypt.org")]})
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_value_is_compared_case_insensitively_and_stripped() -> None:
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "ISSUE", "  LetsEncrypt.ORG  ")]})
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_other_ca_forbids_with_fix() -> None:
    fake = FakeResolver(
        addrs={"shop.example": LB},
        caas={"shop.example": [CaaRecord(0, "issue", "other-ca.example")]},
    )
    verdict = run(["shop.example"], fake)
    assert not verdict.ok and verdict.challenge is None
    assert verdict.reason is not None and "other-ca.example" in verdict.reason
    assert verdict.fix == 'add: shop.example. CAA 0 issue "letsencrypt.org"'
    allowed, reason = caa_verdict("shop.example", fake.caa, ["letsencrypt.org"])
    assert not allowed and reason is not None and verdict.fix in reason


def test_caa_with_parameters_allows() -> None:
    value = "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/1"
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "issue", value)]})
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_semicolon_only_forbids_everyone() -> None:
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "issue", ";")]})
    allowed, reason = caa_verdict("shop.example", lookup, ["letsencrypt.org"])
    assert not allowed and reason is not None and "no CA at all" in reason


def test_caa_climbs_to_parent() -> None:
    table = {"shop.example": [CaaRecord(0, "issue", "other-ca.example")]}
    lookup = caa_lookup(table)
    allowed, reason = caa_verdict("www.shop.example", lookup, ["letsencrypt.org"])
    assert not allowed and reason is not None
    assert 'add: shop.example. CAA 0 issue "letsencrypt.org"' in reason
    assert lookup.asked == ["www.shop.example", "shop.example"]
    table["shop.example"] = [CaaRecord(0, "issue", "letsencrypt.org")]
    assert caa_verdict("www.shop.example", caa_lookup(table), ["letsencrypt.org"]) == (True, None)


def test_caa_closest_rrset_wins_over_parent() -> None:
    lookup = caa_lookup({
        "www.shop.example": [CaaRecord(0, "issue", "letsencrypt.org")],
        "shop.example": [CaaRecord(0, "issue", "other-ca.example")],
    })
    assert caa_verdict("www.shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_only_iodef_allows() -> None:
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "iodef", "mailto:sec@shop.example")]})
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_issuewild_for_wildcard() -> None:
    table = {
        "shop.example": [
            CaaRecord(0, "issue", "letsencrypt.org"),
            CaaRecord(0, "issuewild", "other-ca.example"),
        ]
    }
    lookup = caa_lookup(table)
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)
    allowed, reason = caa_verdict("*.shop.example", lookup, ["letsencrypt.org"])
    assert not allowed and reason is not None
    assert 'add: shop.example. CAA 0 issuewild "letsencrypt.org"' in reason
    # Without issuewild records, a wildcard goes by the issue records.
    only_issue = caa_lookup({"shop.example": [CaaRecord(0, "issue", "letsencrypt.org")]})
    assert caa_verdict("*.shop.example", only_issue, ["letsencrypt.org"]) == (True, None)
    # issuewild does not restrict non-wildcard names.
    wild_only = caa_lookup({"shop.example": [CaaRecord(0, "IssueWild", "other-ca.example")]})
    assert caa_verdict("shop.example", wild_only, ["letsencrypt.org"]) == (True, None)


def test_caa_wildcard_check_in_preflight() -> None:
    fake = FakeResolver(
        delegated_names={"shop.example"},
        caas={"shop.example": [CaaRecord(0, "issuewild", ";")]},
    )
    verdict = run(["*.shop.example", "shop.example"], fake)
    assert not verdict.ok
    assert verdict.fix == 'add: shop.example. CAA 0 issuewild "letsencrypt.org"'


def test_caa_critical_unknown_tag_forbids() -> None:
    lookup = caa_lookup({
        "shop.example": [
            CaaRecord(0, "issue", "letsencrypt.org"),
            CaaRecord(128, "tbs", "unknown"),
        ]
    })
    allowed, reason = caa_verdict("shop.example", lookup, ["letsencrypt.org"])
    assert not allowed and reason is not None and "'tbs'" in reason
    # Not critical: ignored.
    lookup = caa_lookup({
        "shop.example": [CaaRecord(0, "issue", "letsencrypt.org"), CaaRecord(0, "tbs", "x")]
    })
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)
    # Critical but known: fine.
    lookup = caa_lookup({"shop.example": [CaaRecord(128, "issue", "letsencrypt.org")]})
    assert caa_verdict("shop.example", lookup, ["letsencrypt.org"]) == (True, None)


def test_caa_configured_identities() -> None:
    lookup = caa_lookup({"shop.example": [CaaRecord(0, "issue", "pki.internal.example")]})
    assert caa_verdict("shop.example", lookup, ["a.example", "pki.internal.example"]) == (
        True, None,
    )
    fake = FakeResolver(addrs={"shop.example": LB}, caas={"shop.example": lookup("shop.example")})
    verdict = run(["shop.example"], fake, ca_identities=["pki.internal.example"])
    assert verdict == Verdict(True, "http-01")


# --- DnsResolver over a fake DnsClient -------------------------------------------------------


class FakeDnsResolver:
    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def resolve(self, qname: dns.name.Name, rdtype: Any, search: bool = True) -> Any:
        key = (qname.to_text(), dns.rdatatype.to_text(rdtype))
        self.asked.append(key)
        answer = self.answers.get(key, dns.resolver.NXDOMAIN)
        if isinstance(answer, type) and issubclass(answer, BaseException):
            raise answer
        return answer


class FakeClient:
    lookup = DnsClient.lookup  # the real wrapper, over the fake resolver

    def __init__(self, resolver: FakeDnsResolver, delegation: dict[str, Exception | None]):
        self.resolver = resolver
        self.delegation = delegation

    def locate(self, domain: str) -> None:
        problem = self.delegation.get(domain)
        if problem is not None:
            raise problem


def rrset(name: str, rdtype: str, *values: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, 60, dns.rdataclass.IN, rdtype, *values)


def test_dns_resolver() -> None:
    answers: dict[tuple[str, str], Any] = {
        ("shop.example.", "A"): rrset("shop.example.", "A", "192.0.2.10"),
        ("shop.example.", "AAAA"): dns.resolver.NoAnswer,
        ("shop.example.", "CAA"): rrset(
            "shop.example.", "CAA", '0 issue "letsencrypt.org"', '128 tbs "x"'
        ),
        ("broken.example.", "A"): dns.exception.Timeout,
    }
    fake = FakeDnsResolver(answers)
    client = FakeClient(fake, {
        "shop.example": None,
        "other.example": DelegationError("create _acme-challenge.other.example. CNAME x."),
        "broken.example": DNSError("cannot look up the CNAME of x: timeout"),
    })
    resolver = DnsResolver(client)  # type: ignore[arg-type]
    assert resolver.addresses("shop.example") == ["192.0.2.10"]
    assert resolver.addresses("none.example") == []
    assert resolver.caa("shop.example") == [
        CaaRecord(0, "issue", "letsencrypt.org"), CaaRecord(128, "tbs", "x")
    ]
    assert resolver.caa("example") is None
    resolver.caa("shop.example")
    assert fake.asked.count(("shop.example.", "CAA")) == 1  # cached
    assert resolver.delegated("shop.example") is None
    assert resolver.delegated("other.example") == "create _acme-challenge.other.example. CNAME x."
    with pytest.raises(DNSError, match="DNS lookup of the _acme-challenge name of broken"):
        resolver.delegated("broken.example")
    with pytest.raises(DNSError, match="DNS lookup of broken.example A failed"):
        resolver.addresses("broken.example")
    verdict = check(
        ["broken.example"], resolver=resolver, lb_addresses=LB, platform_domains=PLATFORM
    )
    assert not verdict.ok
    assert verdict.reason is not None and verdict.reason.startswith("DNS lookup of")
