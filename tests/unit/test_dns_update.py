from __future__ import annotations

import base64
import socket
import struct
import threading
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update
import dns.version
import pytest
from dns.message import Message

from certbot_epages.dns.chain import Location
from certbot_epages.dns.client import DnsClient, ManagedZone
from certbot_epages.dns.keys import make_key
from certbot_epages.dns.update import (
    Change,
    build_placeholder,
    build_update,
    send_update,
    tcp_transport,
    txt_rdata,
)
from certbot_epages.errors import DNSError, UpdateError
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

N = dns.name.from_text
SECRET = base64.b64encode(bytes(range(64))).decode()
KEY = make_key("acme-update", "hmac-sha512", SECRET, allow_weak=False, where="test")
ZONE = N("dyn.platform.example.")
RECORD = N("_acme-challenge.shop.example.dyn.platform.example.")
P1, P2 = HostPort("192.0.2.1", 53), HostPort("192.0.2.2", 5353)


def sections(message: dns.message.Message) -> str:
    """The message as text without id and TSIG (which change with every signing)."""
    lines = message.to_text().splitlines()
    keep = [line for line in lines if not line.startswith("id ")]
    return "\n".join(keep[: keep.index(";ADDITIONAL")])


def signed_wire(message: dns.message.Message) -> dns.message.Message:
    """Render and parse back as a server would, validating the TSIG signature."""
    wire = message.to_wire()
    return dns.message.from_wire(wire, keyring={KEY.dns_name: KEY.as_dnspython()})


def test_build_update_exact_message() -> None:
    change = Change(RECORD, add=("token-1", "token-2"), delete=(".empty", "old"))
    message = build_update(ZONE, [change], 60, KEY)
    expected = dns.message.from_text(
        """id 1
opcode UPDATE
rcode NOERROR
;ZONE
dyn.platform.example. IN SOA
;PREREQ
;UPDATE
_acme-challenge.shop.example.dyn.platform.example. 0 NONE TXT ".empty"
_acme-challenge.shop.example.dyn.platform.example. 0 NONE TXT "old"
_acme-challenge.shop.example.dyn.platform.example. 60 IN TXT "token-1"
_acme-challenge.shop.example.dyn.platform.example. 60 IN TXT "token-2"
"""
    )
    received = signed_wire(message)  # raises unless validly signed with KEY
    assert sections(received) == sections(expected)
    assert received.keyname == N("acme-update.")
    assert received.keyalgorithm == dns.tsig.HMAC_SHA512
    assert received.opcode() == dns.opcode.UPDATE


def test_build_update_quotes_and_never_replaces() -> None:
    message = build_update(ZONE, [Change(RECORD, add=('a "b" c;d',))], 30, KEY)
    text = sections(signed_wire(message))
    assert '30 IN TXT "a \\"b\\" c;d"' in text
    assert "ANY" not in text  # no RRset deletion, i.e. no replace


def test_build_update_several_names() -> None:
    other = N("_acme-challenge.x.dyn.platform.example.")
    changes = [Change(RECORD, add=("1",)), Change(other, delete=("2",))]
    message = build_update(ZONE, changes, 60, KEY)
    text = sections(signed_wire(message))
    assert f'{RECORD} 60 IN TXT "1"' in text
    assert f'{other} 0 NONE TXT "2"' in text


@pytest.mark.parametrize("value", ["tab\there", "ünïcode", "x" * 256, "new\nline"])
def test_txt_rejects_unprintable_or_long(value: str) -> None:
    with pytest.raises(DNSError):
        txt_rdata(value)


def test_txt_accepts_255() -> None:
    assert txt_rdata("x" * 255).strings == (b"x" * 255,)


def test_build_update_rejects_record_outside_zone() -> None:
    with pytest.raises(DNSError, match="not in zone"):
        build_update(ZONE, [Change(N("_acme-challenge.other.example."), add=("v",))], 60, KEY)


def test_placeholder_update_has_absent_prerequisite() -> None:
    text = sections(signed_wire(build_placeholder(ZONE, RECORD, ".empty", 60, KEY)))
    assert f";PREREQ\n{RECORD} NONE TXT\n;UPDATE\n{RECORD} 60 IN TXT \".empty\"" in text


# --- send_update -------------------------------------------------------------------------------

Calls = list[tuple[str, int, float]]


Outcome = BaseException | type[BaseException] | int
Transport = Callable[[dns.message.Message, str, float, int], dns.message.Message]


def fake_transport(outcomes: list[Outcome], calls: Calls) -> Transport:
    """Per call: raise the exception, or answer (signed) with the rcode."""

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        calls.append((where, port, timeout))
        q.to_wire()
        outcome = outcomes.pop(0)
        if not isinstance(outcome, int):
            raise outcome
        response = dns.message.make_response(q)
        response.set_rcode(dns.rcode.Rcode(outcome))
        return response

    return transport


def test_send_update_first_primary() -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([dns.rcode.NOERROR], calls)
    assert send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport) == P1
    assert calls == [("192.0.2.1", 53, 3)]


@pytest.mark.parametrize(
    "error", [ConnectionRefusedError(111, "Connection refused"), dns.exception.Timeout]
)
def test_send_update_fails_over_on_network_errors(error: Outcome) -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([error, dns.rcode.NOERROR], calls)
    assert send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport) == P2
    assert [c[:2] for c in calls] == [("192.0.2.1", 53), ("192.0.2.2", 5353)]


def test_send_update_all_unreachable_lists_each() -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport(
        [ConnectionRefusedError(111, "Connection refused"), dns.exception.Timeout], calls
    )
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport)
    assert "192.0.2.1:53: Connection refused" in str(info.value)
    assert "192.0.2.2:5353: timed out" in str(info.value)


def test_send_update_refused_does_not_fail_over() -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([dns.rcode.REFUSED, dns.rcode.NOERROR], calls)
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport)
    assert len(calls) == 1
    text = str(info.value)
    for part in ("192.0.2.1:53", "REFUSED", "dyn.platform.example.", "acme-update",
                 "update-policy { grant acme-update zonesub TXT; };"):
        assert part in text
    assert SECRET not in text


@pytest.mark.parametrize("rcode", [dns.rcode.NOTAUTH, dns.rcode.NOTZONE])
def test_send_update_not_primary(rcode: int) -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([rcode, dns.rcode.NOERROR], [])
    with pytest.raises(UpdateError, match="not primary for dyn.platform.example."):
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (dns.tsig.PeerBadSignature, "the key secret does not match the server's key acme-update"),
        (dns.tsig.PeerBadKey,
         "the server does not know a key named acme-update with algorithm hmac-sha512"),
        (dns.tsig.PeerBadTime, "clocks"),
    ],
)
def test_send_update_tsig_errors(error: Outcome, expected: str) -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    # After BADKEY a signed query asks whether the server knows the key: here it does not.
    transport = fake_transport([error, dns.tsig.PeerBadKey, dns.rcode.NOERROR], calls)
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport)
    assert {c[0] for c in calls} == {"192.0.2.1"}  # no failover
    assert expected in str(info.value)
    assert "192.0.2.1:53" in str(info.value)
    assert "dyn.platform.example." in str(info.value)


def unsigned_response(q: dns.message.Message, rcode: int) -> dns.message.Message:
    response = dns.update.UpdateMessage(ZONE, id=q.id)
    response.flags |= dns.flags.QR
    response.set_rcode(dns.rcode.Rcode(rcode))
    return response


def test_send_update_unsigned_refused_is_a_key_problem() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        return unsigned_response(q, dns.rcode.REFUSED)

    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3, transport=transport,
                    identify=lambda server, zone: "pdns")
    text = str(info.value)
    assert "192.0.2.1:53 (PowerDNS) answered REFUSED (unsigned)" in text
    assert "a key problem, not the update policy" in text
    assert "pdnsutil import-tsig-key acme-update hmac-sha512 SECRET" in text
    assert "update-policy" not in text and SECRET not in text


@pytest.mark.parametrize(
    ("kind", "advice"),
    [
        ("bind", "update-policy { grant acme-update zonesub TXT; };"),
        ("knot", "acl: [{id: acme, key: acme-update, action: update, update-type: TXT}]"),
        ("pdns", "pdnsutil set-meta dyn.platform.example. TSIG-ALLOW-DNSUPDATE acme-update"),
    ],
)
def test_send_update_signed_refused_is_a_policy_problem_in_the_servers_terms(
    kind: str, advice: str
) -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([dns.rcode.REFUSED], [])
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3, transport=transport,
                    identify=lambda server, zone: kind)  # type: ignore[arg-type,return-value]
    text = str(info.value)
    assert "answered REFUSED to the UPDATE" in text and "a policy problem" in text
    assert advice in text
    others = {"bind": "update-policy", "knot": "update-type: TXT}", "pdns": "pdnsutil"}
    assert not any(word in text for k, word in others.items() if k != kind)


def test_send_update_policy_advice_for_an_unknown_server_covers_all_three() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3,
                    transport=fake_transport([dns.rcode.REFUSED], []))
    text = str(info.value)
    for part in ("update-policy { grant acme-update zonesub TXT; };", "update-type: TXT",
                 "TSIG-ALLOW-DNSUPDATE acme-update"):
        assert part in text


def badkey_response(q: dns.message.Message) -> dns.message.Message:
    """Knot's answer to a denied update: NOTAUTH, TSIG error BADKEY (parsed as from the wire)."""
    response = dns.message.make_response(q)
    response.set_rcode(dns.rcode.NOTAUTH)
    response.use_tsig(KEY.as_dnspython(), tsig_error=17)
    return dns.message.from_wire(response.to_wire(), keyring=False)


def test_badkey_from_a_server_that_signs_a_signed_query_is_its_acl() -> None:
    calls: Calls = []
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    sent: list[Message] = []

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        calls.append((where, port, timeout))
        sent.append(q)
        if q.opcode() == dns.opcode.UPDATE:
            return badkey_response(q)
        return dns.message.make_response(q)  # a signed answer: it knows the key

    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport,
                    identify=lambda server, zone: "knot")
    text = str(info.value)
    assert "192.0.2.1:53 (Knot DNS) answered NOTAUTH with TSIG error BADKEY" in text
    assert "a policy problem: the server knows key acme-update" in text
    assert "update-type: TXT" in text and "does not know" not in text
    # The follow-up is a signed SOA query for the zone, to the same server.
    assert sent[1].question[0].name == ZONE and sent[1].question[0].rdtype == dns.rdatatype.SOA
    assert sent[1].had_tsig and [c[0] for c in calls] == ["192.0.2.1", "192.0.2.1"]


def test_badkey_from_a_server_that_does_not_know_the_key() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        return badkey_response(q)

    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3, transport=transport,
                    identify=lambda server, zone: "knot")
    text = str(info.value)
    assert "answered NOTAUTH with TSIG error BADKEY" in text
    assert "does not know a key named acme-update with algorithm hmac-sha512" in text
    assert "no acl of zone dyn.platform.example. names the key" in text
    assert "policy problem" not in text


def test_badkey_when_the_follow_up_gets_no_answer_names_both_causes() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    transport = fake_transport([dns.tsig.PeerBadKey, dns.exception.Timeout], [])
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3, transport=transport)
    text = str(info.value)
    assert "does not know a key named acme-update" in text
    assert "its acl for zone dyn.platform.example. does not allow this update" in text


@pytest.mark.parametrize(("kind", "expected"), [
    ("pdns", "192.0.2.1:53 (PowerDNS) answered NOTIMP to the UPDATE for zone "
             "dyn.platform.example. signed with key acme-update; PowerDNS cannot update zones "
             "of its bind backend"),
    ("", "the server does not take dynamic updates for dyn.platform.example. (PowerDNS "
         "cannot update zones of its bind backend"),
])
def test_notimp_names_powerdns_bind_backend(kind: str, expected: str) -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    with pytest.raises(UpdateError) as info:
        send_update(message, ZONE, [P1], KEY, timeout=3,
                    transport=fake_transport([dns.rcode.NOTIMP], []),
                    identify=lambda server, zone: kind)  # type: ignore[arg-type,return-value]
    assert expected in str(info.value)


def test_send_update_unsigned_success_is_not_trusted() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        return unsigned_response(q, dns.rcode.NOERROR)

    with pytest.raises(UpdateError, match="without a TSIG signature"):
        send_update(message, ZONE, [P1], KEY, timeout=3, transport=transport)


def test_send_update_dnspython_unsigned_form_error() -> None:
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    error = dns.exception.FormError(  # type: ignore[no-untyped-call]
        "response requires a TSIG but does not have one"
    )
    transport = fake_transport([error], [])
    with pytest.raises(UpdateError, match="without a TSIG signature"):
        send_update(message, ZONE, [P1, P2], KEY, timeout=3, transport=transport)


def test_send_update_tolerated_rcode() -> None:
    message = build_placeholder(ZONE, RECORD, ".empty", 60, KEY)
    transport = fake_transport([dns.rcode.YXRRSET], [])
    tolerate = frozenset({dns.rcode.YXRRSET, dns.rcode.NXRRSET})
    assert send_update(
        message, ZONE, [P1], KEY, timeout=3, transport=transport, tolerate=tolerate
    ) == P1


# --- tcp_transport against a scripted TCP peer (not a DNS server) -----------------------------


def scripted_peer(
    answer: Callable[[bytes], bytes], connections: int = 1
) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            for _ in range(connections):
                with listener.accept()[0] as conn:
                    (length,) = struct.unpack("!H", conn.recv(2))
                    data = b""
                    while len(data) < length:
                        data += conn.recv(length - len(data))
                    reply = answer(data)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_tcp_transport_signed_answer_is_validated() -> None:
    def answer(wire: bytes) -> bytes:
        keyring = {KEY.dns_name: KEY.as_dnspython()}
        q = dns.message.from_wire(wire, keyring=keyring)
        return dns.message.make_response(q).to_wire()

    port, thread = scripted_peer(answer)
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    response = tcp_transport(message, "127.0.0.1", 5, port)
    thread.join(5)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.had_tsig


def test_tcp_transport_returns_unsigned_error_answer() -> None:
    def answer(wire: bytes) -> bytes:
        q = dns.message.from_wire(wire, keyring={KEY.dns_name: KEY.as_dnspython()})
        return unsigned_response(q, dns.rcode.REFUSED).to_wire()

    port, thread = scripted_peer(answer)
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    with pytest.raises(UpdateError, match="answered REFUSED"):
        send_update(message, ZONE, [HostPort("127.0.0.1", port)], KEY, timeout=5,
                    transport=tcp_transport)
    thread.join(5)


@pytest.mark.skipif(dns.version.MAJOR == 2 and dns.version.MINOR < 7,
                    reason="reading a TSIG error answer unvalidated needs dnspython 2.7")
def test_tcp_transport_returns_a_tsig_error_answer_with_its_rcode() -> None:
    def answer(wire: bytes) -> bytes:
        q = dns.message.from_wire(wire, keyring=False)
        if q.opcode() != dns.opcode.UPDATE:
            return unsigned_response(q, dns.rcode.REFUSED).to_wire()
        response = dns.message.make_response(q)
        response.set_rcode(dns.rcode.NOTAUTH)
        response.use_tsig(KEY.as_dnspython(), tsig_error=17)
        return response.to_wire()

    port, thread = scripted_peer(answer, connections=2)
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    with pytest.raises(UpdateError, match="answered NOTAUTH with TSIG error BADKEY"):
        send_update(message, ZONE, [HostPort("127.0.0.1", port)], KEY, timeout=5,
                    transport=tcp_transport)
    thread.join(5)


def test_tcp_transport_rejects_forged_signature() -> None:
    other = make_key("acme-update", "hmac-sha512", base64.b64encode(b"y" * 64).decode(),
                     allow_weak=False, where="test")

    def answer(wire: bytes) -> bytes:
        q = dns.message.from_wire(wire, keyring={KEY.dns_name: KEY.as_dnspython()})
        response = dns.update.UpdateMessage(ZONE, id=q.id, keyring=other.as_dnspython())
        response.flags |= dns.flags.QR
        return response.to_wire()

    port, thread = scripted_peer(answer)
    message = build_update(ZONE, [Change(RECORD, add=("v",))], 60, KEY)
    with pytest.raises(UpdateError, match="not validly signed"):
        send_update(message, ZONE, [HostPort("127.0.0.1", port)], KEY, timeout=5,
                    transport=tcp_transport)
    thread.join(5)


def test_configured_resolvers_are_asked_on_their_own_port() -> None:
    """Works on dnspython 2.3 too, which has no dns.nameserver."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    name = N("_acme-challenge.shop.example.")

    def serve() -> None:
        with sock:
            wire, peer = sock.recvfrom(512)
            response = dns.message.make_response(dns.message.from_wire(wire))
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", str(RECORD)))
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = DnsClient([ManagedZone(ZONE, (P1,), KEY, None)],
                       resolvers=[HostPort("127.0.0.1", port)], delegation="x.{domain}.")
    answer = client.resolver.resolve(name, "CNAME")
    thread.join(5)
    assert [rdata.target for rdata in answer] == [RECORD]


# --- DnsClient: one UPDATE per zone, placeholder handling --------------------------------------


def test_client_add_and_remove_messages() -> None:
    sent: list[tuple[str, Message]] = []

    def transport(q: Message, where: str, timeout: float, port: int) -> Message:
        received = signed_wire(q)
        sent.append((where, received))
        response = dns.message.make_response(q)
        assert isinstance(received, dns.update.UpdateMessage)
        if received.prerequisite:
            response.set_rcode(dns.rcode.YXRRSET if len(sent) == 3 else dns.rcode.NOERROR)
        return response

    other = N("_acme-challenge.x.dyn.platform.example.")
    asked: list[tuple[HostPort, dns.name.Name]] = []

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        asked.append((server, name))
        return {"t1", "t2", "t3", "someone-else"}

    client = DnsClient(
        [ManagedZone(ZONE, (P1, P2), KEY, None)], resolvers=[P1],
        delegation="_acme-challenge.{domain}.dyn.platform.example.", transport=transport,
        query=query, identify=lambda server, zone: "",
    )
    loc_a = Location("shop.example", (N("_acme-challenge.shop.example."), RECORD), ZONE, RECORD)
    loc_b = Location("x.dyn.platform.example", (other,), ZONE, other)
    records = [(loc_a, "t1"), (loc_a, "t2"), (loc_b, "t3")]

    client.add(records)
    assert len(sent) == 1
    assert asked == [(P1, RECORD), (P1, other)]  # the primary that took it, asked once a name
    text = sections(sent[0][1])
    assert sent[0][0] == "192.0.2.1"
    for line in (f'{RECORD} 0 NONE TXT ".empty"', f'{RECORD} 60 IN TXT "t1"',
                 f'{RECORD} 60 IN TXT "t2"', f'{other} 0 NONE TXT ".empty"',
                 f'{other} 60 IN TXT "t3"'):
        assert line in text

    client.remove(records)
    assert len(sent) == 4  # one deletion, then one conditional placeholder per name
    removal = sections(sent[1][1])
    assert "IN TXT" not in removal
    assert f'{RECORD} 0 NONE TXT "t1"' in removal and f'{other} 0 NONE TXT "t3"' in removal
    assert f";PREREQ\n{RECORD} NONE TXT\n;UPDATE\n{RECORD} 60 IN TXT \".empty\"" in sections(
        sent[2][1]
    )
    assert f'{other} 60 IN TXT ".empty"' in sections(sent[3][1])
