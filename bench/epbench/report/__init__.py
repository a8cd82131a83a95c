"""results.md from results.json: one section per part, the machine and the problems seen."""

from __future__ import annotations

from typing import Any

from epbench.common import TIME_LIMIT
from epbench.parts import ALL_PARTS
from epbench.report.deploy import deploy_md, probe_timeout_of, problems_md
from epbench.report.dns import hooks_md, issuance_md, lag_md
from epbench.report.modes import modes_md
from epbench.report.sync import sync_md


def render_markdown(results: dict[str, Any]) -> str:
    """results.md from the raw results."""
    m = results["machine"]
    v = m["versions"]
    lines = [
        "# certbot-epages benchmark",
        "",
        f"Written by `make bench` (`bench/run.py`) on {m['date']}; `bench/run.py` took "
        f"**{results['total_seconds'] / 60:.1f} min** (parts 1-5 plan for "
        f"{TIME_LIMIT / 60:g} min; the mode parts of section 5 come on top). Sandboxes of "
        "`certbot_epages.sandbox`: BIND primary + secondary + resolver, pebble (authz reuse "
        "off, no validation sleep), two nginx load balancers behind sshd; parts 1-5 share "
        "one, each mode part starts its own (nginx never returns memory, so RSS is measured "
        "on load balancers that started empty).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores; memory {m['memory_gib']} GiB; "
        f"Linux {m['kernel']}; Python {m['python']}",
        f"- certbot {v['certbot']}, certbot-dns-rfc2136 {v['certbot-dns-rfc2136']}, "
        f"certbot-epages {v['certbot-epages']}, dnspython {v['dnspython']}",
        f"- pebble {v['pebble']}, {v['bind9']}, {v['nginx']}, rsync {v['rsync']}, "
        f"{v['openssh']}",
        f"- load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}"
        f"; at end {', '.join(f'{x:.2f}' for x in results['load_average_at_end'])} "
        "(other work on the machine shares its 2 cores and shows up in every number)",
        "",
    ]
    earlier = results.get("earlier_run")
    if results.get("parts_run") and set(results["parts_run"]) != set(ALL_PARTS):
        lines += [f"This run measured: {', '.join(results['parts_run'])} "
                  f"(`--parts`).", ""]
    if earlier:
        e = earlier["machine"] or {}
        lines += [
            f"Parts {', '.join(earlier['parts'])} come from an earlier run on the same "
            f"machine ({e.get('date', '?')}; `bench/run.py` took "
            f"{(earlier.get('total_seconds') or 0) / 60:.1f} min; load average at start "
            f"{', '.join(f'{x:.2f}' for x in e.get('load_average_at_start', []))}, at end "
            f"{', '.join(f'{x:.2f}' for x in earlier.get('load_average_at_end') or [])}; "
            f"certbot-epages {e.get('versions', {}).get('certbot-epages', '?')}), kept by "
            "`--merge`.", ""]
    if results.get("quick"):
        lines += ["**QUICK MODE: smoke-test numbers, not a benchmark.**", ""]
    if results.get("issuance"):
        lines += issuance_md(results["issuance"])
    if results.get("lag"):
        lines += lag_md(results["lag"])
    if results.get("hooks"):
        lines += hooks_md(results["hooks"])
    if results.get("deploy"):
        lines += deploy_md(results["deploy"], probe_timeout_of(results))
    if results.get("sync"):
        lines += sync_md(results["sync"])
    if results.get("modes"):
        lines += modes_md(results["modes"])
    lines += problems_md(results)
    return "\n".join(lines) + "\n"

