"""A deploy run: read what every load balancer serves, decide, build, go live everywhere or nowhere.

Every run starts from the truth: the release each load balancer's ``current`` points to and
its manifest, copied into the local spool when the spool lacks it or disagrees. The decisions
(:mod:`.decide`) build on that, never on the deploy host's memory. Phase 1, on every load
balancer: rsync the release next to the live one (unchanged files hard-linked) and run its
``test`` command against it. If any load balancer fails, the candidates are removed again and
nothing goes live anywhere. Phase 2, on each: switch ``current``, ``reload``, and probe every
changed name with a TLS handshake, and the release marker when nginx's config changed; a load
balancer whose reload or probe fails is switched back and reloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import socket
import ssl
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from certbot_epages import http01, ownership
from certbot_epages.config import Config, DeployConfig, LoadBalancerConfig
from certbot_epages.deploy import (
    builder,
    decide,
    lineages,
    manifest_cache,
    marker,
    probe,
    push,
    readback,
    release,
    scripts,
    shared,
)
from certbot_epages.deploy.certstore import CertStore
from certbot_epages.deploy.decide import Base, Composition, Selection
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import FILENAME as MANIFEST
from certbot_epages.deploy.manifest import Manifest, SiteRecord
from certbot_epages.deploy.render import (
    TemplateSet,
)
from certbot_epages.deploy.spool import Spool, control_dir, sha256_of
from certbot_epages.errors import ConfigError, EpagesError
from certbot_epages.inventory import Inventory, load_configured
from certbot_epages.resources import jinja_env

logger = logging.getLogger(__name__)


def _say(line: str) -> None:
    print(line, flush=True)  # a deploy waits at times: whoever reads stdout sees why at once


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
    """The whole run: per load balancer, and what was skipped, kept or dropped, and why."""

    shops: int = 0
    skipped: list[str] = field(default_factory=list)
    lbs: list[LbOutcome] = field(default_factory=list)
    unchanged: bool = False  # nothing differed from the live releases: nothing was pushed

    def note(self, line: str) -> None:
        """Add a line for the operator (once, however many load balancers say it)."""
        if line not in self.skipped:
            self.skipped.append(line)

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


@dataclass
class _Lb:
    """One load balancer during a run: its connection, what it serves, what it gets."""

    target: push.Target
    live: push.Live = push.Live(None)
    base: Base = Base(None, None)
    base_dir: Path | None = None  # the live release in the local spool
    stale_config: bool = False  # nginx runs something other than `current`
    built: release.Built | None = None
    comp: Composition | None = None
    generation: str | None = None
    marker: str | None = None
    push_versions: list[str] = field(default_factory=list)  # certificate versions to send
    connected: Future[None] | None = None  # its ssh connection, opening
    manifest: Manifest | None = None  # of the release built for it
    manifest_sha256: str | None = None  # of its bytes
    parsed: bool = False  # its live manifest was parsed, not read back from the spool's copy
    on_lb: frozenset[str] = frozenset()  # certificate versions it holds (workers' group)

    @property
    def lb(self) -> LoadBalancerConfig:  # noqa: D102
        return self.target.lb

    @property
    def name(self) -> str:  # noqa: D102
        return self.target.lb.name


class Deployer:
    """Deploys to every load balancer of ``settings.deploy``."""

    def __init__(self, settings: Config, *, say: Callable[[str], None] = _say) -> None:
        self.deploy: DeployConfig = settings.need_deploy()
        self.inventory_source = settings.need_inventory("deploys")
        self.settings = settings
        self.say = say
        self.templates = TemplateSet(self.deploy.templates)
        self.spool = Spool(self.deploy.spool)
        self.certs = CertStore(self.deploy.spool / "certs")  # shared mode
        self.acme_snippet = self._acme_snippet()
        self.rules = ownership.rules_for(settings)

    # --- entry points ----------------------------------------------------------------------

    def load_inventory(self) -> Inventory:
        """The inventory, fetched within the configured deadline (before any lock is taken)."""
        return load_configured(self.settings, self.templates, "deploys")

    def lineages(self, renewed: Sequence[Lineage], *, inventory: Inventory | None = None,
                 only: Collection[str] | None = None) -> Report:
        """Ship the shops served by these (renewed) lineages; everything else stays as it is.

        ``only``: render just these shops (domains) of those lineages (sync --domain); the
        lineages' other shops keep what they serve, with the lineage's new certificate.
        """
        with self._connecting() as lbs:
            inventory = self.load_inventory() if inventory is None else inventory
            with self.spool.locked(self.say):
                known = {lin.name: lin for lin in lineages.scan(self.deploy.certbot_dir,
                                                                self.spool.scanned)}
                known.update({lin.name: lin for lin in renewed})
                return self._run(lbs, inventory, list(known.values()),
                                 renewed={lin.name for lin in renewed}, force=False, only=only)

    def everything(self, *, force: bool = False, inventory: Inventory | None = None) -> Report:
        """Render the whole inventory: first deploys, template changes, removed shops, repairs.

        An active shop that cannot be deployed now (no certificate covers its names yet, its
        entry is invalid, its template fails) keeps what it serves: only the inventory removes
        a site. Removing more than half of the sites a load balancer serves needs ``force``.
        ``inventory`` is the list a caller already loaded (sync), so the plan and the deploy
        see the same shops.
        """
        with self._connecting() as lbs:
            inventory = self.load_inventory() if inventory is None else inventory
            with self.spool.locked(self.say):
                return self._run(lbs, inventory,
                                 lineages.scan(self.deploy.certbot_dir, self.spool.scanned),
                                 renewed=None, force=force)

    # --- the run -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connecting(self) -> Iterator[list[_Lb]]:
        """The load balancers, their ssh connections opening side by side from now on.

        Nothing is locked or read yet: the connections' key exchanges overlap with reading the
        inventory and waiting for the spool's lock.
        """
        with control_dir() as control, contextlib.ExitStack() as stack, \
                ThreadPoolExecutor(max_workers=len(self.deploy.load_balancers) or 1) as pool:
            lbs = [_Lb(push.Target(lb, control)) for lb in self.deploy.load_balancers]
            for lb in lbs:
                lb.connected = pool.submit(_connect, lb)
                stack.callback(lb.target.close)  # after the pool waited for the connection
            yield lbs

    def _run(self, lbs: list[_Lb], inventory: Inventory, known: list[Lineage], *,
             renewed: set[str] | None, force: bool,
             only: Collection[str] | None = None) -> Report:
        report = Report()
        for problem in inventory.problems:
            report.note(str(problem))
        owner = (f"{socket.gethostname()} pid {os.getpid()} since "
                 f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} run {secrets.token_hex(4)}")
        with contextlib.ExitStack() as stack:
            try:
                self._lock(lbs, owner, stack)
            except push.PushError as e:
                raise DeployError(f"nothing went live anywhere: {e}") from None
            self._read_truth(lbs, report)
            # Who may have which name, against what every load balancer records.
            resolution = ownership.resolve(inventory, [lb.base.known.claims for lb in lbs],
                                           self.rules)
            selection = decide.select(resolution, known, renewed=renewed, only=only,
                                      certbot_dir=str(self.deploy.certbot_dir))
            report.shops = len(selection.candidates)
            for line in selection.notes:
                report.note(line)
            with ThreadPoolExecutor(max_workers=len(lbs) or 1) as stager:
                # A changed load balancer's phase 1 (nothing goes live) runs while the next
                # one's release is built.
                staging: dict[str, Future[LbOutcome]] = {}
                try:
                    for lb in lbs:
                        self._build(lb, selection, force, report)
                        if _changed(lb):
                            staging[lb.name] = stager.submit(self._stage, lb)
                    if not staging:
                        return self._unchanged(lbs, report)
                    for lb in lbs:  # an unchanged one goes on the new release with the others
                        if lb.name not in staging:
                            staging[lb.name] = stager.submit(self._stage, lb)
                    report.lbs = [staging[lb.name].result() for lb in lbs]
                except BaseException:  # a build failed, or the run was cut off: nothing stays
                    self._discard([lb for lb in lbs if lb.name in staging], staging)
                    for lb in lbs:
                        if lb.built is not None:
                            shutil.rmtree(lb.built.path, ignore_errors=True)
                    raise
            self._phase1(lbs, report)
            self._phase2(lbs, report)
        if self.deploy.mode == "shared":
            self._prune_staged()
        failed = [o for o in report.lbs if not o.went_live]
        if failed:
            raise DeployError(
                "; ".join(f"{o.name}: {o.error}" for o in failed)
                + (" (the other load balancers are live with the new release)"
                   if len(failed) < len(report.lbs) else "")
            )
        return report

    def _unchanged(self, lbs: list[_Lb], report: Report) -> Report:
        """Nothing differs from what every load balancer serves: nothing is pushed."""
        for lb in lbs:
            assert lb.built is not None
            shutil.rmtree(lb.built.path, ignore_errors=True)
            if lb.parsed and lb.base.manifest is not None and lb.live.manifest_sha256:
                manifest_cache.store(self.spool.parsed(lb.name), lb.live.manifest_sha256,
                                     lb.base.manifest)
        report.unchanged = True
        return report

    def _lock(self, lbs: list[_Lb], owner: str, stack: contextlib.ExitStack) -> None:
        """Take every load balancer's deploy lock, for as long as ``stack`` lasts.

        First all at once without waiting (the common case: nobody else deploys); if any is
        taken, those held are let go and the locks are taken one at a time in a fixed order,
        waiting, so two deploy hosts never hold one each while waiting for the other's.
        """
        shared_mode = self.deploy.mode == "shared"

        def lock(lb: _Lb, wait: bool) -> contextlib.AbstractContextManager[None] | None:
            assert lb.connected is not None
            lb.connected.result()
            # In shared mode the lock's session lists the certificate versions of the
            # workers' group; in sites mode any (a release of shared mode may be live).
            held = lb.target.locked(owner, scripts.STEP_LOCK_TIMEOUT, self.say,
                                    group=lb.lb.worker_group if shared_mode else None,
                                    wait=wait)
            try:
                held.__enter__()
            except push.LockBusy:
                return None
            return held

        with contextlib.ExitStack() as tried:  # lets go of what the tries took, unless all
            pool = ThreadPoolExecutor(max_workers=len(lbs) or 1)
            tries = [pool.submit(lock, lb, False) for lb in lbs]
            try:
                pool.shutdown(wait=True)
            finally:
                pool.shutdown(wait=True)  # cut off while waiting: the tries still end first
                for attempt in tries:
                    got = attempt.result() if attempt.exception() is None else None
                    if got is not None:
                        tried.push(got)
            failed = next((t.exception() for t in tries if t.exception() is not None), None)
            if failed is not None:
                raise failed
            if all(t.result() is not None for t in tries):
                stack.enter_context(tried.pop_all())
                return
        # Another deploy holds one: those held were let go; now wait for each in turn.
        for lb in sorted(lbs, key=lambda x: (x.lb.ssh, x.lb.root)):
            got = lock(lb, True)
            assert got is not None
            stack.push(got)

    def _read_truth(self, lbs: list[_Lb], report: Report) -> None:
        """Read what every load balancer serves and mirror it into the spool.

        Any load balancer that cannot be reached stops the run before anything is built.
        """
        shared_mode = self.deploy.mode == "shared"

        def read(lb: _Lb) -> str | None:
            try:
                truth = lb.target.truth()  # read by the session that took the lock
                lb.live = truth.live
                self._mirror(lb, report)
                self._check_running_generation(lb, report)
                if shared_mode or lb.base.known.mode == "shared":  # sites mode: what it holds
                    lb.on_lb = truth.versions
            except (push.PushError, OSError) as e:
                return f"{lb.name}: {e}"
            return None

        with ThreadPoolExecutor(max_workers=len(lbs) or 1) as pool:
            errors = [e for e in pool.map(read, lbs) if e]
        if errors:
            raise DeployError("nothing went live anywhere: " + "; ".join(errors))
        first = next((lb.base.manifest for lb in lbs if lb.base.manifest is not None), None)
        for lb in lbs:
            if lb.base.manifest is not None and first is not None \
                    and lb.base.manifest is not first:
                lb.base = replace(
                    lb.base, manifest=manifest_cache.shared_records(lb.base.manifest, first))
        divergence = decide.describe_divergence({lb.name: lb.base for lb in lbs})
        if divergence:
            report.note(divergence)
            self.say(divergence)

    def _mirror(self, lb: _Lb, report: Report) -> None:
        """Make the spool's copy of the live release equal to the load balancer's."""
        name, live = lb.name, lb.live
        self.spool.remove_unfinished(name)
        if live.release is None:
            self.spool.set_live(name, None)
            return
        if not live.exists:
            lb.base = Base(live.release, None, f"current points at release {live.release}, "
                           "which is missing: what nginx serves from memory is unknown",
                           missing=True)
            report.note(f"{name}: {lb.base.problem}")
            self.spool.set_live(name, None)
            return
        local = self.spool.releases(name) / live.release
        cached = self.spool.live(name)
        if live.manifest_sha256 is None or sha256_of(local / MANIFEST) != live.manifest_sha256:
            if cached is None or cached.name != live.release:
                report.note(f"{name}: the deploy state in {self.spool.root} did not match the "
                            f"live release {live.release}; copied it from the load balancer")
            lb.target.pull(live.release, local, cached)
        self.spool.set_live(name, live.release)
        lb.base_dir = local
        kept = manifest_cache.load(self.spool.parsed(name), live.manifest_sha256)
        if kept is not None:
            lb.base = Base(live.release, kept)
        else:
            lb.base = readback.base_of(live.release, local)
            lb.parsed = lb.base.manifest is not None and live.manifest_sha256 is not None
        if lb.base.problem is not None:
            report.note(f"{name}: {lb.base.problem}")

    def _check_running_generation(self, lb: _Lb, report: Report) -> None:
        """Check that nginx runs the live release's config.

        A killed deploy may have switched ``current`` without the reload.
        """
        manifest = lb.base.manifest
        if lb.lb.probe is None or manifest is None or manifest.marker is None:
            return
        try:
            served = probe.served_fingerprint(lb.lb.probe, marker.NAME)
        except (OSError, ssl.SSLError) as e:
            report.note(f"{lb.name}: cannot ask {lb.lb.probe} which release it runs: {e}")
            return
        if served != manifest.marker:
            lb.stale_config = True
            report.note(f"{lb.name}: nginx does not run the config of the live release "
                        f"{lb.live.release} (an interrupted deploy?); this run reloads it")

    def _build(self, lb: _Lb, selection: Selection, force: bool, report: Report) -> None:
        target = builder.Target(lb.name, lb.lb.root, lb.lb.listen, lb.base, lb.base_dir,
                                lb.on_lb)
        settings = builder.Settings(
            self.templates, self.certs, self.deploy.mode,
            str(self.deploy.challenge_service or ""), self.acme_snippet, selection.known)
        build = builder.Builder(settings, target, report.note)
        rendered, failures = build.render(selection)
        try:
            comp = decide.compose(lb.base, selection, failures=failures)
        except decide.DecisionError as e:
            raise DeployError(f"{lb.name}: {e}") from None
        for line in comp.notes:
            report.note(f"{lb.name}: {line}")
        lb.comp = comp
        try:
            out = build.build(comp, rendered)
        except builder.BuildError as e:
            raise DeployError(str(e)) from None
        lb.generation, lb.marker, lb.push_versions = out.generation, out.marker, out.push
        lb.manifest = out.manifest
        lb.manifest_sha256 = hashlib.sha256(out.files[MANIFEST].read()).hexdigest()
        problem = decide.removal_problem(lb.base, comp, force=force)
        if problem is not None:
            raise DeployError(f"{lb.name}: {problem}")
        releases = self.spool.releases(lb.name)
        releases.mkdir(parents=True, exist_ok=True)
        lb.built = release.build(releases, lb.base_dir, out.files, keep_previous_files=False)

    def _keep_parsed(self, lb: _Lb) -> None:
        """Keep the manifest that went live parsed, for the next run (see manifest_cache)."""
        if lb.manifest is not None and lb.manifest_sha256 is not None:
            manifest_cache.store(self.spool.parsed(lb.name), lb.manifest_sha256, lb.manifest)

    def _prune_staged(self) -> None:
        """Drop staged certificates that no release kept in the spool uses."""
        keep: set[str] = set()
        for lb in self.deploy.load_balancers:
            releases = self.spool.releases(lb.name)
            if releases.is_dir():
                for rel in releases.iterdir():
                    keep |= readback.versions_of(rel)
        with contextlib.suppress(OSError):
            self.certs.prune(keep)

    def _stage(self, lb: _Lb) -> LbOutcome:
        """Phase 1 on one load balancer: send the release, test it; the outcome says how."""
        rel = lb.built
        assert rel is not None
        outcome = LbOutcome(lb.name, rel.id, live=lb.live.release, changed=len(rel.changed))
        root = lb.lb.root
        try:
            with ThreadPoolExecutor(max_workers=2) as both:  # two channels of one ssh
                certs = both.submit(lb.target.push_certs, self.certs.root,
                                    lb.push_versions, lb.lb.worker_group) \
                    if lb.push_versions else None
                tree = both.submit(lb.target.rsync, rel.path, rel.id, lb.base.release)
                outcome.bytes_sent += tree.result() + (certs.result() if certs else 0)
            group_of = (f"{root}/certs/{lb.push_versions[0]}/privkey.pem",
                        lb.lb.worker_group) if lb.push_versions else None
            test = lb.target.step(scripts.script_test(root, rel.id, outcome.live, lb.lb.test,
                                                      group_of))
            if test.status == scripts.WRONG_GROUP:
                outcome.error = push.wrong_group(root, test.output.strip(), lb.lb.worker_group)
            elif test.status in (scripts.SWITCH_FAILED, scripts.RESTORE_FAILED,
                                 scripts.STEP_BUSY, scripts.NOT_OURS):
                outcome.error = (f"cannot switch {root}/current for the test: "
                                 f"{test.output.strip()}")
            elif test.status != 0:
                outcome.error = (f"'{' '.join(lb.lb.test)}' failed on the candidate: "
                                 f"{test.output.strip()}")
        except push.PushError as e:
            outcome.error = str(e)
        return outcome

    def _discard(self, lbs: list[_Lb], staging: Mapping[str, Future[LbOutcome]]) -> None:
        """Remove the candidates of these load balancers again (their phase 1 ends first)."""
        for lb in lbs:
            assert lb.built is not None
            if lb.name in staging:
                with contextlib.suppress(Exception):
                    staging[lb.name].result()
            with contextlib.suppress(push.PushError):
                # Puts `current` back first, should a test have been cut off mid-way.
                lb.target.step(scripts.script_discard(lb.lb.root, lb.built.id, lb.live.release))
            shutil.rmtree(lb.built.path, ignore_errors=True)

    def _phase1(self, lbs: list[_Lb], report: Report) -> None:
        """Go on only if phase 1 passed everywhere; else remove every candidate again."""
        outcomes = report.lbs
        if not any(o.error for o in outcomes):
            return
        self._discard(lbs, {})
        for o in outcomes:
            o.error = o.error or "not switched: another load balancer failed phase 1"
        raise DeployError(
            "nothing went live anywhere: "
            + "; ".join(f"{o.name}: {o.error}" for o in outcomes
                        if o.error and not o.error.startswith("not switched"))
        )

    def _phase2(self, lbs: list[_Lb], report: Report) -> None:
        outcomes = {o.name: o for o in report.lbs}

        def go_live(lb: _Lb) -> None:
            outcome = outcomes[lb.name]
            try:
                problem = self._switch_and_probe(lb, outcome)
            except Exception as e:  # noqa: BLE001 - whatever broke, the old release goes back
                problem = f"{type(e).__name__}: {e}" if not isinstance(e, EpagesError) else str(e)
            if problem is not None:
                try:
                    back = lb.target.step(scripts.script_roll_back(lb.lb.root, outcome.live,
                                                               lb.lb.reload))
                    rolled = ("switched back and reloaded" if back.status == 0 else
                              f"switching back failed too: {back.output.strip()}")
                except push.PushError as e:
                    rolled = f"switching back failed too: {e}"
                outcome.error = f"{problem} ({rolled}; live: {outcome.live or 'no release'})"
                return
            outcome.went_live = True
            try:
                self.spool.set_live(lb.name, outcome.release)
                self._keep_parsed(lb)
                protect = [outcome.release, *([outcome.live] if outcome.live else [])]
                lb.target.step(scripts.script_prune(lb.lb.root, self.deploy.keep_releases, protect))
                release.prune(self.spool.releases(lb.name), self.deploy.keep_releases,
                              set(protect))
                if lb.on_lb or lb.push_versions:
                    lb.target.step(scripts.script_prune_certs(lb.lb.root))
            except (OSError, push.PushError) as e:
                logger.warning("%s: live, but the bookkeeping after it failed: %s", lb.name, e)

        with ThreadPoolExecutor(max_workers=len(lbs) or 1) as pool:
            list(pool.map(go_live, lbs))

    def _switch_and_probe(self, lb: _Lb, outcome: LbOutcome) -> str | None:
        """Switch, reload, probe; the problem if any (the caller switches back)."""
        root = lb.lb.root
        done = lb.target.step(scripts.script_go_live(root, outcome.release, lb.lb.reload))
        if done.status in (scripts.SWITCH_FAILED, scripts.STEP_BUSY, scripts.NOT_OURS):
            return f"cannot switch {root}/current: {done.output.strip()}"
        if done.status != 0:
            return f"'{' '.join(lb.lb.reload)}' failed: {done.output.strip()}"
        expected = _expected(lb)
        if lb.lb.probe is not None and expected:
            wrong = probe.wait_served(lb.lb.probe, expected, self.deploy.probe_timeout)
            outcome.probed = len(expected)
            if wrong:
                return "probe of " + "; ".join(
                    f"{'the release marker ' + n if n == marker.NAME else n}: {why}"
                    for n, why in wrong.items())
        return None

    # --- pieces ------------------------------------------------------------------------------

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


def _changed(lb: _Lb) -> bool:
    """Whether a load balancer needs its new release (else it serves what it was built to)."""
    assert lb.built is not None
    return bool(lb.built.changed or lb.built.removed or lb.base.release is None
                or lb.stale_config or lb.push_versions)


def _connect(lb: _Lb) -> None:
    """Open the load balancer's shared ssh connection (PushError naming it if it cannot)."""
    try:
        lb.target.run("true")
    except push.PushError as e:
        raise push.PushError(f"{lb.name}: {e}") from None


def _expected(lb: _Lb) -> dict[str, str]:
    """Names to probe after going live, and the fingerprint each must serve.

    Every name whose site or certificate changed, and the release marker when nginx's config
    changed (or nginx ran a stale one). In shared mode a name's certificate comes from the
    map, so a name is changed when its record is; riders are probed through their wildcard.
    """
    rel, comp = lb.built, lb.comp
    assert rel is not None and comp is not None
    changed = rel.changed
    before = lb.base.manifest
    in_map = f"sites/{shared.SITE}" in changed or f"sites/{shared.SITE}" in rel.files
    old = before.sites if before is not None and before.mode == "shared" else {}
    out = {}
    wildcards = _wildcards(comp)
    for site, record in comp.sites.items():
        if in_map and f"sites/{site}" not in rel.files:
            was = old.get(site)
            if was is None or was.fingerprint != record.fingerprint:
                out.update(dict.fromkeys(_probe_names(record, wildcards), record.fingerprint))
        elif (f"sites/{site}" in changed
                or f"certs/{record.lineage}/fullchain.pem" in changed
                or f"certs/{record.lineage}/privkey.pem" in changed
                or (in_map and before is not None and before.mode != "shared")):
            out.update(dict.fromkeys(record.names, record.fingerprint))
    generation = before.generation if before is not None else None
    if lb.marker is not None and (lb.generation != generation or lb.stale_config
                                  or any(p.startswith("sites/") for p in rel.removed)):
        out[marker.NAME] = lb.marker
    return out


def _probe_names(record: SiteRecord, wildcards: Mapping[str, set[str]]) -> list[str]:
    """A record's names that have a line of their own in the certificate map.

    ``wildcards``: per lineage, the bases of the wildcards its sites serve (riders of one of
    them are probed through it).
    """
    bases = wildcards.get(record.lineage, set())
    return [n for n in record.names
            if n.startswith("*.") or n.split(".", 1)[-1] not in bases]


def _wildcards(comp: Composition) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for record in comp.sites.values():
        for name in record.names:
            if name.startswith("*."):
                out.setdefault(record.lineage, set()).add(name[2:])
    return out


__all__ = ["DeployError", "Deployer", "LbOutcome", "Report"]
