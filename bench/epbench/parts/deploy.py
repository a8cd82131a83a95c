"""Part 3: deploys in sites mode at 1,000 and 10,000 shops (one server block per shop)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from epages_testlib import make_lineage

from certbot_epages.deploy import hook as deploy_hook
from certbot_epages.deploy import lineages as deploy_lineages
from certbot_epages.deploy.probe import served_fingerprint
from certbot_epages.netaddr import HostPort
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox
from epbench.common import BIN, first_line, log, median, poll, run
from epbench.lbs import children, deploy_summary, master_pid, reset_lbs, rss_kb, settle, workers


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write an epages.yaml (mode 0600: it names key files)."""
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


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
        self.configs = {"default": write_config(base / "epages-default.yaml", data)}
        data["deploy"]["probe_timeout"] = PROBE_TIMEOUT
        self.configs["probe"] = write_config(base / "epages.yaml", data)
        for lb in data["deploy"]["load_balancers"]:
            lb.pop("probe", None)
        self.configs["noprobe"] = write_config(base / "epages-noprobe.yaml", data)

    def lineage(self, name: str, names: list[str]) -> None:
        """Write (or replace) a certbot-like lineage live/<name>/ signed by the fleet's CA."""
        make_lineage(self.certbot_dir, name, names, self.ca)

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

        poll("lb1's reload to take effect", effective, 300)
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
                may_run: Callable[[float], bool], smallest: bool) -> dict[str, Any]:
    """Part 3 for one fleet size: ``runs`` first deploys, ``rounds`` of everything else.

    The naive full deploy runs only if ``may_run(its estimate)``.
    """
    log(f"deploy: {size} shops, {runs} first deploy(s), {rounds} round(s) of the rest")
    fleet = Fleet(sb, size, sb.directory / f"d{size}")  # short: ssh ControlPath
    out: dict[str, Any] = {"shops": size, "runs": runs, "rounds": rounds,
                           "lineages": 2 + len(fleet.deferred), "riders": size - 101}
    probed = []
    if smallest:  # as an operator would: probes on, the default timeout
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
    if smallest:
        out["probe_cost"] = probe_cost(sb, [f"s{i:05d}.platform.test" for i in range(50)])
    shutil.rmtree(fleet.base, ignore_errors=True)
    return out


DEPLOY_SIZES = (1000, 10000)
QUICK_DEPLOY_SIZES = (300, 600)
PROBE_TIMEOUT = 300  # deploy.probe_timeout for the measured deploys: wait, never roll back


def default_probe_timeout() -> float:
    """The product's default deploy.probe_timeout."""
    from certbot_epages.config import DeployConfig

    return float(DeployConfig.__dataclass_fields__["probe_timeout"].default)  # type: ignore


# ------------------------------------------------------------------------------ part 4
