"""Every shop domain's certification status: for people, for the shop software, for monitoring.

``sync`` writes ``status.json`` into ``fleet.state_dir``; ``certbot-epages status`` reads it and
adds what is true now (the lineages' expiry, which release each load balancer serves).
Runs overlap (``sync --domain`` beside a full sync), so every write re-reads the file under a
short lock and merges (:func:`merge`): ``sync --domain`` replaces only its shops' entries, and a
full sync keeps the entries that a run started after it wrote.
Let's Encrypt no longer mails expiry warnings, so the Prometheus textfile (seconds to expiry,
failures, last sync) is how monitoring learns of a certificate that is not being renewed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certbot_epages.config import Config
from certbot_epages.deploy import lineages, served
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.locks import FleetLocks
from certbot_epages.inventory import Inventory
from certbot_epages.names import site_file
from certbot_epages.ownership import Conflict

if TYPE_CHECKING:
    from certbot_epages.fleet.sync import SyncReport

STATUS_FILE = "status.json"


def _iso(when: datetime | float | None) -> str | None:
    if when is None:
        return None
    if isinstance(when, (int, float)):
        when = datetime.fromtimestamp(when, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def write(settings: Config, inventory: Inventory, the_plan: planning.Plan, report: SyncReport,
          known: Mapping[str, Lineage], now: float,
          riders: Mapping[str, tuple[str, str]] | None = None,
          conflicts: Sequence[Conflict] = (), *, only: Collection[str] | None = None,
          started: float | None = None) -> Path:
    """Record every domain's state after a sync; also the Prometheus file if configured.

    ``riders`` holds, for platform shops whose own name fails the preflight, (reason, fix);
    ``conflicts`` the entries refused because their names belong to someone else. ``only``
    (sync --domain) limits the entries written to those of these entry domains and leaves the
    Prometheus file to full syncs; ``started`` is when the run started (default ``now``),
    recorded in each entry it writes.
    """
    target = settings.fleet.state_dir / STATUS_FILE
    with FleetLocks(settings.fleet.state_dir).status():
        try:
            document = json.loads(target.read_text())
        except (OSError, ValueError):
            document = {}
        if not isinstance(document, dict):
            document = {}
        previous = document.get("domains", {})
        if not isinstance(previous, dict):
            previous = {}
        fresh = _entries(inventory, the_plan, report, known, previous, riders or {},
                         conflicts, only)
        stamp = _iso(now if started is None else started)
        for entry in fresh.values():
            entry["updated"] = stamp
        busy = {d for o in report.outcomes if o.state == "busy" for d in o.step.unit.shops}
        domains = merge(previous, fresh, only=only, started=stamp or "", keep=busy)
        if only is None:
            document = {"last_sync": _iso(now), "domains": domains,
                        "deploy_error": report.deploy_error}
        else:
            document = {"last_sync": document.get("last_sync"),
                        "deploy_error": document.get("deploy_error"), **document,
                        "domains": domains}
        _atomic_write(target, json.dumps(document, indent=1, sort_keys=True) + "\n")
    if settings.fleet.prometheus is not None and only is None:
        # Full syncs only: collect() reads every lineage, seconds with 100,000 of them.
        write_prometheus(settings.fleet.prometheus, collect(settings, now=now))
    return target


def merge(previous: Mapping[str, Any], fresh: Mapping[str, dict[str, Any]], *,
          only: Collection[str] | None, started: str, keep: Collection[str] = ()
          ) -> dict[str, Any]:
    """The domains of status.json after a run wrote ``fresh`` over ``previous``.

    ``only`` (sync --domain): the entries of those entry domains are replaced, all others stay.
    A full run (``only`` None) replaces everything except the entries of ``keep`` (domains of
    certificates another run was ordering) and entries written by a run that started at or
    after ``started`` (ISO time): those runs saw a newer inventory and newer lineages.
    """
    if only is not None:
        merged = {key: entry for key, entry in previous.items()
                  if not (isinstance(entry, dict) and entry.get("domain") in only)}
        merged.update(fresh)
        return merged
    merged = dict(fresh)
    for key, entry in previous.items():
        if not isinstance(entry, dict):
            continue
        updated = entry.get("updated")
        if entry.get("domain") in keep or (isinstance(updated, str) and updated >= started):
            merged[key] = entry
    return merged


def _entries(inventory: Inventory, the_plan: planning.Plan, report: SyncReport,
             known: Mapping[str, Lineage], previous: Mapping[str, Any],
             riders: Mapping[str, tuple[str, str]], conflicts: Sequence[Conflict],
             only: Collection[str] | None) -> dict[str, dict[str, Any]]:
    by_lineage = {o.step.unit.lineage: o for o in report.outcomes}
    domains: dict[str, dict[str, Any]] = {}
    for shop in inventory.shops:
        if only is not None and shop.domain not in only:
            continue
        lineage_name = the_plan.riders.get(shop.domain, planning.lineage_name(shop.domain))
        outcome = by_lineage.get(lineage_name)
        lineage = known.get(lineage_name)
        entry: dict[str, Any] = {
            "domain": shop.domain,
            "shop": shop.owner,
            "names": list(shop.server_names),
            "status": shop.status,
            "lineage": lineage_name if lineage else None,
            "certificate": lineage is not None,
            "certificate_names": list(lineage.names) if lineage else [],
            "expires": _iso(lineage.not_after) if lineage else None,
            # A certificate kept as it is was issued by an earlier sync: keep what it used.
            "challenge": (outcome.challenge if outcome and outcome.challenge
                          else _previous_challenge(previous, shop.domain)),
            "state": _state(shop.status, outcome, lineage),
            "last_error": outcome.reason if outcome and outcome.state in (
                "failed", "blocked") else None,
            "fix": outcome.fix if outcome else None,
            "next_action": _next(shop.status, outcome, lineage),
        }
        if riders and shop.domain in riders and shop.is_active:
            entry["state"] = "blocked"
            entry["last_error"], entry["fix"] = riders[shop.domain]
            entry["next_action"] = "fix DNS; the shop is served once its name points here"
        domains[shop.domain] = entry
    for conflict in conflicts:
        shop = conflict.shop
        key = shop.domain if shop.domain not in domains else f"{shop.domain} (shop {shop.owner})"
        # A refused shop may still serve (and renew) what it had: keep its expiry in sight.
        lineage_name = planning.lineage_name(shop.domain)
        lineage = known.get(lineage_name) if key == shop.domain else None
        domains[key] = {
            "domain": shop.domain, "shop": shop.owner, "names": list(shop.server_names),
            "status": shop.status, "lineage": lineage_name if lineage else None,
            "certificate": lineage is not None,
            "certificate_names": list(lineage.names) if lineage else [],
            "expires": _iso(lineage.not_after) if lineage else None, "challenge": None,
            "state": "conflict", "last_error": conflict.reason, "fix": conflict.fix,
            "owner": conflict.other,
            "next_action": "nothing new is ordered or deployed for it while the conflict lasts",
        }
    for problem in inventory.problems:
        if only is not None and problem.name not in only:
            continue
        # The shop software learns about entries it sent that could not be used at all.
        key = problem.domain or f"(entry {problem.index})"
        domains.setdefault(key, {
            "domain": key, "shop": problem.owner, "names": [], "status": "invalid",
            "lineage": None,
            "certificate": False, "certificate_names": [], "expires": None, "challenge": None,
            "state": "invalid", "last_error": problem.message,
            "fix": "correct the entry in the shop software's export",
            "next_action": "none until the entry is valid",
        })
    return domains


def _previous_challenge(previous: Mapping[str, Any], domain: str) -> str | None:
    entry = previous.get(domain)
    value = entry.get("challenge") if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def _state(shop_status: str, outcome: Any, lineage: Lineage | None) -> str:
    if shop_status != "active":
        return shop_status
    if outcome is None:
        return "ok" if lineage else "unknown"
    state: str = outcome.state
    return {"done": "ok", "kept": "ok"}.get(state, state)


def _next(shop_status: str, outcome: Any, lineage: Lineage | None) -> str:
    if shop_status == "suspended":
        return "none while suspended"
    if shop_status == "deleted":
        return "none (deleted)"
    if outcome is not None and outcome.state == "waiting":
        return f"order at {_iso(outcome.not_before)} ({outcome.reason})"
    if outcome is not None and outcome.state == "blocked":
        return f"fix DNS, then the next sync orders: {outcome.fix}"
    if outcome is not None and outcome.state == "failed":
        return "retry at the next sync after backoff"
    if outcome is not None and outcome.state == "busy":
        return "another run is ordering it and records the result; else the next sync"
    if lineage is not None:
        due = planning.renewal_time(lineage)
        return f"renew from {_iso(due)}"
    return "issue at the next sync"


def collect(settings: Config, *, now: float) -> dict[str, Any]:
    """The recorded status, refreshed with the lineages and the load balancers' releases."""
    path = settings.fleet.state_dir / STATUS_FILE
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        document = {}
    if not isinstance(document, dict) or not isinstance(document.get("domains"), dict):
        document = {"last_sync": None, "domains": {}}
    certbot_dir = settings.deploy.certbot_dir if settings.deploy else Path("/etc/letsencrypt")
    known = {lin.name: lin for lin in lineages.scan(certbot_dir)}
    live, unreachable = _live_releases(settings)
    for entry in document["domains"].values():
        lineage = known.get(entry.get("lineage") or "")
        if lineage is not None:
            entry["expires"] = _iso(lineage.not_after)
            entry["seconds_to_expiry"] = int(lineage.not_after.timestamp() - now)
        else:
            entry["seconds_to_expiry"] = None
        entry["live"] = {lb: release for lb, (release, sites) in live.items()
                         if site_file(entry["domain"]) in sites}
    document["load_balancers"] = {lb: release for lb, (release, _) in live.items()}
    document["load_balancer_errors"] = unreachable
    return document


def _live_releases(settings: Config) -> tuple[dict[str, tuple[str, set[str]]], dict[str, str]]:
    """Per load balancer: the release it serves and that release's sites (and why not)."""
    if settings.deploy is None:
        return {}, {}
    answers = served.read_all(settings.deploy)
    live = {a.lb: (a.release, set(a.manifest.sites) if a.manifest else set())
            for a in answers if a.release is not None}
    return live, {a.lb: a.error for a in answers if a.error}


def render_table(document: Mapping[str, Any]) -> str:
    """A table for people."""
    rows = [("DOMAIN", "STATE", "EXPIRES", "CHALLENGE", "LIVE ON", "NEXT / ERROR")]
    for domain, e in sorted(document["domains"].items()):
        detail = e.get("last_error") or e.get("next_action") or ""
        if e.get("last_error") and e.get("fix"):
            detail = f"{e['last_error']} -> fix: {e['fix']}"
        rows.append((domain, e.get("state") or "", (e.get("expires") or "-")[:10],
                     e.get("challenge") or "-", ",".join(sorted(e.get("live") or {})) or "-",
                     detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
             for r in rows]
    lines.append(f"last sync: {document.get('last_sync') or 'never'}; live releases: "
                 + (", ".join(f"{lb} {r}" for lb, r in sorted(
                     document.get("load_balancers", {}).items())) or "none"))
    for lb, error in sorted((document.get("load_balancer_errors") or {}).items()):
        lines.append(f"{lb}: cannot be asked what it serves: {error}")
    return "\n".join(lines)


def write_prometheus(path: Path, document: Mapping[str, Any]) -> None:
    """A node_exporter textfile: seconds to expiry, failures, last sync."""
    lines = [
        "# HELP certbot_epages_certificate_expiry_seconds Seconds until the certificate expires.",
        "# TYPE certbot_epages_certificate_expiry_seconds gauge",
    ]
    for domain, e in sorted(document["domains"].items()):
        if e.get("seconds_to_expiry") is not None:
            lines.append(f'certbot_epages_certificate_expiry_seconds{{domain="{_label(domain)}"}} '
                         f"{e['seconds_to_expiry']}")
    lines += [
        "# HELP certbot_epages_domain_failing Whether the domain's last sync failed or was "
        "blocked (1) or not (0).",
        "# TYPE certbot_epages_domain_failing gauge",
    ]
    for domain, e in sorted(document["domains"].items()):
        failing = 1 if e.get("state") in ("failed", "blocked", "conflict") else 0
        lines.append(f'certbot_epages_domain_failing{{domain="{_label(domain)}"}} {failing}')
    lines += [
        "# HELP certbot_epages_ownership_conflict An entry refused because another shop (or "
        "the platform) owns some of its names.",
        "# TYPE certbot_epages_ownership_conflict gauge",
    ]
    for _, e in sorted(document["domains"].items()):
        if e.get("state") == "conflict":
            lines.append(f'certbot_epages_ownership_conflict{{domain="{_label(e["domain"])}",'
                         f'shop="{_label(str(e.get("shop")))}"}} 1')
    last = document.get("last_sync")
    if last:
        stamp = datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        lines += [
            "# HELP certbot_epages_last_sync_timestamp_seconds When the last sync finished.",
            "# TYPE certbot_epages_last_sync_timestamp_seconds gauge",
            f"certbot_epages_last_sync_timestamp_seconds {int(stamp.timestamp())}",
        ]
    _atomic_write(path, "\n".join(lines) + "\n", mode=0o644)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
