#!/usr/bin/env python3
"""Benchmark of certbot-epages on the sandbox platform (``make bench``; see bench/README.md).

One run measures, side by side on one sandbox: apex + wildcard issuance with epages-dns, the
manual hooks, certbot-dns-rfc2136, an nsupdate hook with ``sleep 60`` and certbot's floor
(no wait at all); the same with a lagging secondary; deploys at 1,000 and 10,000 shops; and a
sync of 100 shops. It writes ``bench/results.md`` and ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import yaml

from certbot_epages.deploy import hook as deploy_hook
from certbot_epages.deploy import lineages as deploy_lineages
from certbot_epages.dns.keys import load_key_file
from certbot_epages.errors import SandboxError
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import KEY_NAME, LoadBalancer, Sandbox
from certbot_epages.sandbox.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"
BIN = Path(sys.executable).parent
CHALLENGE_ZONE = "dyn.platform.test"
TIME_LIMIT = 14.75 * 60.0  # make bench must stay under 15 min, with deps/install/pip first
SAFETY = 35.0  # seconds kept free at the end: teardown, results, slower-than-estimated steps

# What each zone issues for: apex + wildcard.
ZONES = {
    "cname": ("shop.test", "*.shop.test"),  # _acme-challenge CNAMEs into dyn.platform.test
    "direct": ("direct.test", "*.direct.test"),  # updated in place, served by the primary only
    "lagzone": ("lag.dyn.platform.test", "*.lag.dyn.platform.test"),  # inside the challenge zone
}


def log(message: str) -> None:
    """Progress for the person waiting (stderr, flushed)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ processes


@dataclass
class Run:
    """One measured child process."""

    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    maxrss_kb: int

    @property
    def ok(self) -> bool:  # noqa: D102
        return self.returncode == 0


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600.0) -> Run:
    """Run ``argv``; wall time (monotonic) and the peak RSS of its process tree (wait4)."""
    if argv[0].startswith(str(BIN)):
        # Someone may be reinstalling the venv (make install) right now: wait for it.
        poll(f"{argv[0]} to exist", lambda: True if Path(argv[0]).exists() else None, 300, 0.2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # a hook's leftover children (sleep) never outlive the step
        out.seek(0)
        err.seek(0)
        return Run(argv, proc.returncode, seconds, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), int(usage.ru_maxrss))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something other than None; TimeoutError at the deadline."""
    try:
        return wait_until(what, check, timeout, interval=interval, tolerate=())
    except SandboxError as e:
        raise TimeoutError(str(e)) from None


def line_starting(text: str, prefix: str) -> str:
    """The first line starting with ``prefix`` (empty if none)."""
    return next((ln for ln in text.splitlines() if ln.startswith(prefix)), "")


def first_line(text: str, *needles: str) -> str:
    """The first line containing any needle, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for needle in needles:
        for line in lines:
            if needle in line:
                return line
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------ the clock


class Budget:
    """The benchmark's clock against its time limit."""

    def __init__(self, limit: float) -> None:
        self.started = time.monotonic()
        self.limit = limit

    def elapsed(self) -> float:  # noqa: D102
        return time.monotonic() - self.started

    def left(self) -> float:  # noqa: D102
        return self.limit - self.elapsed()


# ------------------------------------------------------------------------------ DNS helpers


def soa_serial(server: str, zone: str) -> int | None:
    """The zone's serial as ``server`` has it (None if it does not answer)."""
    try:
        reply = dns.query.udp(dns.message.make_query(zone, dns.rdatatype.SOA), server,
                              timeout=1)
    except (OSError, dns.exception.DNSException):
        return None
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


def secondary_caught_up(sb: Sandbox, timeout: float = 60.0) -> float:
    """Wait until the secondary has the primary's serial of the challenge zone; seconds taken."""
    started = time.monotonic()

    def same() -> bool | None:
        p = soa_serial(sb.ip.primary, CHALLENGE_ZONE)
        s = soa_serial(sb.ip.secondary, CHALLENGE_ZONE)
        return True if p is not None and p == s else None

    poll("the secondary to catch up with the primary", same, timeout)
    return time.monotonic() - started


def measure_lag(sb: Sandbox) -> float:
    """Seconds from a signed update at the primary until the secondary serves it."""
    key = load_key_file(sb.key_file, KEY_NAME, allow_weak=False).as_dnspython()
    name = f"lagprobe-{time.time_ns()}.{CHALLENGE_ZONE}."

    def change(add: bool) -> None:
        update = dns.update.UpdateMessage(CHALLENGE_ZONE)
        update.use_tsig(key)
        if add:
            update.add(name, 60, "TXT", '"lag"')
        else:
            update.delete(name)
        reply = dns.query.tcp(update, sb.ip.primary, timeout=5)
        if reply.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"update of {name} refused: {dns.rcode.to_text(reply.rcode())}")

    def served() -> bool | None:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        query.flags &= ~dns.flags.RD
        try:
            reply = dns.query.udp(query, sb.ip.secondary, timeout=1)
        except (OSError, dns.exception.DNSException):
            return None
        return True if reply.answer else None

    started = time.monotonic()
    change(add=True)
    poll("the secondary to serve the probe record", served, 60)
    lag = time.monotonic() - started
    change(add=False)
    return lag


# ------------------------------------------------------------------------------ part 1 + 2


class Issuer:
    """certbot runs against the sandbox, each with a fresh --cert-name."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.count = 0
        self.lock = threading.Lock()
        self.inis = {0: sb.certbot_ini}
        self.scripts: dict[tuple[str, int], tuple[Path, Path]] = {}
        self.rfc_ini = WORK / "rfc2136.ini"
        secret = re.search(r'secret\s+"([^"]+)"', sb.key_file.read_text())
        assert secret is not None
        fd = os.open(self.rfc_ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# certbot-dns-rfc2136 credentials for the bench sandbox\n"
                    f"dns_rfc2136_server = {sb.ip.primary}\n"
                    f"dns_rfc2136_port = 53\n"
                    f"dns_rfc2136_name = {KEY_NAME}\n"
                    f"dns_rfc2136_secret = {secret[1]}\n"
                    f"dns_rfc2136_algorithm = HMAC-SHA512\n")
        os.chmod(self.rfc_ini, 0o600)

    def ini(self, slot: int) -> Path:
        """certbot's cli.ini of directory ``slot`` (0: the sandbox's); made and registered once.

        certbot locks its directories, so runs at the same time need one each.
        """
        with self.lock:
            if slot in self.inis:
                return self.inis[slot]
        base = self.sb.directory / f"certbot-{slot}"
        ini = base / "cli.ini"
        base.mkdir()
        ini.write_text(
            f"server = {self.sb.acme_url}\n"
            f"config-dir = {base / 'config'}\n"
            f"work-dir = {base / 'work'}\n"
            f"logs-dir = {base / 'logs'}\n"
            "agree-tos = true\nregister-unsafely-without-email = true\nnon-interactive = true\n"
        )
        env = {**os.environ, **self.sb.env()}
        done = run([str(BIN / "certbot"), "-c", str(ini), "register"], env=env, timeout=120)
        if not done.ok:
            raise RuntimeError(f"certbot register failed: {done.stderr}")
        with self.lock:
            self.inis[slot] = ini
        return ini

    def nsupdate_hooks(self, zone: str, sleep: int) -> tuple[Path, Path]:
        """Auth and cleanup scripts: nsupdate the TXT (at the CNAME target), then sleep."""
        if (zone, sleep) in self.scripts:
            return self.scripts[(zone, sleep)]
        if zone == "direct":
            dns_zone, suffix = "direct.test", ""
        else:
            dns_zone, suffix = CHALLENGE_ZONE, f".{CHALLENGE_ZONE}"
        paths = []
        for kind, op in (("auth", "add"), ("cleanup", "delete")):
            ttl = " 60" if op == "add" else ""
            wait = ""
            if kind == "auth" and sleep:
                wait = (f'# One fixed wait per certbot run, after the last challenge\n'
                        f'if [ "${{CERTBOT_REMAINING_CHALLENGES:-0}}" = 0 ]; then '
                        f'sleep {sleep}; fi\n')
            script = WORK / f"nsupdate-{kind}-{zone}-sleep{sleep}.sh"
            script.write_text(
                "#!/bin/sh\n"
                f"# certbot --manual-{kind}-hook written by bench/run.py: {op} the TXT record\n"
                f"# at the CNAME target in {dns_zone} with nsupdate (no propagation check).\n"
                "set -eu\n"
                f'name="_acme-challenge.${{CERTBOT_DOMAIN}}{suffix}."\n'
                f"nsupdate -k {self.sb.key_file} <<EOF\n"
                f"server {self.sb.ip.primary} 53\n"
                f"zone {dns_zone}\n"
                f'update {op} $name{ttl} TXT "$CERTBOT_VALIDATION"\n'
                "send\n"
                "EOF\n"
                f"{wait}"
            )
            script.chmod(0o755)
            paths.append(script)
        self.scripts[(zone, sleep)] = (paths[0], paths[1])
        return paths[0], paths[1]

    def authenticator(self, variant: str, zone: str, seconds: int | None = None) -> list[str]:
        """certbot arguments choosing the authenticator of ``variant``."""
        if variant == "epages-dns":
            return ["--authenticator", "epages-dns"]
        if variant == "manual-hooks":
            return ["--manual", "--preferred-challenges", "dns",
                    "--manual-auth-hook", str(BIN / "manual-auth-hook"),
                    "--manual-cleanup-hook", str(BIN / "manual-cleanup-hook")]
        if variant == "rfc2136":
            args = ["--authenticator", "dns-rfc2136", "--dns-rfc2136-credentials",
                    str(self.rfc_ini)]
            if seconds is not None:
                args += ["--dns-rfc2136-propagation-seconds", str(seconds)]
            return args
        if variant == "nsupdate":
            auth, cleanup = self.nsupdate_hooks(zone, seconds or 0)
            return ["--manual", "--preferred-challenges", "dns", "--manual-auth-hook", str(auth),
                    "--manual-cleanup-hook", str(cleanup)]
        raise ValueError(variant)

    def issue(self, variant: str, zone: str, seconds: int | None = None, *,
              settle: bool = True, slot: int = 0) -> dict[str, Any]:
        """One timed issuance of apex + wildcard in ``zone``; the raw result.

        ``slot`` picks the certbot directory (another one for a run beside another run).
        """
        if settle:
            secondary_caught_up(self.sb)  # every run starts from a settled challenge zone
        with self.lock:
            self.count += 1
            name = f"bench-{self.count:03d}-{variant}"
            authenticator = self.authenticator(variant, zone, seconds)
        domains = ZONES[zone]
        ini = self.ini(slot)
        config_dir = ini.parent / "config"
        argv = [str(BIN / "certbot"), "-c", str(ini), "certonly", "--cert-name", name,
                *authenticator, *(a for d in domains for a in ("-d", d))]
        env = {**os.environ, **self.sb.env()}
        done = run(argv, env=env, timeout=300)
        live = config_dir / "live" / name / "fullchain.pem"
        ok = done.ok and live.exists()
        result = {"cert_name": name, "domains": list(domains), "ok": ok,
                  "seconds": round(done.seconds, 3), "returncode": done.returncode}
        if not ok:
            result["error"] = first_line(done.stdout + "\n" + done.stderr, "Detail:",
                                         "Error", "REFUSED", "rror")
        state = "ok" if ok else f"FAILED ({result.get('error', '')[:100]})"
        log(f"  {variant} {zone} {seconds if seconds is not None else ''}: "
            f"{done.seconds:.2f}s {state}")
        return result


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
        for key, future in chains.items():
            out[key] = future.result()
    return out


def txt_values(server: str, name: str) -> set[str]:
    """TXT strings at ``name`` on ``server`` (no recursion), without the placeholder."""
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD
    try:
        reply = dns.query.udp(query, server, timeout=1)
    except (OSError, dns.exception.DNSException):
        return set()
    return {b"".join(r.strings).decode() for rrset in reply.answer
            if rrset.rdtype == dns.rdatatype.TXT for r in rrset} - {".empty"}


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

HOOK_MODULE = "certbot_epages.manual_hooks"
# Loaded only on other paths; a DNS-01 hook process that imports one of these pays for nothing.
NOT_ON_THE_DNS_PATH = ("jinja2", "certbot_epages.http01", "certbot_epages.resources",
                       "urllib.request", "http.client")


# Runs the hooks it is sent one after the other, timed, as one certbot process would.
FAKE_CERTBOT = """\
import json, subprocess, sys, time
for line in sys.stdin:
    hook, env = json.loads(line)
    started = time.monotonic()
    done = subprocess.run([hook], env=env, capture_output=True, text=True, timeout=120)
    print(json.dumps([time.monotonic() - started, done.returncode, done.stdout, done.stderr]),
          flush=True)
"""


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
    fake = WORK / "certbot"
    fake.write_text(FAKE_CERTBOT)
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


def master_pid(lb: LoadBalancer) -> int:
    """The LB's nginx master."""
    return int((Path(lb.prefix) / "nginx.pid").read_text().strip())


def children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (the nginx workers of a master)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def workers(sb: Sandbox) -> dict[str, set[int]]:
    """Worker pids per load balancer."""
    return {lb.name: children(master_pid(lb)) for lb in sb.lbs}


def settle(sb: Sandbox, before: dict[str, set[int]], timeout: float = 300.0) -> float:
    """Wait until every LB runs new workers only (a reload took effect); seconds taken."""
    started = time.monotonic()

    def done() -> bool | None:
        now = workers(sb)
        ok = all(now[n] and not (now[n] & before[n]) for n in before)
        return True if ok else None

    poll("the load balancers' reload to take effect", done, timeout, interval=0.05)
    return time.monotonic() - started


def reset_lbs(sb: Sandbox) -> None:
    """Remove every release from the LBs and reload: the state before any deploy."""
    before = workers(sb)
    for lb in sb.lbs:
        root = Path(lb.root)
        for link in (root / "current", root / ".current.new"):
            if link.is_symlink():
                link.unlink()
        releases = root / "releases"
        if releases.is_dir():
            for rel in releases.iterdir():
                shutil.rmtree(rel, ignore_errors=True)
        done = run(sb.nginx_argv(lb, "-s", "reload"), timeout=60)
        if not done.ok:
            raise RuntimeError(f"reload of {lb.name} failed: {done.stderr}")
    settle(sb, before)


DEPLOY_LINE = re.compile(r"(\w+): release (\S+) (live|NOT live.*?) \((\d+) file\(s\) changed, "
                         r"(\d+) bytes sent, (\d+) name\(s\) probed\)")


def deploy_summary(stdout: str) -> dict[str, Any]:
    """Per LB: files changed, bytes sent, names probed (from the summary lines)."""
    lbs = {m[1]: {"live": m[3] == "live", "changed": int(m[4]), "bytes_sent": int(m[5]),
                  "probed": int(m[6])} for m in DEPLOY_LINE.finditer(stdout)}
    return {
        "lbs": lbs,
        "bytes_sent": sum(v["bytes_sent"] for v in lbs.values()),
        "files_changed_per_lb": max((v["changed"] for v in lbs.values()), default=0),
        "names_probed_per_lb": max((v["probed"] for v in lbs.values()), default=0),
        "unchanged": "live releases are up to date" in stdout,
    }


class Fleet:
    """A fabricated fleet of N shops with lineages, and its deploy configs."""

    def __init__(self, sb: Sandbox, shops: int, base: Path) -> None:
        self.sb = sb
        self.n = shops
        self.base = base
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.ca = SandboxCA(base / "ca")
        self.certbot_dir = base / "letsencrypt"
        self.spool = base / "sp"
        self.deferred = [f"r{i:03d}.custom.test" for i in range(100)]
        self.one = "one.custom.test"
        riders = shops - 1 - len(self.deferred)
        entries: list[dict[str, Any]] = [
            {"domain": f"s{i:05d}.platform.test", "template": "custom-domain",
             "vars": {"upstream": sb.backend}} for i in range(riders)]
        for domain in (self.one, *self.deferred):
            entries.append({"domain": domain, "aliases": [f"www.{domain}"],
                            "template": "custom-domain", "vars": {"upstream": sb.backend}})
        self.inventory = base / "inventory.yaml"
        self.inventory.write_text(yaml.dump(entries, Dumper=yaml.CSafeDumper))
        self.lineage("platform.test", ["*.platform.test", "platform.test"])
        for domain in (self.one, *self.deferred):
            self.lineage(domain, [domain, f"www.{domain}"])
        data = yaml.safe_load(sb.config_path.read_text())
        data["inventory"] = str(self.inventory)
        data["deploy"].update(certbot_dir=str(self.certbot_dir), spool=str(self.spool))
        data["deploy"].pop("probe_timeout", None)
        self.lb_settings = data["deploy"]["load_balancers"]
        self.configs = {"default": self._write(base / "epages-default.yaml", data)}
        data["deploy"]["probe_timeout"] = PROBE_TIMEOUT
        self.configs["probe"] = self._write(base / "epages.yaml", data)
        for lb in data["deploy"]["load_balancers"]:
            lb.pop("probe", None)
        self.configs["noprobe"] = self._write(base / "epages-noprobe.yaml", data)

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> Path:
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
        return path

    def lineage(self, name: str, names: list[str]) -> None:
        """Write (or replace) a certbot-like lineage live/<name>/ signed by the fleet's CA."""
        live = self.certbot_dir / "live" / name
        live.mkdir(parents=True, exist_ok=True)
        crt, key = self.ca.issue(f"lineage-{name}", names)
        data = crt.read_bytes()
        (live / "cert.pem").write_bytes(data)
        (live / "fullchain.pem").write_bytes(data + self.ca.cert_path.read_bytes())
        (live / "privkey.pem").write_bytes(key.read_bytes())
        (live / "privkey.pem").chmod(0o600)

    def renew(self, domain: str) -> None:
        """A renewal: a new key and certificate for the same names."""
        self.lineage(domain, [domain, f"www.{domain}"])

    def fresh_spool(self) -> None:
        """Forget every earlier deploy (with reset_lbs: a first deploy)."""
        shutil.rmtree(self.spool, ignore_errors=True)

    def deploy(self, *args: str, probe: str = "probe") -> dict[str, Any]:
        """One timed ``certbot-epages deploy``; waits for the reload to take effect after.

        ``probe``: "probe" (probe_timeout PROBE_TIMEOUT), "default" (the product's default
        probe_timeout) or "noprobe" (the load balancers' ``probe`` removed).
        """
        config = self.configs[probe]
        before = workers(self.sb)
        done = run([str(BIN / "certbot-epages"), "--config", str(config), "deploy", *args],
                   timeout=900)
        summary = deploy_summary(done.stdout)
        result: dict[str, Any] = {
            "args": list(args), "probe": probe, "ok": done.ok,
            "seconds": round(done.seconds, 3), "peak_rss_kb": done.maxrss_kb, **summary,
        }
        if not done.ok:
            result["error"] = first_line(done.stderr + done.stdout, "certbot-epages")[:2000]
        elif not summary["unchanged"]:
            result["reload_effective_after_seconds"] = round(settle(self.sb, before), 3)
        log(f"  deploy {' '.join(args)} ({self.n} shops, {probe}): "
            f"{done.seconds:.2f}s, {summary['bytes_sent']} bytes, "
            f"{done.maxrss_kb // 1024} MiB{'' if done.ok else ' FAILED: ' + result['error'][:200]}")
        return result

    def defer_all(self, timed_hooks: int) -> dict[str, Any]:
        """Record the 100 deferred lineages: ``timed_hooks`` of them by the real hook program."""
        hook_times = []
        env_base = {**os.environ, "CERTBOT_EPAGES_CONFIG": str(self.configs["probe"])}
        settings = None
        for index, domain in enumerate(self.deferred):
            live = self.certbot_dir / "live" / domain
            if index < timed_hooks:
                env = {**env_base, "RENEWED_LINEAGE": str(live),
                       "RENEWED_DOMAINS": f"{domain} www.{domain}"}
                done = run([str(BIN / "deploy-hook"), "--defer"], env=env, timeout=60)
                if not done.ok:
                    raise RuntimeError(f"deploy-hook --defer failed: {done.stderr}")
                hook_times.append(done.seconds)
            else:  # the same function the hook calls, without a process per lineage
                if settings is None:
                    from certbot_epages import config as epages_config

                    settings = epages_config.load(self.configs["probe"])
                deploy_hook.defer(settings, deploy_lineages.load(live))
        return {"timed_hooks": len(hook_times), "hook_seconds": [round(t, 3) for t in hook_times],
                "median_hook_seconds": median(hook_times)}

    def baseline(self) -> dict[str, Any]:
        """Bare nginx -t + reload of the live config on lb1, run directly (no ssh, no render)."""
        lb = self.sb.lbs[0]
        settings = self.lb_settings[0]
        test = run(list(settings["test"]), timeout=600)
        before = {lb.name: children(master_pid(lb))}
        reload_started = time.monotonic()
        reload = run(list(settings["reload"]), timeout=120)

        def effective() -> bool | None:
            now = children(master_pid(lb))
            return True if now and not (now & before[lb.name]) else None

        poll("lb1's reload to take effect", effective, 300, interval=0.05)
        effective_after = time.monotonic() - reload_started
        result = {
            "ok": test.ok and reload.ok, "test_seconds": round(test.seconds, 3),
            "reload_command_seconds": round(reload.seconds, 3),
            "reload_effective_after_seconds": round(effective_after, 3),
            "seconds": round(test.seconds + effective_after, 3),
            "test_peak_rss_kb": test.maxrss_kb,
        }
        log(f"  baseline nginx -t {test.seconds:.2f}s + reload effective after "
            f"{effective_after:.2f}s ({self.n} shops)")
        return result

    def nginx_rss(self) -> dict[str, int]:
        """RSS of lb1's nginx master and worker(s) now."""
        lb = self.sb.lbs[0]
        master = master_pid(lb)
        return {"master_kb": rss_kb(master),
                "workers_kb": sum(rss_kb(p) for p in children(master))}


def probe_cost(sb: Sandbox, names: list[str]) -> dict[str, Any]:
    """Per-name cost of the deploy probe, against one TLS handshake on a reused context."""
    import socket
    import ssl

    from certbot_epages.deploy.probe import served_fingerprint
    from certbot_epages.netaddr import HostPort

    address = HostPort(sb.ip.lb1, 443)
    started = time.monotonic()
    for name in names:
        served_fingerprint(address, name)
    product = (time.monotonic() - started) / len(names)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    for name in names:
        with socket.create_connection((sb.ip.lb1, 443), timeout=3) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.getpeercert(binary_form=True)
    reused = (time.monotonic() - started) / len(names)
    return {"names": len(names), "served_fingerprint_ms": round(product * 1000, 2),
            "handshake_reused_context_ms": round(reused * 1000, 2)}


def part_deploy(sb: Sandbox, size: int, runs: int, rounds: int, timed_hooks: int,
                may_run: Callable[[float], bool]) -> dict[str, Any]:
    """Part 3 for one fleet size: ``runs`` first deploys, ``rounds`` of everything else.

    The naive full deploy runs only if ``may_run(its estimate)``.
    """
    log(f"deploy: {size} shops, {runs} first deploy(s), {rounds} round(s) of the rest")
    fleet = Fleet(sb, size, sb.directory / f"d{size}")  # short: ssh ControlPath
    out: dict[str, Any] = {"shops": size, "runs": runs, "rounds": rounds,
                           "lineages": 2 + len(fleet.deferred), "riders": size - 101}
    probed = []
    if size == min(DEPLOY_SIZES):  # as an operator would: probes on, the default timeout
        reset_lbs(sb)
        fleet.fresh_spool()
        probed.append(fleet.deploy("--all", probe="default"))
    first = []
    for _ in range(runs):
        reset_lbs(sb)
        fleet.fresh_spool()
        first.append(fleet.deploy("--all", probe="noprobe"))
    out["nginx_rss_after_first_deploy"] = fleet.nginx_rss()
    ops: dict[str, list[dict[str, Any]]] = {"first_full_probed": probed,
                                            "first_full": first, "noop_full": [],
                                            "one_lineage": [], "pending_100": [],
                                            "naive_full": [], "baseline": []}
    hooks: dict[str, Any] = {}
    for index in range(rounds):
        ops["noop_full"].append(fleet.deploy("--all"))
        fleet.renew(fleet.one)
        ops["one_lineage"].append(fleet.deploy("--lineage", fleet.one))
        for domain in fleet.deferred:
            fleet.renew(domain)
        recorded = fleet.defer_all(timed_hooks if index == 0 else 0)
        if index == 0:
            hooks = recorded
        ops["pending_100"].append(fleet.deploy("--pending"))
        ops["baseline"].append(fleet.baseline())
        # The naive way: render and push everything for one renewal. It costs about a no-op
        # full render plus a one-lineage deploy; skipped when the time limit cannot afford it.
        estimate = ops["noop_full"][-1]["seconds"] + ops["one_lineage"][-1]["seconds"]
        if may_run(estimate):
            fleet.renew(fleet.one)
            ops["naive_full"].append(fleet.deploy("--all"))
        else:
            log(f"  naive full deploy skipped (time limit); estimate {estimate:.0f}s")
            out["naive_full_skipped_estimate_seconds"] = round(estimate, 1)
    out["defer_hooks"] = hooks
    for values in ops.values():
        for v in values:  # until the new config serves: probes waited, or the reload after
            after = 0.0 if "test_seconds" in v else v.get("reload_effective_after_seconds", 0.0)
            v["until_served_seconds"] = round(v["seconds"] + after, 3)
    out["operations"] = {key: {
        "runs": values,
        "median_seconds": median([v["seconds"] for v in values if v["ok"]]),
        "median_until_served_seconds": median(
            [v["until_served_seconds"] for v in values if v["ok"]]),
    } for key, values in ops.items()}
    if size == min(DEPLOY_SIZES):
        out["probe_cost"] = probe_cost(sb, [f"s{i:05d}.platform.test" for i in range(50)])
    shutil.rmtree(fleet.base, ignore_errors=True)
    return out


DEPLOY_SIZES = (1000, 10000)
PROBE_TIMEOUT = 300  # deploy.probe_timeout for the measured deploys: wait, never roll back


def default_probe_timeout() -> float:
    """The product's default deploy.probe_timeout."""
    from certbot_epages.config import DeployConfig

    return float(DeployConfig.__dataclass_fields__["probe_timeout"].default)  # type: ignore


# ------------------------------------------------------------------------------ part 4


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
    steps = []
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


# ------------------------------------------------------------------------------ part 5

TIMED = BENCH / "timed.py"
# The mode comparison, one part per mode and fleet size (selectable alone); "modes" names the
# side-by-side pair at 10,000 shops. Sites mode at 100,000 is estimated from 10,000 (nginx
# would need about 8 GiB per process).
MODE_PARTS = {"sites-10k": ("sites", 10_000), "shared-10k": ("shared", 10_000),
              "shared-100k": ("shared", 100_000)}
PART_ALIASES = {"modes": ("sites-10k", "shared-10k")}
QUICK_SHOPS = {10_000: 400, 100_000: 2_000}  # --quick: small fleets, same shape
CUSTOM_SHARE = 10  # one shop in ten has a custom domain and a lineage of its own
HANDSHAKE_SECONDS = 5.0
# Targets of issue 14 for shared mode (seconds, or MiB per nginx process).
TARGETS = {"renewal_10k": 2.0, "renewal_100k": 3.0, "pending_10k": 5.0, "rss_mib_10k": 64,
           "new_domain_10k": 15.0}


def lb_nginx_rss(sb: Sandbox) -> dict[str, dict[str, int]]:
    """RSS of each LB's nginx master and its largest worker, in KiB."""
    out = {}
    for lb in sb.lbs:
        master = master_pid(lb)
        kids = children(master)
        out[lb.name] = {"master_kb": rss_kb(master),
                        "worker_kb": max((rss_kb(p) for p in kids), default=0),
                        "workers": len(kids)}
    return out


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def handshake_loop(lb: LoadBalancer, name: str, seconds: float, resume: bool) -> dict[str, Any]:
    """TLS 1.2 handshakes with SNI ``name`` for ``seconds``, one at a time, from this process.

    ``resume``: every handshake offers the session (ticket) of the first one. Each connection
    ends with close_notify (a session of a connection closed without it is not resumable).
    """
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the ticket arrives inside the handshake
    pids = children(master_pid(lb))
    cpu_before = cpu_seconds(pids)
    session = None
    count = reused = failures = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((lb.address, 443), timeout=3) as raw:
                tls = context.wrap_socket(raw, server_hostname=name, session=session)
                reused += 1 if tls.session_reused else 0
                if resume and session is None:
                    session = tls.session
                with contextlib.suppress(OSError, ssl.SSLError):
                    tls.unwrap()
                tls.close()
        except (OSError, ssl.SSLError):
            failures += 1
            continue
        count += 1
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pids) - cpu_before
    return {"name": name, "resume": resume, "handshakes": count, "reused": reused,
            "failures": failures, "seconds": round(elapsed, 3),
            "per_second": round(count / elapsed, 1),
            "worker_cpu_ms_per_handshake": round(1000 * cpu / count, 3) if count else None}


def handshakes(sb: Sandbox, names: dict[str, str], seconds: float) -> dict[str, Any]:
    """Full and resumed handshakes per second on lb1, per kind of name."""
    out: dict[str, Any] = {}
    for label, name in names.items():
        for resume in (False, True):
            result = handshake_loop(sb.lbs[0], name, seconds, resume)
            out[f"{label}_{'resumed' if resume else 'full'}"] = result
            log(f"  handshakes {label} {'resumed' if resume else 'full'}: "
                f"{result['per_second']}/s, worker {result['worker_cpu_ms_per_handshake']} ms "
                f"CPU each ({result['reused']} of {result['handshakes']} resumed)")
    return out


def phase_totals(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per phase: the sum over load balancers and the longest one (phase 1/2 run side by side)."""
    out = {}
    for phase, per_lb in raw.get("phases", {}).items():
        sums = [sum(v) for v in per_lb.values()]
        out[phase] = {"sum": round(sum(sums), 3), "max": round(max(sums), 3),
                      "calls": sum(len(v) for v in per_lb.values())}
    return out


class ModeFleet:
    """N shops in one deploy.mode: the platform wildcard and its riders, custom domains.

    One entry ``*.platform.test`` (lineage ``wildcard_.platform.test``) whose riders
    ``sNNNNNN.platform.test`` are most shops; one shop in ten a custom domain (domain + www)
    with a lineage of its own: ``one.custom.test``, ``r000..r099.custom.test`` (the batched
    renewals) and ``cNNNNNN.custom.test``. Every shop has its own shop id and upstream var.
    """

    def __init__(self, sb: Sandbox, mode: str, shops: int, base: Path) -> None:
        self.sb = sb
        self.mode = mode
        self.n = shops
        self.base = base
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.ca = SandboxCA(base / "ca")
        self.certbot_dir = base / "le"
        self.spool = base / "sp"
        self.one = "one.custom.test"
        self.deferred = [f"r{i:03d}.custom.test" for i in range(100)]
        custom = max(101, shops // CUSTOM_SHARE)
        self.customs = [self.one, *self.deferred,
                        *(f"c{i:06d}.custom.test" for i in range(custom - 101))]
        self.riders = [f"s{i:06d}.platform.test" for i in range(shops - 1 - custom)]
        self.wildcard = "wildcard_.platform.test"
        self.fingerprints: dict[str, str] = {}
        up = {"upstream": sb.backend}
        entries: list[dict[str, Any]] = [
            {"domain": "*.platform.test", "shop": "platform", "template": "platform-wildcard",
             "vars": up}]
        entries += [{"domain": r, "shop": r.split(".")[0], "template": "custom-domain",
                     "vars": up} for r in self.riders]
        entries += [{"domain": d, "aliases": [f"www.{d}"], "shop": "id-" + d.split(".")[0],
                     "template": "custom-domain", "vars": up} for d in self.customs]
        self.inventory = base / "inventory.yaml"
        self.inventory.write_text(yaml.dump(entries, Dumper=yaml.CSafeDumper))
        self.lineage(self.wildcard, ["*.platform.test"])
        for domain in self.customs:
            self.lineage(domain, [domain, f"www.{domain}"])
        data = yaml.safe_load(sb.config_path.read_text())
        data["inventory"] = str(self.inventory)
        data["deploy"].update(certbot_dir=str(self.certbot_dir), spool=str(self.spool),
                              mode=mode, probe_timeout=PROBE_TIMEOUT)
        self.config = Fleet._write(base / "epages.yaml", data)

    def lineage(self, name: str, names: list[str]) -> None:
        """Write (or replace) a certbot-like lineage live/<name>/ signed by the fleet's CA."""
        live = self.certbot_dir / "live" / name
        live.mkdir(parents=True, exist_ok=True)
        crt, key = self.ca.issue("leaf", names)
        data = crt.read_bytes()
        for file, content in (("cert.pem", data),
                              ("fullchain.pem", data + self.ca.cert_path.read_bytes()),
                              ("privkey.pem", key.read_bytes())):
            tmp = live / f".{file}.tmp"
            tmp.write_bytes(content)
            tmp.chmod(0o600 if file == "privkey.pem" else 0o644)
            tmp.replace(live / file)
        self.fingerprints[name] = deploy_lineages.load(live).fingerprint

    def renew(self, domain: str) -> None:
        """A renewal: a new key and certificate for the same names."""
        self.lineage(domain, [domain, f"www.{domain}"])

    def expected(self, names: list[str]) -> dict[str, str]:
        """The fingerprint each name must be served with."""
        out = {}
        for name in names:
            bare = name.removeprefix("www.")
            out[name] = self.fingerprints[bare if bare in self.fingerprints else self.wildcard]
        return out

    def sample(self) -> list[str]:
        """Names checked on both LBs after a full deploy: custom, www, riders, first and last."""
        names = [self.one, f"www.{self.one}", self.deferred[0], self.customs[-1],
                 f"www.{self.customs[-1]}"]
        return names + ([self.riders[0], self.riders[-1]] if self.riders else [])

    def check(self, names: list[str]) -> dict[str, str]:
        """Names some LB does not serve with the expected certificate, and what it serves."""
        from certbot_epages.deploy.probe import served_fingerprint
        from certbot_epages.netaddr import HostPort

        wrong = {}
        for name, fingerprint in self.expected(names).items():
            for lb in self.sb.lbs:
                try:
                    got = served_fingerprint(HostPort(lb.address, 443), name)
                except OSError as e:
                    got = f"error: {e}"
                if got != fingerprint:
                    wrong[f"{lb.name} {name}"] = got[:16]
        return wrong

    def _timed(self, what: str, entry: list[str], env: dict[str, str] | None = None,
               profile: bool = False) -> dict[str, Any]:
        timings = WORK / f"timings-{time.time_ns()}.json"
        run_env = {**os.environ, **(env or {})}
        if profile:
            run_env["BENCH_PROFILE"] = str(WORK / f"profile-{what.replace(' ', '_')}.pstats")
        before = workers(self.sb)
        done = run([str(BIN / "python"), str(TIMED), str(timings), *entry], env=run_env,
                   timeout=1800)
        summary = deploy_summary(done.stdout)
        raw: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(timings.read_text())
        timings.unlink(missing_ok=True)
        result: dict[str, Any] = {
            "what": what, "ok": done.ok, "seconds": round(done.seconds, 3),
            "peak_rss_kb": done.maxrss_kb, **summary,
            "import_seconds": raw.get("import_seconds"),
            "phases": phase_totals(raw), "phases_per_lb": raw.get("phases", {}),
        }
        if not done.ok:
            result["error"] = first_line(done.stderr + done.stdout, "certbot-epages",
                                         "deploy-hook")[:2000]
        elif not summary["unchanged"]:
            result["new_workers_after_seconds"] = round(settle(self.sb, before), 3)
        phases = result["phases"]
        log(f"  {what} ({self.n} shops, {self.mode}): {done.seconds:.2f}s, "
            f"{summary['bytes_sent']} bytes, {done.maxrss_kb // 1024} MiB; "
            + ", ".join(f"{k} {v['max']:.2f}" for k, v in phases.items() if v["max"] >= 0.05)
            + ("" if done.ok else " FAILED: " + result["error"][:300]))
        return result

    def deploy(self, *args: str, profile: bool = False) -> dict[str, Any]:
        """One timed ``certbot-epages deploy``."""
        return self._timed(f"deploy {' '.join(args)}",
                           ["cli", "--config", str(self.config), "deploy", *args],
                           profile=profile)

    def hook(self, domain: str, profile: bool = False) -> dict[str, Any]:
        """The deploy hook for one renewed lineage, as certbot runs it."""
        live = self.certbot_dir / "live" / domain
        env = {"CERTBOT_EPAGES_CONFIG": str(self.config), "RENEWED_LINEAGE": str(live),
               "RENEWED_DOMAINS": f"{domain} www.{domain}"}
        return self._timed("deploy-hook", ["hook"], env, profile=profile)

    def defer_all(self, timed_hooks: int) -> dict[str, Any]:
        """Record the 100 batched lineages: ``timed_hooks`` of them by the real hook program."""
        hook_times = []
        env = {**os.environ, "CERTBOT_EPAGES_CONFIG": str(self.config)}
        settings = None
        for index, domain in enumerate(self.deferred):
            live = self.certbot_dir / "live" / domain
            if index < timed_hooks:
                done = run([str(BIN / "deploy-hook"), "--defer"],
                           env={**env, "RENEWED_LINEAGE": str(live),
                                "RENEWED_DOMAINS": f"{domain} www.{domain}"}, timeout=60)
                if not done.ok:
                    raise RuntimeError(f"deploy-hook --defer failed: {done.stderr}")
                hook_times.append(done.seconds)
            else:  # the same function the hook calls, without a process per lineage
                if settings is None:
                    from certbot_epages import config as epages_config

                    settings = epages_config.load(self.config)
                deploy_hook.defer(settings, deploy_lineages.load(live))
        return {"timed_hooks": len(hook_times), "hook_seconds": [round(t, 3) for t in hook_times],
                "median_hook_seconds": median(hook_times)}


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
    }
    log(f"  fleet built in {out['fleet_build_seconds']}s: {out['names']} names, "
        f"{out['lineages']} lineages")
    reset_lbs(sb)
    out["nginx_rss_empty"] = lb_nginx_rss(sb)
    first = fleet.deploy("--all", profile=profile)
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
        result = fleet.deploy("--pending", profile=profile and index == 0)
        result["not_served"] = fleet.check(
            [n for d in fleet.deferred[::10] for n in (d, f"www.{d}")])
        batches.append(result)
    out["pending_100"] = batches
    out["nginx_rss_after_renewals"] = lb_nginx_rss(sb)
    out["load_average_at_end"] = list(os.getloadavg())
    out["seconds"] = round(time.monotonic() - started, 1)
    shutil.rmtree(fleet.base, ignore_errors=True)
    return out


def bare_test_and_reload(sb: Sandbox, lb: LoadBalancer, settings: dict[str, Any]) -> dict[str, Any]:
    """nginx -t and a reload of the live config on one LB, run directly (no ssh, no render)."""
    test = run(list(settings["test"]), timeout=600)
    before = {lb.name: children(master_pid(lb))}
    reload_started = time.monotonic()
    reload = run(list(settings["reload"]), timeout=300)

    def effective() -> bool | None:
        now = children(master_pid(lb))
        return True if now and not (now & before[lb.name]) else None

    poll(f"{lb.name}'s reload to take effect", effective, 600, interval=0.02)
    after = time.monotonic() - reload_started
    log(f"  bare nginx -t {test.seconds:.2f}s, reload until new workers only {after:.2f}s")
    return {"ok": test.ok and reload.ok, "test_seconds": round(test.seconds, 3),
            "test_peak_rss_kb": test.maxrss_kb, "reload_command_seconds": round(reload.seconds, 3),
            "new_workers_after_seconds": round(after, 3)}


# ------------------------------------------------------------------------------ machine facts


def _version(argv: list[str], pattern: str = r"[\d][\w.+~:-]*") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    text = (done.stdout + done.stderr).strip()
    m = re.search(pattern, text)
    return m[0] if m else text[:60]


def _dpkg(package: str) -> str:
    return _version(["dpkg-query", "-W", "-f", "${Version}", package], r".+")


def machine() -> dict[str, Any]:
    """CPU, cores, memory, date, versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": model[1].strip() if model else "?",
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem[1]) / 1024 / 1024, 1) if mem else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "certbot-epages": dist("certbot-epages"),
            "certbot": dist("certbot"),
            "certbot-dns-rfc2136": dist("certbot-dns-rfc2136"),
            "dnspython": dist("dnspython"),
            "pebble": _dpkg("pebble"),
            "bind9": _version(["named", "-v"], r"BIND [\d.]+\S*"),
            "nginx": _version(["nginx", "-v"], r"nginx/[\d.]+"),
            "rsync": _version(["rsync", "--version"], r"version [\d.]+"),
            "openssh": _version(["ssh", "-V"], r"OpenSSH_[\w.]+"),
        },
        "load_average_at_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------ results.md


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mib(kb: int | None) -> str:
    return "–" if not kb else f"{kb / 1024:.0f}"


def _kb(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1024:.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def render_markdown(results: dict[str, Any]) -> str:
    """results.md from the raw results."""
    m = results["machine"]
    v = m["versions"]
    lines = [
        "# certbot-epages benchmark",
        "",
        f"Written by `make bench` (`bench/run.py`) on {m['date']}; `bench/run.py` took "
        f"**{results['total_seconds'] / 60:.1f} min** (the limit for all of `make bench`, "
        f"install included, is 15 min; the bench plans for {TIME_LIMIT / 60:g}). One sandbox "
        "(`certbot_epages.sandbox`) for everything: BIND primary + secondary + resolver, "
        "pebble (authz reuse off, no validation sleep), two nginx load balancers behind sshd.",
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
        lines += _issuance_md(results["issuance"])
    if results.get("lag"):
        lines += _lag_md(results["lag"])
    if results.get("hooks"):
        lines += _hooks_md(results["hooks"])
    if results.get("deploy"):
        lines += _deploy_md(results["deploy"], _timeout(results))
    if results.get("sync"):
        lines += _sync_md(results["sync"])
    if results.get("modes"):
        lines += _modes_md(results["modes"])
    lines += _problems_md(results)
    return "\n".join(lines) + "\n"


def _issuance_md(rows: dict[str, Any]) -> list[str]:
    floor = rows["floor-direct"]["median_seconds"]
    out = [
        "## 1. Apex + wildcard issuance",
        "",
        "Each run is `certbot certonly` with a fresh `--cert-name` for an apex and its wildcard "
        "(two DNS-01 challenges, one order). *cname* = `shop.test` + `*.shop.test`, whose "
        "`_acme-challenge` is a CNAME into `dyn.platform.test` (served by the primary and the "
        "secondary the CA's resolver asks); *direct* = `direct.test` + `*.direct.test`, updated "
        "in place and served by the primary only. Medians over the successful runs; ratio = "
        f"median / floor ({_s(floor)} s: the same issuance with an nsupdate hook that waits for "
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
                   f"{row['succeeded']}/{row['attempts']} | {_s(row['median_seconds'])} | "
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


def _hooks_md(hooks: dict[str, Any]) -> list[str]:
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
        f"| Python start-up (`python -c pass`) | {_s(hooks['python_startup_seconds'], 3)} s |",
        f"| imports of a spool-only call (`-X importtime`) | "
        f"{hooks['import_spool_only_microseconds'] / 1000:.0f} ms |",
        f"| imports of a call that talks to DNS (+ config, dnspython) | "
        f"{hooks['import_dns_microseconds'] / 1000:.0f} ms |",
        f"| modules of other paths (HTTP-01, Jinja2, HTTP) loaded | "
        f"{', '.join(hooks['loaded_but_not_needed']) or 'none'} |",
        f"| auth, first challenge (records its value) | {_s(hooks['auth_first_seconds'], 3)} s |",
        f"| auth, last challenge (CNAME walk, one UPDATE, waits for both servers) | "
        f"{_s(hooks['auth_last_seconds'], 3)} s |",
        f"| cleanup, first (deletes both values) | {_s(hooks['cleanup_first_seconds'], 3)} s |",
        f"| cleanup, second (nothing left) | {_s(hooks['cleanup_last_seconds'], 3)} s |",
        f"| apex + wildcard by the hooks / certbot's floor | {_s(hooks['manual_hooks_seconds'])}"
        f" s / {_s(hooks['floor_seconds'])} s = **{ratio if ratio is not None else '–'} x** |",
        "",
        *([f"Errors: {'; '.join(hooks['errors'])[:300]}", ""] if hooks["errors"] else []),
    ]


def _lag_md(lag: dict[str, Any]) -> list[str]:
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


def _timeout(results: dict[str, Any]) -> float:
    """The product's default probe_timeout when the bench ran."""
    return float(results.get("default_probe_timeout") or default_probe_timeout())


def _deploy_md(deploy: dict[str, Any], timeout: float) -> list[str]:
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
                out.append(f"| {label} | not run (time limit) | ≈ {_s(estimate, 0)} (no-op "
                           "full + one-domain) | | | | | | |")
                continue
            ok = sum(1 for r in rows if r["ok"])
            med = op["median_seconds"]
            if not ok:
                out.append(f"| {label} | **FAILED** 0/{len(rows)} | "
                           f"{_s(median([r['seconds'] for r in rows]))} (until it failed) "
                           "| – | – | – | – | – | "
                           f"{_mib(int(median([r['peak_rss_kb'] for r in rows]) or 0))} |")
                continue
            served = op["median_until_served_seconds"]
            ratio = f"{served / base:.1f}" if served is not None and base else "–"
            if key == "baseline":
                test = median([r["test_seconds"] for r in rows])
                test_rss = median([r["test_peak_rss_kb"] for r in rows])
                out.append(f"| {label} | {ok}/{len(rows)} | {_s(test)} (nginx -t) | "
                           f"{_s(served)} | 1.0 | – | – | – | "
                           f"{_mib(int(test_rss) if test_rss else None)} (nginx -t) |")
                continue
            bytes_sent = median([r["bytes_sent"] for r in rows if r["ok"]])
            changed = median([r["files_changed_per_lb"] for r in rows if r["ok"]])
            probed = median([r["names_probed_per_lb"] for r in rows if r["ok"]])
            rss = median([r["peak_rss_kb"] for r in rows])
            out.append(
                f"| {label} | {ok}/{len(rows)} | {_s(med)} | {_s(served)} | {ratio} | "
                f"{_kb(int(bytes_sent)) if bytes_sent is not None else '–'} | "
                f"{'–' if changed is None else int(changed)} | "
                f"{'–' if probed is None else int(probed)} | {_mib(int(rss) if rss else None)}"
                " |")
        test = median([r["test_seconds"] for r in ops["baseline"]["runs"]])
        rss = size["nginx_rss_after_first_deploy"]
        hooks = size.get("defer_hooks") or {}
        out += [
            "",
            f"`nginx -t` alone: {_s(test)} s. nginx on lb1 after the first deploy: master "
            f"{_mib(rss['master_kb'])} MiB RSS, worker {_mib(rss['workers_kb'])} MiB RSS.",
        ]
        if hooks.get("timed_hooks"):
            out.append(
                f"`deploy-hook --defer`: median {_s(hooks['median_hook_seconds'])} s per "
                f"lineage ({hooks['timed_hooks']} timed process runs; the other "
                f"{100 - hooks['timed_hooks']} recorded in-process with the same function), "
                f"so certbot spends about {_s(100 * hooks['median_hook_seconds'], 0)} s in "
                "deferral hooks for 100 renewals; not included in the pending deploy's time.")
        failed = [r for op in ops.values() for r in op["runs"] if not r["ok"]]
        for r in failed:
            out.append(f"- FAILED {' '.join(r.get('args', ['baseline']))} "
                       f"({r.get('probe', 'nginx')}): "
                       f"`{r.get('error', '')[:400]}`")
        out.append("")
    return out


def _sync_md(sync: dict[str, Any]) -> list[str]:
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
            f"costs ~{_s(sync['median_step_seconds'], 1)} s of certbot, and the bench sized "
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
        f"| median per certbot run | {_s(sync['median_step_seconds'])} |",
        f"| second sync, nothing to do | {sync['second_sync']['wall_seconds']:.1f} |",
        "",
        f"Result: `{sync['summary']}`; deploy sent {_kb(sync['deploy']['bytes_sent'])}, "
        f"probed {sync['deploy']['names_probed_per_lb']} names per LB; peak RSS of the sync "
        f"process tree {_mib(sync['peak_rss_kb'])} MiB. Second sync: "
        f"`{sync['second_sync']['summary']}`.",
        "",
    ]
    if not sync["ok"]:
        out += ["The sync FAILED:", "", "```", sync.get("error", "")[-1500:], "```", ""]
    return out


def _pick(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the median time among the successful ones (else the first)."""
    ok = sorted((r for r in runs if r["ok"]), key=lambda r: r["seconds"])
    return ok[(len(ok) - 1) // 2] if ok else (runs[0] if runs else None)


def _ph(run: dict[str, Any], *names: str, how: str = "max") -> float:
    return float(sum(run["phases"].get(n, {}).get(how, 0.0) for n in names))


def _breakdown(run: dict[str, Any]) -> dict[str, float]:
    """Where a timed run's seconds went (load balancers side by side count once)."""
    parts = {
        "start": run.get("import_seconds") or 0.0,
        "inventory": _ph(run, "inventory"),
        "lineages": _ph(run, "lineages_scan"),
        "truth": _ph(run, "read_truth"),
        "decide": _ph(run, "ownership_resolve", "select"),
        "build": _ph(run, "build", how="sum"),
        "push": 0.0,
        "test": _ph(run, "nginx_test"),
        "reload": _ph(run, "switch_reload"),
        "probe": _ph(run, "probe"),
    }
    push = {lb: sum(run["phases_per_lb"].get(p, {}).get(lb, [])) for p in ("rsync", "push_certs")
            for lb in run["phases_per_lb"].get(p, {})}
    parts["push"] = max(push.values(), default=0.0)
    parts["other"] = max(run["seconds"] - sum(parts.values()), 0.0)
    return parts


BREAKDOWN = ("start", "inventory", "lineages", "truth", "decide", "build", "push", "test",
             "reload", "probe", "other")


def _modes_md(modes: dict[str, Any]) -> list[str]:
    order = [k for k in MODE_PARTS if k in modes]
    runs = {k: modes[k] for k in order}
    any_run = next(iter(runs.values()))
    out = [
        "## 5. `deploy.mode`: sites against shared (issue 14)",
        "",
        f"Fabricated fleets (lineages signed by a throwaway CA, ECDSA P-256): N shops = one "
        f"entry `*.platform.test` (lineage `wildcard_.platform.test`), one in {CUSTOM_SHARE} a "
        "custom domain with `www` and a lineage of its own (`one.custom.test`, "
        "`r000..r099.custom.test`, `cNNNNNN.custom.test`), the rest platform riders "
        "`sNNNNNN.platform.test`; every shop with its own shop id and `vars.upstream`. Both "
        "load balancers of the sandbox (nginx 1.22, one worker each, behind sshd), probes on "
        f"with `probe_timeout: {PROBE_TIMEOUT}` (a deploy waits until every changed name "
        "serves its new certificate on both load balancers instead of rolling back), so "
        "*until served* is the command's own wall time. The deploy commands run through "
        "`bench/timed.py`, which times the phases of the installed package from outside "
        "(nothing in the package changes). One renewal is the deploy hook (`deploy-hook`, "
        "as certbot runs it: `RENEWED_LINEAGE` of `one.custom.test`); 100 batched renewals "
        "are `deploy-hook --defer` ×100 (10 as processes, 90 in-process with the same "
        "function; not in the time) then `deploy --pending`. RSS: `VmRSS` of the nginx "
        "master and its largest worker, the larger of the two load balancers. Handshakes: "
        f"a Python loop (`ssl`, TLS 1.2, no verification) on lb1 for {HANDSHAKE_SECONDS:g} s "
        "per kind, one connection at a time, each closed with close_notify; *resumed* offers "
        "the first handshake's session ticket every time; the nginx worker's CPU time per "
        "handshake comes from `/proc/<pid>/stat` (the client, on the same 2 cores, limits "
        "the rate, so the CPU per handshake is the better measure of what nginx can do).",
        "",
        "The inventory is parsed by every deploy (no parse cache on this branch; "
        "`certbot-epages sync --domain` and a parse cache are being built on another "
        "branch): *without the inventory parse* subtracts the measured parse from the "
        "renewal, which is what a renewal costs once the parse is cached.",
        "",
    ]
    for key, r in runs.items():
        out.append(f"- `{key}` ran {r['date']}: {r['shops']:,} shops ({r['riders']:,} riders, "
                   f"{r['custom_domains']:,} custom domains), {r['names']:,} names, "
                   f"{r['lineages']:,} lineages; load average "
                   f"{', '.join(f'{x:.2f}' for x in r['load_average_at_start'])} at start, "
                   f"{', '.join(f'{x:.2f}' for x in r['load_average_at_end'])} at end; "
                   f"{r['seconds'] / 60:.1f} min.")
    out.append("")
    head = ["", *(f"{runs[k]['mode']} {runs[k]['shops']:,}" for k in order)]
    sites10 = runs.get("sites-10k")
    estimate = sites10 is not None and not any_run.get("quick")
    if estimate:
        head.append("sites 100,000 (estimate ×10)")
    head.append("target (shared)")
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def med(r: dict[str, Any], op: str, field: str = "seconds") -> float | None:
        return median([x[field] for x in r[op] if x["ok"]]) if isinstance(r[op], list) else (
            r[op][field] if r[op]["ok"] else None)

    def rss(r: dict[str, Any], when: str, what: str) -> int:
        return int(max(v[what] for v in r[when].values()))

    def row(label: str, values: list[str], est: str = "", target: str = "") -> None:
        cells = [label, *values]
        if estimate:
            cells.append(est)
        cells.append(target)
        out.append("| " + " | ".join(cells) + " |")

    def inv(r: dict[str, Any], op: str) -> float | None:
        picked = _pick(r[op]) if isinstance(r[op], list) else r[op]
        return None if picked is None else _ph(picked, "inventory")

    def renewal_without_parse(r: dict[str, Any]) -> float | None:
        ok = [x["seconds"] - _ph(x, "inventory") for x in r["renewal"] if x["ok"]]
        return median(ok)

    def x10(value: float | None) -> str:
        return _s(None if value is None else 10 * value, 0)

    s10 = sites10 or {}
    row("first full deploy (`deploy --all`), until served on both LBs, s",
        [_s(med(runs[k], "first_full")) for k in order],
        x10(med(s10, "first_full")) if estimate else "")
    row("… bytes sent (both LBs)", [_kb(runs[k]["first_full"]["bytes_sent"]) for k in order],
        "", "")
    row("`deploy --all`, nothing changed, s", [_s(med(runs[k], "noop_full")) for k in order],
        x10(med(s10, "noop_full")) if estimate else "")
    row("bare `nginx -t` on lb1, s", [_s(runs[k]["baseline"]["test_seconds"]) for k in order],
        x10(s10.get("baseline", {}).get("test_seconds")) if estimate else "")
    row("bare reload on lb1 until only new workers run, s",
        [_s(runs[k]["baseline"]["new_workers_after_seconds"]) for k in order],
        x10(s10.get("baseline", {}).get("new_workers_after_seconds")) if estimate else "")
    row("**one renewal** (deploy hook) until served on both LBs, median s",
        [f"**{_s(med(runs[k], 'renewal'))}**" for k in order],
        x10(med(s10, "renewal")) if estimate else "", "≤ 2 (10,000), ≤ 3 (100,000)")
    row("… of it: parsing the inventory, s", [_s(inv(runs[k], "renewal")) for k in order])
    row("… one renewal without the inventory parse, s",
        [_s(renewal_without_parse(runs[k])) for k in order], "",
        "≤ 2 (10,000), ≤ 3 (100,000)")
    row("… bytes sent (both LBs)", [_kb(int(median(
        [x["bytes_sent"] for x in runs[k]["renewal"] if x["ok"]]) or 0)) for k in order])
    row("**100 batched renewals** (`deploy --pending`) until served, median s",
        [f"**{_s(med(runs[k], 'pending_100'))}**" for k in order],
        x10(med(s10, "pending_100")) if estimate else "", "≤ 5 (10,000)")
    row("… bytes sent (both LBs)", [_kb(int(median(
        [x["bytes_sent"] for x in runs[k]["pending_100"] if x["ok"]]) or 0)) for k in order])
    row("`deploy-hook --defer`, per lineage (process), s",
        [_s(runs[k].get("defer_hooks", {}).get("median_hook_seconds")) for k in order])
    for when, label in (("nginx_rss_empty", "no shops"),
                        ("nginx_rss_after_first_deploy", "after the first deploy"),
                        ("nginx_rss_after_renewals", "after the renewals' reloads")):
        est = ""
        if estimate and when != "nginx_rss_empty":
            est = " / ".join(_mib(rss(s10, "nginx_rss_empty", w) + 10 * (
                rss(s10, when, w) - rss(s10, "nginx_rss_empty", w)))
                for w in ("master_kb", "worker_kb"))
        row(f"nginx RSS master / worker, {label}, MiB",
            [f"{_mib(rss(runs[k], when, 'master_kb'))} / {_mib(rss(runs[k], when, 'worker_kb'))}"
             for k in order], est, "≤ 64 per process (10,000)"
            if when != "nginx_rss_empty" else "")
    for kind, label in (("full", "full"), ("resumed", "resumed")):
        row(f"{label} TLS handshakes per second (custom / rider), one client",
            [" / ".join(_s(runs[k]["handshakes"].get(f"{n}_{kind}", {}).get("per_second"), 0)
                        for n in ("custom", "rider")) for k in order])
        row(f"… nginx worker CPU per {label} handshake (custom / rider), ms",
            [" / ".join(_s(runs[k]["handshakes"].get(f"{n}_{kind}", {}).get(
                "worker_cpu_ms_per_handshake"), 2) for n in ("custom", "rider"))
             for k in order])
    row("new custom domain (HTTP-01), inventory change to HTTPS on both LBs",
        ["**TODO**: needs `certbot-epages sync --domain` (another branch)" for _ in order],
        "", "≤ 15 (10,000)")
    out += [
        "",
        "Resumed handshakes that were really resumed: "
        + "; ".join(f"{k} " + ", ".join(
            f"{n} {runs[k]['handshakes'][f'{n}_resumed']['reused']}/"
            f"{runs[k]['handshakes'][f'{n}_resumed']['handshakes']}"
            for n in ("custom", "rider")) for k in order) + ".",
        "",
    ]
    if estimate:
        out += [
            "The sites-mode column at 100,000 is not measured: it multiplies the 10,000-shop "
            "numbers by ten (nginx's parse, its RSS above the empty configuration and the "
            "deploy's own work all grow with the number of server blocks), which would be "
            "about "
            + _mib(rss(s10, "nginx_rss_empty", "master_kb") + 10 * (
                rss(s10, "nginx_rss_after_first_deploy", "master_kb")
                - rss(s10, "nginx_rss_empty", "master_kb")))
            + " MiB per nginx process.",
            "",
        ]
    out += [
        "Where the time of each timed run went (s; the run with the median time; *start* = "
        "Python start-up and imports, *truth* = reading what each LB serves over ssh, "
        "*decide* = ownership and selection, *build* = rendering and building the release "
        "for both LBs one after the other, *push* = rsync of certificates and release, "
        "*test* = the phase-1 `nginx -t` over ssh, *reload* = switch and reload over ssh, "
        "*probe* = until every changed name and the release marker serve the new "
        "certificates; push, test, reload and probe run on both LBs side by side, the "
        "longer counts; *other* = locks, ssh connections, bookkeeping, pruning):",
        "",
        "| run | op | total | " + " | ".join(BREAKDOWN) + " | peak RSS MiB |",
        "|" + "---|" * (len(BREAKDOWN) + 4),
    ]
    for key in order:
        for op, label in (("first_full", "first `deploy --all`"),
                          ("noop_full", "`deploy --all`, no change"),
                          ("renewal", "one renewal (hook)"),
                          ("pending_100", "100 batched (`--pending`)")):
            picked = _pick(runs[key][op]) if isinstance(runs[key][op], list) else runs[key][op]
            if picked is None:
                continue
            if not picked["ok"]:
                out.append(f"| {key} | {label} | FAILED: {picked.get('error', '')[:200]} |"
                           + " |" * (len(BREAKDOWN) + 1))
                continue
            parts = _breakdown(picked)
            out.append(f"| {key} | {label} | {picked['seconds']:.2f} | "
                       + " | ".join(f"{parts[p]:.2f}" for p in BREAKDOWN)
                       + f" | {_mib(picked['peak_rss_kb'])} |")
    problems = [(k, op, x) for k in order for op in ("first_full", "renewal", "pending_100")
                for x in (runs[k][op] if isinstance(runs[k][op], list) else [runs[k][op]])
                if x.get("not_served")]
    out.append("")
    if problems:
        out.append("Names not served with the expected certificate after a run that "
                   "succeeded (checked from outside, both LBs):")
        out += [f"- {k} {op}: {x['not_served']}" for k, op, x in problems]
    else:
        out.append("After every run, a handshake with each checked name on both load "
                   "balancers got the expected certificate (checked from outside).")
    out.append("")
    return out


def _problems_md(results: dict[str, Any]) -> list[str]:
    out = ["## Product problems seen", ""]
    deploys = results.get("deploy", {})
    sizes = sorted(int(k) for k in deploys)
    small = deploys[str(sizes[0])] if sizes else {}
    timeout = _timeout(results)
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
                f"{_s(one, 0)} s here with the timeout raised to {PROBE_TIMEOUT} s).")
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
            f"{_mib(rss['master_kb'])} MiB at {big['shops']:,} shops) and "
            f"makes `nginx -t` take {_s(test)} s at {big['shops']:,} shops; every deploy, even "
            "a one-certificate renewal, pays a full `nginx -t` and reload on each LB. The "
            "riders of one wildcard could share a server block (many `server_name`s).")
    out.append("")
    return out


# ------------------------------------------------------------------------------ main


@contextlib.contextmanager
def sandbox_running() -> Iterator[Sandbox]:
    """A sandbox under /tmp (not mode 0700: nginx workers run as nobody), always torn down."""
    directory = Path(tempfile.mkdtemp(prefix="cebench-", dir="/tmp"))
    directory.chmod(0o755)
    sb = Sandbox.up(directory)
    try:
        yield sb
    finally:
        killed = sb.down()
        if killed:
            log(f"force-killed at teardown: {', '.join(killed)}")
        shutil.rmtree(directory, ignore_errors=True)


ALL_PARTS = ("issuance", "lag", "hooks", "deploy", "sync", *MODE_PARTS)
OLD_PARTS = ("issuance", "lag", "hooks", "deploy", "sync")


def merge_base(previous: dict[str, Any], parts: set[str]) -> dict[str, Any]:
    """What to keep of an earlier results.json: the parts not run now, with that run's facts."""
    kept: dict[str, Any] = {}
    old = [p for p in OLD_PARTS if p in previous and p not in parts]
    if old:
        kept = {p: previous[p] for p in old}
        if "sync" in old and "sync_sizing" in previous:
            kept["sync_sizing"] = previous["sync_sizing"]
        # Parts 1-4 are described with the machine facts of the run that measured them.
        kept["earlier_run"] = previous.get("earlier_run") or {
            "machine": previous.get("machine"), "total_seconds": previous.get("total_seconds"),
            "load_average_at_end": previous.get("load_average_at_end"),
            "default_probe_timeout": previous.get("default_probe_timeout"),
            "quick": previous.get("quick"), "parts": old}
    modes = {k: v for k, v in previous.get("modes", {}).items() if k not in parts}
    if modes:
        kept["modes"] = modes
    return kept


def merged(kept: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The results of this run, with the kept parts of an earlier one."""
    out = dict(results)
    for key, value in kept.items():
        if key == "modes":
            out["modes"] = {**value, **results.get("modes", {})}
        elif key not in out:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every part and write bench/results.md and bench/results.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 run, short sleeps, small fleets (results marked)")
    parser.add_argument("--parts", default=",".join(ALL_PARTS),
                        help="which parts to run (comma-separated), e.g. --parts hooks "
                             "(about a minute) with --output elsewhere; the mode comparison "
                             f"is {', '.join(MODE_PARTS)} ('modes' = "
                             f"{' + '.join(PART_ALIASES['modes'])})")
    parser.add_argument("--merge", action="store_true",
                        help="keep the parts not run now from the results.json in --output "
                             "(each part records its own date and load)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the first deploy, last renewal and first batch of each "
                             "mode part (stats in bench/work/profile-*.pstats)")
    parser.add_argument("--render", action="store_true",
                        help="only re-render results.md from the results.json in --output")
    parser.add_argument("--output", type=Path, default=BENCH,
                        help="where results.md and results.json go (default: bench/)")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((args.output / "results.json").read_text())
        (args.output / "results.md").write_text(render_markdown(results))
        return 0
    if os.geteuid() != 0:
        print("bench/run.py needs root (the sandbox does)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # teardown runs on TERM too
    global DEPLOY_SIZES
    if args.quick:
        DEPLOY_SIZES = (300, 600)
    parts: set[str] = set()
    for part in args.parts.split(","):
        parts.update(PART_ALIASES.get(part, (part,)))
    unknown = parts - set(ALL_PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: "
                     f"{', '.join([*ALL_PARTS, *PART_ALIASES])}")
    budget = Budget(TIME_LIMIT)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    results: dict[str, Any] = {"quick": args.quick, "machine": machine(),
                               "default_probe_timeout": default_probe_timeout()}
    kept: dict[str, Any] = {}
    if args.merge and (args.output / "results.json").exists():
        kept = merge_base(json.loads((args.output / "results.json").read_text()), parts)
    log("starting the sandbox")
    try:
        with sandbox_running() as sb:
            env = {**os.environ, **sb.env()}
            registered = run(sb.certbot_argv("register"), env=env, timeout=120)
            if not registered.ok:
                raise RuntimeError(f"certbot register failed: {registered.stderr}")
            issuer = Issuer(sb)
            if "issuance" in parts:
                results["issuance"] = part_issuance(sb, issuer, args.quick)
                log(f"elapsed {budget.elapsed():.0f}s")
            if "lag" in parts:
                results["lag"] = part_lag(sb, issuer, args.quick)
                log(f"elapsed {budget.elapsed():.0f}s")
            if "hooks" in parts:
                results["hooks"] = part_hooks(sb, issuer, args.quick, results.get("issuance"))
                log(f"elapsed {budget.elapsed():.0f}s")
            if "deploy" in parts:
                results["deploy"] = {}
                for size in DEPLOY_SIZES:
                    small = size == min(DEPLOY_SIZES)
                    # 3 first deploys, 2 rounds of the rest at 1,000 shops; 1 of each at
                    # 10,000 (one round there costs ~5 min, mostly nginx -t and reloads).
                    runs, rounds = (3, 2) if small and not args.quick else (1, 1)
                    results["deploy"][str(size)] = part_deploy(
                        sb, size, runs, rounds, timed_hooks=10 if small else 0,
                        may_run=lambda estimate, always=small or args.quick: always
                        or budget.left() - estimate > sync_reserve(results, 40))
                    log(f"elapsed {budget.elapsed():.0f}s")
            if "sync" in parts:
                per_order = per_order_estimate(results)
                orders = sync_orders_for(budget, per_order, fixed=SYNC_FIXED, quick=args.quick)
                results["sync_sizing"] = {"estimated_seconds_per_order": round(per_order, 2),
                                          "left_seconds": round(budget.left(), 1),
                                          "http01_orders": orders}
                results["sync"] = part_sync(sb, orders)
            for key, (mode, shops) in MODE_PARTS.items():
                if key in parts:
                    if args.quick:
                        shops = QUICK_SHOPS[shops]
                    results.setdefault("modes", {})[key] = part_mode(
                        sb, key, mode, shops, args.quick, args.profile)
                    log(f"elapsed {budget.elapsed():.0f}s")
    finally:
        results["total_seconds"] = round(budget.elapsed(), 1)
        results["load_average_at_end"] = list(os.getloadavg())
        (WORK / "rfc2136.ini").unlink(missing_ok=True)
        results["parts_run"] = sorted(parts)
        if kept:
            results = merged(kept, results)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output / "results.md").write_text(render_markdown(results))
    log(f"done in {results['total_seconds'] / 60:.1f} min: {args.output / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
