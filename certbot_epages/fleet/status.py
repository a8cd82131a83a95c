"""Every shop domain's certification status: for people, for the shop software, for monitoring.

``sync`` writes ``status.json`` into ``fleet.state_dir``; ``certbot-epages status`` reads it and
adds what is true now (the lineages' expiry, which release each load balancer serves).
Let's Encrypt no longer mails expiry warnings, so the Prometheus textfile (seconds to expiry,
failures, last sync) is how monitoring learns of a certificate that is not being renewed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certbot_epages.config import Config, LoadBalancerConfig
from certbot_epages.deploy import lineages, manifest, push
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.spool import Spool, control_dir
from certbot_epages.fleet import plan as planning
from certbot_epages.inventory import Inventory, site_file

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
          riders: Mapping[str, tuple[str, str]] | None = None) -> Path:
    """Record every domain's state after a sync; also the Prometheus file if configured.

    ``riders`` holds, for platform shops whose own name fails the preflight, (reason, fix).
    """
    by_lineage = {o.step.unit.lineage: o for o in report.outcomes}
    target = settings.fleet.state_dir / STATUS_FILE
    try:
        previous = json.loads(target.read_text()).get("domains", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    domains: dict[str, dict[str, Any]] = {}
    for shop in inventory.shops:
        lineage_name = the_plan.riders.get(shop.domain, planning.lineage_name(shop.domain))
        outcome = by_lineage.get(lineage_name)
        lineage = known.get(lineage_name)
        entry: dict[str, Any] = {
            "domain": shop.domain,
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
    for problem in inventory.problems:
        # The shop software learns about entries it sent that could not be used at all.
        key = problem.domain or f"(entry {problem.index})"
        domains.setdefault(key, {
            "domain": key, "names": [], "status": "invalid", "lineage": None,
            "certificate": False, "certificate_names": [], "expires": None, "challenge": None,
            "state": "invalid", "last_error": problem.message,
            "fix": "correct the entry in the shop software's export",
            "next_action": "none until the entry is valid",
        })
    document = {"last_sync": _iso(now), "domains": domains,
                "deploy_error": report.deploy_error}
    _atomic_write(target, json.dumps(document, indent=1, sort_keys=True) + "\n")
    if settings.fleet.prometheus is not None:
        write_prometheus(settings.fleet.prometheus, collect(settings, now=now))
    return target


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
    """Per load balancer: the release it serves and that release's sites.

    Asked of the load balancer itself; where it cannot be asked, the deploy state's copy is
    shown, with why.
    """
    if settings.deploy is None:
        return {}, {}
    deploy = settings.deploy
    cache = Spool(deploy.spool)

    def ask(lb: LoadBalancerConfig, control: Path) -> tuple[str, str | None, set[str], str | None]:
        target = push.Target(lb, control, timeout=30)
        try:
            release_id, data = push.read_manifest(target)
            if release_id is None:
                return lb.name, None, set(), None
            sites = set() if data is None else set(manifest.loads(data, release_id).sites)
            return lb.name, release_id, sites, None
        except (push.PushError, manifest.ManifestError) as e:
            cached = cache.live(lb.name)
            sites = set()
            if cached is not None:
                with contextlib.suppress(OSError, manifest.ManifestError):
                    sites = set(manifest.loads((cached / manifest.FILENAME).read_bytes()).sites)
            return (lb.name, None if cached is None else cached.name, sites,
                    f"{e} (shown: the deploy state's copy)")
        finally:
            target.close()

    with control_dir() as control, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda lb: ask(lb, control), deploy.load_balancers))
    live = {name: (release_id, sites) for name, release_id, sites, _ in answers
            if release_id is not None}
    return live, {name: error for name, _, _, error in answers if error}


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
        failing = 1 if e.get("state") in ("failed", "blocked") else 0
        lines.append(f'certbot_epages_domain_failing{{domain="{_label(domain)}"}} {failing}')
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
