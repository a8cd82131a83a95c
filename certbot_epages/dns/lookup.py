"""Reading DNS: the resolver as configured, lookups, CNAMEs asked of a zone's primaries.

A lookup tells "there is none" (None) from a failure (a DNSError naming it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.resolver

from certbot_epages.dns import propagation
from certbot_epages.errors import DNSError
from certbot_epages.netaddr import HostPort


def make_resolver(resolvers: Sequence[HostPort] | None, timeout: float) -> dns.resolver.Resolver:
    """A resolver over ``resolvers`` (None: the system's), each lookup within ``timeout``."""
    if resolvers is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as e:
            raise DNSError(
                f"cannot read the system resolver configuration ({e}); configure "
                f"resolvers explicitly"
            ) from None
    else:
        resolver = dns.resolver.Resolver(configure=False)
        # Addresses and a port map, not dns.nameserver (dnspython 2.3 has none).
        resolver.nameserver_ports = {r.host: r.port for r in resolvers}
        resolver.nameservers = [r.host for r in resolvers]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def records(resolver: dns.resolver.Resolver, name: dns.name.Name | str,
            rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
    """Records of ``name``; None when there are none.

    NXDOMAIN and an empty answer are None; any other failure is a DNSError naming the
    lookup.
    """
    qname = name if isinstance(name, dns.name.Name) else \
        dns.name.from_text(name.rstrip(".") + ".")
    try:
        return resolver.resolve(qname, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as e:
        shown = qname.to_text(omit_final_dot=True)
        raise DNSError(f"DNS lookup of {shown} {dns.rdatatype.to_text(rdtype)} failed: {e}; "
                       "check the configured resolvers") from None


def cname(resolver: dns.resolver.Resolver, name: dns.name.Name) -> dns.name.Name | None:
    """The CNAME target of ``name`` through ``resolver``, if it has one."""
    answer = records(resolver, name, dns.rdatatype.CNAME)
    if answer is None:
        return None
    for rdata in answer:
        if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME):
            return rdata.target
    return None


def cname_at_primaries(name: dns.name.Name, zone: dns.name.Name,
                       primaries: Sequence[HostPort], timeout: float) -> dns.name.Name | None:
    """Names in a managed zone are asked of its primary, authoritatively.

    A recursive resolver would cache the NXDOMAIN of a not-yet-written challenge name, and
    where the CA shares that resolver (as in the sandbox) it would then miss the new TXT.
    """
    failures = []
    for server in primaries:
        try:
            response = propagation.ask(server, name, dns.rdatatype.CNAME, timeout)
        except propagation.QueryFailed as e:
            failures.append(f"{server}: {e}")
            continue
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return None
        if rcode != dns.rcode.NOERROR:
            failures.append(f"{server}: answered {dns.rcode.to_text(rcode)}")
            continue
        for rrset in response.answer:
            if rrset.name == name and rrset.rdtype == dns.rdatatype.CNAME:
                return cast(dns.rdtypes.ANY.CNAME.CNAME, rrset[0]).target
        return None
    raise DNSError(
        f"cannot look up the CNAME of {name} at the primaries of zone {zone}: "
        + "; ".join(failures)
    )
