"""Let's Encrypt limits: registered domains, budgets, backoff and the persisted ledger."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from certbot_epages.errors import EpagesError
from certbot_epages.fleet.limits import (
    BACKOFF,
    Decision,
    Ledger,
    LedgerError,
    Limits,
    registered_domain,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 4, 12, 0, tzinfo=timezone.utc).timestamp()
HOUR = 3600.0
DAY = 86400.0


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- registered_domain ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suffixes", "expected"),
    [
        ("shop.example.com", (), "example.com"),
        ("example.com", (), "example.com"),
        ("com", (), "com"),
        ("a.b.c.Example.COM.", (), "example.com"),
        ("*.shop.example.com", (), "example.com"),
        ("*.shop.example.co.uk", ("co.uk",), "example.co.uk"),
        ("*.shop.example.co.uk", (), "co.uk"),
        ("www.example.co.uk", (".CO.UK.",), "example.co.uk"),
        ("co.uk", ("co.uk",), "co.uk"),
        ("x.shop.example.com", ("co.uk",), "example.com"),
        ("notco.uk", ("co.uk",), "notco.uk"),
        ("a.b.pvt.k12.ma.us", ("ma.us", "k12.ma.us", "pvt.k12.ma.us"), "b.pvt.k12.ma.us"),
    ],
)
def test_registered_domain(name: str, suffixes: tuple[str, ...], expected: str) -> None:
    assert registered_domain(name, suffixes) == expected


# -- Limits -----------------------------------------------------------------------------------


def test_limits_defaults_are_lets_encrypts() -> None:
    limits = Limits()
    assert (limits.orders_per_account, limits.orders_window) == (300, 3 * HOUR)
    assert (limits.certs_per_registered_domain, limits.certs_window) == (50, 7 * DAY)
    assert (limits.failures_per_hostname, limits.failures_window) == (5, HOUR)
    assert BACKOFF == (60.0, 600.0, 6000.0, 86400.0)


@pytest.mark.parametrize("field", ["orders_per_account", "certs_window", "failures_per_hostname"])
def test_limits_reject_nonsense(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: 0})  # type: ignore[arg-type]


# -- account orders ---------------------------------------------------------------------------


def test_order_budget_lets_five_of_ten_go() -> None:
    ledger = Ledger()
    limits = Limits(orders_per_account=5)
    decisions = [ledger.admit(f"shop{i}", [f"shop{i}.example{i}.com"], T0 + i, limits)
                 for i in range(10)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 5
    assert all(d.reason is None and d.not_before is None for d in decisions[:5])
    for d in decisions[5:]:
        assert d.not_before == T0 + 3 * HOUR  # the first order leaves the window
        assert d.reason is not None
        assert "account order budget" in d.reason
        assert "5/5 orders in the last 3h" in d.reason
        assert utc(T0 + 3 * HOUR) in d.reason


def test_order_budget_frees_up_as_orders_leave_the_window() -> None:
    ledger = Ledger()
    limits = Limits(orders_per_account=2, orders_window=HOUR)
    assert ledger.admit("a", ["a.example.com"], T0, limits).allowed
    assert ledger.admit("b", ["b.example.org"], T0 + 600, limits).allowed
    waiting = ledger.admit("c", ["c.example.net"], T0 + 1200, limits)
    assert waiting == Decision(False, waiting.reason, T0 + HOUR)
    assert not ledger.admit("c", ["c.example.net"], T0 + HOUR - 1, limits).allowed
    assert ledger.admit("c", ["c.example.net"], T0 + HOUR, limits).allowed
    # now b (T0+600) and c (T0+HOUR) count: the next slot is when b leaves
    assert ledger.admit("d", ["d.example.net"], T0 + HOUR, limits).not_before == T0 + 600 + HOUR


def test_admit_without_reserve_consumes_nothing() -> None:
    ledger = Ledger()
    limits = Limits(orders_per_account=1)
    for _ in range(3):
        assert ledger.admit("a", ["a.example.com"], T0, limits, reserve=False).allowed
    assert ledger.admit("a", ["a.example.com"], T0, limits).allowed
    assert not ledger.admit("b", ["b.example.com"], T0, limits).allowed


def test_record_order_counts() -> None:
    ledger = Ledger()
    limits = Limits(orders_per_account=1)
    ledger.record_order(T0)
    assert not ledger.admit("a", ["a.example.com"], T0 + 1, limits).allowed


def test_copy_is_independent() -> None:
    ledger = Ledger()
    limits = Limits(orders_per_account=1)
    plan = ledger.copy()
    assert plan.admit("a", ["a.example.com"], T0, limits).allowed
    assert not plan.admit("b", ["b.example.com"], T0, limits).allowed
    assert ledger.admit("b", ["b.example.com"], T0, limits).allowed


# -- certificates per registered domain -------------------------------------------------------


def test_certificates_per_registered_domain() -> None:
    ledger = Ledger()
    limits = Limits(certs_per_registered_domain=3)
    for i in range(3):
        ledger.record_certificate([f"shop{i}.example.com", f"www.shop{i}.example.com"], T0 + i)
    decision = ledger.admit("new", ["new.example.com"], T0 + 10, limits)
    assert not decision.allowed
    assert decision.not_before == T0 + 7 * DAY
    assert decision.reason is not None
    assert "certificate budget for example.com: 3/3 certificates in the last 7d" in decision.reason
    assert utc(T0 + 7 * DAY) in decision.reason
    # a blocked decision reserves no order
    assert ledger.admit("other", ["shop.other.com"], T0 + 10, Limits(orders_per_account=1)).allowed
    # any blocked registered domain among the names blocks the lineage
    assert not ledger.admit("mixed", ["a.other.org", "b.example.com"], T0 + 10, limits).allowed
    assert ledger.admit("new", ["new.example.com"], T0 + 7 * DAY, limits).allowed


def test_certificate_counts_once_per_registered_domain() -> None:
    ledger = Ledger()
    limits = Limits(certs_per_registered_domain=2)
    ledger.record_certificate(["a.example.com", "b.example.com", "*.example.com"], T0)
    ledger.record_certificate(["x.example.org", "a.example.com"], T0)
    assert not ledger.admit("k", ["c.example.com"], T0 + 1, limits).allowed
    assert ledger.admit("k", ["c.example.org"], T0 + 1, limits).allowed


def test_certificate_domains_follow_the_public_suffixes_at_admit() -> None:
    ledger = Ledger()
    ledger.record_certificate(["shop.one.co.uk"], T0)
    ledger.record_certificate(["shop.two.co.uk"], T0)
    plain = Limits(certs_per_registered_domain=2)
    with_psl = Limits(certs_per_registered_domain=2, public_suffixes=("co.uk",))
    assert not ledger.admit("k", ["three.co.uk"], T0 + 1, plain, reserve=False).allowed
    assert ledger.admit("k", ["shop.three.co.uk"], T0 + 1, with_psl, reserve=False).allowed
    ledger.record_certificate(["www.one.co.uk"], T0 + 2)
    blocked = ledger.admit("k", ["*.one.co.uk"], T0 + 3, with_psl)
    assert blocked.reason is not None and "certificate budget for one.co.uk" in blocked.reason


# -- failed validations per hostname ----------------------------------------------------------


def test_failed_validations_per_hostname() -> None:
    ledger = Ledger()
    limits = Limits(failures_per_hostname=3, failures_window=HOUR)
    for i in range(3):
        ledger.record_failure(f"lineage{i}", ["shop.example.com"], "NXDOMAIN", T0 + 60 * i)
    # another lineage with that hostname waits until the oldest failure leaves the window
    decision = ledger.admit("other", ["www.example.com", "SHOP.example.com"], T0 + 600, limits)
    assert not decision.allowed
    assert decision.not_before == T0 + HOUR
    assert decision.reason is not None
    assert "failed validation budget for shop.example.com: 3/3 failures in the last 1h" \
        in decision.reason
    assert utc(T0 + HOUR) in decision.reason
    assert ledger.admit("other", ["www.example.com"], T0 + 600, limits).allowed
    assert ledger.admit("other", ["shop.example.com"], T0 + HOUR, limits).allowed


def test_failed_validations_wildcard_counts_for_its_base_name() -> None:
    ledger = Ledger()
    limits = Limits(failures_per_hostname=1)
    ledger.record_failure("w", ["*.example.com", "example.com"], "timeout", T0)
    decision = ledger.admit("x", ["example.com"], T0 + 1, limits)
    assert decision.not_before == T0 + HOUR


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_schedule_and_reset_on_success() -> None:
    ledger = Ledger()
    limits = Limits(failures_per_hostname=1000)
    key, names = "shop", ["shop.example.com"]
    now = T0
    for n, delay in enumerate([60.0, 600.0, 6000.0, 86400.0, 86400.0, 86400.0], start=1):
        assert ledger.admit(key, names, now, limits).allowed
        ledger.record_failure(key, names, f"failure {n}\nwith details", now)
        assert ledger.failures(key) == (n, f"failure {n}\nwith details", now)
        decision = ledger.admit(key, names, now + delay - 1, limits)
        assert not decision.allowed
        assert decision.not_before == now + delay
        assert decision.reason is not None
        assert f"{n} consecutive failure" in decision.reason
        assert f"last error: failure {n})" in decision.reason
        assert utc(now + delay) in decision.reason
        now += delay
    # other lineages are not held back by this one's backoff
    assert ledger.admit("other", ["other.example.org"], now - 10, limits).allowed
    ledger.record_success(key)
    assert ledger.failures(key) == (0, None, None)
    assert ledger.admit(key, names, now, limits).allowed
    ledger.record_failure(key, names, "again", now)
    assert ledger.admit(key, names, now + 59, limits).not_before == now + 60


# -- persistence ------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    limits = Limits(orders_per_account=2, certs_per_registered_domain=1, failures_per_hostname=1)
    ledger = Ledger()
    assert ledger.admit("a", ["a.example.com"], T0, limits).allowed
    ledger.record_certificate(["a.example.com"], T0 + 5)
    ledger.record_failure("b", ["b.example.org"], "unauthorized", T0 + 7)
    ledger.save(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]

    loaded = Ledger.load(path)
    assert loaded.failures("b") == (1, "unauthorized", T0 + 7)
    for key, names in [("a2", ["x.example.com"]), ("b", ["b.example.org"]),
                       ("c", ["c.example.net"])]:
        assert loaded.admit(key, names, T0 + 10, limits, reserve=False) == \
            ledger.admit(key, names, T0 + 10, limits, reserve=False)
    assert loaded.admit("c", ["c.example.net"], T0 + 10, limits).allowed
    assert not loaded.admit("d", ["d.example.net"], T0 + 10, limits).allowed  # 2 orders now

    # saving again replaces the file atomically and keeps the mode
    path.chmod(0o644)
    loaded.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(json.loads(path.read_text())["orders"]) == 2


def test_load_missing_file_is_empty(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path / "nope.json")
    assert ledger.failures("x") == (0, None, None)
    assert ledger.admit("x", ["x.example.com"], T0, Limits(orders_per_account=1)).allowed


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 99}',
        '{"version": 1, "orders": ["yesterday"]}',
        '{"version": 1, "backoff": {"k": {"count": 0, "error": null, "at": 1}}}',
        '{"version": 1, "certificates": [{"at": 1}]}',
    ],
)
def test_load_corrupt_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(EpagesError) as excinfo:
        Ledger.load(path)
    assert isinstance(excinfo.value, LedgerError)
    message = str(excinfo.value)
    assert str(path) in message
    assert "move it away" in message


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LedgerError, match="move it away"):
        Ledger.load(path)


# -- prune ------------------------------------------------------------------------------------


def test_prune_drops_old_events_but_keeps_backoff(tmp_path: Path) -> None:
    ledger = Ledger()
    limits = Limits()
    ledger.record_order(T0)
    ledger.record_order(T0 + 2 * HOUR)
    ledger.record_certificate(["a.example.com"], T0)
    ledger.record_certificate(["b.example.com"], T0 + 5 * DAY)
    ledger.record_failure("k", ["k.example.com"], "boom", T0)
    ledger.record_failure("k", ["k.example.com"], "boom", T0 + 3 * HOUR - 1)

    ledger.prune(T0 + 3 * HOUR, limits)
    path = tmp_path / "ledger.json"
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["orders"] == [T0 + 2 * HOUR]
    assert [c["names"] for c in data["certificates"]] == [["a.example.com"], ["b.example.com"]]
    assert data["hostname_failures"] == {"k.example.com": [T0 + 3 * HOUR - 1]}
    assert ledger.failures("k") == (2, "boom", T0 + 3 * HOUR - 1)

    ledger.prune(T0 + 12 * DAY, limits)
    ledger.save(path)
    data = json.loads(path.read_text())
    assert data["orders"] == []
    assert data["certificates"] == []
    assert data["hostname_failures"] == {}
    assert ledger.failures("k") == (2, "boom", T0 + 3 * HOUR - 1)


def test_prune_does_not_change_decisions() -> None:
    limits = Limits(orders_per_account=1, certs_per_registered_domain=1)
    ledger = Ledger()
    ledger.record_order(T0)
    ledger.record_certificate(["a.example.com"], T0)
    later = T0 + 7 * DAY
    ledger.prune(later, limits)
    assert ledger.admit("a", ["a.example.com"], later, limits).allowed
