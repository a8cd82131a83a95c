"""What sync says and records, without certbot or servers: certbot's command line and its error
line, the progress and summary lines, and every shop's entry in status.json and Prometheus.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certbot_epages.deploy.lineages import Lineage
from certbot_epages.fleet import certbot, status
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.report import (
    Outcome,
    SyncReport,
    failure_fix,
    plan_line,
    progress_line,
    summary,
)
from certbot_epages.inventory import parse_inventory
from certbot_epages.ownership import Conflict

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)
T0 = NOW.timestamp()


def step(name: str, action: str = planning.ISSUE, why: str = "no certificate yet"
         ) -> planning.Step:
    lineage = planning.lineage_name(name)
    return planning.Step(planning.Unit(lineage, (name, f"www.{name}"), (name,)), action, why)


def lineage(name: str, days_left: float = 60, lifetime: float = 90) -> Lineage:
    not_after = NOW + timedelta(days=days_left)
    return Lineage(name, Path("/certs/live") / name, (name, f"www.{name}"), not_after, "ab" * 32,
                   not_before=not_after - timedelta(days=lifetime))


# --- certbot -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("Requesting a certificate\n  Type: unauthorized\n  Detail: 1.2.3.4: Invalid response"
         "\nHint: ...\nAsk for help or search for solutions at https://community.letsencrypt.org",
         "1.2.3.4: Invalid response"),
        ("Some challenges have failed.\nAsk for help or search\nSaving debug log to /x.log\n",
         "Some challenges have failed."),
        ("Error: too many certificates\nSee the logfile /var/log/letsencrypt.log\n\n",
         "Error: too many certificates"),
        ("\n  \n", "certbot failed without output"),
    ],
)
def test_the_most_telling_line_of_certbots_output(output: str, line: str) -> None:
    assert certbot.error_line(output) == line


def test_an_order_by_dns01_uses_the_plugin_with_this_config() -> None:
    argv = certbot.certonly_args(step("shop.example"), "dns-01", Path("/etc/e.yaml"))
    assert argv == ["certonly", "--non-interactive", "--cert-name", "shop.example",
                    "-d", "shop.example", "-d", "www.shop.example",
                    "--authenticator", "epages-dns", "--epages-dns-config", "/etc/e.yaml"]


def test_an_order_by_http01_uses_the_hooks_installed_beside_this_python() -> None:
    argv = certbot.certonly_args(step("shop.example", planning.RENEW), "http-01",
                                 Path("/etc/e.yaml"))
    bin_dir = Path(sys.executable).parent
    assert "--force-renewal" in argv and "--authenticator" not in argv
    assert argv[argv.index("--manual-auth-hook") + 1] == str(bin_dir / "manual-auth-hook")
    assert argv[argv.index("--manual-cleanup-hook") + 1] == str(bin_dir / "manual-cleanup-hook")
    assert argv[argv.index("--preferred-challenges") + 1] == "http"


def test_a_reissue_asks_for_the_new_names() -> None:
    argv = certbot.certonly_args(step("shop.example", planning.REISSUE), None, Path("e.yaml"))
    assert "--renew-with-new-domains" in argv and "--force-renewal" not in argv


def test_running_certbot(tmp_path: Path) -> None:
    fake = tmp_path / "certbot"
    fake.write_text("#!/bin/sh\n[ \"$1\" = ok ] && exit 0\n"
                    "echo 'Detail: DNS problem: NXDOMAIN' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert certbot.run([str(fake), "ok"], {}) == (True, None)
    assert certbot.run([str(fake), "fail"], {}) == (False, "DNS problem: NXDOMAIN")
    ok, error = certbot.run([str(tmp_path / "missing")], {})
    assert not ok and error is not None and error.endswith("; set fleet.certbot")


# --- the lines sync prints ---------------------------------------------------------------------


def report_of(*outcomes: Outcome, **extra: Any) -> SyncReport:
    return SyncReport(list(outcomes), **extra)


def test_the_summary_counts_and_names_what_needs_attention() -> None:
    report = report_of(
        Outcome(step("a.example"), "done"),
        Outcome(step("b.example"), "failed", reason="unauthorized", fix="check DNS"),
        Outcome(step("c.example", planning.KEEP), "kept"),
        Outcome(step("d.example"), "waiting", reason="budget spent"),
        unserved=["refused: e.example (shop 5): taken"], deploy_error="lb1: unreachable",
    )
    assert summary(report).splitlines() == [
        "sync: 1 done, 1 kept, 1 failed, 0 blocked, 1 waiting, 0 deleted",
        "  failed b.example: unauthorized; fix: check DNS",
        "  waiting d.example: budget spent",
        "  not served: refused: e.example (shop 5): taken",
        "deploy failed: lb1: unreachable",
    ]
    busy = report_of(Outcome(step("a.example"), "busy", reason="another run holds it"))
    assert summary(busy).splitlines()[0].endswith(", 1 busy")


def test_a_progress_line_has_the_counts_so_far_and_an_eta() -> None:
    first = Outcome(step("a.example"), "done", challenge="dns-01", seconds=2.5)
    report = report_of(first, Outcome(step("b.example"), "pending"),
                       Outcome(step("c.example"), "pending"))
    assert progress_line(1, 3, first, report, elapsed=10.0) == (
        "[1/3] issue a.example (dns-01) done in 2.5s | done 1, failed 0, waiting 0, "
        "blocked 0 | ETA 20s")


def test_a_dry_run_line_says_what_would_happen_or_why_not() -> None:
    assert plan_line(Outcome(step("a.example"), "pending", challenge="http-01")) == (
        "  issue    a.example via http-01: would run (no certificate yet)")
    assert plan_line(Outcome(step("b.example"), "blocked", reason="no A record",
                             fix="point it here")) == (
        "  issue    b.example: blocked (no A record); fix: point it here")


def test_the_fix_for_a_failed_order_depends_on_the_challenge() -> None:
    http = failure_fix(Outcome(step("a.example"), "failed", challenge="http-01"), 2)
    assert "proxy /.well-known/acme-challenge/" in http and "failure 2:" in http
    dns = failure_fix(Outcome(step("a.example"), "failed", challenge="dns-01"), 1)
    assert dns.startswith("run 'certbot-epages check a.example www.a.example'")


# --- status.json entries -----------------------------------------------------------------------

INVENTORY = parse_inventory([
    {"domain": "ok.example", "aliases": ["www.ok.example"], "template": "t", "shop": "1"},
    {"domain": "new.example", "template": "t", "shop": "2"},
    {"domain": "wait.example", "template": "t"},
    {"domain": "pause.example", "template": "t", "status": "suspended"},
    {"domain": "a.platform.example", "template": "t", "shop": "p"},
    {"domain": "bad example", "template": "t", "shop": "9"},
], templates={"t"})


def entries(report: SyncReport, known: dict[str, Lineage], **kwargs: Any
            ) -> dict[str, dict[str, Any]]:
    the_plan = planning.Plan(riders={"a.platform.example": "wildcard_.platform.example"})
    return status._entries(INVENTORY, the_plan, report, known, kwargs.pop("previous", {}),
                           kwargs.pop("riders", {}), kwargs.pop("conflicts", ()),
                           kwargs.pop("only", None))


def test_each_shop_gets_its_state_and_next_action() -> None:
    report = report_of(
        Outcome(step("new.example"), "failed", challenge="dns-01", reason="SERVFAIL",
                fix="run check"),
        Outcome(step("wait.example"), "waiting", reason="budget", not_before=T0 + 3600),
    )
    known = {"ok.example": lineage("ok.example"),
             "wildcard_.platform.example": lineage("wildcard_.platform.example")}
    got = entries(report, known, previous={"ok.example": {"challenge": "http-01"}})
    ok = got["ok.example"]
    assert (ok["state"], ok["certificate"], ok["lineage"], ok["challenge"]) == (
        "ok", True, "ok.example", "http-01")  # kept: what an earlier sync used stays
    assert ok["names"] == ["ok.example", "www.ok.example"] and ok["shop"] == "1"
    assert ok["expires"] == "2026-05-03T12:00:00Z"
    assert ok["next_action"] == "renew from 2026-04-03T12:00:00Z"  # the last third
    new = got["new.example"]
    assert (new["state"], new["last_error"], new["fix"], new["lineage"]) == (
        "failed", "SERVFAIL", "run check", None)
    assert new["next_action"] == "retry at the next sync after backoff"
    assert got["wait.example"]["next_action"] == "order at 2026-03-04T13:00:00Z (budget)"
    assert got["wait.example"]["shop"] == "wait.example (no shop id)"
    assert (got["pause.example"]["state"], got["pause.example"]["next_action"]) == (
        "suspended", "none while suspended")
    rider = got["a.platform.example"]
    assert (rider["state"], rider["lineage"]) == ("ok", "wildcard_.platform.example")
    (invalid,) = [e for e in got.values() if e["state"] == "invalid"]
    assert invalid["shop"] == "9" and "domain" in invalid["last_error"]


def test_a_rider_whose_name_fails_its_preflight_is_blocked() -> None:
    got = entries(report_of(), {}, riders={"a.platform.example": ("no A record", "point it")})
    rider = got["a.platform.example"]
    assert (rider["state"], rider["last_error"], rider["fix"]) == (
        "blocked", "no A record", "point it")


def test_a_refused_entry_keeps_its_certificate_in_sight() -> None:
    shop = INVENTORY.shops[0]
    conflict = Conflict(shop, ("www.ok.example",), "www.ok.example belongs to shop 7", "drop it",
                        other="7")
    got = entries(report_of(), {"ok.example": lineage("ok.example")}, conflicts=[conflict])
    entry = got["ok.example (shop 1)"]  # the entry of that domain is there already
    assert (entry["state"], entry["owner"], entry["fix"]) == ("conflict", "7", "drop it")
    assert entry["lineage"] is None
    alone = status._entries(parse_inventory([], templates={"t"}), planning.Plan(), report_of(),
                            {"ok.example": lineage("ok.example")}, {}, {}, [conflict], None)
    assert alone["ok.example"]["expires"] == "2026-05-03T12:00:00Z"


def test_a_domain_sync_writes_only_its_entries() -> None:
    got = entries(report_of(), {}, only={"new.example", "bad example"})
    assert sorted(got) == ["new.example"]  # an invalid name is no entry domain


def test_busy_and_blocked_outcomes_say_what_comes_next() -> None:
    lin = lineage("ok.example")
    busy = Outcome(step("ok.example"), "busy")
    blocked = Outcome(step("ok.example"), "blocked", fix="add the CNAME")
    assert status._state("active", busy, lin) == "busy"
    assert status._state("active", None, None) == "unknown"
    assert status._state("deleted", busy, lin) == "deleted"
    assert status._next("active", busy, lin).startswith("another run is ordering it")
    assert status._next("active", blocked, lin) == (
        "fix DNS, then the next sync orders: add the CNAME")
    assert status._next("active", None, None) == "issue at the next sync"
    assert status._next("deleted", None, lin) == "none (deleted)"


# --- what people and monitoring read -----------------------------------------------------------

DOCUMENT: dict[str, Any] = {
    "last_sync": "2026-03-04T12:00:00Z",
    "domains": {
        "ok.example": {"domain": "ok.example", "state": "ok", "expires": "2026-05-03T12:00:00Z",
                       "challenge": "dns-01", "live": {"lb1": "r1", "lb2": "r1"},
                       "next_action": "renew from 2026-04-03", "seconds_to_expiry": 5184000},
        'q"x.example': {"domain": 'q"x.example', "state": "failed", "last_error": "SERVFAIL",
                        "fix": "run check", "seconds_to_expiry": None},
        "c.example (shop 1)": {"domain": "c.example", "shop": "1", "state": "conflict",
                               "last_error": "taken", "seconds_to_expiry": None},
    },
    "load_balancers": {"lb1": "r1", "lb2": "r1"},
    "load_balancer_errors": {"lb3": "ssh: timed out"},
}


def test_the_table_for_people() -> None:
    lines = status.render_table(DOCUMENT).splitlines()
    assert lines[0].split() == ["DOMAIN", "STATE", "EXPIRES", "CHALLENGE", "LIVE", "ON",
                                "NEXT", "/", "ERROR"]
    ok = next(line for line in lines if line.startswith("ok.example"))
    assert ok.split() == ["ok.example", "ok", "2026-05-03", "dns-01", "lb1,lb2", "renew",
                          "from", "2026-04-03"]
    failed = next(line for line in lines if line.startswith('q"x.example'))
    assert failed.endswith("SERVFAIL -> fix: run check")
    assert lines[-2] == "last sync: 2026-03-04T12:00:00Z; live releases: lb1 r1, lb2 r1"
    assert lines[-1] == "lb3: cannot be asked what it serves: ssh: timed out"


def test_the_prometheus_textfile(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "certbot_epages.prom"
    status.write_prometheus(path, DOCUMENT)
    text = path.read_text()
    assert 'certbot_epages_certificate_expiry_seconds{domain="ok.example"} 5184000\n' in text
    assert "expiry_seconds{domain=\"q" not in text  # no certificate, no expiry sample
    assert 'certbot_epages_domain_failing{domain="q\\"x.example"} 1\n' in text
    assert 'certbot_epages_domain_failing{domain="ok.example"} 0\n' in text
    assert 'certbot_epages_ownership_conflict{domain="c.example",shop="1"} 1\n' in text
    assert text.endswith(f"certbot_epages_last_sync_timestamp_seconds {int(T0)}\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it
