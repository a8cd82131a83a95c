"""The manual hooks' processes: start-up, imports, each of the four calls of apex + wildcard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from certbot_epages.sandbox.platform import Sandbox
from epbench.common import BIN, WORK, ZONES, first_line, log, median, run
from epbench.dnswatch import secondary_caught_up
from epbench.issuer import Issuer

HOOK_MODULE = "certbot_epages.manual_hooks"
# Loaded only on other paths; a DNS-01 hook process that imports one of these pays for nothing.
NOT_ON_THE_DNS_PATH = ("jinja2", "certbot_epages.http01", "certbot_epages.resources",
                       "urllib.request", "http.client")


# Runs the hooks it is sent one after the other, timed, as one certbot process would.
FAKE_CERTBOT = Path(__file__).resolve().parent.parent / "fake_certbot.py"


def _import_us(python: str, modules: str, last: str) -> float:
    """Microseconds ``python -X importtime`` reports for importing ``modules`` (cumulative)."""
    done = run([python, "-P", "-X", "importtime", "-c", f"import {modules}"])
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("import time:")]
    # Cumulative times of the top-level imports (no indentation in the name column).
    return sum(float(ln.split("|")[1]) for ln in lines
               if ln.split("|")[2].startswith(" certbot_epages") or ln.endswith(f" {last}"))


def part_hooks(sb: Sandbox, issuer: Issuer, quick: bool,
               issuance: dict[str, Any] | None) -> dict[str, Any]:
    """What the manual-hook processes cost, and apex + wildcard by the hooks against the floor.

    certbot starts a hook process per challenge and phase: four for apex + wildcard. Only the
    last auth call and the first cleanup call talk to DNS; the others touch the spool only.
    """
    runs = 3 if quick else 10
    python = str(BIN / "python")
    startup = [run([python, "-c", "pass"]).seconds for _ in range(runs)]
    light_us = [_import_us(python, HOOK_MODULE, HOOK_MODULE) for _ in range(runs)]
    full = f"{HOOK_MODULE}, certbot_epages.config, certbot_epages.dns.client"
    full_us = [_import_us(python, full, "certbot_epages.dns.client") for _ in range(runs)]
    probe = run([python, "-P", "-c", f"import sys, {HOOK_MODULE}; print(*sorted(m for m in "
                                     f"{NOT_ON_THE_DNS_PATH!r} if m in sys.modules))"])
    # The four calls of apex + wildcard, as certbot makes them: from one process named certbot
    # (the hooks recognise their run by it), the last auth call waiting for every server.
    base = {**os.environ, **sb.env(), "CERTBOT_DOMAIN": ZONES["cname"][0],
            "CERTBOT_ALL_DOMAINS": ",".join(ZONES["cname"])}
    steps: dict[str, list[float]] = {"auth_first": [], "auth_last": [], "cleanup_first": [],
                                     "cleanup_last": []}
    errors: list[str] = []
    fake = WORK / "certbot"  # the hooks know their certbot run by a parent of that name
    shutil.copyfile(FAKE_CERTBOT, fake)
    with subprocess.Popen([python, str(fake)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as certbot:
        assert certbot.stdin is not None and certbot.stdout is not None

        def call(hook: str, env: dict[str, str]) -> tuple[float, int, str, str]:
            assert certbot.stdin is not None and certbot.stdout is not None
            certbot.stdin.write(json.dumps([str(BIN / hook), env]) + "\n")
            certbot.stdin.flush()
            seconds, code, out, err = json.loads(certbot.stdout.readline())
            return float(seconds), int(code), str(out), str(err)

        for index in range(runs):
            secondary_caught_up(sb)
            envs = [{**base, "CERTBOT_VALIDATION": f"bench-hook-{index:03d}-{n}".ljust(43, "x"),
                     "CERTBOT_REMAINING_CHALLENGES": str(remaining)}
                    for n, remaining in ((1, 1), (2, 0))]
            outputs = []
            for key, env in zip(("auth_first", "auth_last"), envs, strict=True):
                took, code, stdout, stderr = call("manual-auth-hook", env)
                steps[key].append(took)
                outputs.append(stdout.strip())
                if code:
                    errors.append(first_line(stderr))
            for key, env, output in zip(("cleanup_first", "cleanup_last"), envs, outputs,
                                        strict=True):
                took, code, _, stderr = call("manual-cleanup-hook",
                                             {**env, "CERTBOT_AUTH_OUTPUT": output})
                steps[key].append(took)
                if code:
                    errors.append(first_line(stderr))
        certbot.stdin.close()
    out: dict[str, Any] = {
        "runs": runs,
        "python_startup_seconds": median(startup),
        "import_spool_only_microseconds": median(light_us),
        "import_dns_microseconds": median(full_us),
        "loaded_but_not_needed": probe.stdout.split(),
        **{f"{key}_seconds": median(values) for key, values in steps.items()},
        "errors": errors,
    }
    log(f"hooks: imports {out['import_spool_only_microseconds'] / 1000:.0f} ms / "
        f"{out['import_dns_microseconds'] / 1000:.0f} ms; calls "
        + ", ".join(f"{key} {median(values):.3f} s" for key, values in steps.items()))
    rows = issuance or {}
    if "floor-direct" not in rows or "manual-hooks-cname" not in rows:
        fast = 1 if quick else 3
        rows = {}
        for key, variant, zone, seconds in (("floor-direct", "nsupdate", "direct", 0),
                                            ("manual-hooks-cname", "manual-hooks", "cname", None)):
            log(f"hooks: {key} x{fast}")
            results = [issuer.issue(variant, zone, seconds) for _ in range(fast)]
            rows[key] = {"runs": results,
                         "median_seconds": median([r["seconds"] for r in results if r["ok"]])}
    floor = rows["floor-direct"]["median_seconds"]
    hooks = rows["manual-hooks-cname"]["median_seconds"]
    out["floor_seconds"], out["manual_hooks_seconds"] = floor, hooks
    out["ratio_to_floor"] = round(hooks / floor, 2) if floor and hooks else None
    out["issuance"] = {k: v for k, v in rows.items() if k in ("floor-direct", "manual-hooks-cname")}
    return out


# ------------------------------------------------------------------------------ part 3

