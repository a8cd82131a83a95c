"""Which DNS server software answers at an address, and advice in that server's own terms.

BIND, Knot DNS and PowerDNS all take RFC 2136 updates, but each is configured differently and
each reports trouble its own way. Decisions (is it the key or the policy?) are made from the
answer itself: its rcode, its TSIG error, and whether it came back signed. The server's kind
only picks the words of the advice; when it is unknown, the advice covers all three.
"""

from __future__ import annotations

import re
import secrets
import socket
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig

from certbot_epages.dns.keys import TsigKey
from certbot_epages.netaddr import HostPort

Kind = Literal["bind", "knot", "pdns", ""]

NAMES: dict[str, str] = {"bind": "BIND", "knot": "Knot DNS", "pdns": "PowerDNS", "": ""}

_BIND_VERSION = re.compile(r"^9\.\d+\.\d+")


# --- pure ------------------------------------------------------------------------------------


def kind_from_version(text: str | None) -> Kind:
    """The server software named by a ``version.bind`` answer; "" if it does not say.

    Defaults: BIND "9.18.49-1~deb12u3-Debian", Knot "Knot DNS 3.2.6", PowerDNS "PowerDNS
    Authoritative Server 4.7.3" (or "Served by PowerDNS - ..." with version-string=anonymous).
    Operators may hide or change it, so an unknown answer is normal.
    """
    if not text:
        return ""
    lowered = text.lower()
    if "powerdns" in lowered:
        return "pdns"
    if "knot" in lowered:
        return "knot"
    if "bind" in lowered or _BIND_VERSION.match(text.strip()):
        return "bind"
    return ""


def kind_from_behaviour(response: dns.message.Message) -> Kind:
    """The server software shown by its answer to a query signed with a key nobody has.

    PowerDNS answers NOTAUTH without any TSIG record; BIND and Knot answer NOTAUTH with TSIG
    error BADKEY. So this tells PowerDNS apart even when its version string is changed.
    """
    if response.rcode() == dns.rcode.NOTAUTH and not response.had_tsig:
        return "pdns"
    return ""


def label(kind: Kind) -> str:
    """`` (PowerDNS)`` after a server address, or nothing when the kind is unknown."""
    return f" ({NAMES[kind]})" if kind else ""


def key_advice(kind: Kind, key: TsigKey) -> str:
    """How to make the server's copy of ``key`` match ours."""
    if kind == "pdns":
        return (
            f"PowerDNS answers an unknown key name, a wrong secret and a wrong algorithm alike; "
            f"compare with 'pdnsutil list-tsig-keys' and import the key with 'pdnsutil "
            f"import-tsig-key {key.name} {key.algorithm} SECRET'"
        )
    if kind == "knot":
        return (
            f"make the name, algorithm and secret match the server's key section (key: [{{id: "
            f"{key.name}, algorithm: {key.algorithm}, secret: ...}}], as keymgr -t writes it)"
        )
    if kind == "bind":
        return (
            f'make the name, algorithm and secret match the server\'s key statement (key '
            f'"{key.name}" {{ algorithm {key.algorithm}; secret "..."; }};, as tsig-keygen '
            f"writes it)"
        )
    return (
        f"make the key name, algorithm ({key.algorithm}) and secret match the server's: BIND's "
        f"key statement, Knot's key section, or PowerDNS's 'pdnsutil import-tsig-key "
        f"{key.name} {key.algorithm} SECRET'"
    )


def policy_advice(kind: Kind, key: TsigKey, zone: object) -> str:
    """How to let ``key`` update TXT records in ``zone`` on that server."""
    bind = f"update-policy {{ grant {key.name} zonesub TXT; }};"
    knot = (
        f"acl: [{{id: acme, key: {key.name}, action: update, update-type: TXT}}] and 'acl: "
        f"acme' in the zone's section"
    )
    pdns = (
        f"dnsupdate=yes in pdns.conf, this host in allow-dnsupdate-from (or 'pdnsutil set-meta "
        f"{zone} ALLOW-DNSUPDATE-FROM ADDRESS') and 'pdnsutil set-meta {zone} "
        f"TSIG-ALLOW-DNSUPDATE {key.name}'"
    )
    if kind == "bind":
        return f"check the zone's update-policy on that server, e.g. {bind}"
    if kind == "knot":
        return f"check the zone's acl on that server (and its update-owner limits), e.g. {knot}"
    if kind == "pdns":
        return f"allow the key for the zone on that server: {pdns}"
    return (
        f"check the zone's update policy for key {key.name} on that server: BIND {bind} Knot "
        f"{knot}; PowerDNS {pdns}"
    )


def notimp_advice(kind: Kind, zone: object) -> str:
    """Why a server answers NOTIMP to an UPDATE, and the fix."""
    pdns = (
        f"PowerDNS cannot update zones of its bind backend: serve {zone} from a backend that "
        f"can (gsqlite3, gmysql, gpgsql, lmdb) with dnsupdate=yes"
    )
    if kind == "pdns":
        return pdns
    return (
        f"the server does not take dynamic updates for {zone} ({pdns}); send updates to a "
        f"primary that takes them"
    )


def dropped_advice(kind: Kind, key: TsigKey, name: object) -> str:
    """Why a server answers NOERROR to an UPDATE but does not serve its values."""
    pdns = (
        f"PowerDNS answers NOERROR to an update its lua-dnsupdate-policy-script refuses and "
        f"drops it: let the script allow TXT at {name} for key {key.name} (see the server's "
        f"log: 'Not permitted by policy')"
    )
    if kind == "pdns":
        return pdns
    return (
        f"the server dropped the update silently ({pdns}), or it answers queries from other "
        f"data than it updates; see the server's log"
    )


def notify_advice(kind: Kind, zone: object) -> str:
    """A hint for a propagation timeout when the primary is of ``kind``; "" if none applies."""
    if kind != "pdns":
        return ""
    return (
        f"the primary is PowerDNS, which notifies secondaries of updates only with 'pdnsutil "
        f"set-meta {zone} NOTIFY-DNSUPDATE 1' (otherwise on its check cycle, up to 60 s later)"
    )


# --- I/O -------------------------------------------------------------------------------------


def identify(server: HostPort, zone: dns.name.Name | None = None, timeout: float = 1.0) -> Kind:
    """Which software answers at ``server``; "" when neither question tells.

    First its ``version.bind``; if that does not say, and ``zone`` is given, its answer to a
    query for the zone signed with a key nobody has.
    """
    kind = by_version(server, timeout)
    if kind or zone is None:
        return kind
    return by_behaviour(server, zone, timeout)


def by_version(server: HostPort, timeout: float = 1.0) -> Kind:
    """The software named by ``server``'s ``version.bind`` (class CH), or ""."""
    query = dns.message.make_query("version.bind.", dns.rdatatype.TXT, dns.rdataclass.CH)
    response = _exchange(server, query, timeout)
    for rrset in response.answer if response is not None else ():
        for rdata in rrset:
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
                return kind_from_version(b"".join(rdata.strings).decode("ascii", "replace"))
    return ""


def by_behaviour(server: HostPort, zone: dns.name.Name, timeout: float = 1.0) -> Kind:
    """The software shown by ``server``'s answer to an unknown key (see kind_from_behaviour)."""
    response = _exchange(server, unknown_key_query(zone), timeout)
    return kind_from_behaviour(response) if response is not None else ""


def unknown_key_query(zone: dns.name.Name) -> dns.message.Message:
    """A SOA query for ``zone`` signed with a random key that no server knows."""
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    name = dns.name.from_text(f"certbot-epages-{secrets.token_hex(6)}.invalid.")
    query.use_tsig(dns.tsig.Key(name, secrets.token_bytes(32), dns.tsig.HMAC_SHA256))
    return query


def _exchange(
    server: HostPort, query: dns.message.Message, timeout: float
) -> dns.message.Message | None:
    """One UDP question; the answer unvalidated (it may carry a TSIG error), or None."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            server.host, server.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(query.to_wire(), address)
            response = dns.message.from_wire(sock.recv(65535), keyring=False)
    except (OSError, dns.exception.DNSException, ValueError):
        return None
    return response if response.id == query.id else None
