"""results.md section of part 3 (sites-mode deploys) and the product problems it found."""

from __future__ import annotations

from typing import Any

from epbench.common import median
from epbench.parts.deploy import PROBE_TIMEOUT, default_probe_timeout
from epbench.report.fmt import kib, mib, num
from epbench.report.modes import mode_problems


def probe_timeout_of(results: dict[str, Any]) -> float:
    """The product's default probe_timeout when the bench ran."""
    return float(results.get("default_probe_timeout") or default_probe_timeout())


def deploy_md(deploy: dict[str, Any], timeout: float) -> list[str]:
    """Part 3: a table per fleet size."""
    out = [
        "## 3. Deploys to the two load balancers",
        "",
        "Fabricated lineages (made like `tests/epages_testlib.make_lineage`, signed by a "
        "throwaway CA): N shops = N−101 platform riders `sNNNNN.platform.test` that all ride "
        "on ONE lineage `platform.test` (`*.platform.test`), plus `one.custom.test` and 100 "
        "`rNNN.custom.test`, each with its own lineage (domain + www). Every shop is one "
        "`custom-domain` server block (ports 80 and 443) per load balancer. Each deploy is "
        "`certbot-epages deploy` over ssh/rsync to both LBs (two-phase: rsync + `nginx -t` "
        "on both, then switch + reload + TLS probe of every changed name). Except for the "
        "one deploy marked *as configured*, `deploy.probe_timeout` is raised to "
        f"{PROBE_TIMEOUT} s so that a deploy waits until the new certificate is really "
        "served instead of rolling back, and the first full deploys run without probes "
        "(`probe` removed) so they measure rendering and pushing. *command s*: the deploy "
        "command; *until served s*: until the new config serves (the probes waited for it, "
        "or, without probes, until lb1 and lb2 ran new workers only); × baseline compares "
        "the latter. Bytes: rsync's bytes sent, both LBs together. Peak RSS: the deploy "
        "process tree (wait4).",
        "",
    ]
    names = {
        "first_full_probed": "first full deploy as configured (`deploy --all`, probes on, "
                             f"default probe_timeout {timeout:g} s, empty LBs)",
        "first_full": "first full render + push (`deploy --all`, no probe, empty LBs)",
        "noop_full": "`deploy --all`, nothing changed (render + compare, no push)",
        "one_lineage": "one-domain renewal (`deploy --lineage one.custom.test`)",
        "pending_100": "100 deferred renewals (`deploy-hook --defer` ×100, `deploy --pending`)",
        "naive_full": "naive: full `deploy --all` per renewal (one changed cert)",
        "baseline": "baseline: bare `nginx -t` + reload on lb1 (until new workers run)",
    }
    for size in deploy.values():
        ops = size["operations"]
        base = ops["baseline"]["median_until_served_seconds"]
        out += [
            f"### {size['shops']:,} shops (medians; runs per operation in the *ok* column)",
            "",
            "| operation | ok | command s | until served s | × baseline | bytes sent "
            "| files changed per LB | names probed per LB | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, label in names.items():
            op = ops[key]
            rows = op["runs"]
            if not rows and key == "first_full_probed":
                continue
            if not rows:
                estimate = size.get("naive_full_skipped_estimate_seconds")
                out.append(f"| {label} | not run (time limit) | ≈ {num(estimate, 0)} (no-op "
                           "full + one-domain) | | | | | | |")
                continue
            ok = sum(1 for r in rows if r["ok"])
            med = op["median_seconds"]
            if not ok:
                out.append(f"| {label} | **FAILED** 0/{len(rows)} | "
                           f"{num(median([r['seconds'] for r in rows]))} (until it failed) "
                           "| – | – | – | – | – | "
                           f"{mib(int(median([r['peak_rss_kb'] for r in rows]) or 0))} |")
                continue
            served = op["median_until_served_seconds"]
            ratio = f"{served / base:.1f}" if served is not None and base else "–"
            if key == "baseline":
                test = median([r["test_seconds"] for r in rows])
                test_rss = median([r["test_peak_rss_kb"] for r in rows])
                out.append(f"| {label} | {ok}/{len(rows)} | {num(test)} (nginx -t) | "
                           f"{num(served)} | 1.0 | – | – | – | "
                           f"{mib(int(test_rss) if test_rss else None)} (nginx -t) |")
                continue
            bytes_sent = median([r["bytes_sent"] for r in rows if r["ok"]])
            changed = median([r["files_changed_per_lb"] for r in rows if r["ok"]])
            probed = median([r["names_probed_per_lb"] for r in rows if r["ok"]])
            rss = median([r["peak_rss_kb"] for r in rows])
            out.append(
                f"| {label} | {ok}/{len(rows)} | {num(med)} | {num(served)} | {ratio} | "
                f"{kib(int(bytes_sent)) if bytes_sent is not None else '–'} | "
                f"{'–' if changed is None else int(changed)} | "
                f"{'–' if probed is None else int(probed)} | {mib(int(rss) if rss else None)}"
                " |")
        test = median([r["test_seconds"] for r in ops["baseline"]["runs"]])
        rss = size["nginx_rss_after_first_deploy"]
        hooks = size.get("defer_hooks") or {}
        out += [
            "",
            f"`nginx -t` alone: {num(test)} s. nginx on lb1 after the first deploy: master "
            f"{mib(rss['master_kb'])} MiB RSS, worker {mib(rss['workers_kb'])} MiB RSS.",
        ]
        if hooks.get("timed_hooks"):
            out.append(
                f"`deploy-hook --defer`: median {num(hooks['median_hook_seconds'])} s per "
                f"lineage ({hooks['timed_hooks']} timed process runs; the other "
                f"{100 - hooks['timed_hooks']} recorded in-process with the same function), "
                f"so certbot spends about {num(100 * hooks['median_hook_seconds'], 0)} s in "
                "deferral hooks for 100 renewals; not included in the pending deploy's time.")
        failed = [r for op in ops.values() for r in op["runs"] if not r["ok"]]
        for r in failed:
            out.append(f"- FAILED {' '.join(r.get('args', ['baseline']))} "
                       f"({r.get('probe', 'nginx')}): "
                       f"`{r.get('error', '')[:400]}`")
        out.append("")
    return out



def problems_md(results: dict[str, Any]) -> list[str]:
    """Product problems the numbers show (parts 3 and 4)."""
    out = ["## Product problems seen", ""]
    deploys = results.get("deploy", {})
    sizes = sorted(int(k) for k in deploys)
    small = deploys[str(sizes[0])] if sizes else {}
    timeout = probe_timeout_of(results)
    probe = small.get("probe_cost")
    if probe and probe["served_fingerprint_ms"] > 3 * probe["handshake_reused_context_ms"]:
        per_name = probe["served_fingerprint_ms"]
        out.append(
            f"- **The deploy probe costs {per_name:.0f} ms per name per load balancer**, "
            f"against {probe['handshake_reused_context_ms']:.1f} ms for a TLS handshake on a "
            "reused SSL context (`served_fingerprint` builds a new default context, loading "
            "the system CA store, for every handshake): one pass over 1,000 names takes "
            f"{per_name:.0f} s, over 10,000 names {10 * per_name:.0f} s.")
    elif probe:
        out.append(f"- (No problem: the deploy probe costs {probe['served_fingerprint_ms']:.1f}"
                   f" ms per name, a handshake on a reused context "
                   f"{probe['handshake_reused_context_ms']:.1f} ms.)")
    for r in small.get("operations", {}).get("first_full_probed", {}).get("runs", []):
        if not r["ok"]:
            out.append(
                f"- **A first `deploy --all` of {small['shops']:,} shops as configured (probes "
                f"on, default `probe_timeout: {timeout:g}`) FAILED** after {r['seconds']:.0f} "
                f"s: `{r.get('error', '')[:300]}…`")
            if "other load balancers are live" in r.get("error", ""):
                out.append("- That failed deploy left the load balancers serving **different "
                           "releases** (one switched back, the other live with the new one): "
                           "phase 2 is not all-or-nothing.")
    for size in deploys.values():
        ops = size["operations"]
        effective = median([r["reload_effective_after_seconds"] for r in ops["baseline"]["runs"]])
        if effective is not None and effective > timeout:
            one = ops["one_lineage"]["median_seconds"]
            out.append(
                f"- At {size['shops']:,} shops a reload takes {effective:.0f} s to take effect, "
                f"longer than the default `probe_timeout: {timeout:g}`: with the default, even a "
                "one-domain `deploy --lineage` would fail its probe and roll back (it took "
                f"{num(one, 0)} s here with the timeout raised to {PROBE_TIMEOUT} s).")
    for size in deploys.values():
        ops = size["operations"]
        one = ops["one_lineage"]["median_until_served_seconds"]
        many = ops["pending_100"]["median_until_served_seconds"]
        if one and many and many > 1.75 * one:
            out.append(
                f"- At {size['shops']:,} shops, shipping 100 deferred renewals took {many:.0f} s "
                f"against {one:.0f} s for one, although both pay the same `nginx -t` and "
                "reload on each LB; the differences are 201 changed files per LB instead of 3 "
                "and 200 probed names per LB instead of 2 (likely cause: the probe polls its "
                "names with many threads while both nginx masters are still reloading on the "
                "same cores).")
    big = deploys[str(sizes[-1])] if len(sizes) > 1 else None
    if big and small:
        rss = big["nginx_rss_after_first_deploy"]
        slope = ((rss["master_kb"] - small["nginx_rss_after_first_deploy"]["master_kb"])
                 / (big["shops"] - small["shops"]))
        test = median([r["test_seconds"] for r in big["operations"]["baseline"]["runs"]])
        out.append(
            f"- One server block with its own `ssl_certificate` per shop costs nginx about "
            f"{slope:.0f} KiB of RSS per shop per process (lb1's master: "
            f"{mib(rss['master_kb'])} MiB at {big['shops']:,} shops) and "
            f"makes `nginx -t` take {num(test)} s at {big['shops']:,} shops; every deploy, even "
            "a one-certificate renewal, pays a full `nginx -t` and reload on each LB. The "
            "riders of one wildcard could share a server block (many `server_name`s).")
    out += mode_problems(results.get("modes", {}))
    out.append("")
    return out


# ------------------------------------------------------------------------------ main

