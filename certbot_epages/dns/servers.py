"""Which DNS server software answers at an address, and advice in that server's own terms.

BIND, Knot DNS and PowerDNS all take RFC 2136 updates, but each is configured differently and
each reports trouble its own way. Decisions (is it the key or the policy?) are made from the
answer itself: its rcode, its TSIG error, and whether it came back signed. The server's kind
only picks the words of the advice; when it is unknown, the advice covers all three.
"""

from __future__ import annotations

import re
import socket
from typing import Literal

import dns.exception
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

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


def identify(server: HostPort, timeout: float = 1.0) -> Kind:
    """Ask ``server`` for ``version.bind`` (class CH); "" when it does not answer or say."""
    query = dns.message.make_query("version.bind.", dns.rdatatype.TXT, dns.rdataclass.CH)
    try:
        address = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)[0][4][0]
        response = dns.query.udp(query, str(address), timeout=timeout, port=server.port)
    except (OSError, dns.exception.DNSException, ValueError):
        return ""
    for rrset in response.answer:
        for rdata in rrset:
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
                return kind_from_version(b"".join(rdata.strings).decode("ascii", "replace"))
    return ""
