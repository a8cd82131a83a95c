"""The ``check`` command: whether a domain is ready for DNS-01 through the platform's zones.

Per domain: the CNAME chain, the managed zone it leads into, which primary accepts a signed
probe update (added, awaited on every authoritative server, then deleted again), and what each
authoritative server answers.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import dns.name

from certbot_epages.dns import propagation
from certbot_epages.dns.client import DnsClient
from certbot_epages.dns.journal import Entry
from certbot_epages.errors import DNSError


@dataclass
class ServerView:
    """One authoritative server's answer for the challenge record while the probe was up."""

    name: str
    address: str
    values: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class DomainReport:
    """Everything ``check`` found out about one domain."""

    domain: str
    ready: bool = False
    chain: list[str] = field(default_factory=list)
    zone: str | None = None
    record: str | None = None
    primary: str | None = None
    probe: str | None = None  # "accepted, seen by every server", or what went wrong
    servers: list[ServerView] = field(default_factory=list)
    error: str | None = None


@dataclass
class CleanReport:
    """What ``check --clean`` deleted, and what it could not."""

    removed: list[Entry]
    failures: list[str]


def clean(client: DnsClient) -> CleanReport:
    """Delete what ended runs left in the managed zones (see DnsClient.clean_stale)."""
    removed, failures = client.clean_stale()
    return CleanReport(removed, failures)


def render_clean(report: CleanReport) -> str:
    """One line per value removed or left, for people."""
    if not report.removed and not report.failures:
        return "clean: nothing left by ended runs"
    lines = [
        f'clean: removed "{e.value}" at {e.record} (written by {e.run}'
        + (", its delete was not confirmed)" if e.deleting else ", which has ended)")
        for e in report.removed
    ]
    lines.extend(f"clean: FAILED {failure}" for failure in report.failures)
    return "\n".join(lines)


def check_domain(client: DnsClient, domain: str) -> DomainReport:
    """Check one domain end to end; never raises for DNS trouble, the report says it."""
    report = DomainReport(domain=domain)
    try:
        location = client.locate(domain)
    except DNSError as e:
        report.error = str(e)
        return report
    report.chain = [str(n) for n in location.chain]
    report.zone, report.record = str(location.zone), str(location.record)
    probe = f"certbot-epages-check-{secrets.token_hex(8)}"
    records = [(location, probe)]
    try:
        report.primary = str(client.add(records)[location.zone])
    except DNSError as e:
        report.error = str(e)
        return report
    try:
        client.wait(records)
        report.probe = "accepted, and served by every authoritative server"
    except DNSError as e:
        report.probe = "accepted, but not served everywhere"
        report.error = str(e)
    finally:
        report.servers = _views(client, location.zone, location.record)
        try:
            client.remove(records)
        except DNSError as e:
            report.error = report.error or f"the probe could not be deleted again: {e}"
    report.ready = report.error is None
    return report


def _views(client: DnsClient, zone: dns.name.Name, record: dns.name.Name) -> list[ServerView]:
    try:
        servers = client.servers(zone)
    except DNSError as e:
        return [ServerView(name="?", address="?", error=str(e))]
    views = []
    for server, label in servers.items():
        view = ServerView(name=label or str(server), address=str(server))
        try:
            view.values = sorted(propagation.query_txt(server, record, 2.0))
        except DNSError as e:
            view.error = str(e)
        views.append(view)
    return views


def render(report: DomainReport) -> str:
    """The report as a few lines for people."""
    lines = [f"{report.domain}: {'ready' if report.ready else 'NOT READY'}"]
    if report.chain:
        lines.append(f"  chain:   {' -> '.join(report.chain)}")
    if report.zone:
        lines.append(f"  zone:    {report.zone} (record {report.record})")
    if report.primary:
        lines.append(f"  primary: {report.primary} took a signed probe update: {report.probe}")
    for view in report.servers:
        seen = ", ".join(f'"{v}"' for v in view.values) or "no TXT"
        lines.append(f"  server:  {view.name} {view.address}: {view.error or seen}")
    if report.error:
        lines.extend(f"  error:   {line}" for line in report.error.splitlines())
    return "\n".join(lines)
