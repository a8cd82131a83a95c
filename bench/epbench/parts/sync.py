"""Part 4: a sync of 100 shops against pebble, wall time against time in certbot."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import yaml

from certbot_epages.sandbox.platform import Sandbox
from epbench.common import BIN, SAFETY, Budget, line_starting, log, median, run
from epbench.lbs import deploy_summary, reset_lbs

PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (\w+) (\S+)(?: \(([\w-]+)\))? (\w+).* in ([\d.]+)s "
                      r"\| done \d+, failed")


def per_order_estimate(results: dict[str, Any]) -> float:
    """Seconds one sync order should take, from part 1.

    An HTTP-01 order costs about what a manual-hooks DNS-01 issuance does: certbot plus hook
    processes.
    """
    rows = results.get("issuance", {})
    floor = rows.get("floor-direct", {}).get("median_seconds") or 3.0
    manual = rows.get("manual-hooks-cname", {}).get("median_seconds") or floor + 1.5
    # manual hooks on apex + wildcard: 4 hook processes; an HTTP-01 order of one name: 2.
    return 1.15 * (floor + max(manual - floor, 0.5) / 2)


SYNC_FIXED = 25.0  # LB reset, registration, the sync's deploy and the second (no-op) sync


def sync_reserve(results: dict[str, Any], orders: int) -> float:
    """Seconds to keep for a sync with ``orders`` orders, and the safety margin."""
    return SAFETY + SYNC_FIXED + (orders + 1) * per_order_estimate(results)


def sync_orders_for(budget: Budget, per_order: float, fixed: float, quick: bool) -> int:
    """How many HTTP-01 orders fit into what is left of the time limit (100 at most)."""
    if quick:
        return 4
    usable = budget.left() - SAFETY - fixed
    return max(10, min(99, int(usable / per_order) - 1))


def part_sync(sb: Sandbox, orders: int) -> dict[str, Any]:
    """Part 4: sync of 100 shops: ``orders`` HTTP-01 custom domains, the rest platform riders."""
    log(f"sync: 100 shops, {orders} HTTP-01 orders + the platform wildcard (DNS-01)")
    reset_lbs(sb)
    base = sb.directory / "sy"  # short: the deploy's ssh ControlPath lives below it
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    ini = base / "cli.ini"
    ini.write_text(
        f"server = {sb.acme_url}\n"
        f"config-dir = {base / 'letsencrypt'}\n"
        f"work-dir = {base / 'work'}\n"
        f"logs-dir = {base / 'logs'}\n"
        "agree-tos = true\nregister-unsafely-without-email = true\nnon-interactive = true\n"
    )
    env = {**os.environ, **sb.env()}
    registered = run([str(BIN / "certbot"), "-c", str(ini), "register"], env=env, timeout=120)
    if not registered.ok:
        raise RuntimeError(f"certbot register failed: {registered.stderr}")
    custom = [f"b{i:03d}.custom.test" for i in range(orders)]
    riders = [f"q{i:03d}.platform.test" for i in range(100 - orders)]
    shops = [{"domain": d, "template": "custom-domain", "vars": {"upstream": sb.backend}}
             for d in (*custom, *riders)]
    inventory = base / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(shops))
    data = yaml.safe_load(sb.config_path.read_text())
    data["inventory"] = str(inventory)
    data["deploy"].update(certbot_dir=str(base / "letsencrypt"), spool=str(base / "sp"))
    data["fleet"].update(state_dir=str(base / "fleet"), certbot_args=["-c", str(ini)],
                         prometheus=str(base / "fleet" / "certbot_epages.prom"),
                         limits={"certs_per_registered_domain": 1000})
    config = base / "epages.yaml"
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o600)
    argv = [str(BIN / "certbot-epages"), "--config", str(config), "sync"]
    done = run(argv, env=env, timeout=1800)
    steps: list[dict[str, Any]] = []
    for line in done.stdout.splitlines():
        m = PROGRESS.match(line)
        if m:
            steps.append({"action": m[3], "lineage": m[4], "challenge": m[5], "state": m[6],
                          "seconds": float(m[7])})
    certbot_seconds = sum(s["seconds"] for s in steps)
    summary = line_starting(done.stdout, "sync: ")
    out: dict[str, Any] = {
        "shops": len(shops), "http01_orders": orders, "riders": len(riders),
        "orders": len(steps), "ok": done.ok, "wall_seconds": round(done.seconds, 3),
        "certbot_seconds": round(certbot_seconds, 3),
        "own_seconds": round(done.seconds - certbot_seconds, 3),
        "median_step_seconds": median([s["seconds"] for s in steps]),
        "peak_rss_kb": done.maxrss_kb, "summary": summary,
        "deploy": deploy_summary(done.stdout), "steps": steps,
    }
    if not done.ok:
        out["error"] = (done.stdout + done.stderr)[-3000:]
    log(f"  sync: {done.seconds:.1f}s wall, {certbot_seconds:.1f}s in certbot, {summary}")
    again = run(argv, env=env, timeout=600)
    out["second_sync"] = {"ok": again.ok, "wall_seconds": round(again.seconds, 3),
                          "summary": line_starting(again.stdout, "sync: "),
                          "peak_rss_kb": again.maxrss_kb}
    log(f"  second sync: {again.seconds:.1f}s, {out['second_sync']['summary']}")
    return out
