"""A deploy run: render, build a release per load balancer, go live everywhere or nowhere.

Phase 1, on every load balancer: rsync the release next to the live one (unchanged files
hard-linked) and run its ``test`` command against it. If any load balancer fails, the
candidates are removed again and nothing goes live anywhere. Phase 2, on each: switch
``current`` (rename of a symlink), ``reload``, and probe every changed name with a TLS
handshake; a load balancer whose reload or probe fails is switched back and reloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from certbot_epages import http01
from certbot_epages.config import Config, DeployConfig, LoadBalancerConfig
from certbot_epages.deploy import lineages, probe, push, release
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.render import (
    RenderError,
    TemplateSet,
    lb_cert_dir,
    render_site,
    site_filename,
)
from certbot_epages.errors import ConfigError, EpagesError
from certbot_epages.inventory import Inventory, Shop, load_inventory, validate_domain
from certbot_epages.resources import jinja_env

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK_TIMEOUT = 600.0


class DeployError(EpagesError):
    """The release did not go live (everywhere, or on the load balancers named)."""


@dataclass
class LbOutcome:
    """What happened on one load balancer."""

    name: str
    release: str
    live: str | None = None  # the release that served before
    changed: int = 0
    bytes_sent: int = 0
    probed: int = 0
    went_live: bool = False
    error: str | None = None


@dataclass
class Report:
    """The whole run: per load balancer, and the inventory entries that were skipped."""

    shops: int = 0
    skipped: list[str] = field(default_factory=list)
    lbs: list[LbOutcome] = field(default_factory=list)
    unchanged: bool = False  # nothing differed from the live releases: nothing was pushed

    def summary(self) -> str:
        """A few lines for people."""
        if self.unchanged:
            lines = [f"{self.shops} shop(s) checked: the live releases are up to date"]
        else:
            lines = [f"deployed {self.shops} shop(s)"]
        for lb in self.lbs:
            state = "live" if lb.went_live else f"NOT live: {lb.error}"
            lines.append(f"  {lb.name}: release {lb.release} {state} ({lb.changed} file(s) "
                         f"changed, {lb.bytes_sent} bytes sent, {lb.probed} name(s) probed)")
        lines.extend(f"  skipped: {s}" for s in self.skipped)
        return "\n".join(lines)


@dataclass(frozen=True)
class Entry:
    """A shop and the lineage whose certificate it is served with."""

    shop: Shop
    lineage: Lineage


class Deployer:
    """Deploys to every load balancer of ``settings.deploy``."""

    def __init__(self, settings: Config, *, say: Callable[[str], None] = print) -> None:
        if settings.deploy is None:
            raise ConfigError(f"{settings.source}: no 'deploy' section")
        if settings.inventory is None:
            raise ConfigError(f"{settings.source}: 'inventory' is not set; deploys need it")
        self.settings = settings
        self.deploy: DeployConfig = settings.deploy
        self.say = say
        self.templates = TemplateSet(self.deploy.templates)
        self.spool = self.deploy.spool
        self.acme_snippet = self._acme_snippet()

    # --- entry points ----------------------------------------------------------------------

    def lineages(self, renewed: Sequence[Lineage]) -> Report:
        """Ship the shops served by these (renewed) lineages; everything else stays as it is."""
        with self._locked():
            inventory = self._inventory()
            report = Report(skipped=[str(p) for p in inventory.problems])
            # The same rule as a full deploy: a shop is served by the lineage that covers it
            # best (its own before a wildcard), so a wildcard renewal moves no shop around.
            known = {lin.name: lin for lin in lineages.scan(self.deploy.certbot_dir)}
            known.update({lin.name: lin for lin in renewed})
            renewed_names = {lin.name for lin in renewed}
            entries: list[Entry] = []
            for shop in inventory.active():
                lineage = lineages.covering(shop, known.values())
                if lineage is not None and lineage.name in renewed_names:
                    entries.append(Entry(shop, lineage))
            for name in sorted(renewed_names - {e.lineage.name for e in entries}):
                report.skipped.append(f"lineage {name}: no active shop in the inventory uses it")
            return self._run(entries, inventory, full=False, report=report)

    def everything(self, *, force: bool = False, inventory: Inventory | None = None) -> Report:
        """Render the whole inventory: first deploys, template changes, removed shops.

        An active shop that cannot be deployed now (no certificate covers its names yet, its
        entry is invalid, its template fails) keeps the config it has: a full deploy only
        removes shops the inventory marks suspended or deleted, or no longer lists. Removing
        more than half of the sites needs ``force`` (a truncated inventory must not empty the
        load balancers). ``inventory`` is the list a caller already loaded (sync), so the plan
        and the deploy see the same shops.
        """
        with self._locked():
            inventory = self._inventory() if inventory is None else inventory
            report = Report(skipped=[str(p) for p in inventory.problems])
            known = lineages.scan(self.deploy.certbot_dir)
            entries = []
            keep = set()
            for shop in inventory.active():
                lineage = lineages.covering(shop, known)
                if lineage is None:
                    report.skipped.append(
                        f"{shop.domain}: no certificate in {self.deploy.certbot_dir}/live covers "
                        f"{', '.join(shop.server_names)} yet; its current config (if any) stays"
                    )
                    keep.add(site_filename(shop))
                    continue
                entries.append(Entry(shop, lineage))
            for problem in inventory.problems:
                try:
                    keep.add(validate_domain(problem.domain or "").replace("*", "_wildcard_")
                             + ".conf")
                except ValueError:
                    continue
            return self._run(entries, inventory, full=True, report=report, keep=keep,
                             force=force)

    # --- the run -----------------------------------------------------------------------------

    def _run(self, entries: list[Entry], inventory: Inventory, *, full: bool,
             report: Report, keep: set[str] | None = None, force: bool = False) -> Report:
        report.shops = len(entries)
        inactive = {site_filename(s) for s in inventory.shops if not s.is_active}
        # ssh's control sockets: a short private directory of this run (a socket path may have
        # at most 107 bytes, which a spool below a long path would exceed).
        control = Path(tempfile.mkdtemp(prefix="cbe-ssh-"))
        targets = [push.Target(lb, control) for lb in self.deploy.load_balancers]
        try:
            remote = self._prepare(targets)
            built = {}
            for lb in self.deploy.load_balancers:
                local = _local_live(self.spool / "lbs" / lb.name)
                local_id = local.name if local else None
                if not full and remote[lb.name] is not None and remote[lb.name] != local_id:
                    raise DeployError(
                        f"{lb.name} serves release {remote[lb.name]}, but the deploy state in "
                        f"{self.spool} says {local_id or 'nothing'}: a deploy of only some "
                        "shops would drop the others there; run 'certbot-epages deploy --all'"
                    )
                built[lb.name] = self._build(lb, entries, inactive, full, keep or set(), report)
            self._check_removals(built, force)
            if all(not b.changed and not b.removed for b in built.values()) and all(
                remote[name] is not None
                and remote[name] == (_local_live(self.spool / "lbs" / name) or Path()).name
                for name in built
            ):
                for rel in built.values():
                    shutil.rmtree(rel.path, ignore_errors=True)
                report.unchanged = True
                return report
            outcomes = self._phase1(targets, built, remote, report)
            self._phase2(targets, built, outcomes, entries)
        finally:
            for target in targets:
                target.close()
            shutil.rmtree(control, ignore_errors=True)
        failed = [o for o in report.lbs if not o.went_live]
        if failed:
            raise DeployError(
                "; ".join(f"{o.name}: {o.error}" for o in failed)
                + (" (the other load balancers are live with the new release)"
                   if len(failed) < len(report.lbs) else "")
            )
        return report

    def _prepare(self, targets: list[push.Target]) -> dict[str, str | None]:
        """Every load balancer's live release id; any that cannot be reached stops the run."""
        def prepare(target: push.Target) -> tuple[str, str | None, str | None]:
            try:
                return target.name, push.live_release(target), None
            except push.PushError as e:
                return target.name, None, str(e)

        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            results = list(pool.map(prepare, targets))
        errors = [f"{name}: {error}" for name, _, error in results if error]
        if errors:
            raise DeployError("nothing went live anywhere: " + "; ".join(errors))
        return {name: live for name, live, _ in results}

    def _check_removals(self, built: dict[str, release.Built], force: bool) -> None:
        for name, rel in built.items():
            old_sites = {f for f in rel.previous if f.startswith("sites/")}
            gone = {f for f in rel.removed if f.startswith("sites/")}
            if not force and len(gone) >= 2 and len(gone) * 2 > len(old_sites):
                for other in built.values():
                    shutil.rmtree(other.path, ignore_errors=True)
                raise DeployError(
                    f"{name}: this deploy would remove {len(gone)} of {len(old_sites)} sites; "
                    "if the inventory really dropped them, run 'certbot-epages deploy --all "
                    "--force'"
                )

    def _build(self, lb: LoadBalancerConfig, entries: list[Entry], inactive: set[str],
               full: bool, keep: set[str], report: Report) -> release.Built:
        base = self.spool / "lbs" / lb.name
        releases = base / "releases"
        releases.mkdir(parents=True, exist_ok=True)
        live = _local_live(base)
        previous_manifest = _manifest(live) if live else {}
        manifest = {} if full else {k: v for k, v in previous_manifest.items() if k not in inactive}
        files: dict[str, release.FileSpec] = {}
        rendered: list[Entry] = []
        for entry in entries:
            name = site_filename(entry.shop)
            try:
                text = render_site(
                    self.templates, entry.shop, lb_name=lb.name, lb_root=lb.root,
                    cert_dir=lb_cert_dir(lb.root, entry.lineage.name),
                    challenge_service=str(self.deploy.challenge_service or ""),
                    acme_challenge=self.acme_snippet, listen_address=lb.listen,
                )
            except RenderError as e:
                report.skipped.append(f"{lb.name}: {e}; its current config (if any) stays")
                keep = keep | {name}
                if not full:
                    continue
                continue
            files[f"sites/{name}"] = release.FileSpec(data=text.encode())
            manifest[name] = {"domain": entry.shop.domain, "lineage": entry.lineage.name,
                              "fingerprint": entry.lineage.fingerprint,
                              "names": list(entry.shop.server_names)}
            rendered.append(entry)
        for entry in {e.lineage.name: e for e in rendered}.values():
            certs = f"certs/{entry.lineage.name}"
            files[f"{certs}/fullchain.pem"] = release.FileSpec(source=entry.lineage.fullchain)
            files[f"{certs}/privkey.pem"] = release.FileSpec(source=entry.lineage.privkey,
                                                             mode=0o600)
        if full and live is not None:
            # What cannot be deployed now keeps what it has: its site and its certificate.
            for name in sorted(keep - set(manifest) - inactive):
                kept = previous_manifest.get(name)
                if kept is None or not (live / "sites" / name).is_file():
                    continue
                manifest[name] = kept
                files[f"sites/{name}"] = release.FileSpec(source=live / "sites" / name)
                certs = f"certs/{kept['lineage']}"
                for pem, mode in (("fullchain.pem", 0o644), ("privkey.pem", 0o600)):
                    if f"{certs}/{pem}" not in files and (live / certs / pem).is_file():
                        files[f"{certs}/{pem}"] = release.FileSpec(source=live / certs / pem,
                                                                   mode=mode)
        used = {m["lineage"] for m in manifest.values()}
        old_files = release.files_of(live) if live else set()
        drop = {f"sites/{n}" for n in inactive} | {
            f for f in old_files if f.startswith("certs/") and f.split("/")[1] not in used
        }
        files[MANIFEST] = release.FileSpec(data=json.dumps(manifest, indent=1,
                                                           sort_keys=True).encode())
        return release.build(releases, live, files, keep_previous_files=not full, drop=drop)

    def _phase1(self, targets: list[push.Target], built: dict[str, release.Built],
                remote: dict[str, str | None], report: Report) -> dict[str, LbOutcome]:
        def stage(target: push.Target) -> LbOutcome:
            rel = built[target.name]
            outcome = LbOutcome(target.name, rel.id, live=remote[target.name],
                                changed=len(rel.changed))
            try:
                outcome.bytes_sent = target.rsync(rel.path, rel.id, outcome.live)
                test = target.run(push.script_test(target.lb.root, rel.id, outcome.live,
                                                   target.lb.test))
                if test.status in (push.SWITCH_FAILED, push.RESTORE_FAILED):
                    outcome.error = (f"cannot switch {target.lb.root}/current for the test: "
                                     f"{test.output.strip()}")
                elif test.status != 0:
                    outcome.error = (f"'{' '.join(target.lb.test)}' failed on the candidate: "
                                     f"{test.output.strip()}")
            except push.PushError as e:
                outcome.error = str(e)
            return outcome

        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            outcomes = {o.name: o for o in pool.map(stage, targets)}
        report.lbs = list(outcomes.values())
        if any(o.error for o in outcomes.values()):
            for target in targets:
                with contextlib.suppress(push.PushError):
                    # Puts `current` back first, should a test have been cut off mid-way.
                    target.run(push.script_discard(target.lb.root, built[target.name].id,
                                                   remote[target.name]))
            for rel in built.values():
                shutil.rmtree(rel.path, ignore_errors=True)
            for o in outcomes.values():
                o.error = o.error or "not switched: another load balancer failed phase 1"
            raise DeployError(
                "nothing went live anywhere: "
                + "; ".join(f"{o.name}: {o.error}" for o in outcomes.values()
                            if o.error and not o.error.startswith("not switched"))
            )
        return outcomes

    def _phase2(self, targets: list[push.Target], built: dict[str, release.Built],
                outcomes: dict[str, LbOutcome], entries: list[Entry]) -> None:
        def go_live(target: push.Target) -> None:
            outcome, rel = outcomes[target.name], built[target.name]
            lb = target.lb
            expected = _expected(rel, entries)
            try:
                problem = self._switch_and_probe(target, rel, outcome, expected)
            except Exception as e:  # noqa: BLE001 - whatever broke, the old release goes back
                problem = f"{type(e).__name__}: {e}" if not isinstance(e, EpagesError) else str(e)
            if problem is not None:
                try:
                    back = target.run(push.script_roll_back(lb.root, outcome.live, lb.reload))
                    rolled = ("switched back and reloaded" if back.status == 0 else
                              f"switching back failed too: {back.output.strip()}")
                except push.PushError as e:
                    rolled = f"switching back failed too: {e}"
                outcome.error = f"{problem} ({rolled}; live: {outcome.live or 'no release'})"
                return
            outcome.went_live = True
            base = self.spool / "lbs" / lb.name
            try:
                _set_local_live(base, rel.id)
                protect = [rel.id, *([outcome.live] if outcome.live else [])]
                target.run(push.script_prune(lb.root, self.deploy.keep_releases, protect))
                release.prune(base / "releases", self.deploy.keep_releases, set(protect))
            except (OSError, push.PushError) as e:
                logger.warning("%s: live, but the bookkeeping after it failed: %s", lb.name, e)

        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            list(pool.map(go_live, targets))

    def _switch_and_probe(self, target: push.Target, rel: release.Built, outcome: LbOutcome,
                          expected: dict[str, str]) -> str | None:
        """Switch, reload, probe; the problem if any (the caller switches back)."""
        lb = target.lb
        done = target.run(push.script_go_live(lb.root, rel.id, lb.reload))
        if done.status == push.SWITCH_FAILED:
            return f"cannot switch {lb.root}/current: {done.output.strip()}"
        if done.status != 0:
            return f"'{' '.join(lb.reload)}' failed: {done.output.strip()}"
        if lb.probe is not None and expected:
            wrong = probe.wait_served(lb.probe, expected, self.deploy.probe_timeout)
            outcome.probed = len(expected)
            if wrong:
                return "probe of " + "; ".join(f"{n}: {why}" for n, why in wrong.items())
        return None

    # --- pieces ------------------------------------------------------------------------------

    def _inventory(self) -> Inventory:
        source = self.settings.inventory
        assert source is not None
        return load_inventory(source, templates=self.templates.names(),
                              safe_vars=self.templates.all_safe_vars())

    def _acme_snippet(self) -> str:
        http = self.settings.http01
        if http is not None and http.mode == "stateless":
            if not self.deploy.account_thumbprint:
                raise ConfigError(
                    f"{self.settings.source}: http01.mode is stateless, so deploy."
                    "account_thumbprint must be set ('certbot-epages http01-snippet' prints it)"
                )
            return http01.stateless_snippet(self.deploy.account_thumbprint)
        if self.deploy.challenge_service is None:
            return "# no HTTP-01 challenge service configured (deploy.challenge_service)\n"
        return jinja_env().get_template("nginx/acme-challenge-proxy.conf.j2").render(
            challenge_service=str(self.deploy.challenge_service)
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.spool / "deploy.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            announced = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DeployError(
                            f"another deploy has held {self.spool / 'deploy.lock'} for over "
                            f"{LOCK_TIMEOUT:g}s"
                        ) from None
                    if not announced:
                        self.say("waiting for another deploy to finish")
                        announced = True
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)


def _expected(rel: release.Built, entries: list[Entry]) -> dict[str, str]:
    """Names to probe after going live: every name of a shop whose site or certificate changed."""
    changed_certs = {p.split("/")[1] for p in rel.changed if p.startswith("certs/")}
    changed_sites = {p.split("/", 1)[1] for p in rel.changed if p.startswith("sites/")}
    out = {}
    for entry in entries:
        if site_filename(entry.shop) in changed_sites or entry.lineage.name in changed_certs:
            for name in entry.shop.server_names:
                out[name] = entry.lineage.fingerprint
    return out


def _local_live(base: Path) -> Path | None:
    link = base / "live"
    if not link.is_symlink():
        return None
    target = base / "releases" / os.readlink(link).rsplit("/", 1)[-1]
    return target if target.is_dir() else None


def _set_local_live(base: Path, release_id: str) -> None:
    tmp = base / ".live.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"releases/{release_id}")
    tmp.replace(base / "live")


def _manifest(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
