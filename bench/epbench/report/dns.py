"""results.md sections of parts 1 and 2 and the hooks: issuance against certbot's floor."""

from __future__ import annotations

from typing import Any

from epbench.report.fmt import num


def issuance_md(rows: dict[str, Any]) -> list[str]:
    """Part 1: each authenticator against certbot's floor."""
    floor = rows["floor-direct"]["median_seconds"]
    out = [
        "## 1. Apex + wildcard issuance",
        "",
        "Each run is `certbot certonly` with a fresh `--cert-name` for an apex and its wildcard "
        "(two DNS-01 challenges, one order). *cname* = `shop.test` + `*.shop.test`, whose "
        "`_acme-challenge` is a CNAME into `dyn.platform.test` (served by the primary and the "
        "secondary the CA's resolver asks); *direct* = `direct.test` + `*.direct.test`, updated "
        "in place and served by the primary only. Medians over the successful runs; ratio = "
        f"median / floor ({num(floor)} s: the same issuance with an nsupdate hook that waits for "
        "nothing, on the direct zone, i.e. what certbot itself costs).",
        "",
        "| variant | zone | wait | runs ok | median s | min–max s | × floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        times = [r["seconds"] for r in row["runs"] if r["ok"]]
        span = f"{min(times):.2f}–{max(times):.2f}" if times else "–"
        ratio = f"{row['ratio_to_floor']:.2f}" if row["ratio_to_floor"] is not None else "–"
        label = row["label"] + (" †" if row.get("beside_another_run") else "")
        out.append(f"| {label} | {row['zone']} | {row['wait']} | "
                   f"{row['succeeded']}/{row['attempts']} | {num(row['median_seconds'])} | "
                   f"{span} | {ratio} |")
    failures = [(row["label"], row["zone"], r["error"]) for row in rows.values()
                for r in row["runs"] if not r["ok"]]
    out += ["", "Failures:" if failures else "No failures.", ""]
    seen = set()
    for label, zone, error in failures:
        if (label, zone, error) in seen:
            continue
        seen.add((label, zone, error))
        out.append(f"- {label} on {zone}: `{error[:300]}`")
    out += [
        "",
        "Notes: certbot-dns-rfc2136 cannot follow the CNAME: on the cname zone it tries to "
        "update `shop.test` itself and the primary refuses (one attempt, above). The nsupdate "
        "hooks are the scripts in `bench/work/` (written by the bench): the TXT goes to the "
        "CNAME target name, and the `sleep` happens once per certbot run (on the last "
        "challenge, `CERTBOT_REMAINING_CHALLENGES=0`); a hook that sleeps on every call would "
        "cost one sleep per name. The floor attempt on the cname zone shows why no-wait is not "
        "an option there: the CA's resolver asks the secondary, which may not have the record "
        "yet. † These ran at the same time, each in its own certbot directory, to save a "
        "minute: the 60 s runs together, the 10 s runs one after another beside them, started "
        "once the 60 s runs were asleep (their TXT records were up), so certbot's own work "
        "hardly overlaps. The floor starts four hook processes (sh + nsupdate, two per "
        "challenge); epages-dns works inside certbot's process, which is how it can come in "
        "under the floor.",
        "",
    ]
    return out


def hooks_md(hooks: dict[str, Any]) -> list[str]:
    """The manual hooks' four processes."""
    ratio = hooks["ratio_to_floor"]
    return [
        "## Manual hooks: the four hook processes of apex + wildcard",
        "",
        f"certbot starts a hook process per challenge and phase. Only the last auth call and the "
        f"first cleanup call talk to DNS; the other two only touch the spool. Medians of "
        f"{hooks['runs']} runs, each process from start to exit:",
        "",
        "| | |",
        "|---|---|",
        f"| Python start-up (`python -c pass`) | {num(hooks['python_startup_seconds'], 3)} s |",
        f"| imports of a spool-only call (`-X importtime`) | "
        f"{hooks['import_spool_only_microseconds'] / 1000:.0f} ms |",
        f"| imports of a call that talks to DNS (+ config, dnspython) | "
        f"{hooks['import_dns_microseconds'] / 1000:.0f} ms |",
        f"| modules of other paths (HTTP-01, Jinja2, HTTP) loaded | "
        f"{', '.join(hooks['loaded_but_not_needed']) or 'none'} |",
        f"| auth, first challenge (records its value) | {num(hooks['auth_first_seconds'], 3)} s |",
        f"| auth, last challenge (CNAME walk, one UPDATE, waits for both servers) | "
        f"{num(hooks['auth_last_seconds'], 3)} s |",
        f"| cleanup, first (deletes both values) | {num(hooks['cleanup_first_seconds'], 3)} s |",
        f"| cleanup, second (nothing left) | {num(hooks['cleanup_last_seconds'], 3)} s |",
        f"| apex + wildcard by the hooks / certbot's floor | {num(hooks['manual_hooks_seconds'])}"
        f" s / {num(hooks['floor_seconds'])} s = **{ratio if ratio is not None else '–'} x** |",
        "",
        *([f"Errors: {'; '.join(hooks['errors'])[:300]}", ""] if hooks["errors"] else []),
    ]


def lag_md(lag: dict[str, Any]) -> list[str]:
    """Part 2: which variants survive a lagging secondary."""
    out = [
        "## 2. With the secondary lagging",
        "",
        f"`sandbox.hold_transfers({lag['hold_transfers']:g})`: every transfer request of the "
        "secondary waits that long (the SOA check and the IXFR each), so an update reached the "
        f"secondary after **{lag['observed_lag_seconds']} s** (measured). One run each.",
        "",
        "| variant | zone | result | s | note |",
        "|---|---|---|---|---|",
    ]
    labels = {"epages-dns": "epages-dns", "manual-hooks": "manual hooks",
              "nsupdate": "floor: nsupdate hook, no wait", "rfc2136": "certbot-dns-rfc2136"}
    for row in lag["rows"].values():
        label = labels[row["variant"]]
        if row["variant"] == "rfc2136":
            label += f", {row['propagation_seconds']} s"
        result = "ok" if row["ok"] else f"FAILED: {row.get('error', '')[:120]}"
        out.append(f"| {label} | {row['zone']} ({', '.join(row['domains'])}) | {result} | "
                   f"{row['seconds']:.2f} | {row['note']} |")
    out += ["", "Not run here: the nsupdate hook with `sleep 60` (it would succeed: 60 s is more "
            "than the lag, at the cost measured in part 1), and anything on the direct zone "
            "(`direct.test` is served by the primary alone, so a lagging secondary cannot "
            "affect it; part 1 is its number).", ""]
    return out

