"""Preflight of one certificate before any ACME order: which challenge, or why none can work.

The decision (:func:`check`, :func:`caa_outcome`) is pure logic over a :class:`Resolver`;
:class:`DnsResolver` is the real DNS behind it. Every failure carries a reason and a fix that
names the exact record to create or change.

Challenge choice for the names of one certificate:

* a certificate made only of names directly under a platform domain (``shop.platform.example``)
  rides on the platform wildcard certificate: challenge ``dns-01`` (via the wildcard), and each
  name must resolve only to load balancer addresses;
* otherwise ``dns-01`` when every name's ``_acme-challenge`` leads into a managed zone, else
  ``http-01`` when every name resolves only to load balancer addresses; a wildcard name can
  only use ``dns-01``;
* CAA (RFC 8659) must allow the CA for every name that is actually ordered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.CAA
import dns.resolver

from certbot_epages.dns.chain import base_name
from certbot_epages.errors import DelegationError, DNSError

if TYPE_CHECKING:
    from certbot_epages.dns.client import DnsClient

DNS_01 = "dns-01"
HTTP_01 = "http-01"
DEFAULT_CA_IDENTITIES = ("letsencrypt.org",)

#: The issuer critical flag of a CAA record (RFC 8659, section 4.1).
CAA_CRITICAL = 128
#: Property tags a CA understands; any other tag flagged critical forbids issuance.
KNOWN_CAA_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail"})


@dataclass(frozen=True)
class Verdict:
    """The outcome of a preflight: the challenge to use, or why none works and how to fix it."""

    ok: bool
    challenge: str | None  # "dns-01" | "http-01" | None when not ok
    reason: str | None = None
    fix: str | None = None


@dataclass(frozen=True)
class CaaRecord:
    """One CAA resource record: flags, property tag and value (RFC 8659)."""

    flags: int
    tag: str
    value: str


class Resolver(Protocol):
    """The DNS lookups a preflight needs; the I/O edge, so tests can fake DNS.

    Any method may raise :class:`~certbot_epages.errors.DNSError` when a lookup fails for
    another reason than the name or record not existing; :func:`check` turns it into a failed
    :class:`Verdict`.
    """

    def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of ``name`` after CNAMEs; [] for NXDOMAIN or no data."""
        ...

    def caa(self, name: str) -> list[CaaRecord] | None:
        """The CAA records at ``name`` (following its CNAME), or None if it has none."""
        ...

    def delegated(self, name: str) -> str | None:
        """None if ``_acme-challenge.<name>`` leads into a managed zone, else the record to make.

        The text is the DelegationError message, which names the CNAME record to create.
        """
        ...


# --- CAA ---------------------------------------------------------------------------------


class _CaaOutcome(NamedTuple):
    allowed: bool
    reason: str | None = None
    fix: str | None = None


def _issuer(value: str) -> str:
    """The issuer domain of an ``issue``/``issuewild`` value: before any ``;``, normalised."""
    return value.split(";", 1)[0].strip().rstrip(".").lower()


def caa_outcome(
    name: str, lookup: Callable[[str], list[CaaRecord] | None], identities: Sequence[str]
) -> _CaaOutcome:
    """Whether CAA lets one of the CA ``identities`` issue for ``name`` (RFC 8659).

    ``lookup(n)`` returns the CAA records at exactly ``n`` (a lowercase name without final dot),
    or None if there are none. The relevant RRset is the first found climbing from the name (the
    base of a wildcard) towards the root; none anywhere allows. When not allowed, the outcome
    says why and which record to add or remove.
    """
    wanted = {_issuer(identity) for identity in identities} - {""}
    if not wanted:
        raise ValueError("no CA identities configured for the CAA check")
    wildcard = name.strip().startswith("*.")
    current = base_name(name)
    # Climb from the name up to, but not including, the root (RFC 8659, section 3).
    while current != dns.name.root:
        where = current.to_text(omit_final_dot=True)
        records = lookup(where)
        if records:
            break
        current = current.parent()
    else:
        return _CaaOutcome(True)

    ca = identities[0].strip()
    for record in records:
        tag = record.tag.strip().lower()
        if record.flags & CAA_CRITICAL and tag not in KNOWN_CAA_TAGS:
            return _CaaOutcome(
                False,
                f"CAA at {where} has a critical record with the unknown tag {record.tag!r}, "
                f"which forbids issuance by every CA",
                f"remove the record {where}. CAA {record.flags} {record.tag} "
                f'"{record.value}" or clear its critical flag (use flags 0)',
            )
    issue = [r for r in records if r.tag.strip().lower() == "issue"]
    issuewild = [r for r in records if r.tag.strip().lower() == "issuewild"]
    tag, relevant = ("issuewild", issuewild) if wildcard and issuewild else ("issue", issue)
    if not relevant:
        return _CaaOutcome(True)  # e.g. only iodef: no restriction on issuance
    if any(_issuer(r.value) in wanted for r in relevant):
        return _CaaOutcome(True)
    allowed = sorted({_issuer(r.value) for r in relevant} - {""})
    listed = ", ".join(allowed) if allowed else "no CA at all"
    return _CaaOutcome(
        False,
        f"CAA at {where} forbids {ca} for {name}: its {tag} records allow {listed}",
        f'add: {where}. CAA 0 {tag} "{ca}"',
    )


# --- the challenge decision ----------------------------------------------------------------


def _normalise_address(address: str) -> str:
    try:
        return ipaddress.ip_address(address.strip()).compressed
    except ValueError:
        return address.strip().lower()


def _address_records(name: str, lb_addresses: Sequence[str]) -> str:
    """The records that make ``name`` point at the load balancers, e.g. ``x. A 192.0.2.1``."""
    if not lb_addresses:
        return f"A/AAAA records for {name}. (no load balancer addresses are configured)"
    records = []
    for address in lb_addresses:
        try:
            rdtype = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
        except ValueError:
            rdtype = "A"
        records.append(f"{name}. {rdtype} {address}")
    return "; ".join(records)


def _is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def _rides_on_platform_wildcard(name: str, platform: Sequence[dns.name.Name]) -> bool:
    """``shop.platform.example``: exactly one label under a platform domain, not a wildcard."""
    if _is_wildcard(name):
        return False
    parsed = base_name(name)
    return len(parsed) > 1 and parsed.parent() in platform


class _Failures:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.fixes: list[str] = []

    def add(self, reason: str, fix: str) -> None:
        self.reasons.append(reason)
        self.fixes.append(fix)

    def verdict(self, challenge: str) -> Verdict:
        if not self.reasons:
            return Verdict(ok=True, challenge=challenge)
        return Verdict(
            ok=False, challenge=None, reason="; ".join(self.reasons), fix="; ".join(self.fixes)
        )


def _check_addresses(
    name: str, resolver: Resolver, lb: dict[str, str], failures: _Failures
) -> None:
    """Record a failure unless ``name`` resolves only to load balancer addresses."""
    expected = ", ".join(lb.values()) or "(none configured)"
    found = list(dict.fromkeys(resolver.addresses(name)))
    if not found:
        failures.add(
            f"{name} has no A or AAAA records (neither directly nor through a CNAME)",
            f"create A/AAAA records pointing at the load balancers ({expected}), replacing any "
            f"CNAME at {name}: {_address_records(name, list(lb.values()))}",
        )
        return
    foreign = [a for a in found if _normalise_address(a) not in lb]
    if foreign:
        failures.add(
            f"{name} points at {', '.join(found)} ({', '.join(foreign)} not a load balancer), "
            f"expected only the load balancers: {expected}",
            f"change the A/AAAA records of {name} (or the CNAME target they come from) to: "
            f"{_address_records(name, list(lb.values()))}",
        )


def _check_caa(
    names: Sequence[str], resolver: Resolver, identities: Sequence[str], failures: _Failures
) -> None:
    for name in names:
        outcome = caa_outcome(name, resolver.caa, identities)
        if not outcome.allowed:
            failures.add(outcome.reason or "", outcome.fix or "")


def _decide(
    names: Sequence[str],
    resolver: Resolver,
    lb: dict[str, str],
    platform: Sequence[dns.name.Name],
    identities: Sequence[str],
) -> Verdict:
    failures = _Failures()
    if all(_rides_on_platform_wildcard(name, platform) for name in names):
        # No order for these names: the platform wildcard certificate covers them.
        for name in names:
            _check_addresses(name, resolver, lb, failures)
        return failures.verdict(DNS_01)

    delegation = {name: resolver.delegated(name) for name in names}
    if all(problem is None for problem in delegation.values()):
        _check_caa(names, resolver, identities, failures)
        return failures.verdict(DNS_01)

    wildcards = [name for name in names if _is_wildcard(name)]
    if wildcards:
        # One challenge per certificate, and only DNS-01 can validate a wildcard.
        for name in names:
            problem = delegation[name]
            if problem is not None:
                failures.add(
                    f"{name}: the certificate needs DNS-01 (it includes the wildcard "
                    f"{wildcards[0]}), but _acme-challenge.{base_name(name)} does not lead "
                    f"into a managed zone",
                    problem,
                )
        _check_caa(names, resolver, identities, failures)
        return failures.verdict(DNS_01)

    for name in names:
        _check_addresses(name, resolver, lb, failures)
    _check_caa(names, resolver, identities, failures)
    return failures.verdict(HTTP_01)


def check(
    names: Sequence[str],
    *,
    resolver: Resolver,
    lb_addresses: Collection[str],
    platform_domains: Sequence[str],
    ca_identities: Sequence[str] = DEFAULT_CA_IDENTITIES,
) -> Verdict:
    """Preflight the certificate for ``names``: the challenge to order with, or why none works.

    A lookup failing with :class:`~certbot_epages.errors.DNSError` (other than the name or the
    record not existing) gives a failed verdict with that error as the reason.
    """
    cleaned = list(dict.fromkeys(n.strip().rstrip(".").lower() for n in names))
    if not cleaned:
        return Verdict(
            ok=False, challenge=None, reason="the certificate has no names",
            fix="list at least one domain for the shop",
        )
    try:
        for name in cleaned:
            base_name(name)  # rejects names no certificate can be validated for
        platform = [base_name(domain) for domain in platform_domains]
    except DNSError as e:
        return Verdict(
            ok=False, challenge=None, reason=str(e),
            fix="correct the domain name in the shop list",
        )
    lb = {_normalise_address(a): a.strip() for a in lb_addresses}
    try:
        return _decide(cleaned, resolver, lb, platform, ca_identities)
    except DNSError as e:
        return Verdict(
            ok=False, challenge=None, reason=str(e),
            fix="retry later; if it persists, check that the domain's nameservers and the "
            "configured resolvers answer",
        )


# --- the real DNS ------------------------------------------------------------------------


class DnsResolver:
    """The :class:`Resolver` over real DNS: ``client.resolver`` for lookups, ``client.locate``.

    CAA answers are cached for the lifetime of the object, since thousands of names share the
    same parents (``com``, ``de``, a customer's apex) during one fleet run.
    """

    def __init__(self, client: DnsClient) -> None:
        self._client = client
        self._caa: dict[str, list[CaaRecord] | None] = {}

    def _resolve(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        return self._client.lookup(name, rdtype)

    def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of ``name`` after CNAMEs; [] for NXDOMAIN or no data."""
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = self._resolve(name, rdtype)
            if answer is not None:
                found.extend(rdata.to_text() for rdata in answer)
        return found

    def caa(self, name: str) -> list[CaaRecord] | None:
        """The CAA records at ``name`` (following its CNAME), or None if it has none."""
        key = name.rstrip(".").lower()
        if key not in self._caa:
            answer = self._resolve(key, dns.rdatatype.CAA)
            records = None
            if answer is not None:
                records = [
                    CaaRecord(
                        flags=rdata.flags,
                        tag=rdata.tag.decode("ascii", "replace"),
                        value=rdata.value.decode("utf-8", "replace"),
                    )
                    for rdata in answer
                    if isinstance(rdata, dns.rdtypes.ANY.CAA.CAA)
                ] or None
            self._caa[key] = records
        return self._caa[key]

    def delegated(self, name: str) -> str | None:
        """None if ``_acme-challenge.<name>`` leads into a managed zone, else the record to make."""
        try:
            self._client.locate(name)
        except DelegationError as e:
            return str(e)
        except DNSError as e:
            raise DNSError(
                f"DNS lookup of the _acme-challenge name of {name} failed: {e}"
            ) from None
        return None
