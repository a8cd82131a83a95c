"""Whether the sandbox's servers answer yet (each check raises, or returns None, until then)."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from certbot_epages.errors import SandboxError


def authoritative(server: str, zone: str) -> bool | None:
    """Whether ``server`` answers authoritatively for ``zone``."""
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, server, timeout=0.5)
    ok = reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AA) and reply.answer
    return True if ok else None


def resolves(server: str, name: str) -> bool | None:
    """Whether ``server`` resolves ``name``."""
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server, timeout=0.5)
    return True if reply.rcode() == dns.rcode.NOERROR and reply.answer else None


def _ssl_context(ca_bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_bundle))


def https_get(url: str, ca_bundle: Path) -> bytes:
    """The body of an HTTPS GET trusting ``ca_bundle``."""
    with urllib.request.urlopen(url, timeout=2, context=_ssl_context(ca_bundle)) as reply:
        body: bytes = reply.read()
        return body


def http_status(address: str, port: int) -> int:
    """The HTTP status ``address:port`` answers."""
    with socket.create_connection((address, port), timeout=1) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: ready.check\r\n\r\n")
        head = s.recv(64).decode("latin-1")
    if not head.startswith("HTTP/"):
        raise SandboxError(f"{address}:{port} did not answer HTTP")
    return int(head.split()[1])


def ssh_banner(address: str) -> bool:
    """Whether an SSH server greets on ``address:22``."""
    with socket.create_connection((address, 22), timeout=1) as s:
        return s.recv(64).startswith(b"SSH-")
