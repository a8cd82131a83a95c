"""RFC 2136 dynamic updates of TXT records, signed with TSIG, sent over TCP to a primary."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
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
import dns.version

from certbot_epages.dns import servers
from certbot_epages.dns.keys import TsigKey
from certbot_epages.dns.servers import Kind
from certbot_epages.errors import DNSError, UpdateError
from certbot_epages.netaddr import HostPort

logger = logging.getLogger(__name__)

#: The shape of :func:`dns.query.tcp`: ``(message, where, timeout, port) -> response``.
Transport = Callable[[dns.message.Message, str, float, int], dns.message.Message]
#: ``(server, zone) -> kind``: which software answers there (only for the words of advice).
Identify = Callable[[HostPort, dns.name.Name], Kind]

# TSIG errors (RFC 8945 section 3) as they come back in a response's TSIG record.
BADSIG, BADKEY, BADTIME = 16, 17, 18
_TSIG_ERRORS = {BADSIG: "BADSIG", BADKEY: "BADKEY", BADTIME: "BADTIME"}


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
    record, or with a TSIG error (BADKEY, BADSIG, BADTIME: their MAC is empty and cannot be
    checked), so that its rcode and TSIG error can be reported, instead of raising. Any other
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
    if _PARSES_UNVALIDATED:
        # Read the rcode and TSIG error of any answer, then validate a signed one.
        response = dns.message.from_wire(answer, keyring=False)
        if response.had_tsig and not response.tsig_error:
            response = dns.message.from_wire(
                answer, keyring=message.keyring, request_mac=message.mac
            )
    else:
        try:
            # Without a keyring an unsigned answer parses and a signed one raises; a signed
            # error (BADKEY, BADSIG, BADTIME) then raises the peer error, explained by
            # _explain_exception without the rcode.
            response = dns.message.from_wire(answer)
        except dns.message.UnknownTSIGKey:
            response = dns.message.from_wire(
                answer, keyring=message.keyring, request_mac=message.mac
            )
    if not message.is_response(response):
        raise dns.query.BadResponse
    return response


# keyring=False ("parse, do not validate") arrived in dnspython 2.7; Debian 12 ships 2.3.
_PARSES_UNVALIDATED = (dns.version.MAJOR, dns.version.MINOR) >= (2, 7)


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
    identify: Identify | None = None,
) -> HostPort:
    """Send ``message`` to the first primary that can be reached; return that primary.

    Network errors (OSError, timeout) fail over to the next primary. Any answer other than
    NOERROR (or an rcode in ``tolerate``) raises UpdateError naming server, zone, key and fix,
    without failing over: the other primaries share the configuration that refused it.
    ``identify`` (asked only on failure) names the server's software for the advice.
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
            raise UpdateError(_explain_exception(
                e, _Diagnosis(server, zone, key, timeout, transport, identify)
            )) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR and not response.had_tsig:
            raise UpdateError(
                f"{server} answered the UPDATE for zone {zone} without a TSIG signature, so "
                f"the answer cannot be trusted; check that the server is configured with key "
                f"{key.name}"
            )
        if rcode != dns.rcode.NOERROR and rcode not in tolerate:
            tsig_error = (response.tsig_error or 0) if response.had_tsig else 0
            diagnosis = _Diagnosis(server, zone, key, timeout, transport, identify)
            raise UpdateError(diagnosis.explain(rcode, signed=response.had_tsig,
                                                tsig_error=tsig_error))
        return server
    raise UpdateError(
        f"UPDATE for zone {zone} failed: no primary reachable ({'; '.join(failures)}). "
        f"Check that the primaries are up and accept TCP on their DNS port"
    )


@dataclass(frozen=True)
class _Diagnosis:
    """What is needed to explain a refused UPDATE, including the follow-up questions."""

    server: HostPort
    zone: dns.name.Name
    key: TsigKey
    timeout: float
    transport: Transport
    identify: Identify | None

    def explain(self, rcode: dns.rcode.Rcode, *, signed: bool, tsig_error: int) -> str:
        kind = self.identify(self.server, self.zone) if self.identify is not None else ""
        key_known = self.key_known() if tsig_error == BADKEY else None
        return explain_rcode(rcode, self.server, self.zone, self.key, signed=signed,
                             tsig_error=tsig_error, kind=kind, key_known=key_known)

    def key_known(self) -> bool | None:
        """Ask the zone's SOA signed with the key: a server that knows the key signs its answer.

        Tells Knot's ACL denial (NOTAUTH + BADKEY, like an unknown key) from an unknown key.
        None when the answer does not tell (unsigned, or no answer).
        """
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        query.use_tsig(self.key.as_dnspython())
        try:
            response = self.transport(query, self.server.host, self.timeout, self.server.port)
        except dns.tsig.PeerBadKey:
            return False
        except (OSError, dns.exception.DNSException):
            return None
        if not response.had_tsig:
            return None
        if response.tsig_error == BADKEY:
            return False
        return True if not response.tsig_error else None


def _network_reason(error: BaseException) -> str:
    if isinstance(error, (dns.exception.Timeout, TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def explain_rcode(
    rcode: dns.rcode.Rcode,
    server: HostPort,
    zone: dns.name.Name,
    key: TsigKey,
    *,
    signed: bool = True,
    tsig_error: int = 0,
    kind: Kind = "",
    key_known: bool | None = None,
) -> str:
    """Describe an UPDATE answered with ``rcode``, including the likely fix.

    ``signed``: the answer carried a TSIG record (a valid one, unless ``tsig_error`` is set);
    ``kind``: the server's software, if known; ``key_known``: whether the server signed its
    answer to a signed query (asked after BADKEY).
    """
    error = f" with TSIG error {_tsig_error_text(tsig_error)}" if tsig_error else ""
    unsigned = " (unsigned)" if not signed and rcode == dns.rcode.REFUSED else ""
    head = (
        f"{server}{servers.label(kind)} answered {dns.rcode.to_text(rcode)}{error}{unsigned} to "
        f"the UPDATE for zone {zone} signed with key {key.name}"
    )
    if tsig_error == BADSIG:
        return f"{head}; {_BAD_SIG.format(key=key)}"
    if tsig_error == BADTIME:
        return f"{head}; {_BAD_TIME}"
    if tsig_error == BADKEY:
        return f"{head}; {_bad_key(kind, key, zone, key_known)}"
    if tsig_error:
        return f"{head}; the server refused the signature; see its log"
    if rcode == dns.rcode.REFUSED and not signed:
        fix = (
            f"a key problem, not the update policy: the server did not accept the signature "
            f"(an unknown key name, a wrong secret or a wrong algorithm); "
            f"{servers.key_advice(kind, key)}"
        )
    elif rcode == dns.rcode.REFUSED:
        fix = (
            f"a policy problem: the server accepted key {key.name} (its answer is signed) but "
            f"its policy refuses this update; {servers.policy_advice(kind, key, zone)}"
        )
    elif rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
        fix = f"the server is not primary for {zone}; list the zone's primary server"
    elif rcode == dns.rcode.NOTIMP:
        fix = servers.notimp_advice(kind, zone)
    elif rcode == dns.rcode.SERVFAIL:
        fix = "the server could not apply it; see its log (e.g. journal or zone file permissions)"
    elif rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.YXDOMAIN, dns.rcode.NXDOMAIN):
        fix = "a prerequisite failed; the zone changed concurrently, retry"
    else:
        fix = "see the server's log"
    return f"{head}; {fix}"


def _tsig_error_text(code: int) -> str:
    return _TSIG_ERRORS.get(code, str(code))


def _bad_key(kind: Kind, key: TsigKey, zone: dns.name.Name, key_known: bool | None) -> str:
    if key_known:
        # Only Knot answers a denial by its ACL with BADKEY; say so even when it hides its name.
        return (
            f"a policy problem: the server knows key {key.name} (it signed its answer to a "
            f"signed query for the zone), so its update policy refuses this update (Knot "
            f"answers an ACL denial like an unknown key); "
            f"{servers.policy_advice(kind or 'knot', key, zone)}"
        )
    unknown = _BAD_KEY.format(key=key)
    if key_known is False:
        knot = (
            f" (Knot also answers so when no acl of zone {zone} names the key)"
            if kind in ("knot", "") else ""
        )
        return f"{unknown}{knot}; {servers.key_advice(kind, key)}"
    return (
        f"{unknown}, or (Knot) its acl for zone {zone} does not allow this update; "
        f"{servers.key_advice(kind, key)}; {servers.policy_advice(kind or 'knot', key, zone)}"
    )


_BAD_SIG = "the key secret does not match the server's key {key.name}; copy the secret again"
_BAD_KEY = "the server does not know a key named {key.name} with algorithm {key.algorithm}"
_BAD_TIME = "the clocks of this host and the server differ too much; synchronise them (NTP)"


def _explain_exception(error: dns.exception.DNSException, diagnosis: _Diagnosis) -> str:
    server, zone, key = diagnosis.server, diagnosis.zone, diagnosis.key
    # A transport like dns.query.tcp raises for TSIG errors: same diagnosis as from the answer.
    for peer_error, code in ((dns.tsig.PeerBadSignature, BADSIG), (dns.tsig.PeerBadKey, BADKEY),
                             (dns.tsig.PeerBadTime, BADTIME)):
        if isinstance(error, peer_error):
            return diagnosis.explain(dns.rcode.NOTAUTH, signed=True, tsig_error=code)
    if isinstance(error, (dns.tsig.BadSignature, dns.tsig.BadKey, dns.message.UnknownTSIGKey)):
        return (
            f"the answer of {server} to the UPDATE for zone {zone} is not validly signed with "
            f"key {key.name} ({type(error).__name__}); {_BAD_SIG.format(key=key)}"
        )
    if isinstance(error, dns.tsig.BadTime):
        return f"the answer of {server} for zone {zone} is signed at a skewed time; {_BAD_TIME}"
    if isinstance(error, dns.exception.FormError) and "requires a TSIG" in str(error):
        kind = diagnosis.identify(server, zone) if diagnosis.identify is not None else ""
        return (
            f"{server}{servers.label(kind)} answered the UPDATE for zone {zone} without a TSIG "
            f"signature (an unsigned error response), which usually means it did not accept "
            f"key {key.name}; {servers.key_advice(kind, key)}"
        )
    head = f"{server} rejected the UPDATE for zone {zone} signed with key {key.name}"
    return f"{head}: {type(error).__name__}: {error}; see the server's log"
