"""Where a DNS-01 TXT record must be written: validation name, CNAME chain, managed zone.

Pure logic; the one lookup it needs (a CNAME per name) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name

from certbot_epages.errors import DelegationError, DNSError

CHALLENGE_LABEL = "_acme-challenge"


@dataclass(frozen=True)
class Location:
    """Where the TXT values of one certificate domain go.

    ``chain`` starts at the validation name and follows CNAMEs; ``record`` is its last name,
    the one actually written, inside the managed ``zone``.
    """

    domain: str
    chain: tuple[dns.name.Name, ...]
    zone: dns.name.Name
    record: dns.name.Name


def base_name(domain: str) -> dns.name.Name:
    """Return the domain as an absolute, lowercase DNS name (``*.x`` gives ``x``; IDNA encoded)."""
    text = domain.strip().rstrip(".")
    if text.startswith("*."):
        text = text[2:]
    if not text or "*" in text:
        raise DNSError(
            f"{domain!r} is not a domain name a certificate can be validated for by DNS-01; "
            f"use a name like shop.example or *.shop.example"
        )
    try:
        return dns.name.from_text(text + ".").canonicalize()
    except dns.exception.DNSException as e:
        raise DNSError(f"{domain!r} is not a valid domain name: {e}") from None


def validation_name(domain: str) -> dns.name.Name:
    """``_acme-challenge.<domain>``; a wildcard ``*.x`` is validated at ``_acme-challenge.x``."""
    base = base_name(domain)
    try:
        return dns.name.Name((CHALLENGE_LABEL.encode(), *base.labels))
    except dns.exception.DNSException as e:
        raise DNSError(f"{domain!r}: the validation name would be invalid: {e}") from None


def format_chain(chain: Sequence[dns.name.Name]) -> str:
    """Render a chain as ``a -> b -> c``."""
    return " -> ".join(str(name) for name in chain)


def follow_chain(
    start: dns.name.Name,
    lookup_cname: Callable[[dns.name.Name], dns.name.Name | None],
    max_hops: int = 8,
) -> tuple[dns.name.Name, ...]:
    """Follow CNAMEs from ``start``: ``(start, target1, ...)``, ending at a name without CNAME.

    ``lookup_cname`` returns a name's CNAME target, or None if it has none.
    Raises DelegationError on a loop or on more than ``max_hops`` hops.
    """
    chain = [start.canonicalize()]
    while True:
        target = lookup_cname(chain[-1])
        if target is None:
            return tuple(chain)
        target = target.canonicalize()
        if target in chain:
            raise DelegationError(
                f"CNAME loop: {format_chain([*chain, target])}; fix the CNAME records so the "
                f"chain ends at a name in a managed zone"
            )
        if len(chain) > max_hops:
            raise DelegationError(
                f"more than {max_hops} CNAME hops: {format_chain([*chain, target])} ...; "
                f"point {chain[0]} more directly at a name in a managed zone"
            )
        chain.append(target)


def choose_zone(name: dns.name.Name, zones: Sequence[dns.name.Name]) -> dns.name.Name | None:
    """Return the zone ``name`` belongs to: the longest (by labels) zone it is in, or None."""
    best: dns.name.Name | None = None
    for zone in zones:
        if name.is_subdomain(zone) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def delegation_target(domain: str, delegation_template: str) -> dns.name.Name:
    """Return the CNAME target a customer must point ``_acme-challenge.<domain>`` at.

    ``delegation_template`` is formatted with ``domain`` = the base domain (no ``*.``, no final
    dot), e.g. ``_acme-challenge.{domain}.dyn.platform.example``; the result is absolute.
    """
    base = base_name(domain).to_text(omit_final_dot=True)
    try:
        text = delegation_template.format(domain=base)
        return dns.name.from_text(text).canonicalize()
    except (KeyError, IndexError, ValueError, dns.exception.DNSException) as e:
        raise DNSError(
            f"the delegation template {delegation_template!r} does not give a valid name for "
            f"{domain!r} ({e}); it may only use {{domain}}, e.g. "
            f"'_acme-challenge.{{domain}}.dyn.platform.example.'"
        ) from None


def locate(
    domain: str,
    lookup_cname: Callable[[dns.name.Name], dns.name.Name | None],
    zones: Sequence[dns.name.Name],
    delegation_template: str,
) -> Location:
    """Find where the TXT for ``domain`` must be written.

    Follows the CNAME chain from the validation name; its last name must lie in one of
    ``zones``. Otherwise raises DelegationError showing the chain and the exact CNAME record
    the customer has to create.
    """
    start = validation_name(domain)
    chain = follow_chain(start, lookup_cname)
    record = chain[-1]
    zone = choose_zone(record, zones)
    if zone is None:
        target = delegation_target(domain, delegation_template)
        if len(chain) == 1:
            found = f"{start} has no CNAME and is not in a managed zone"
            action = "Create this record"
        else:
            found = (
                f"the CNAME chain {format_chain(chain)} ends outside the managed zones"
            )
            action = f"Replace the CNAME at {start} with this record"
        managed = ", ".join(str(z) for z in zones) or "none configured"
        raise DelegationError(
            f"{domain}: {found} (managed zones: {managed}). {action} in the DNS of "
            f"{base_name(domain)}: {start} CNAME {target}"
        )
    _check_record(domain, chain, zone, delegation_template)
    return Location(domain=domain, chain=chain, zone=zone, record=record)


def may_write(domain: str, record: dns.name.Name, zone: dns.name.Name, template: str) -> bool:
    """Whether our signed writes for ``domain`` may touch ``record`` in ``zone``.

    Only an ``_acme-challenge`` name below the zone apex, or the delegation target we told the
    customer to use: a CNAME (or a cleanup hook's input) pointing at ``_dmarc.<zone>`` or the
    apex would otherwise let a customer add TXT records, and placeholder deletions, where they
    do harm.
    """
    return record != zone and record.is_subdomain(zone) and (
        record.labels[0].lower() == CHALLENGE_LABEL.encode()
        or record == delegation_target(domain, template)
    )


def _check_record(
    domain: str, chain: tuple[dns.name.Name, ...], zone: dns.name.Name, template: str
) -> None:
    """The customer controls the CNAME, so it must not steer our signed writes onto any name."""
    record = chain[-1]
    if not may_write(domain, record, zone, template):
        raise DelegationError(
            f"{domain}: the CNAME chain {format_chain(chain)} ends at {record}, which is not an "
            f"_acme-challenge name; point {chain[0]} at "
            f"{delegation_target(domain, template)} instead"
        )
