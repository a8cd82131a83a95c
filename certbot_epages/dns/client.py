"""The DNS client shared by the certbot plugin and the manual hooks.

Takes plain values (no certbot config): managed zones with their primaries and TSIG key,
the resolvers used to follow CNAMEs, and the delegation template customers are told to use.
"""

from __future__ import annotations

import logging
import os
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

from certbot_epages.dns import chain, propagation, servers, update
from certbot_epages.dns.chain import Location
from certbot_epages.dns.journal import Entry, Journal, Run, Written
from certbot_epages.dns.keys import TsigKey
from certbot_epages.errors import DNSError, EpagesError, PropagationError, UpdateError
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


def written(records: Records) -> list[Written]:
    """(zone, record, value) of each record, as the journal keeps them."""
    return [(str(location.zone), str(location.record), value) for location, value in records]


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
        query: propagation.Query = propagation.query_txt,
        identify: update.Identify = servers.identify,
        journal: Journal | None = None,
        run: Run | None = None,
        claim_timeout: float | None = None,
    ) -> None:
        self._zones = {zone.name.canonicalize(): zone for zone in zones}
        self._resolvers = tuple(resolvers) if resolvers is not None else None
        self._delegation = delegation
        self._ttl = ttl
        self._placeholder = placeholder
        self._propagation_timeout = propagation_timeout
        self._timeout = timeout
        self._transport = transport or update.tcp_transport
        self._query = query
        self._identify = identify
        self._kinds: dict[HostPort, servers.Kind] = {}
        # Claims and the journal: who wrote what (None: nothing is recorded, no claims).
        self._journal = journal
        self._run = run if run is not None else Run.of(os.getpid())
        # A claim is held through the propagation wait, the CA's validation and cleanup.
        self._claim_timeout = (
            claim_timeout if claim_timeout is not None else propagation_timeout + 300.0
        )
        self._accepted: dict[dns.name.Name, HostPort] = {}
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

    def lookup(self, name: dns.name.Name | str,
               rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        """Records of ``name`` through the configured resolvers; None when there are none.

        NXDOMAIN and an empty answer are None; any other failure is a DNSError naming the
        lookup.
        """
        qname = name if isinstance(name, dns.name.Name) else \
            dns.name.from_text(name.rstrip(".") + ".")
        try:
            return self.resolver.resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as e:
            shown = qname.to_text(omit_final_dot=True)
            raise DNSError(f"DNS lookup of {shown} {dns.rdatatype.to_text(rdtype)} failed: {e}; "
                           "check the configured resolvers") from None

    def _lookup_cname(self, name: dns.name.Name) -> dns.name.Name | None:
        zone = chain.choose_zone(name, list(self._zones))
        if zone is not None:
            return self._lookup_cname_at_primary(name, self._zones[zone])
        answer = self.lookup(name, dns.rdatatype.CNAME)
        if answer is None:
            return None
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

    def may_write(self, domain: str, record: dns.name.Name, zone: dns.name.Name) -> bool:
        """Whether a write for ``domain`` may touch ``record``.

        Only a challenge name, see :func:`certbot_epages.dns.chain.may_write`.
        """
        try:
            return chain.may_write(domain, record, zone, self._delegation)
        except EpagesError:
            return False

    def manages(self, zone: dns.name.Name) -> bool:
        """Whether ``zone`` is one of the managed zones."""
        return zone.canonicalize() in self._zones

    def _zone(self, name: dns.name.Name) -> ManagedZone:
        try:
            return self._zones[name.canonicalize()]
        except KeyError:
            raise DNSError(f"zone {name} is not managed by this client") from None

    def kind(self, server: HostPort, zone: dns.name.Name) -> servers.Kind:
        """Which software answers at ``server`` for ``zone`` (asked once; "" if unknown)."""
        if server not in self._kinds:
            self._kinds[server] = self._identify(server, zone)
        return self._kinds[server]

    # --- changes ---------------------------------------------------------------------------

    def _send(self, zone: ManagedZone, changes: Sequence[update.Change]) -> HostPort:
        message = update.build_update(zone.name, changes, self._ttl, zone.key)
        server = update.send_update(
            message, zone.name, zone.primaries, zone.key,
            timeout=self._timeout, transport=self._transport, identify=self.kind,
        )
        logger.info(
            "UPDATE zone %s at %s (key %s): %d name(s), %d value(s) added, %d deleted",
            zone.name, server, zone.key.name, len(changes),
            sum(len(c.add) for c in changes), sum(len(c.delete) for c in changes),
        )
        return server

    def add(self, records: Records) -> dict[dns.name.Name, HostPort]:
        """Add every value in one signed UPDATE per zone, deleting the placeholder there.

        First cleans up after ended runs, and claims the names (waiting while another run on
        this host holds one). After each NOERROR, the primary that took the update is asked
        once: a value it does not serve fails at once, naming it (a dropped update is not a
        slow secondary). Returns, per zone, the primary that accepted the update.
        """
        if self._journal is not None:
            self.clean_stale()
            self._journal.claim(written(records), self._run, timeout=self._claim_timeout)
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
            server = self._send(zone, changes)
            accepted[zone_name] = self._accepted[zone_name] = server
            self._confirm(zone, server, names)
        return accepted

    def _confirm(
        self, zone: ManagedZone, server: HostPort, names: dict[dns.name.Name, list[str]]
    ) -> None:
        """Ask the primary that answered NOERROR whether it serves what it took."""
        for name, values in names.items():
            try:
                served = self._query(server, name, min(self._timeout, 2.0))
            except DNSError as e:  # a primary that does not answer queries proves nothing
                logger.info("cannot confirm the update at %s: %s", server, e)
                return
            lacking = [v for v in values if v not in served]
            if lacking:
                kind = self.kind(server, zone.name)
                shown = ", ".join(f'"{v}"' for v in lacking)
                raise UpdateError(
                    f"{server}{servers.label(kind)} answered NOERROR to the UPDATE for zone "
                    f"{zone.name} signed with key {zone.key.name}, but does not serve {shown} at "
                    f"{name}: it dropped the update; "
                    f"{servers.dropped_advice(kind, zone.key, name)}"
                )

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
                    query=self._query,
                )
            except PropagationError as e:
                primary = self._accepted.get(zone_name) or self._zone(zone_name).primaries[0]
                hint = servers.notify_advice(self.kind(primary, zone_name), zone_name)
                raise PropagationError(
                    f"zone {zone_name}: {e}" + (f"; {hint}" if hint else "")
                ) from None

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
        Values whose removal failed stay in the journal, marked for a later run to finish
        (a delete that timed out may still be applied and leave the name without TXT).
        """
        failures: list[str] = []
        for zone_name, names in group_by_zone(records).items():
            # Every zone and name gets its chance: one failure must not strand the others.
            problems = self._remove(zone_name, names)
            done = [(str(zone_name), str(name), v) for name, vs in names.items() for v in vs]
            if self._journal is not None:
                if problems:
                    self._journal.mark_deleting(done)
                else:
                    self._journal.forget(done)
            failures.extend(problems)
        if failures:
            raise UpdateError("; ".join(failures))

    def _remove(self, zone_name: dns.name.Name, names: dict[dns.name.Name, list[str]]) -> list[str]:
        """Delete values at names of one zone, then re-assert the placeholder; the failures."""
        failures: list[str] = []
        try:
            zone = self._zone(zone_name)
            changes = [update.Change(record=name, delete=tuple(values))
                       for name, values in names.items()]
            server = self._send(zone, changes)
        except DNSError as e:
            return [str(e)]
        if self._placeholder is None:
            return []
        for name in names:
            try:
                message = update.build_placeholder(
                    zone.name, name, self._placeholder, self._ttl, zone.key
                )
                update.send_update(
                    message, zone.name, (server,), zone.key, timeout=self._timeout,
                    transport=self._transport,
                    tolerate=frozenset({dns.rcode.YXRRSET, dns.rcode.NXRRSET}),
                    identify=self.kind,
                )
            except DNSError as e:
                failures.append(f"placeholder at {name}: {e}")
                continue
            logger.info(
                "UPDATE zone %s at %s: placeholder at %s unless other TXT remain",
                zone.name, server, name,
            )
        return failures

    def clean_stale(self) -> tuple[list[Entry], list[str]]:
        """Delete what ended runs left: stale values, and deletes that were not confirmed.

        Returns what was removed and what could not be (each failure is also logged; the
        entry stays for the next try). Names get their placeholder back where no TXT is left.
        """
        if self._journal is None:
            return [], []
        removed: list[Entry] = []
        failures: list[str] = []
        by_zone: dict[dns.name.Name, list[Entry]] = defaultdict(list)
        for entry in self._journal.to_clean():
            zone_name = dns.name.from_text(entry.zone)
            if not self.manages(zone_name):
                # Said once, then forgotten: no later run could do better.
                failures.append(f'"{entry.value}" at {entry.record}: zone {entry.zone} is not '
                                f"managed any more; delete it by hand if it is still there")
                self._journal.forget([entry.written])
                continue
            by_zone[zone_name].append(entry)
        for zone_name, entries in by_zone.items():
            names: dict[dns.name.Name, list[str]] = defaultdict(list)
            for entry in entries:
                names[dns.name.from_text(entry.record)].append(entry.value)
            problems = self._remove(zone_name, dict(names))
            if problems:
                failures.extend(problems)
                continue
            self._journal.forget(e.written for e in entries)
            removed.extend(entries)
            for entry in entries:
                logger.info('removed "%s" at %s, left by %s%s', entry.value, entry.record,
                            entry.run, " (its delete was not confirmed)" if entry.deleting else "")
        for failure in failures:
            logger.warning("cleaning up after ended runs: %s", failure)
        return removed, failures


def from_config(
    settings: DnsConfig, *, run: Run | None = None, timeout: float = 5.0
) -> DnsClient:
    """The client for the ``dns`` section of epages.yaml, writing as ``run`` (default: us)."""
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
        timeout=timeout,
        journal=Journal(settings.state_dir, stale_after=settings.stale_after),
        run=run,
    )
