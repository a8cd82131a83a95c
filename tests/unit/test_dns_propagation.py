from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from certbot_epages.dns.propagation import (
    QueryFailed,
    Unreachable,
    excuse_unreachable,
    format_missing,
    missing_values,
    txt_values,
    wait_for,
)
from certbot_epages.errors import DNSError, PropagationError
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

N = dns.name.from_text
A = N("_acme-challenge.a.dyn.platform.example.")
B = N("_acme-challenge.b.dyn.platform.example.")
NS1, NS2 = HostPort("127.0.0.1", 53), HostPort("127.0.0.2", 53)


def test_missing_values() -> None:
    expected = {A: {"x", "y"}, B: {"z"}}
    seen = {
        NS1: {A: {"x", "y", "someone-else"}, B: {"z"}},
        NS2: {A: {"x"}},
    }
    assert missing_values(expected, seen) == {NS2: {A: {"y"}, B: {"z"}}}
    assert missing_values(expected, {NS1: seen[NS1]}) == {}
    assert missing_values({}, seen) == {}


def test_format_missing() -> None:
    text = format_missing(
        {NS2: {A: {"abc", "abd"}}, NS1: {B: {"z"}}},
        errors={NS2: "answered SERVFAIL"},
        labels={NS2: "ns2.platform.example."},
    )
    assert text == (
        f'127.0.0.1:53 lacks "z" at {B}; '
        f'ns2.platform.example. 127.0.0.2:53 lacks "abc", "abd" at {A} '
        "(last error: answered SERVFAIL)"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_succeeds_once_every_server_has_every_value() -> None:
    clock = FakeClock()
    asked: list[tuple[HostPort, dns.name.Name]] = []

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        asked.append((server, name))
        if server == NS2 and clock.now < 100.35:
            raise QueryFailed("no answer within 2.00s")
        return {"v", "other"} if clock.now >= 100.15 else set()

    wait_for({A: {"v"}}, [NS1, NS2], timeout=10, interval=0.1, clock=clock,
             sleep=clock.sleep, query=query)
    assert clock.sleeps == [0.1] * 4
    # once NS1 has everything it is not asked again
    assert asked.count((NS1, A)) == 3
    assert asked.count((NS2, A)) == 5


def test_wait_for_times_out_naming_server_value_and_error() -> None:
    clock = FakeClock()

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        if server == NS2:
            raise QueryFailed("answered REFUSED")
        return {"v"}

    with pytest.raises(PropagationError) as info:
        wait_for({A: {"v"}, B: {"w"}}, [NS1, NS2], timeout=1, interval=0.3, clock=clock,
                 sleep=clock.sleep, query=query, labels={NS2: "ns2."})
    text = str(info.value)
    assert f'ns2. 127.0.0.2:53 lacks "v" at {A}' in text
    assert f'lacks "w" at {B}' in text
    assert "127.0.0.1:53 lacks" in text
    assert "last error: answered REFUSED" in text
    assert clock.now == pytest.approx(101.0)
    assert clock.sleeps[-1] == pytest.approx(0.1)  # never sleeps past the deadline


def test_wait_for_clears_error_after_an_answer() -> None:
    clock = FakeClock()
    calls: list[float] = []

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        calls.append(timeout)
        if len(calls) == 1:
            raise QueryFailed("timed out")
        return set()

    with pytest.raises(PropagationError) as info:
        wait_for({A: {"v"}}, [NS1], timeout=0.5, clock=clock, sleep=clock.sleep, query=query)
    assert "last error" not in str(info.value)
    assert len(calls) > 2


def test_wait_for_needs_servers() -> None:
    with pytest.raises(DNSError, match="no authoritative servers"):
        wait_for({A: {"v"}}, [], timeout=1)


def response(rcode: int, aa: bool = True) -> dns.message.Message:
    message = dns.message.make_response(dns.message.make_query(A, "TXT"))
    message.set_rcode(dns.rcode.Rcode(rcode))
    if aa:
        message.flags |= dns.flags.AA
    return message


def test_txt_values() -> None:
    ok = response(dns.rcode.NOERROR)
    ok.answer.append(dns.rrset.from_text(A, 60, "IN", "TXT", '"v1"', '"a" "b"'))
    assert txt_values(ok, A) == {"v1", "ab"}
    assert txt_values(response(dns.rcode.NOERROR), A) == set()
    assert txt_values(response(dns.rcode.NXDOMAIN), A) == set()
    cname_only = response(dns.rcode.NOERROR)
    cname_only.answer.append(dns.rrset.from_text(A, 60, "IN", "CNAME", "elsewhere.example."))
    assert txt_values(cname_only, A) == set()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (response(dns.rcode.SERVFAIL), "SERVFAIL"),
        (response(dns.rcode.REFUSED), "REFUSED"),
        (response(dns.rcode.NOERROR, aa=False), "not authoritative"),
    ],
)
def test_txt_values_failures(message: dns.message.Message, reason: str) -> None:
    with pytest.raises(QueryFailed, match=reason):
        txt_values(message, A)


# --- addresses this host cannot reach -------------------------------------------------------

V6 = HostPort("2001:db8::53", 53)


def test_excuse_unreachable_only_while_another_address_of_the_server_answers() -> None:
    missing = {V6: {A: {"v"}}, NS2: {A: {"v"}}}
    labels = {V6: "ns2.", NS2: "ns2."}
    # ns2.'s IPv4 address answered: its unreachable IPv6 address does not count.
    assert excuse_unreachable(missing, {V6}, {NS2}, labels) == {NS2: {A: {"v"}}}
    # Nothing else of ns2. answered, or the other address is unreachable too: it counts.
    assert excuse_unreachable(missing, {V6}, set(), labels) == missing
    assert excuse_unreachable(missing, {V6, NS2}, {NS2}, labels) == missing
    # A different server answering does not excuse it; nor does lacking a label.
    assert excuse_unreachable(missing, {V6}, {NS1}, {V6: "ns2.", NS1: "ns1."}) == missing
    assert excuse_unreachable(missing, {V6}, {NS2}, {}) == missing
    # Answering but lacking the value is never excused.
    assert excuse_unreachable(missing, set(), {NS2, V6}, labels) == missing


def test_wait_for_ignores_an_unreachable_family_of_a_server_that_answers() -> None:
    clock = FakeClock()
    asked: list[HostPort] = []

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        asked.append(server)
        if server == V6:
            raise Unreachable("unreachable from this host: No route to host")
        return {"v"} if clock.now >= 100.1 else set()

    wait_for({A: {"v"}}, [NS1, NS2, V6], timeout=5, clock=clock, sleep=clock.sleep,
             query=query, labels={NS1: "ns1.", NS2: "ns2.", V6: "ns2."})
    assert asked.count(V6) == 1  # not asked again once excused


def test_wait_for_counts_an_unreachable_server_with_no_other_address() -> None:
    clock = FakeClock()

    def query(server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        if server == V6:
            raise Unreachable("unreachable from this host: Network is unreachable")
        return {"v"}

    with pytest.raises(PropagationError) as info:
        wait_for({A: {"v"}}, [NS1, V6], timeout=0.3, clock=clock, sleep=clock.sleep,
                 query=query, labels={NS1: "ns1.", V6: "ns2."})
    assert f'ns2. [2001:db8::53]:53 lacks "v" at {A}' in str(info.value)
    assert "Network is unreachable" in str(info.value)


def test_ask_reports_an_unreachable_address_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    import dns.query

    from certbot_epages.dns import propagation

    def no_route(*args: object, **kwargs: object) -> object:
        raise OSError(113, "No route to host")

    monkeypatch.setattr(dns.query, "udp_with_fallback", no_route)
    with pytest.raises(Unreachable, match="No route to host"):
        propagation.ask(V6, A, dns.rdatatype.TXT, 1.0)
    monkeypatch.setattr(dns.query, "udp_with_fallback", lambda *a, **k: (_ for _ in ()).throw(
        OSError(111, "Connection refused")))
    with pytest.raises(QueryFailed) as info:
        propagation.ask(V6, A, dns.rdatatype.TXT, 1.0)
    assert not isinstance(info.value, Unreachable)
