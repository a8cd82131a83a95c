"""results.md section of part 5: deploy.mode sites against shared, against issue 14's targets."""

from __future__ import annotations

from typing import Any

from epbench.common import median
from epbench.parts.deploy import PROBE_TIMEOUT
from epbench.parts.modes import CUSTOM_SHARE, HANDSHAKE_SECONDS, MODE_PARTS, TARGETS
from epbench.report.fmt import kib, mib, num, table, text

OPS = {"first_full": "first `deploy --all`", "noop_full": "`deploy --all`, no change",
       "renewal": "one renewal (hook)", "pending_100": "100 batched (`--pending`)",
       "new_shop": "new shop (`sync --domain`)"}
BREAKDOWN = ("start", "inventory", "lineages", "truth", "decide", "build", "certbot",
             "preflight", "push", "test", "reload", "probe", "prune", "other")


def runs_of(r: dict[str, Any], op: str) -> list[dict[str, Any]]:
    """The runs of one operation (a single run is stored as a dict)."""
    value = r.get(op, [])
    return value if isinstance(value, list) else [value]


def pick(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the median time among the successful ones (else the first)."""
    ok = sorted((r for r in runs if r["ok"]), key=lambda r: float(r["seconds"]))
    return ok[(len(ok) - 1) // 2] if ok else (runs[0] if runs else None)


def phase(run: dict[str, Any], *names: str, how: str = "max") -> float:
    """Seconds of the named phases (``max``: load balancers side by side count once)."""
    return float(sum(run["phases"].get(n, {}).get(how, 0.0) for n in names))


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where a timed run's seconds went."""
    parts = {
        "start": run.get("import_seconds") or 0.0,
        "inventory": phase(run, "inventory"),
        "lineages": phase(run, "lineages_scan"),
        "truth": phase(run, "take_truths", "read_truth"),
        "decide": phase(run, "ownership_resolve", "select"),
        "build": phase(run, "build", how="sum"),
        "certbot": phase(run, "certbot"),
        "preflight": phase(run, "preflight"),
        "push": 0.0,
        "test": phase(run, "nginx_test"),
        "reload": phase(run, "switch_reload"),
        "probe": phase(run, "probe"),
        "prune": phase(run, "prune", "prune_certs"),
    }
    push = {lb: sum(run["phases_per_lb"].get(p, {}).get(lb, [])) for p in ("rsync", "push_certs")
            for lb in run["phases_per_lb"].get(p, {})}
    parts["push"] = max(push.values(), default=0.0)
    parts["other"] = max(float(run["seconds"]) - sum(parts.values()), 0.0)
    return parts


def served_after(run: dict[str, Any]) -> float:
    """Seconds until the run's names served their new certificates on both LBs.

    Watched from outside while the command ran; the command itself exits a little later
    (pruning). Without a watch (or one that missed it), the command's own time.
    """
    return float(run.get("until_served_seconds") or run.get("served_after_seconds")
                 or run["seconds"])


def until_served(r: dict[str, Any], op: str) -> float | None:
    """Median seconds of an operation's successful runs until served on both LBs."""
    return median([served_after(x) for x in runs_of(r, op)
                   if x["ok"] and not x.get("not_served")])


def median_of(r: dict[str, Any], op: str, field: str) -> float | None:
    """Median of a field over an operation's successful runs."""
    return median([float(x[field]) for x in runs_of(r, op) if x["ok"] and field in x])


def rss(r: dict[str, Any], when: str, what: str) -> int:
    """KiB of the master or worker (``what``), the larger of the load balancers."""
    return int(max(v[what] for v in r[when].values()))


def largest_rss(r: dict[str, Any]) -> int:
    """The largest nginx process seen after deploys, KiB."""
    return max(rss(r, when, what) for when in ("nginx_rss_after_first_deploy",
                                               "nginx_rss_after_renewals")
               for what in ("master_kb", "worker_kb"))


def main_table(runs: dict[str, dict[str, Any]], sites10: dict[str, Any] | None) -> str:
    """One column per run (and the sites estimate at 100,000), one row per measure."""
    head = ["", *(f"{r['mode']} {r['shops']:,}" for r in runs.values())]
    if sites10:
        head.append("sites 100,000 (estimate ×10)")
    rows: list[list[str]] = []

    def row(label: str, cell: Any, estimate: str = "") -> None:
        rows.append([label, *(cell(r) for r in runs.values())]
                    + ([estimate] if sites10 else []))

    def x10(value: float | None) -> str:
        return num(None if value is None else 10 * value, 0)

    s10 = sites10 or {}
    row("first full deploy, until served on both LBs, s",
        lambda r: num(until_served(r, "first_full")), x10(until_served(s10, "first_full")))
    row("… bytes sent (both LBs)", lambda r: kib(int(median_of(r, "first_full", "bytes_sent")
                                                     or 0)))
    row("`deploy --all`, nothing changed, s", lambda r: num(until_served(r, "noop_full")),
        x10(until_served(s10, "noop_full")))
    row("bare `nginx -t` on lb1, s", lambda r: num(r["baseline"]["test_seconds"]),
        x10(s10.get("baseline", {}).get("test_seconds")))
    row("bare reload on lb1 until only new workers run, s",
        lambda r: num(r["baseline"]["new_workers_after_seconds"]),
        x10(s10.get("baseline", {}).get("new_workers_after_seconds")))
    row("**one renewal** until served on both LBs, median s",
        lambda r: f"**{num(until_served(r, 'renewal'))}**", x10(until_served(s10, "renewal")))
    row("… the deploy hook until it exits, median s",
        lambda r: num(median_of(r, "renewal", "seconds")))
    row("… bytes sent (both LBs)", lambda r: kib(int(median_of(r, "renewal", "bytes_sent")
                                                     or 0)))
    row("**100 batched renewals** (`--pending`) until served, median s",
        lambda r: f"**{num(until_served(r, 'pending_100'))}**",
        x10(until_served(s10, "pending_100")))
    row("… bytes sent (both LBs)", lambda r: kib(int(median_of(r, "pending_100", "bytes_sent")
                                                     or 0)))
    row("`deploy-hook --defer`, per lineage (process), s",
        lambda r: num(r.get("defer_hooks", {}).get("median_hook_seconds")))
    row("**new shop**: inventory change to HTTPS on both LBs, median s",
        lambda r: f"**{num(until_served(r, 'new_shop'))}**")
    row("… of it: certbot (one HTTP-01 order, domain + www), s",
        lambda r: num(median([phase(x, "certbot") for x in runs_of(r, "new_shop") if x["ok"]])))
    for when, label in (("nginx_rss_empty", "no shops"),
                        ("nginx_rss_after_first_deploy", "after the first deploy"),
                        ("nginx_rss_after_renewals", "after the renewals' reloads")):
        estimate = ""
        if sites10 and when != "nginx_rss_empty":
            estimate = " / ".join(mib(rss(s10, "nginx_rss_empty", w) + 10 * (
                rss(s10, when, w) - rss(s10, "nginx_rss_empty", w)))
                for w in ("master_kb", "worker_kb"))
        row(f"nginx RSS master / worker, {label}, MiB",
            lambda r, when=when: f"{mib(rss(r, when, 'master_kb'))} / "
                                 f"{mib(rss(r, when, 'worker_kb'))}", estimate)
    for kind in ("full", "resumed"):
        row(f"{kind} TLS handshakes per second (custom / rider), one client",
            lambda r, kind=kind: " / ".join(num(r["handshakes"].get(f"{n}_{kind}", {}).get(
                "per_second"), 0) for n in ("custom", "rider")))
        row(f"… nginx worker CPU per {kind} handshake (custom / rider), ms",
            lambda r, kind=kind: " / ".join(num(r["handshakes"].get(f"{n}_{kind}", {}).get(
                "worker_cpu_ms_per_handshake"), 2) for n in ("custom", "rider")))
    return table(head, rows)


def targets_table(runs: dict[str, dict[str, Any]]) -> str:
    """Each target of issue 14 with the measured value and whether it was met."""
    rows = []
    for key, shops in (("shared-10k", "10,000"), ("shared-100k", "100,000")):
        r = runs.get(key)
        if r is None:
            continue
        size = key.rsplit("-", 1)[1]
        if r["shops"] != int(shops.replace(",", "")):
            shops = f"{r['shops']:,}, --quick; the target is for {shops}"
        for name, label, value, unit in (
            ("renewal", "one renewal live on both LBs", until_served(r, "renewal"), "s"),
            ("pending", "100 batched renewals", until_served(r, "pending_100"), "s"),
            ("rss_mib", "nginx RSS per process (largest)", largest_rss(r) / 1024, "MiB"),
            ("new_domain", "new custom domain: inventory change to HTTPS on both LBs",
             until_served(r, "new_shop"), "s"),
        ):
            target = TARGETS.get(f"{name}_{size}")
            if target is None:
                continue
            verdict = "–" if value is None else ("met" if value <= target else "**missed**")
            rows.append([f"{label} ({shops} shops)", f"≤ {target:g} {unit}",
                         f"{num(value, 1 if unit == 'MiB' else 2)} {unit}", verdict])
    return table(["target", "issue 14", "measured", ""], rows)


def breakdown_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per run and operation: where the median run's seconds went."""
    rows = []
    for key, r in runs.items():
        for op, label in OPS.items():
            picked = pick(runs_of(r, op))
            if picked is None:
                continue
            if not picked["ok"]:
                rows.append([key, label, "FAILED: " + picked.get("error", "")[:200]]
                            + [""] * (len(BREAKDOWN) + 2))
                continue
            parts = breakdown(picked)
            rows.append([key, label, f"{float(picked['seconds']):.2f}",
                         num(picked.get("served_after_seconds")),
                         *(f"{parts[p]:.2f}" for p in BREAKDOWN),
                         mib(picked["peak_rss_kb"])])
    return table(["run", "op", "total", "served at", *BREAKDOWN, "peak RSS MiB"], rows)


def served_note(runs: dict[str, dict[str, Any]]) -> str:
    """What the checks from outside found after the runs."""
    problems = [f"- {k} {op}: {x['not_served']}" for k, r in runs.items() for op in OPS
                for x in runs_of(r, op) if x.get("not_served")]
    if not problems:
        return ("After every run, a handshake with each checked name on both load balancers "
                "got the expected certificate (checked from outside).")
    return "\n".join(["Names not served with the expected certificate after a run "
                      "(checked from outside, both LBs):", *problems])


def modes_md(modes: dict[str, Any]) -> list[str]:
    """Part 5: sites against shared, against issue 14's targets."""
    runs = {k: modes[k] for k in MODE_PARTS if k in modes}
    sites10 = runs.get("sites-10k")
    if sites10 and sites10["shops"] != 10_000:
        sites10 = None  # --quick: no estimate from a small fleet
    facts = [f"- `{key}` ran {r['date']}: {r['shops']:,} shops ({r['riders']:,} riders, "
             f"{r['custom_domains']:,} custom domains), {r['names']:,} names, "
             f"{r['lineages']:,} lineages; fleet built in {r['fleet_build_seconds']} s; load "
             f"average {', '.join(f'{x:.2f}' for x in r['load_average_at_start'])} at start, "
             f"{', '.join(f'{x:.2f}' for x in r['load_average_at_end'])} at end; "
             f"{r['seconds'] / 60:.1f} min."
             + "".join(f" {note}" for note in r.get("notes", [])) for key, r in runs.items()]
    estimate_mib = ""
    if sites10:
        estimate_mib = mib(rss(sites10, "nginx_rss_empty", "master_kb") + 10 * (
            rss(sites10, "nginx_rss_after_first_deploy", "master_kb")
            - rss(sites10, "nginx_rss_empty", "master_kb")))
    return [*text("modes", custom_share=CUSTOM_SHARE, probe_timeout=PROBE_TIMEOUT,
                  handshake_seconds=f"{HANDSHAKE_SECONDS:g}", runs=facts,
                  table=main_table(runs, sites10), estimate=bool(sites10),
                  estimate_mib=estimate_mib, targets=targets_table(runs),
                  breakdown=breakdown_table(runs), served=served_note(runs)), ""]


def probe_seconds(result: dict[str, Any]) -> str:
    """How long the longest load balancer's probe took in a run, as text."""
    probe = result.get("phases", {}).get("probe")
    return f"{probe['max']:.0f} s" if probe else "an unknown part"


def mode_problems(modes: dict[str, Any]) -> list[str]:
    """Product problems the mode parts show, one Markdown list item each."""
    out = []
    for key, r in modes.items():
        renewal = pick(runs_of(r, "renewal"))
        if renewal is None or not renewal["ok"]:
            continue
        select = phase(renewal, "select")
        if select >= 1.0:
            out.append(
                f"- **`decide.select` took {select:.1f} s of a one-lineage renewal** in "
                f"`{key}` ({r['shops']:,} shops, {r['lineages']:,} lineages): it calls "
                "`deploy.lineages.covering(shop, known)` for every active shop, and that tests "
                "every lineage (`all(lin.covers(n) ...)` over all of them), so every deploy, "
                "even a renewal of one lineage, costs shops × lineages checks. An index of the "
                "lineages by SAN (exact name and `*.parent`) makes it linear (the package has had "
                "such an index since).")
        first = pick(runs_of(r, "first_full"))
        if r["mode"] == "shared" and first and first["ok"] and first.get("served_after_seconds"):
            after = float(first["seconds"]) - float(first["served_after_seconds"])
            if after >= 10:
                out.append(
                    f"- **The first shared-mode deploy in `{key}` ran {after:.0f} s after every "
                    "checked name was served** (served after "
                    f"{float(first['served_after_seconds']):.0f} s, done after "
                    f"{float(first['seconds']):.0f} s, {probe_seconds(first)} of it in "
                    f"the probe): phase 2 probes every changed name "
                    f"({first.get('names_probed_per_lb', '?')} per LB) with a full TLS "
                    "handshake of its own, which in shared mode costs nginx about 1.2 ms of "
                    "worker CPU each on cores it shares with the probe. Only a first deploy "
                    "or a mode switch changes every name.")
    return out
