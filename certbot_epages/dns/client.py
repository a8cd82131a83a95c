"""The DNS client shared by the certbot plugin and the manual hooks.

Takes plain values (no certbot config): managed zones with their primaries and TSIG key,
the resolvers used to follow CNAMEs, and the delegation template customers are told to use.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.resolver

from certbot_epages.dns import chain, propagation, update
from certbot_epages.dns.chain import Location
from certbot_epages.dns.keys import TsigKey
from certbot_epages.errors import DNSError, PropagationError, UpdateError
from certbot_epages.netaddr import HostPort

if TYPE_CHECKING:
    from certbot_epages.config import DnsConfig

logger = logging.getLogger(__name__)

Records = Sequence[tuple[Location, str]]


@dataclass(frozen=True)
class ManagedZone:
    """A zone we may update: its primaries, the key its update-policy grants, its servers.

    ``nameservers`` None means: discover them from the zone's NS records.
    """

    name: dns.name.Name
    primaries: tuple[HostPort, ...]
    key: TsigKey
    nameservers: tuple[HostPort, ...] | None = None


def group_by_zone(records: Records) -> dict[dns.name.Name, dict[dns.name.Name, list[str]]]:
    """Group (location, value) pairs as zone -> record name -> values (order kept, no repeats)."""
    grouped: dict[dns.name.Name, dict[dns.name.Name, list[str]]] = defaultdict(dict)
    for location, value in records:
        values = grouped[location.zone].setdefault(location.record, [])
        if value not in values:
            values.append(value)
    return dict(grouped)


class DnsClient:
    """Locates, writes, awaits and removes DNS-01 TXT records in the managed zones."""

    def __init__(
        self,
        zones: Sequence[ManagedZone],
        *,
        resolvers: Sequence[HostPort] | None,
        delegation: str,
        ttl: int = 60,
        placeholder: str | None = ".empty",
        propagation_timeout: float = 120.0,
        timeout: float = 5.0,
        transport: update.Transport | None = None,
    ) -> None:
        self._zones = {zone.name.canonicalize(): zone for zone in zones}
        self._resolvers = tuple(resolvers) if resolvers is not None else None
        self._delegation = delegation
        self._ttl = ttl
        self._placeholder = placeholder
        self._propagation_timeout = propagation_timeout
        self._timeout = timeout
        self._transport = transport or update.tcp_transport
        self._resolver: dns.resolver.Resolver | None = None
        self._nameservers: dict[dns.name.Name, dict[HostPort, str]] = {}
        if placeholder is not None:
            update.txt_rdata(placeholder)  # fail early on an unusable placeholder

    # --- lookups ---------------------------------------------------------------------------

    @property
    def resolver(self) -> dns.resolver.Resolver:
        """The resolver for CNAME and NS lookups: the configured resolvers, else the system's."""
        if self._resolver is None:
            if self._resolvers is None:
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
                resolver.nameserver_ports = {r.host: r.port for r in self._resolvers}
                resolver.nameservers = [r.host for r in self._resolvers]
            resolver.lifetime = self._timeout
            resolver.timeout = self._timeout
            self._resolver = resolver
        return self._resolver

    def _lookup_cname(self, name: dns.name.Name) -> dns.name.Name | None:
        zone = chain.choose_zone(name, list(self._zones))
        if zone is not None:
            return self._lookup_cname_at_primary(name, self._zones[zone])
        try:
            answer = self.resolver.resolve(name, dns.rdatatype.CNAME)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as e:
            raise DNSError(
                f"cannot look up the CNAME of {name}: {e}; check the configured resolvers"
            ) from None
        for rdata in answer:
            if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME):
                return rdata.target
        return None

    def _lookup_cname_at_primary(
        self, name: dns.name.Name, zone: ManagedZone
    ) -> dns.name.Name | None:
        """Names in a managed zone are asked of its primary, authoritatively.

        A recursive resolver would cache the NXDOMAIN of a not-yet-written challenge name, and
        where the CA shares that resolver (as in the sandbox) it would then miss the new TXT.
        """
        failures = []
        for server in zone.primaries:
            try:
                response = propagation.ask(server, name, dns.rdatatype.CNAME, self._timeout)
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
            f"cannot look up the CNAME of {name} at the primaries of zone {zone.name}: "
            + "; ".join(failures)
        )

    def locate(self, domain: str) -> Location:
        """Follow the CNAME chain of ``domain``'s validation name into a managed zone."""
        location = chain.locate(domain, self._lookup_cname, list(self._zones), self._delegation)
        logger.info(
            "%s: TXT goes to %s in zone %s (chain %s)",
            domain, location.record, location.zone, chain.format_chain(location.chain),
        )
        return location

    def manages(self, zone: dns.name.Name) -> bool:
        """Whether ``zone`` is one of the managed zones."""
        return zone.canonicalize() in self._zones

    def _zone(self, name: dns.name.Name) -> ManagedZone:
        try:
            return self._zones[name.canonicalize()]
        except KeyError:
            raise DNSError(f"zone {name} is not managed by this client") from None

    # --- changes ---------------------------------------------------------------------------

    def _send(
        self,
        zone: ManagedZone,
        changes: Sequence[update.Change],
        primaries: Sequence[HostPort] | None = None,
    ) -> HostPort:
        message = update.build_update(zone.name, changes, self._ttl, zone.key)
        server = update.send_update(
            message, zone.name, primaries or zone.primaries, zone.key,
            timeout=self._timeout, transport=self._transport,
        )
        logger.info(
            "UPDATE zone %s at %s (key %s): %d name(s), %d value(s) added, %d deleted",
            zone.name, server, zone.key.name, len(changes),
            sum(len(c.add) for c in changes), sum(len(c.delete) for c in changes),
        )
        return server

    def add(self, records: Records) -> dict[dns.name.Name, HostPort]:
        """Add every value in one signed UPDATE per zone, deleting the placeholder there.

        Returns, per zone, the primary that accepted the update.
        """
        accepted: dict[dns.name.Name, HostPort] = {}
        for zone_name, names in group_by_zone(records).items():
            zone = self._zone(zone_name)
            drop = (self._placeholder,) if self._placeholder is not None else ()
            changes = [
                update.Change(
                    record=name,
                    add=tuple(values),
                    delete=tuple(p for p in drop if p not in values),
                )
                for name, values in names.items()
            ]
            accepted[zone_name] = self._send(zone, changes)
        return accepted

    def wait(self, records: Records) -> None:
        """Return once every authoritative server of each zone returns every value."""
        deadline = time.monotonic() + self._propagation_timeout
        for zone_name, names in group_by_zone(records).items():
            labels = self.servers(zone_name)
            expected = {name: set(values) for name, values in names.items()}
            logger.info(
                "waiting for %d value(s) in zone %s on %s",
                sum(len(v) for v in expected.values()), zone_name,
                ", ".join(f"{label} {server}".strip() for server, label in labels.items()),
            )
            try:
                propagation.wait_for(
                    expected, tuple(labels),
                    timeout=max(deadline - time.monotonic(), 0.0),
                    query_timeout=min(self._timeout, 2.0),
                    labels={s: label for s, label in labels.items() if label},
                )
            except PropagationError as e:
                raise PropagationError(f"zone {zone_name}: {e}") from None

    def servers(self, zone_name: dns.name.Name) -> dict[HostPort, str]:
        """The zone's authoritative servers (configured, or from its NS records) and NS names."""
        zone = self._zone(zone_name)
        if zone.nameservers is not None:
            return {server: "" for server in zone.nameservers}
        if zone.name not in self._nameservers:
            self._nameservers[zone.name] = propagation.discover_nameservers(
                zone.name, self.resolver
            )
        return self._nameservers[zone.name]

    def remove(self, records: Records) -> None:
        """Delete exactly these values (one UPDATE per zone); restore the placeholder if empty.

        A value already gone is fine. The placeholder is added, at the primary that took the
        deletion, only where no TXT is left (checked atomically by an update prerequisite).
        """
        failures: list[str] = []
        for zone_name, names in group_by_zone(records).items():
            # Every zone and name gets its chance: one failure must not strand the others.
            try:
                zone = self._zone(zone_name)
                changes = [
                    update.Change(record=name, delete=tuple(values))
                    for name, values in names.items()
                ]
                server = self._send(zone, changes)
            except DNSError as e:
                failures.append(str(e))
                continue
            if self._placeholder is None:
                continue
            for name in names:
                try:
                    message = update.build_placeholder(
                        zone.name, name, self._placeholder, self._ttl, zone.key
                    )
                    update.send_update(
                        message, zone.name, (server,), zone.key, timeout=self._timeout,
                        transport=self._transport,
                        tolerate=frozenset({dns.rcode.YXRRSET, dns.rcode.NXRRSET}),
                    )
                except DNSError as e:
                    failures.append(f"placeholder at {name}: {e}")
                    continue
                logger.info(
                    "UPDATE zone %s at %s: placeholder at %s unless other TXT remain",
                    zone.name, server, name,
                )
        if failures:
            raise UpdateError("; ".join(failures))


def from_config(settings: DnsConfig) -> DnsClient:
    """The client for the ``dns`` section of epages.yaml."""
    zones = [
        ManagedZone(
            name=dns.name.from_text(zone.name),
            primaries=zone.primaries,
            key=zone.key,
            nameservers=zone.nameservers,
        )
        for zone in settings.zones
    ]
    return DnsClient(
        zones,
        resolvers=settings.resolvers,
        delegation=settings.delegation,
        ttl=settings.ttl,
        placeholder=settings.placeholder,
        propagation_timeout=settings.propagation_timeout,
    )
