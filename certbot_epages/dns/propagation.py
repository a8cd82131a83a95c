"""Wait until every authoritative server of a zone returns every expected TXT value.

Servers are asked directly (RD flag cleared), polled at a short interval until a deadline.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver

from certbot_epages.errors import DNSError, PropagationError
from certbot_epages.netaddr import HostPort

logger = logging.getLogger(__name__)

#: ``(server, name, timeout) -> TXT values``; raises DNSError when the server gives no answer.
Query = Callable[[HostPort, dns.name.Name, float], set[str]]

Expected = Mapping[dns.name.Name, set[str]]
Seen = Mapping[HostPort, Mapping[dns.name.Name, set[str]]]
Missing = dict[HostPort, dict[dns.name.Name, set[str]]]


class QueryFailed(DNSError):
    """A server gave no usable answer (timeout, SERVFAIL, REFUSED, not authoritative)."""


class Unreachable(QueryFailed):
    """The host cannot send to the address at all (no route, no IPv6): nothing was asked."""


# What the socket layer says at once when a host has no way to an address (family).
_UNREACHABLE = frozenset({
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL,
    errno.EPFNOSUPPORT, errno.EPROTONOSUPPORT,
})


# --- pure ------------------------------------------------------------------------------------


def missing_values(expected: Expected, seen: Seen) -> Missing:
    """Return what each server in ``seen`` still lacks of ``expected``; empty when done.

    Extra values a server returns (other clients' challenges) do not matter.
    """
    missing: Missing = {}
    for server, answers in seen.items():
        lacks = {
            name: values - answers.get(name, set())
            for name, values in expected.items()
            if values - answers.get(name, set())
        }
        if lacks:
            missing[server] = lacks
    return missing


def excuse_unreachable(
    missing: Missing,
    unreachable: set[HostPort],
    answered: set[HostPort],
    labels: Mapping[HostPort, str],
) -> Missing:
    """Drop addresses this host cannot reach while another address of the same server answers.

    A name server with an AAAA record on a host without IPv6 is not "lacking the value": it
    is the same server as its IPv4 address, which is asked instead. Addresses are the same
    server when they have the same label (the NS name they were found under).
    """
    def excused(server: HostPort) -> bool:
        name = labels.get(server)
        return server in unreachable and bool(name) and any(
            other != server and labels.get(other) == name and other not in unreachable
            for other in answered
        )

    return {server: lacks for server, lacks in missing.items() if not excused(server)}


def format_missing(
    missing: Mapping[HostPort, Mapping[dns.name.Name, set[str]]],
    errors: Mapping[HostPort, str] | None = None,
    labels: Mapping[HostPort, str] | None = None,
) -> str:
    """Describe ``missing`` as ``ns2. 127.0.0.2:53 lacks "abc" at _acme-challenge.x.; ...``.

    ``labels`` gives a server's name (e.g. its NS name), ``errors`` its last query error.
    """
    errors = errors or {}
    labels = labels or {}
    parts = []
    for server in sorted(missing):
        who = f"{labels[server]} {server}" if server in labels else str(server)
        for name in sorted(missing[server]):
            values = ", ".join(f'"{v}"' for v in sorted(missing[server][name]))
            parts.append(f"{who} lacks {values} at {name}")
        if server in errors:
            parts[-1] += f" (last error: {errors[server]})"
    return "; ".join(parts)


# --- I/O -------------------------------------------------------------------------------------


def _address(host: str) -> str:
    """Return ``host`` if it is an IP literal, else its first address."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])
    except OSError as e:
        raise QueryFailed(f"cannot resolve {host}: {e.strerror or e}") from None


def query_txt(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
    """Ask ``server`` directly (no recursion) for the TXT values at ``name``.

    UDP, retried over TCP if truncated. NXDOMAIN, an empty answer or a CNAME-only answer give
    an empty set. Timeouts, network errors, SERVFAIL, REFUSED and non-authoritative answers
    raise QueryFailed, whose message says why.
    """
    return txt_values(ask(server, name, dns.rdatatype.TXT, timeout), name)


def ask(
    server: HostPort, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, timeout: float
) -> dns.message.Message:
    """One query straight to ``server`` with recursion off; network trouble is QueryFailed."""
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    query.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(
            query, _address(server.host), timeout=timeout, port=server.port
        )
    except dns.exception.Timeout:
        raise QueryFailed(f"no answer within {timeout:.2f}s") from None
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        if e.errno in _UNREACHABLE:
            raise Unreachable(f"unreachable from this host: {reason}") from None
        raise QueryFailed(reason) from None
    except dns.exception.DNSException as e:
        raise QueryFailed(f"bad answer: {type(e).__name__}: {e}") from None
    return response


def txt_values(response: dns.message.Message, name: dns.name.Name) -> set[str]:
    """Return the TXT values at ``name`` in an authoritative ``response``; see query_txt."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise QueryFailed(f"answered {dns.rcode.to_text(rcode)}")
    if not response.flags & dns.flags.AA:
        raise QueryFailed(f"answered without the AA flag: it is not authoritative for {name}")
    if rcode == dns.rcode.NXDOMAIN:
        return set()
    return {
        b"".join(rdata.strings).decode("ascii", "backslashreplace")
        for rrset in response.answer
        if rrset.name == name and rrset.rdclass == dns.rdataclass.IN
        for rdata in rrset
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    }


def wait_for(
    expected: Expected,
    servers: Sequence[HostPort],
    *,
    timeout: float,
    interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    query: Query = query_txt,
    query_timeout: float = 2.0,
    labels: Mapping[HostPort, str] | None = None,
) -> None:
    """Poll until every server returns every expected value; PropagationError at the deadline.

    Only the (server, name) pairs still lacking something are asked again. A failed query
    counts as "not yet"; its reason is kept for the error message. An address this host cannot
    reach at all does not count while another address with the same label answers.
    """
    if not servers:
        raise DNSError("no authoritative servers to check; configure the zone's name servers")
    start = clock()
    deadline = start + timeout
    seen: dict[HostPort, dict[dns.name.Name, set[str]]] = {s: {} for s in servers}
    errors: dict[HostPort, str] = {}
    labels = labels or {}
    unreachable: set[HostPort] = set()
    answered: set[HostPort] = set()
    excused: set[HostPort] = set()
    polls = 0
    def ask(pair: tuple[HostPort, dns.name.Name]) -> tuple[HostPort, dns.name.Name,
                                                          set[str] | DNSError]:
        server, name = pair
        wait = min(query_timeout, max(deadline - clock(), 0.05))
        try:
            return server, name, query(server, name, wait)
        except DNSError as e:
            return server, name, e

    # All questions of a round go out at once: a dead server must not hold up the others.
    missing = missing_values(expected, seen)
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(servers) * len(expected)))) as pool:
        while True:
            polls += 1
            pairs = [(server, name) for server, names in missing.items() for name in names]
            for server, name, answer in pool.map(ask, pairs):
                if isinstance(answer, DNSError):
                    errors[server] = str(answer)
                    logger.debug("%s for %s: %s", server, name, answer)
                    if isinstance(answer, Unreachable):
                        unreachable.add(server)
                else:
                    seen[server][name] = answer
                    errors.pop(server, None)
                    answered.add(server)
                    unreachable.discard(server)
            still = missing_values(expected, seen)
            missing = excuse_unreachable(still, unreachable, answered, labels)
            for server in sorted(set(still) - set(missing) - excused):
                excused.add(server)
                logger.info("%s %s: %s; asking its other address(es) instead", labels[server],
                            server, errors.get(server, "unreachable"))
            now = clock()
            if not missing:
                logger.info(
                    "all %d server(s) return all %d value(s) after %.1fs (%d poll(s))",
                    len(servers), sum(len(v) for v in expected.values()), now - start, polls,
                )
                return
            if now >= deadline:
                raise PropagationError(
                    f"not every authoritative server returned every value within "
                    f"{timeout:.1f}s: {format_missing(missing, errors, labels)}; check that "
                    "these servers are secondaries of the zone that get NOTIFY and zone "
                    "transfers from the primary, or raise the propagation timeout"
                )
            sleep(min(interval, deadline - now))


def discover_nameservers(
    zone: dns.name.Name, resolver: dns.resolver.Resolver
) -> dict[HostPort, str]:
    """Resolve the NS records of ``zone`` to addresses (port 53); map each to its NS name."""
    try:
        answer = resolver.resolve(zone, dns.rdatatype.NS)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        raise DNSError(
            f"zone {zone} has no NS records; delegate it, or configure its name servers "
            f"explicitly"
        ) from None
    except dns.exception.DNSException as e:
        raise DNSError(
            f"cannot look up the NS records of zone {zone}: {e}; check the configured resolvers"
        ) from None
    targets = sorted({rdata.target.canonicalize() for rdata in answer})
    found: dict[HostPort, str] = {}
    for target in targets:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                addresses = resolver.resolve(target, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as e:
                raise DNSError(
                    f"cannot resolve name server {target} of zone {zone}: {e}; check the "
                    f"configured resolvers"
                ) from None
            for rdata in addresses:
                found.setdefault(HostPort(rdata.address, 53), str(target))
    if not found:
        raise DNSError(
            f"the name servers of zone {zone} ({', '.join(map(str, targets))}) have no A or "
            f"AAAA records; fix their address records or configure the name servers explicitly"
        )
    return found
