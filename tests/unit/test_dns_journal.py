"""Claims on challenge names and the journal of values written; the client's use of them."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.update
import pytest
from dns.message import Message

from certbot_epages.dns.chain import Location
from certbot_epages.dns.client import DnsClient, ManagedZone
from certbot_epages.dns.journal import (
    ClaimError,
    Entry,
    Journal,
    Run,
    StateError,
    holders,
    to_clean,
)
from certbot_epages.dns.keys import make_key
from certbot_epages.errors import PropagationError, UpdateError
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

N = dns.name.from_text
ZONE = "dyn.platform.example."
A = "_acme-challenge.a.dyn.platform.example."
B = "_acme-challenge.b.dyn.platform.example."
ME, OTHER, GONE = Run("h", 100, 1), Run("h", 200, 2), Run("h", 300, 3)
RUNNING = {ME, OTHER}


def alive(run: Run) -> bool:
    return run in RUNNING


def entry(record: str, value: str, run: Run, time: float = 1000.0, **kw: bool) -> Entry:
    return Entry(ZONE, record, value, time, run, **kw)


# --- pure ------------------------------------------------------------------------------------


def test_holders_are_other_running_runs_with_values_not_being_deleted() -> None:
    entries = [
        entry(A, "mine", ME),
        entry(A, "theirs", OTHER, time=1001),
        entry(A, "older-gone", GONE, time=999),
        entry(B, "deleting", OTHER, deleting=True),
    ]
    assert holders(entries, [A, B], ME, alive) == {A: entries[1]}
    assert holders(entries, [A], OTHER, alive) == {A: entries[0]}
    assert holders(entries, [B], ME, alive) == {}


def test_to_clean_is_unconfirmed_deletes_and_stale_values_of_ended_runs() -> None:
    entries = [
        entry(A, "fresh-gone", GONE, time=990),  # ended, but not stale yet
        entry(A, "stale-gone", GONE, time=100),
        entry(A, "stale-running", OTHER, time=100),  # its run still runs: it owns it
        entry(B, "deleting", ME, time=999, deleting=True),
    ]
    assert to_clean(entries, 1000.0, 60.0, alive) == [entries[1], entries[3]]


def test_run_of_this_process_is_alive_and_a_reused_pid_is_not() -> None:
    me = Run.of(os.getpid())
    assert me.start > 0 and me.alive()
    assert not Run(me.host, me.pid, me.start + 1).alive()
    assert Run("another-host", 1, 1).alive()  # cannot tell: never taken for stale
    assert str(me) == f"certbot run PID {os.getpid()}"


# --- the journal on disk ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.sleeps == 3:
            RUNNING_NOW.discard(OTHER)  # the other run ends while we wait


RUNNING_NOW: set[Run] = set()


def journal(tmp_path: Path, clock: Clock, stale_after: float = 3600.0) -> Journal:
    return Journal(tmp_path / "state", stale_after=stale_after, clock=clock, sleep=clock.sleep,
                   alive=lambda run: run in RUNNING_NOW)


def test_claim_records_values_and_a_second_run_waits_for_the_first(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.update({ME, OTHER})
    clock = Clock()
    j = journal(tmp_path, clock)
    j.claim([(ZONE, A, "theirs")], OTHER, timeout=60)
    j.claim([(ZONE, B, "mine-elsewhere")], ME, timeout=60)  # another name: no wait
    assert clock.sleeps == 0
    j.claim([(ZONE, A, "mine")], ME, timeout=60)  # waits until OTHER has ended
    assert clock.sleeps == 3
    assert [(e.record, e.value, e.run) for e in j.entries()] == [
        (A, "theirs", OTHER), (B, "mine-elsewhere", ME), (A, "mine", ME)]
    stored = json.loads((tmp_path / "state" / "journal.json").read_text())
    assert stored[2]["run"] == {"host": "h", "pid": 100, "start": 1}
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "journal.json").stat().st_mode & 0o777 == 0o600


def test_claim_gives_up_naming_the_run_that_holds_the_name(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.update({ME, OTHER})
    clock = Clock()
    clock.sleeps = 10  # the other run never ends here
    j = journal(tmp_path, clock)
    j.claim([(ZONE, A, "theirs")], OTHER, timeout=60)
    with pytest.raises(ClaimError) as info:
        j.claim([(ZONE, A, "mine")], ME, timeout=1)
    assert f"{A} is still claimed by certbot run PID 200" in str(info.value)
    assert [e.value for e in j.entries()] == ["theirs"]


def test_the_same_run_is_never_blocked_by_itself(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.add(ME)
    clock = Clock()
    j = journal(tmp_path, clock)
    j.claim([(ZONE, A, "apex")], ME, timeout=0)
    j.claim([(ZONE, A, "wildcard")], ME, timeout=0)  # the manual hooks' second call
    assert [e.value for e in j.entries()] == ["apex", "wildcard"]
    j.forget([(ZONE, A, "apex")])
    assert [e.value for e in j.entries()] == ["wildcard"]


def test_mark_deleting_and_to_clean(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.add(ME)
    clock = Clock()
    j = journal(tmp_path, clock, stale_after=100)
    j.claim([(ZONE, A, "v1"), (ZONE, B, "v2")], ME, timeout=0)
    j.mark_deleting([(ZONE, B, "v2")])
    assert [e.value for e in j.to_clean()] == ["v2"]
    RUNNING_NOW.clear()  # the run ended ...
    assert [e.value for e in j.to_clean()] == ["v2"]
    clock.now += 101  # ... and its value became stale
    assert sorted(e.value for e in j.to_clean()) == ["v1", "v2"]


def test_damaged_journal_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "journal.json").write_text("{not json")
    assert journal(tmp_path, Clock()).entries() == []
    assert (state / "journal.json.damaged").read_text() == "{not json"


def test_state_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StateError, match=f"chmod 700 {state}"):
        journal(tmp_path, Clock()).entries()


# --- the client with a journal ---------------------------------------------------------------

SECRET = base64.b64encode(bytes(range(64))).decode()
KEY = make_key("acme-update", "hmac-sha512", SECRET, allow_weak=False, where="test")
P1 = HostPort("192.0.2.1", 53)
LOC_A = Location("a.example", (N(A),), N(ZONE), N(A))


class Server:
    """A fake primary: applies updates to its TXT data; can time out, drop or refuse."""

    def __init__(self) -> None:
        self.txt: dict[dns.name.Name, set[str]] = {}
        self.time_out = False
        self.drop = False
        self.messages: list[Message] = []

    def transport(self, q: Message, where: str, timeout: float, port: int) -> Message:
        q.to_wire()
        self.messages.append(q)
        response = dns.message.make_response(q)
        if self.time_out:
            raise TimeoutError("timed out")
        if self.drop:
            return response
        if q.sections[1]:  # prerequisites (section_count needs dnspython 2.4)
            name = q.sections[1][0].name
            if self.txt.get(name):
                response.set_rcode(dns.rcode.YXRRSET)
                return response
        for rrset in q.sections[2]:
            values = self.txt.setdefault(rrset.name, set())
            for rdata in rrset:
                text = b"".join(rdata.strings).decode()
                if rrset.deleting == dns.rdataclass.NONE:
                    values.discard(text)
                else:
                    values.add(text)
        return response

    def query(self, server: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        return set(self.txt.get(name, set()))


def client(server: Server, j: Journal | None, run: Run = ME, kind: str = "") -> DnsClient:
    return DnsClient(
        [ManagedZone(N(ZONE), (P1,), KEY, (P1,))], resolvers=[P1],
        delegation="_acme-challenge.{domain}." + ZONE, transport=server.transport,
        query=server.query, identify=lambda s, z: kind,  # type: ignore[arg-type,return-value]
        journal=j, run=run, propagation_timeout=0.05,
    )


def test_a_dropped_update_fails_at_once_naming_the_primary() -> None:
    server = Server()
    server.drop = True  # NOERROR, but nothing applied (a lua-dnsupdate-policy-script refusal)
    with pytest.raises(UpdateError) as info:
        client(server, None, kind="pdns").add([(LOC_A, "v1")])
    text = str(info.value)
    assert f'192.0.2.1:53 (PowerDNS) answered NOERROR to the UPDATE for zone {ZONE}' in text
    assert f'but does not serve "v1" at {A}: it dropped the update' in text
    assert "lua-dnsupdate-policy-script" in text


def test_a_primary_that_answers_no_queries_does_not_fail_the_update() -> None:
    server = Server()

    def refuse(server_: HostPort, name: dns.name.Name, timeout: float) -> set[str]:
        from certbot_epages.dns.propagation import QueryFailed

        raise QueryFailed("answered REFUSED")

    c = client(server, None)
    c._query = refuse
    c.add([(LOC_A, "v1")])
    assert server.txt[N(A)] == {"v1"}


def test_propagation_error_names_notify_dnsupdate_when_the_primary_is_powerdns() -> None:
    server = Server()
    c = client(server, None, kind="pdns")
    c._query = lambda s, n, t: set()
    with pytest.raises(PropagationError) as info:
        c.wait([(LOC_A, "v1")])
    assert f"pdnsutil set-meta {ZONE} NOTIFY-DNSUPDATE 1" in str(info.value)
    with pytest.raises(PropagationError) as info:
        client(Server(), None, kind="bind").wait([(LOC_A, "v1")])
    assert "NOTIFY-DNSUPDATE" not in str(info.value)


def test_add_and_remove_keep_the_journal(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.add(ME)
    server = Server()
    j = journal(tmp_path, Clock())
    c = client(server, j)
    c.add([(LOC_A, "v1"), (LOC_A, "v2")])
    assert [(e.record, e.value, e.run) for e in j.entries()] == [(A, "v1", ME), (A, "v2", ME)]
    c.remove([(LOC_A, "v1"), (LOC_A, "v2")])
    assert j.entries() == []
    assert server.txt[N(A)] == {".empty"}


def test_a_timed_out_delete_is_finished_by_a_later_run_with_the_placeholder(
    tmp_path: Path,
) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.update({ME, OTHER})
    server = Server()
    clock = Clock()
    j = journal(tmp_path, clock)
    first = client(server, j)
    first.add([(LOC_A, "v1")])
    server.time_out = True
    with pytest.raises(UpdateError, match="timed out"):
        first.remove([(LOC_A, "v1")])
    assert [e.deleting for e in j.entries()] == [True]
    # The server applies the delete late: the name is left without any TXT.
    server.time_out = False
    server.txt[N(A)] = set()
    removed, failures = client(server, j, run=OTHER).clean_stale()
    assert [e.value for e in removed] == ["v1"] and failures == []
    assert server.txt[N(A)] == {".empty"}
    assert j.entries() == []


def test_a_later_run_removes_stale_values_of_ended_runs_before_adding(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    RUNNING_NOW.update({ME, GONE})
    server = Server()
    clock = Clock()
    j = journal(tmp_path, clock, stale_after=60)
    client(server, j, run=GONE).add([(LOC_A, "killed")])
    RUNNING_NOW.discard(GONE)
    client(server, j).add([(LOC_A, "fresh")])  # not stale yet: stays
    assert server.txt[N(A)] == {"killed", "fresh"}
    clock.now += 61
    loc_b = Location("b.example", (N(B),), N(ZONE), N(B))
    client(server, j).add([(loc_b, "other")])
    assert server.txt[N(A)] == {"fresh"}  # ours is younger, and ME still runs
    assert sorted(e.value for e in j.entries()) == ["fresh", "other"]


def test_a_stale_value_in_a_zone_no_longer_managed_is_reported_once(tmp_path: Path) -> None:
    RUNNING_NOW.clear()
    clock = Clock()
    j = journal(tmp_path, clock, stale_after=1)
    j.claim([("old.example.", "_acme-challenge.old.example.", "v")], GONE, timeout=0)
    clock.now += 2
    removed, failures = client(Server(), j).clean_stale()
    assert removed == [] and len(failures) == 1
    assert "zone old.example. is not managed any more; delete it by hand" in failures[0]
    assert j.entries() == []
