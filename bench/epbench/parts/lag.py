"""Part 2: issuance while the secondary lags behind the primary."""

from __future__ import annotations

from typing import Any

from certbot_epages.sandbox.platform import Sandbox
from epbench.common import log
from epbench.dnswatch import measure_lag, secondary_caught_up
from epbench.issuer import Issuer


def part_lag(sb: Sandbox, issuer: Issuer, quick: bool) -> dict[str, Any]:
    """Part 2: the secondary lags (hold_transfers(3)); which variants still succeed."""
    hold = 3.0
    out: dict[str, Any] = {"hold_transfers": hold, "rows": {}}
    sb.hold_transfers(hold)
    try:
        out["observed_lag_seconds"] = round(measure_lag(sb), 2)
        log(f"lag: the secondary serves an update {out['observed_lag_seconds']}s after it")
        for key, variant, zone, seconds, note in (
            ("epages-dns-cname", "epages-dns", "cname", None, ""),
            ("manual-hooks-cname", "manual-hooks", "cname", None, ""),
            ("floor-cname", "nsupdate", "cname", 0, ""),
            ("rfc2136-10-lagzone", "rfc2136", "lagzone", 10,
             "names inside dyn.platform.test, so the lagging secondary matters"),
        ):
            result = issuer.issue(variant, zone, seconds)
            result.update(variant=variant, zone=zone, propagation_seconds=seconds, note=note)
            out["rows"][key] = result
    finally:
        sb.hold_transfers(0)
    secondary_caught_up(sb, timeout=120)
    return out


# ------------------------------------------------------------------------------ hooks
