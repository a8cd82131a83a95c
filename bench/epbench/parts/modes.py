"""Part 5 (issue 14): deploy.mode sites against shared at 10,000 and 100,000 shops."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from typing import Any

import yaml

from certbot_epages.sandbox.platform import Sandbox
from epbench.common import log
from epbench.lbs import (
    bare_test_and_reload,
    handshakes,
    lb_nginx_rss,
    reset_lbs,
)
from epbench.modefleet import CUSTOM_SHARE, ModeFleet

# The mode comparison, one part per mode and fleet size (selectable alone); "modes" names the
# side-by-side pair at 10,000 shops. Sites mode at 100,000 is estimated from 10,000 (nginx
# would need about 8 GiB per process).
MODE_PARTS = {"sites-10k": ("sites", 10_000), "shared-10k": ("shared", 10_000),
              "shared-100k": ("shared", 100_000)}
QUICK_SHOPS = {10_000: 400, 100_000: 2_000}  # --quick: small fleets, same shape
HANDSHAKE_SECONDS = 5.0
# Targets of issue 14 for shared mode (seconds, or MiB per nginx process).
TARGETS = {"renewal_10k": 2.0, "renewal_100k": 3.0, "pending_10k": 5.0, "rss_mib_10k": 64,
           "new_domain_10k": 15.0}

__all__ = ["CUSTOM_SHARE", "HANDSHAKE_SECONDS", "MODE_PARTS", "QUICK_SHOPS", "TARGETS",
           "part_mode"]


def part_mode(sb: Sandbox, key: str, mode: str, shops: int, quick: bool,
              profile: bool) -> dict[str, Any]:
    """Part 5 for one mode and fleet size: first deploy, renewals, RSS, handshakes."""
    log(f"{key}: deploy.mode {mode}, {shops} shops")
    started = time.monotonic()
    fleet = ModeFleet(sb, mode, shops, sb.directory / f"m{mode[:2]}{shops}")  # short: ssh
    out: dict[str, Any] = {
        "part": key, "mode": mode, "shops": shops, "riders": len(fleet.riders),
        "custom_domains": len(fleet.customs), "lineages": len(fleet.customs) + 1,
        "names": 1 + len(fleet.riders) + 2 * len(fleet.customs),
        "fleet_build_seconds": round(time.monotonic() - started, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
        # bench/timed.py's stand-in for deploy.lineages.covering (see there) was on:
    }
    log(f"  fleet built in {out['fleet_build_seconds']}s: {out['names']} names, "
        f"{out['lineages']} lineages")
    reset_lbs(sb)
    out["nginx_rss_empty"] = lb_nginx_rss(sb)
    first = fleet.deploy("--all", profile=profile, watch=fleet.sample())
    first["not_served"] = fleet.check(fleet.sample())
    out["first_full"] = first
    out["nginx_rss_after_first_deploy"] = lb_nginx_rss(sb)
    out["noop_full"] = fleet.deploy("--all")
    lb = sb.lbs[0]
    settings = yaml.safe_load(fleet.config.read_text())["deploy"]["load_balancers"][0]
    out["baseline"] = bare_test_and_reload(sb, lb, settings)
    out["handshakes"] = handshakes(
        sb, {"custom": fleet.one, "rider": fleet.riders[0] if fleet.riders else fleet.one},
        1.0 if quick else HANDSHAKE_SECONDS)
    rounds = 1 if quick or mode == "sites" else 3
    renewals = []
    for index in range(rounds):
        fleet.renew(fleet.one)
        result = fleet.hook(fleet.one, profile=profile and index == rounds - 1)
        result["not_served"] = fleet.check([fleet.one, f"www.{fleet.one}"])
        renewals.append(result)
    out["renewal"] = renewals
    batches = []
    for index in range(1 if quick or mode == "sites" else 2):
        for domain in fleet.deferred:
            fleet.renew(domain)
        recorded = fleet.defer_all(10 if index == 0 else 0)
        if index == 0:
            out["defer_hooks"] = recorded
        sample = [n for d in fleet.deferred[::10] for n in (d, f"www.{d}")]
        result = fleet.deploy("--pending", profile=profile and index == 0, watch=sample)
        result["not_served"] = fleet.check(
            [n for d in fleet.deferred[::10] for n in (d, f"www.{d}")])
        batches.append(result)
    out["pending_100"] = batches
    out["nginx_rss_after_renewals"] = lb_nginx_rss(sb)
    out["new_shop"] = [fleet.new_shop(f"new{index}.custom.test", profile and index == 0)
                       for index in range(1 if quick or mode == "sites" else 3)]
    out["load_average_at_end"] = list(os.getloadavg())
    out["seconds"] = round(time.monotonic() - started, 1)
    shutil.rmtree(fleet.base, ignore_errors=True)
    return out

