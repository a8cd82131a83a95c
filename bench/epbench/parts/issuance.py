"""Part 1: apex + wildcard issuance by each authenticator, against certbot's floor."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from certbot_epages.sandbox.platform import Sandbox
from epbench.common import CHALLENGE_ZONE, ZONES, log, median, poll
from epbench.dnswatch import secondary_caught_up, txt_values
from epbench.issuer import Issuer


@dataclass(frozen=True)
class Variant:
    """One row of the issuance table."""

    key: str
    variant: str
    zone: str
    seconds: int | None
    runs: int
    label: str
    wait: str
    beside: bool = False  # runs at the same time as the other ``beside`` variants

    @property
    def zone_name(self) -> str:
        """The apex this variant issues for."""
        return ZONES[self.zone][0]


def issuance_variants(quick: bool) -> list[Variant]:
    """Part 1: what is measured, how often."""
    fast = 1 if quick else 3
    slow_sleep = 5 if quick else 60
    return [
        Variant("floor-direct", "nsupdate", "direct", 0, fast,
                "floor: nsupdate hook, no wait", "none (primary is the only server)"),
        Variant("floor-cname", "nsupdate", "cname", 0, fast,
                "floor attempt: nsupdate hook, no wait", "none"),
        Variant("epages-dns-cname", "epages-dns", "cname", None, fast,
                "epages-dns", "polls every authoritative server"),
        Variant("manual-hooks-cname", "manual-hooks", "cname", None, fast,
                "manual hooks", "last auth call polls every server"),
        Variant("epages-dns-direct", "epages-dns", "direct", None, fast,
                "epages-dns", "polls every authoritative server"),
        Variant("rfc2136-10-direct", "rfc2136", "direct", 10, fast,
                "certbot-dns-rfc2136, 10 s", "fixed 10 s", beside=True),
        Variant("rfc2136-60-direct", "rfc2136", "direct", None if not quick else 5, 1,
                "certbot-dns-rfc2136, default", f"fixed {slow_sleep} s (default)", beside=True),
        Variant("nsupdate-sleep60-cname", "nsupdate", "cname", slow_sleep, 1,
                f"nsupdate hook + sleep {slow_sleep}", f"fixed {slow_sleep} s", beside=True),
        Variant("rfc2136-10-cname", "rfc2136", "cname", 10, 1,
                "certbot-dns-rfc2136, 10 s", "(fails before any wait)"),
    ]


def part_issuance(sb: Sandbox, issuer: Issuer, quick: bool) -> dict[str, Any]:
    """Part 1: every variant, medians, ratio to the floor."""
    rows: dict[str, Any] = {}
    variants = issuance_variants(quick)
    done: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        if not v.beside:
            log(f"issuance: {v.key} x{v.runs}")
            done[v.key] = [issuer.issue(v.variant, v.zone, v.seconds) for _ in range(v.runs)]
    done.update(_issue_beside(sb, issuer, [v for v in variants if v.beside]))
    for v in variants:
        results = done[v.key]
        ok_times = [r["seconds"] for r in results if r["ok"]]
        rows[v.key] = {
            "label": v.label, "variant": v.variant, "zone": v.zone,
            "domains": list(ZONES[v.zone]), "wait": v.wait, "propagation_seconds": v.seconds,
            "runs": results, "succeeded": len(ok_times), "attempts": len(results),
            "median_seconds": median(ok_times), "beside_another_run": v.beside,
        }
    floor = rows["floor-direct"]["median_seconds"]
    for row in rows.values():
        m = row["median_seconds"]
        row["ratio_to_floor"] = round(m / floor, 2) if m is not None and floor else None
    return rows


def _issue_beside(sb: Sandbox, issuer: Issuer, variants: list[Variant]) -> dict[str, Any]:
    """The variants with long fixed waits, at the same time.

    The once-only ones start together; the repeated ones (one after another) start once
    those are asleep, so certbot's own CPU work hardly overlaps.
    """
    once = [v for v in variants if v.runs == 1]
    chained = [v for v in variants if v.runs > 1]
    log(f"issuance: {', '.join(v.key for v in once)} at the same time, once each; then "
        f"{', '.join(f'{v.key} x{v.runs}' for v in chained)} beside them")
    for slot in range(1, len(variants)):
        issuer.ini(slot)
    secondary_caught_up(sb)
    out: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        futures = {v.key: pool.submit(issuer.issue, v.variant, v.zone, v.seconds,
                                      settle=False, slot=index)
                   for index, v in enumerate(once)}
        waiting = [f"_acme-challenge.{v.zone_name}."
                   + (f"{CHALLENGE_ZONE}." if v.zone == "cname" else "") for v in once]
        with contextlib.suppress(TimeoutError):
            poll("the once-only runs to wait", lambda: True if all(
                len(txt_values(sb.ip.primary, name)) >= 2 for name in waiting) else None, 30)

        def chain(v: Variant, slot: int) -> list[dict[str, Any]]:
            return [issuer.issue(v.variant, v.zone, v.seconds, settle=False, slot=slot)
                    for _ in range(v.runs)]

        chains = {v.key: pool.submit(chain, v, len(once) + index)
                  for index, v in enumerate(chained)}
        for key, future in futures.items():
            out[key] = [future.result()]
        for key, chained_future in chains.items():
            out[key] = chained_future.result()
    return out

