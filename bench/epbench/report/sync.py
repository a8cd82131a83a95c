"""results.md section of part 4: the sync of 100 shops."""

from __future__ import annotations

from typing import Any

from epbench.report.fmt import kib, mib, num


def sync_md(sync: dict[str, Any]) -> list[str]:
    """Part 4: wall time against time in certbot."""
    subset = sync["http01_orders"] < 99
    out = [
        "## 4. Sync of 100 shops against pebble",
        "",
        f"`certbot-epages sync` of an inventory of {sync['shops']} shops: "
        f"{sync['http01_orders']} custom domains `bNNN.custom.test` (HTTP-01 through the load "
        f"balancers, each its own order) and {sync['riders']} platform riders "
        "`qNNN.platform.test`, which need one order for the `*.platform.test` wildcard "
        f"(DNS-01 with epages-dns): {sync['orders']} certbot runs in all, then one deploy of "
        "everything (with probes, default timeout).",
    ]
    if subset:
        out.append(
            f"**Only {sync['http01_orders']} of the 100 shops need their own order**: an order "
            f"costs ~{num(sync['median_step_seconds'], 1)} s of certbot, and the bench sized "
            "the subset at run time so the whole benchmark stays under 15 minutes (a full 100 "
            "orders would add about "
            f"{(99 - sync['http01_orders']) * (sync['median_step_seconds'] or 3):.0f} s).")
    out += [
        "",
        "| | s |",
        "|---|---|",
        f"| wall time of the sync | {sync['wall_seconds']:.1f} |",
        f"| certbot (sum of the per-step times in the progress lines) | "
        f"{sync['certbot_seconds']:.1f} |",
        f"| our own (wall − certbot: plan, preflight, ledger, deploy, status) | "
        f"{sync['own_seconds']:.1f} |",
        f"| median per certbot run | {num(sync['median_step_seconds'])} |",
        f"| second sync, nothing to do | {sync['second_sync']['wall_seconds']:.1f} |",
        "",
        f"Result: `{sync['summary']}`; deploy sent {kib(sync['deploy']['bytes_sent'])}, "
        f"probed {sync['deploy']['names_probed_per_lb']} names per LB; peak RSS of the sync "
        f"process tree {mib(sync['peak_rss_kb'])} MiB. Second sync: "
        f"`{sync['second_sync']['summary']}`.",
        "",
    ]
    if not sync["ok"]:
        out += ["The sync FAILED:", "", "```", sync.get("error", "")[-1500:], "```", ""]
    return out

