"""Runs side by side: lineage locks, certbot's turn, the ledger's atomic updates, status merges.

A full sync and ``sync --domain`` share ``fleet.state_dir``; these tests play "the other run"
by holding its lock files themselves (flock belongs to the open file, so a second open in
this process is another holder) and check what the run under test does about it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fleet_testlib import T0, fake_fleet, write_lineage

from certbot_epages import config
from certbot_epages.errors import SyncError
from certbot_epages.files import held
from certbot_epages.fleet import limits, status
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.limits import Ledger, LedgerError, Limits
from certbot_epages.fleet.locks import FleetLocks, LockTimeout
from certbot_epages.fleet.report import Outcome, SyncReport
from certbot_epages.fleet.selection import restrict, select
from certbot_epages.fleet.sync import Sync
from certbot_epages.inventory import parse_inventory

pytestmark = pytest.mark.unit



# -- locks -------------------------------------------------------------------------------------


def test_a_held_lock_is_busy_for_others_and_free_after(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "a.example.lock"
    with held(path) as first:
        assert first
        with held(path) as second:
            assert not second
        with held(path, shared=True) as reader:
            assert not reader
    with held(path) as again:
        assert again
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_shared_holders_share_and_keep_out_an_exclusive_one(tmp_path: Path) -> None:
    path = tmp_path / "q"
    with held(path, shared=True) as one, held(path, shared=True) as two:
        assert one and two
        with held(path) as exclusive:
            assert not exclusive


def test_a_waiting_holder_gets_the_lock_once_it_is_let_go(tmp_path: Path) -> None:
    path = tmp_path / "l"
    other = held(path)
    assert other.__enter__()
    calls: list[str] = []

    def let_go() -> None:  # "the other run" finishes the moment we start waiting
        calls.append("waiting")
        other.__exit__(None, None, None)

    with held(path, wait=30, on_wait=let_go) as got:
        assert got
    assert calls == ["waiting"]


def test_lineage_lock_names_are_lineage_names_only(tmp_path: Path) -> None:
    locks = FleetLocks(tmp_path)
    assert locks.lineage_path("wildcard_.platform.example").name == (
        "wildcard_.platform.example.lock")
    for bad in ("../x", "", "_certbot", "a/b"):
        with pytest.raises(ValueError):
            locks.lineage_path(bad)


def test_a_full_sync_lets_a_queued_domain_sync_run_certbot_first(tmp_path: Path) -> None:
    locks = FleetLocks(tmp_path)
    # A sync --domain is queued (holds the queue shared) and waits for certbot.
    with held(locks.directory / "_certbot.queue", shared=True):
        with pytest.raises(LockTimeout, match="_certbot.queue"), \
                locks.certbot_turn(first=False, wait=0.2):
            pass
        # Another sync --domain is not held up by the first.
        with locks.certbot_turn(first=True, wait=0):
            with pytest.raises(LockTimeout, match="_certbot.lock"), \
                    locks.certbot_turn(first=True, wait=0):
                pass
    with locks.certbot_turn(first=False, wait=0):
        pass


# -- the ledger ------------------------------------------------------------------------------


def test_an_update_keeps_what_another_run_recorded_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    limits.update(path, lambda ledger: ledger.record_order(T0))
    stale = Ledger.load(path)  # what a run read before
    limits.update(path, lambda ledger: ledger.record_failure("b.example", ["b.example"],
                                                             "boom", T0 + 1))
    limits.update(path, lambda ledger: ledger.record_order(T0 + 2))
    stale.record_order(T0 + 3)  # never written: updates go through update()
    data = json.loads(path.read_text())
    assert data["orders"] == [T0, T0 + 2]
    assert data["backoff"]["b.example"]["count"] == 1


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            for i in range(25):
                at = T0 + offset * 1000 + i

                def order(ledger: Ledger, at: float = at) -> None:
                    ledger.record_order(at)

                limits.update(path, order)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(json.loads(path.read_text())["orders"]) == 100


def test_an_update_waits_for_the_ledger_lock(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    with held(tmp_path / "ledger.json.lock"):
        with pytest.raises(LockTimeout, match=r"ledger\.json\.lock"):
            limits.update(path, lambda ledger: ledger.record_order(T0), timeout=0.1)
    assert not path.exists()


def test_an_update_of_a_corrupt_ledger_says_so_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{")
    with pytest.raises(LedgerError, match="corrupt"):
        limits.update(path, lambda ledger: ledger.record_order(T0))
    assert path.read_text() == "{"


def test_an_order_given_back_frees_the_budget() -> None:
    ledger = Ledger()
    tight = Limits(orders_per_account=1)
    assert ledger.admit("a", ["a.example"], T0, tight).allowed
    assert not ledger.admit("b", ["b.example"], T0 + 1, tight).allowed
    ledger.cancel_order(T0)
    ledger.cancel_order(T0 + 99)  # nothing reserved then: nothing changes
    assert ledger.admit("b", ["b.example"], T0 + 1, tight).allowed


# -- selecting shops for sync --domain ---------------------------------------------------------


INVENTORY = parse_inventory([
    {"domain": "*.platform.example", "template": "platform-wildcard", "shop": "platform"},
    {"domain": "a.platform.example", "template": "custom-domain", "shop": "1"},
    {"domain": "b.platform.example", "template": "custom-domain", "shop": "2"},
    {"domain": "shop.example", "aliases": ["www.shop.example"], "template": "custom-domain"},
    {"domain": "other.example", "template": "custom-domain"},
    {"domain": "broken.example", "template": "nope"},
], templates=("custom-domain", "platform-wildcard"))


def test_names_select_the_entries_listing_them_as_domain_or_alias() -> None:
    chosen = select(INVENTORY, ["www.shop.example", "a.platform.example", "broken.example"])
    assert chosen.shops == {"shop.example", "a.platform.example"}
    assert [p.name for p in chosen.invalid] == ["broken.example"]
    assert chosen.domains == {"shop.example", "a.platform.example", "broken.example"}


def test_an_unknown_name_is_an_error_naming_it() -> None:
    with pytest.raises(SyncError, match=r"not in inv\.yaml: new\.example, x\.example"):
        select(INVENTORY, ["shop.example", "new.example", "x.example"], "inv.yaml")


def test_the_plan_is_cut_to_the_certificates_of_the_chosen_shops() -> None:
    now = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    full = planning.make_plan(INVENTORY.shops, {}, ("platform.example",), now)
    assert len(full.steps) == 3
    rider = restrict(full, frozenset({"a.platform.example"}))
    assert [s.unit.lineage for s in rider.steps] == ["wildcard_.platform.example"]
    assert rider.riders == {"a.platform.example": "wildcard_.platform.example"}
    own = restrict(full, frozenset({"shop.example"}))
    assert [s.unit.lineage for s in own.steps] == ["shop.example"] and not own.riders


@pytest.mark.parametrize("state", ["failed", "blocked", "waiting", "busy"])
def test_a_domain_sync_succeeds_only_when_every_named_shop_is_served(state: str) -> None:
    served = SyncReport([issue_step("a.example"), issue_step("b.example")])
    served.outcomes[0].state, served.outcomes[1].state = "done", "kept"
    assert served.all_served()
    served.outcomes[1].state = state
    assert not served.all_served()
    assert not SyncReport(unserved=["refused: b.example (shop 2): ..."]).all_served()
    assert not SyncReport(deploy_error="lb1: unreachable").all_served()


# -- status.json merges ----------------------------------------------------------------------


def entry(domain: str, state: str,
          updated: str | None = "2026-03-04T12:00:00Z") -> dict[str, object]:
    return {"domain": domain, "state": state, "updated": updated}


def test_a_domain_sync_replaces_only_its_entries() -> None:
    previous = {"a.example": entry("a.example", "ok"), "b.example": entry("b.example", "ok"),
                "c.example (shop 7)": entry("c.example", "conflict")}
    fresh = {"c.example": entry("c.example", "ok", "2026-03-04T13:00:00Z")}
    merged = status.merge(previous, fresh, only={"c.example"}, started="2026-03-04T13:00:00Z")
    assert merged == {"a.example": previous["a.example"], "b.example": previous["b.example"],
                      "c.example": fresh["c.example"]}


def test_a_full_sync_keeps_entries_of_runs_that_started_after_it_and_busy_ones() -> None:
    started = "2026-03-04T12:00:00Z"
    previous = {
        "old.example": entry("old.example", "failed", "2026-03-01T00:00:00Z"),
        "new.example": entry("new.example", "ok", "2026-03-04T12:30:00Z"),  # sync --domain
        "busy.example": entry("busy.example", "ok", "2026-03-04T11:59:00Z"),
        "gone.example": entry("gone.example", "ok", None),  # written before "updated" existed
    }
    fresh = {"old.example": entry("old.example", "ok", started),
             "busy.example": entry("busy.example", "busy", started)}
    merged = status.merge(previous, fresh, only=None, started=started, keep={"busy.example"})
    assert merged == {"old.example": fresh["old.example"],
                      "new.example": previous["new.example"],
                      "busy.example": previous["busy.example"]}


# -- one certificate, beside another run -------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A config whose certbot is a script: ``certbot.out`` says what it prints and exits."""
    return fake_fleet(tmp_path)


def make_sync(directory: Path, *domains: str, say: Callable[[str], None] = print) -> Sync:
    sync = Sync(config.load(directory / "epages.yaml"), domains=domains, say=say,
                clock=lambda: T0)
    sync.certbot_dir = directory / "certbot"
    return sync


def issue_step(name: str) -> Outcome:
    unit = planning.Unit(name, (name, f"www.{name}"), (name,))
    return Outcome(planning.Step(unit, planning.ISSUE, "no certificate yet"), "pending",
                   challenge="http-01")


def ledger_of(directory: Path) -> dict[str, object]:
    path = directory / "state" / "ledger.json"
    data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    return data


def test_an_order_runs_certbot_and_records_it(fleet: Path) -> None:
    outcome = issue_step("a.example")
    make_sync(fleet, "a.example")._one(outcome)
    assert outcome.state == "done", outcome.reason
    assert "--cert-name a.example -d a.example -d www.a.example" in (
        fleet / "certbot.calls").read_text()
    ledger = ledger_of(fleet)
    assert ledger["orders"] == [T0] and len(ledger["certificates"]) == 1  # type: ignore[arg-type]


def test_a_full_sync_skips_a_lineage_another_run_holds(fleet: Path) -> None:
    sync = make_sync(fleet)
    outcome = issue_step("a.example")
    with held(sync.locks.lineage_path("a.example")):
        sync._one(outcome)
    assert outcome.state == "busy" and "a.example.lock" in (outcome.reason or "")
    assert not (fleet / "certbot.calls").exists() and not ledger_of(fleet)


def test_a_domain_sync_waits_for_the_lineage_and_keeps_what_the_other_run_issued(
    fleet: Path,
) -> None:
    said: list[str] = []
    sync = make_sync(fleet, "a.example", say=said.append)
    other = held(sync.locks.lineage_path("a.example"))
    assert other.__enter__()
    outcome = issue_step("a.example")

    def the_other_run_finishes(line: str) -> None:
        said.append(line)
        if "waiting for the run that holds" in line:
            write_lineage(sync.certbot_dir, "a.example", ["a.example", "www.a.example"])
            other.__exit__(None, None, None)

    sync.say = the_other_run_finishes
    sync._one(outcome)
    assert any("a.example.lock" in line for line in said)
    assert outcome.state == "kept" and "another run ordered it meanwhile" in (outcome.reason
                                                                               or "")
    assert not (fleet / "certbot.calls").exists() and not ledger_of(fleet)  # no order spent


def test_a_lineage_changed_meanwhile_is_ordered_as_it_now_needs(fleet: Path) -> None:
    sync = make_sync(fleet, "a.example")
    write_lineage(sync.certbot_dir, "a.example", ["a.example"])  # issued without the alias
    outcome = issue_step("a.example")
    sync._one(outcome)
    assert outcome.state == "done" and outcome.step.action == planning.REISSUE
    assert "--renew-with-new-domains" in (fleet / "certbot.calls").read_text()


def test_a_certbot_run_outside_of_sync_costs_no_order_and_no_failure(fleet: Path) -> None:
    (fleet / "certbot.out").write_text("Another instance of Certbot is already running.")
    outcome = issue_step("a.example")
    make_sync(fleet, "a.example")._one(outcome)
    assert outcome.state == "busy"
    ledger = ledger_of(fleet)
    assert ledger["orders"] == [] and ledger["backoff"] == {}


def test_a_failed_order_backs_off(fleet: Path) -> None:
    (fleet / "certbot.out").write_text("Detail: 127.0.0.1: Connection refused")
    outcome = issue_step("a.example")
    make_sync(fleet, "a.example")._one(outcome)
    assert outcome.state == "failed" and outcome.reason == "127.0.0.1: Connection refused"
    assert "failure 1" in (outcome.fix or "")
    ledger = ledger_of(fleet)
    assert ledger["backoff"]["a.example"]["count"] == 1  # type: ignore[index]


def test_a_domain_sync_waits_no_longer_than_it_may_for_certbot(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import certbot_epages.fleet.sync as module

    monkeypatch.setattr(module, "TURN_WAIT", 0.1)
    sync = make_sync(fleet, "a.example")
    outcome = issue_step("a.example")
    with held(sync.locks.directory / "_certbot.lock"):  # a certbot run that never ends
        sync._one(outcome)
    assert outcome.state == "busy" and "_certbot.lock" in (outcome.reason or "")
    assert ledger_of(fleet)["orders"] == []  # the reserved order was given back
