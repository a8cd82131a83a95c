"""A fabricated fleet in one deploy.mode, and its commands timed phase by phase (timed.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes
from epages_testlib import leaf_certificate, make_lineage, served

from certbot_epages.deploy import hook as deploy_hook
from certbot_epages.deploy import lineages as deploy_lineages
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox
from epbench.common import BENCH, BIN, WORK, first_line, log, median, poll, run
from epbench.lbs import ServedWatch, deploy_summary, settle, workers
from epbench.parts.deploy import PROBE_TIMEOUT, write_config

TIMED = BENCH / "timed.py"
CUSTOM_SHARE = 10  # one shop in ten has a custom domain and a lineage of its own


def phase_totals(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per phase: the sum over load balancers and the longest one (phase 1/2 run side by side)."""
    out = {}
    for phase, per_lb in raw.get("phases", {}).items():
        sums = [sum(v) for v in per_lb.values()]
        out[phase] = {"sum": round(sum(sums), 3), "max": round(max(sums), 3),
                      "calls": sum(len(v) for v in per_lb.values())}
    return out


def signal_reload(prefix: str) -> list[str]:
    """The reload the README recommends at scale: a signal, not ``nginx -s reload``.

    ``nginx -s reload`` parses the whole configuration only to find the master's pid (0.3 s
    at 100,000 shops) before the master parses it again; phase 1 has tested it already.
    """
    return ["pkill", "-HUP", "-F", f"{prefix}/nginx.pid"]


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
        self.entries = entries
        self.inventory = base / "inventory.yaml"
        self.write_inventory()
        self.lineage(self.wildcard, ["*.platform.test"])
        for domain in self.customs:
            self.lineage(domain, [domain, f"www.{domain}"])
        data = yaml.safe_load(sb.config_path.read_text())
        data["inventory"] = str(self.inventory)
        data["deploy"].update(certbot_dir=str(self.certbot_dir), spool=str(self.spool),
                              mode=mode, probe_timeout=PROBE_TIMEOUT)
        for lb_data, lb in zip(data["deploy"]["load_balancers"], sb.lbs, strict=True):
            lb_data["reload"] = signal_reload(lb.prefix)
        # certbot of sync --domain: pebble, with the fabricated lineages in its config-dir.
        self.certbot_ini = base / "cli.ini"
        self.certbot_ini.write_text(
            f"server = {sb.acme_url}\nconfig-dir = {self.certbot_dir}\n"
            f"work-dir = {base / 'cw'}\nlogs-dir = {base / 'cl'}\n"
            "agree-tos = true\nregister-unsafely-without-email = true\nnon-interactive = true\n")
        data["fleet"].update(state_dir=str(base / "fleet"),
                             certbot_args=["-c", str(self.certbot_ini)],
                             prometheus=str(base / "fleet" / "certbot_epages.prom"),
                             limits={"certs_per_registered_domain": 1000})
        self.config = write_config(base / "epages.yaml", data)
        self.registered = False

    def write_inventory(self) -> None:
        """The inventory as the shop software exports it (atomically: a path unit watches it)."""
        tmp = self.inventory.with_suffix(".tmp")
        tmp.write_text(yaml.dump(self.entries, Dumper=yaml.CSafeDumper))
        tmp.replace(self.inventory)

    def lineage(self, name: str, names: list[str]) -> None:
        """Write (or replace) a certbot-like lineage live/<name>/ signed by the fleet's CA."""
        self.fingerprints[name] = make_lineage(self.certbot_dir, name, names, self.ca)

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
        wrong = {}
        for name, fingerprint in self.expected(names).items():
            for lb, got in served(self.sb, name).items():
                if got != fingerprint:
                    wrong[f"{lb} {name}"] = got[:16]
        return wrong

    def _timed(self, what: str, entry: list[str], env: dict[str, str] | None = None,
               profile: bool = False, wait_reload: bool = True,
               expect: Callable[[], dict[str, str] | None] | None = None) -> dict[str, Any]:
        """Run ``entry`` through timed.py; with ``expect``, watch from outside until served."""
        timings = WORK / f"timings-{time.time_ns()}.json"
        run_env = {**os.environ, **(env or {})}
        if profile:
            run_env["BENCH_PROFILE"] = str(WORK / f"profile-{what.replace(' ', '_')}.pstats")
        before = workers(self.sb)
        watch = ServedWatch(self.sb, expect or (lambda: None))
        with watch if expect else contextlib.nullcontext(watch):
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
            "timeline": raw.get("timeline", []),
        }
        if watch.after is not None:
            result["served_after_seconds"] = round(watch.after, 3)
        if not done.ok:
            result["error"] = first_line(done.stderr + done.stdout, "certbot-epages",
                                         "deploy-hook")[:2000]
        elif wait_reload and not summary["unchanged"]:
            result["new_workers_after_seconds"] = round(settle(self.sb, before), 3)
        phases = result["phases"]
        log(f"  {what} ({self.n} shops, {self.mode}): {done.seconds:.2f}s, "
            f"{summary['bytes_sent']} bytes, {done.maxrss_kb // 1024} MiB; "
            + ", ".join(f"{k} {v['max']:.2f}" for k, v in phases.items() if v["max"] >= 0.05)
            + ("" if done.ok else " FAILED: " + result["error"][:300]))
        return result

    def deploy(self, *args: str, profile: bool = False,
               watch: list[str] | None = None) -> dict[str, Any]:
        """One timed ``certbot-epages deploy``; ``watch``: names to see served from outside."""
        expected = self.expected(watch) if watch else None
        return self._timed(f"deploy {' '.join(args)}",
                           ["cli", "--config", str(self.config), "deploy", *args],
                           profile=profile, expect=(lambda: expected) if watch else None)

    def hook(self, domain: str, profile: bool = False) -> dict[str, Any]:
        """The deploy hook for one renewed lineage, as certbot runs it."""
        live = self.certbot_dir / "live" / domain
        env = {"CERTBOT_EPAGES_CONFIG": str(self.config), "RENEWED_LINEAGE": str(live),
               "RENEWED_DOMAINS": f"{domain} www.{domain}"}
        expected = self.expected([domain, f"www.{domain}"])
        return self._timed("deploy-hook", ["hook"], env, profile=profile,
                           expect=lambda: expected)

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

    def new_shop(self, domain: str, profile: bool = False) -> dict[str, Any]:
        """A tenant adds ``domain`` (+ www, HTTP-01): inventory change to HTTPS on both LBs.

        The clock starts once the new inventory is in place (what the path unit reacts to) and
        stops when both names serve the new certificate on both load balancers.
        """
        env = self.sb.env()
        if not self.registered:
            done = run([str(BIN / "certbot"), "-c", str(self.certbot_ini), "register"],
                       env={**os.environ, **env}, timeout=120)
            if not done.ok:
                raise RuntimeError(f"certbot register failed: {done.stderr}")
            self.registered = True
        self.entries.append({"domain": domain, "aliases": [f"www.{domain}"],
                             "shop": "id-" + domain.split(".")[0], "template": "custom-domain",
                             "vars": {"upstream": self.sb.backend}})
        self.write_inventory()
        names = [domain, f"www.{domain}"]
        cert = self.certbot_dir / "live" / domain / "cert.pem"

        def expect() -> dict[str, str] | None:
            with contextlib.suppress(OSError, ValueError):  # certbot writes it meanwhile
                fingerprint = leaf_certificate(cert).fingerprint(hashes.SHA256()).hex()
                return dict.fromkeys(names, fingerprint)
            return None

        started = time.monotonic()
        result = self._timed(f"sync --domain {domain}",
                             ["cli", "--config", str(self.config), "sync", "--domain", domain],
                             env, profile=profile, wait_reload=False, expect=expect)
        if result["ok"] and cert.exists():
            self.fingerprints[domain] = leaf_certificate(cert).fingerprint(
                hashes.SHA256()).hex()
            with contextlib.suppress(TimeoutError):
                poll(f"{domain} to be served on both LBs",
                     lambda: True if not self.check(names) else None, 60)
            result["not_served"] = self.check(names)
        else:
            result["not_served"] = {name: "no certificate" for name in names}
        result["until_served_seconds"] = result.get(
            "served_after_seconds", round(time.monotonic() - started, 3))
        log(f"  new shop {domain}: HTTPS on both LBs after {result['until_served_seconds']}s"
            + (f", NOT served: {result['not_served']}" if result["not_served"] else ""))
        return result
