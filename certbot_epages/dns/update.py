"""RFC 2136 dynamic updates of TXT records, signed with TSIG, sent over TCP to a primary."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from certbot_epages.dns.keys import TsigKey
from certbot_epages.errors import DNSError, UpdateError
from certbot_epages.netaddr import HostPort

logger = logging.getLogger(__name__)

#: The shape of :func:`dns.query.tcp`: ``(message, where, timeout, port) -> response``.
Transport = Callable[[dns.message.Message, str, float, int], dns.message.Message]


@dataclass(frozen=True)
class Change:
    """TXT values to add at and delete from one name."""

    record: dns.name.Name
    add: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()


def txt_rdata(value: str) -> dns.rdtypes.ANY.TXT.TXT:
    """One TXT rdata holding ``value`` as a single string; only printable ASCII, at most 255."""
    if not value.isascii() or not value.isprintable():
        raise DNSError(
            f"TXT value {value!r} contains characters other than printable ASCII; "
            f"ACME validation values are base64url text"
        )
    if len(value) > 255:
        raise DNSError(f"TXT value of {len(value)} characters is longer than 255")
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode("ascii")])


def build_update(
    zone: dns.name.Name, changes: Sequence[Change], ttl: int, key: TsigKey
) -> dns.update.UpdateMessage:
    """One signed UPDATE for ``zone``: deletes exact TXT values, then adds TXT values.

    Adds never replace other values at the name; only TXT records are ever touched.
    """
    message = dns.update.UpdateMessage(zone, keyring=key.as_dnspython())
    for change in changes:
        _check_in_zone(change.record, zone)
        for value in change.delete:
            message.delete(change.record, txt_rdata(value))
        for value in change.add:
            message.add(change.record, ttl, txt_rdata(value))
    return message


def build_placeholder(
    zone: dns.name.Name, record: dns.name.Name, placeholder: str, ttl: int, key: TsigKey
) -> dns.update.UpdateMessage:
    """One signed UPDATE adding ``placeholder`` at ``record`` only if it holds no TXT at all.

    The condition is an RFC 2136 prerequisite ("TXT RRset does not exist"), so it is checked
    atomically by the server; if it fails the server answers NXRRSET/YXRRSET and changes nothing.
    """
    _check_in_zone(record, zone)
    message = dns.update.UpdateMessage(zone, keyring=key.as_dnspython())
    message.absent(record, dns.rdatatype.TXT)
    message.add(record, ttl, txt_rdata(placeholder))
    return message


def _check_in_zone(record: dns.name.Name, zone: dns.name.Name) -> None:
    if not record.is_subdomain(zone):
        raise DNSError(f"{record} is not in zone {zone}; it cannot be updated there")


def tcp_transport(
    message: dns.message.Message, where: str, timeout: float, port: int
) -> dns.message.Message:
    """Send ``message`` over TCP, like :func:`dns.query.tcp`, and return the response.

    Unlike ``dns.query.tcp`` it returns an error response that comes back without a TSIG
    record (so its rcode can be reported) instead of failing with "requires a TSIG". A
    response that carries a TSIG is validated exactly as ``dns.query.tcp`` does. ``where``
    may also be a host name.
    """
    wire = message.to_wire()  # signs; sets message.mac
    deadline = time.monotonic() + timeout  # for the whole exchange, not each recv
    with socket.create_connection((where, port), timeout=timeout) as sock:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2, deadline))
        answer = _recv_exact(sock, length, deadline)
    try:
        # Without a keyring an unsigned answer parses and a signed one raises: every dnspython
        # since 2.3 does that (keyring=False, "parse but do not validate", needs 2.7).
        response = dns.message.from_wire(answer)
    except dns.message.UnknownTSIGKey:
        response = dns.message.from_wire(
            answer, keyring=message.keyring, request_mac=message.mac
        )
    if not message.is_response(response):
        raise dns.query.BadResponse
    return response


def _recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer before the deadline")
        sock.settimeout(left)
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed before the whole answer arrived")
        data += chunk
    return data


def send_update(
    message: dns.update.UpdateMessage,
    zone: dns.name.Name,
    primaries: Sequence[HostPort],
    key: TsigKey,
    *,
    timeout: float,
    transport: Transport = tcp_transport,
    tolerate: frozenset[dns.rcode.Rcode] = frozenset(),
) -> HostPort:
    """Send ``message`` to the first primary that can be reached; return that primary.

    Network errors (OSError, timeout) fail over to the next primary. Any answer other than
    NOERROR (or an rcode in ``tolerate``) raises UpdateError naming server, zone, key and fix,
    without failing over: the other primaries share the configuration that refused it.
    """
    if not primaries:
        raise UpdateError(f"no primary server configured for zone {zone}; configure one")
    failures: list[str] = []
    for server in primaries:
        try:
            response = transport(message, server.host, timeout, server.port)
        except (OSError, dns.exception.Timeout) as e:
            reason = _network_reason(e)
            logger.info("UPDATE for zone %s: %s unreachable (%s)", zone, server, reason)
            failures.append(f"{server}: {reason}")
            continue
        except dns.exception.DNSException as e:
            raise UpdateError(_explain_exception(e, server, zone, key)) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR and not response.had_tsig:
            raise UpdateError(
                f"{server} answered the UPDATE for zone {zone} without a TSIG signature, so "
                f"the answer cannot be trusted; check that the server is configured with key "
                f"{key.name}"
            )
        if rcode != dns.rcode.NOERROR and rcode not in tolerate:
            raise UpdateError(explain_rcode(rcode, server, zone, key))
        return server
    raise UpdateError(
        f"UPDATE for zone {zone} failed: no primary reachable ({'; '.join(failures)}). "
        f"Check that the primaries are up and accept TCP on their DNS port"
    )


def _network_reason(error: BaseException) -> str:
    if isinstance(error, (dns.exception.Timeout, TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def explain_rcode(
    rcode: dns.rcode.Rcode, server: HostPort, zone: dns.name.Name, key: TsigKey
) -> str:
    """Describe an UPDATE answered with ``rcode``, including the likely fix."""
    head = (
        f"{server} answered {dns.rcode.to_text(rcode)} to the UPDATE for zone {zone} "
        f"signed with key {key.name}"
    )
    if rcode == dns.rcode.REFUSED:
        fix = (
            f"check the zone's update-policy on that server, e.g. "
            f"update-policy {{ grant {key.name} zonesub TXT; }};"
        )
    elif rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
        fix = f"the server is not primary for {zone}; list the zone's primary server"
    elif rcode == dns.rcode.BADSIG:
        return head + "; " + _BAD_SIG.format(key=key)
    elif rcode == dns.rcode.BADKEY:
        return head + "; " + _BAD_KEY.format(key=key)
    elif rcode == dns.rcode.BADTIME:
        return head + "; " + _BAD_TIME
    elif rcode == dns.rcode.SERVFAIL:
        fix = "the server could not apply it; see its log (e.g. journal or zone file permissions)"
    elif rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.YXDOMAIN, dns.rcode.NXDOMAIN):
        fix = "a prerequisite failed; the zone changed concurrently, retry"
    else:
        fix = "see the server's log"
    return f"{head}; {fix}"


_BAD_SIG = "the key secret does not match the server's key {key.name}; copy the secret again"
_BAD_KEY = (
    "the server does not know a key named {key.name} with algorithm {key.algorithm}; "
    "make the key name and algorithm match the server's key statement"
)
_BAD_TIME = "the clocks of this host and the server differ too much; synchronise them (NTP)"


def _explain_exception(
    error: dns.exception.DNSException, server: HostPort, zone: dns.name.Name, key: TsigKey
) -> str:
    head = f"{server} rejected the UPDATE for zone {zone} signed with key {key.name}"
    if isinstance(error, dns.tsig.PeerBadSignature):
        return f"{head} (BADSIG); {_BAD_SIG.format(key=key)}"
    if isinstance(error, dns.tsig.PeerBadKey):
        return f"{head} (BADKEY); {_BAD_KEY.format(key=key)}"
    if isinstance(error, dns.tsig.PeerBadTime):
        return f"{head} (BADTIME); {_BAD_TIME}"
    if isinstance(error, (dns.tsig.BadSignature, dns.tsig.BadKey, dns.message.UnknownTSIGKey)):
        return (
            f"the answer of {server} to the UPDATE for zone {zone} is not validly signed with "
            f"key {key.name} ({type(error).__name__}); {_BAD_SIG.format(key=key)}"
        )
    if isinstance(error, dns.tsig.BadTime):
        return f"the answer of {server} for zone {zone} is signed at a skewed time; {_BAD_TIME}"
    if isinstance(error, dns.exception.FormError) and "requires a TSIG" in str(error):
        return (
            f"{server} answered the UPDATE for zone {zone} without a TSIG signature (an "
            f"unsigned error response); check that the server knows key {key.name} and its "
            f"update-policy for the zone"
        )
    return f"{head}: {type(error).__name__}: {error}; see the server's log"
