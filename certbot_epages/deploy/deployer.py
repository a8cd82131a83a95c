"""A deploy run: read what every load balancer serves, decide, build, go live everywhere or nowhere.

Every run starts from the truth: the release each load balancer's ``current`` points to and
its manifest, copied into the local spool when the spool lacks it or disagrees. The decisions
(:mod:`.decide`) build on that, never on the deploy host's memory. Phase 1, on every load
balancer: rsync the release next to the live one (unchanged files hard-linked) and run its
``test`` command against it. If any load balancer fails, the candidates are removed again and
nothing goes live anywhere. Phase 2, on each: switch ``current``, ``reload``, and probe every
changed name with a TLS handshake, and the release marker when nginx's config changed; a load
balancer whose reload or probe fails is switched back and reloaded.

In shared mode a renewal whose inputs are those of the last clean full deploy patches the live
releases instead of building them (:mod:`.patch`); phase 1 and phase 2 are the same.
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
    patch,
    probe,
    push,
    readback,
    release,
    scripts,
    shared,
)
from certbot_epages.deploy.certstore import CertificateError, CertStore
from certbot_epages.deploy.decide import Base, Composition, Selection
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import FILENAME as MANIFEST
from certbot_epages.deploy.manifest import Manifest
from certbot_epages.deploy.render import (
    TemplateSet,
)
from certbot_epages.deploy.spool import Spool, control_dir, sha256_of
from certbot_epages.errors import ConfigError, EpagesError
from certbot_epages.inventory import Inventory, Source, read_configured
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
    patched: int = 0  # lineages shipped by patching the live releases (shared mode)

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
        if self.patched:
            lines[0] += (f" (renewal fast path: {self.patched} lineage(s) patched into the live "
                         "releases)")
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
    truth: push.Truth | None = None  # as the session holding its lock read it
    expected: dict[str, str] | None = None  # names to probe, if not those _expected() says
    sites: dict[str, str] | None = None  # a patched release's site files' checksums

    @property
    def lb(self) -> LoadBalancerConfig:  # noqa: D102
        return self.target.lb

    @property
    def name(self) -> str:  # noqa: D102
        return self.target.lb.name


@dataclass
class _PatchPlan:
    """A renewal on the fast path: the base, what changes, each load balancer's build."""

    base: patch.PatchBase
    renewed: list[Lineage]
    changes: list[tuple[Lineage, patch.LineageInfo]]
    dirs: dict[str, Path]  # the spool's copy of each load balancer's live release
    builds: dict[str, Future[tuple[patch.Patched, release.Built]]]  # until sent or removed


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
        return self.read_inventory().inventory()

    def read_inventory(self) -> Source:
        """The inventory's bytes, fetched within the configured deadline, not yet checked."""
        return read_configured(self.settings, self.templates, "deploys")

    def lineages(self, renewed: Sequence[Lineage], *, inventory: Inventory | None = None,
                 only: Collection[str] | None = None) -> Report:
        """Ship the shops served by these (renewed) lineages; everything else stays as it is.

        ``only``: render just these shops (domains) of those lineages (sync --domain); the
        lineages' other shops keep what they serve, with the lineage's new certificate.
        """
        with self._connecting() as lbs:
            source: Inventory | Source
            base: patch.PatchBase | None = None
            if inventory is None:
                source = self.read_inventory()
                base = self._patch_base(source) if only is None else None
                if base is None:
                    source.inventory()  # checked before any lock is taken
            else:
                source = inventory

            def known() -> list[Lineage]:
                found = {lin.name: lin for lin in lineages.scan(self.deploy.certbot_dir,
                                                                self.spool.scanned)}
                found.update({lin.name: lin for lin in renewed})
                return list(found.values())

            with self.spool.locked(self.say):
                return self._run(lbs, source, known, renewed={lin.name for lin in renewed},
                                 force=False, only=only,
                                 patch_from=None if base is None else (
                                     base, list({lin.name: lin for lin in renewed}.values())))

    def everything(self, *, force: bool = False, inventory: Inventory | None = None) -> Report:
        """Render the whole inventory: first deploys, template changes, removed shops, repairs.

        An active shop that cannot be deployed now (no certificate covers its names yet, its
        entry is invalid, its template fails) keeps what it serves: only the inventory removes
        a site. Removing more than half of the sites a load balancer serves needs ``force``.
        ``inventory`` is the list a caller already loaded (sync), so the plan and the deploy
        see the same shops.
        """
        with self._connecting() as lbs:
            source = self.read_inventory() if inventory is None else inventory
            if isinstance(source, Source):
                source.inventory()  # checked before any lock is taken
            with self.spool.locked(self.say):
                return self._run(
                    lbs, source,
                    lambda: lineages.scan(self.deploy.certbot_dir, self.spool.scanned),
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

    def _run(self, lbs: list[_Lb], source: Inventory | Source,
             known: Callable[[], list[Lineage]], *, renewed: set[str] | None, force: bool,
             only: Collection[str] | None = None,
             patch_from: tuple[patch.PatchBase, list[Lineage]] | None = None) -> Report:
        owner = (f"{socket.gethostname()} pid {os.getpid()} since "
                 f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} run {secrets.token_hex(4)}")
        with contextlib.ExitStack() as stack:
            plan = None
            if patch_from is not None:
                # The patched releases are built while the locks are taken and the load
                # balancers say what they serve; the checks of that come before any is used.
                building = stack.enter_context(ThreadPoolExecutor(max_workers=len(lbs) or 1))
                plan = self._patch_start(lbs, *patch_from)
                if plan is not None:
                    stack.callback(self._patch_abandon, plan)  # before any build can start
                    self._patch_submit(lbs, plan, building)
            try:
                self._lock(lbs, owner, stack)
            except push.PushError as e:
                raise DeployError(f"nothing went live anywhere: {e}") from None
            self._take_truths(lbs)
            if plan is not None:
                patched = self._patch(lbs, plan)
                if patched is not None:
                    return patched
                self._patch_abandon(plan)
            inventory = source if isinstance(source, Inventory) else source.inventory()
            # What the release is built from, taken before it is (see _keep_patch_base).
            inputs = None
            if renewed is None and isinstance(source, Source) and self.deploy.mode == "shared":
                self.certs.default()  # made now if need be, as the build would
                inputs = self._inputs(source)
            report = Report()
            for problem in inventory.problems:
                report.note(str(problem))
            self._read_truth(lbs, report)
            # Who may have which name, against what every load balancer records.
            resolution = ownership.resolve(inventory, [lb.base.known.claims for lb in lbs],
                                           self.rules)
            selection = decide.select(resolution, known(), renewed=renewed, only=only,
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
                        clean = self._clean(lbs, selection, report)
                        # The unsent releases go first: they hard-link the live files, and
                        # removing a link moves the change time the base records.
                        unchanged = self._unchanged(lbs, report)
                        if clean and isinstance(source, Source):
                            self._keep_patch_base(lbs, selection, source, inputs, {
                                lb.name: (lb.live.release, lb.base_dir, lb.live.manifest_sha256)
                                for lb in lbs})
                        return unchanged
                    for lb in lbs:  # an unchanged one goes on the new release with the others
                        if lb.name not in staging:
                            staging[lb.name] = stager.submit(self._stage, lb)
                    report.lbs = [staging[lb.name].result() for lb in lbs]
                except BaseException:  # a build failed, or the run was cut off: nothing stays
                    self._drop(lbs, staging)
                    raise
            self._phase1(lbs, report)
            self._phase2(lbs, report)
        if self.deploy.mode == "shared":
            self._prune_staged()
        if all(o.went_live for o in report.lbs) and isinstance(source, Source) \
                and self._clean(lbs, selection, report):
            self._keep_patch_base(lbs, selection, source, inputs, {
                o.name: (o.release, self.spool.releases(o.name) / o.release, lb.manifest_sha256)
                for o, lb in zip(report.lbs, lbs, strict=True)})
        return self._outcome(report)

    @staticmethod
    def _outcome(report: Report) -> Report:
        """The report of a run that went live somewhere; DeployError unless everywhere."""
        failed = [o for o in report.lbs if not o.went_live]
        if failed:
            raise DeployError(
                "; ".join(f"{o.name}: {o.error}" for o in failed)
                + (" (the other load balancers are live with the new release)"
                   if len(failed) < len(report.lbs) else "")
            )
        return report

    # --- shared mode's renewal fast path (see patch) -------------------------------------------

    def _inputs(self, source: Source) -> str:
        """The digest of everything a release is built from, but the shops' certificates."""
        deploy = self.deploy
        return patch.inputs_digest({
            "inventory": source.key,
            "templates": patch.tree_digest(self.templates.search_path),
            "mode": deploy.mode,
            "challenge_service": str(deploy.challenge_service or ""),
            "acme_snippet": self.acme_snippet,
            "certbot_dir": str(deploy.certbot_dir),
            "rules": repr(self.rules),
            "default": self.certs.current_default(),
            "lbs": [(lb.name, lb.root, lb.listen, lb.worker_group, lb.ssh)
                    for lb in deploy.load_balancers],
        })

    def _patch_base(self, source: Source) -> patch.PatchBase | None:
        """The kept base, if a renewal built from ``source`` may be patched onto it."""
        if self.deploy.mode != "shared":
            return None
        base = patch.load(self.spool.patch_base)
        if base is None:
            return None
        try:
            inputs = self._inputs(source)
        except (OSError, CertificateError) as e:
            logger.info("renewal fast path not taken: %s", e)
            return None
        if base.inputs != inputs:
            logger.info("renewal fast path not taken: the inventory, the templates or the "
                        "settings changed since the last clean deploy")
            return None
        return base

    def _patch_start(self, lbs: list[_Lb], base: patch.PatchBase,
                     renewed: list[Lineage]) -> _PatchPlan | None:
        """What a renewal would patch, from the spool alone; None: the full path must run.

        Only the spool is read (its lock is held): whether the load balancers serve what
        the builds start from is checked by :meth:`_patch_checks` once their locks are held.
        """
        try:
            if sorted(base.lbs) != sorted(lb.name for lb in lbs):
                raise patch.NoPatch("the load balancers changed since the last clean deploy")
            changes = base.changes(renewed)
            dirs = {}
            for lb in lbs:
                local = self.spool.live(lb.name)
                if local is None or local.name != base.lbs[lb.name].release:
                    raise patch.NoPatch(f"the spool has no copy of {lb.name}'s live release")
                dirs[lb.name] = local
        except patch.NoPatch as e:
            logger.info("renewal fast path not taken: %s", e)
            return None
        return _PatchPlan(base, renewed, changes, dirs, {})

    def _patch_submit(self, lbs: list[_Lb], plan: _PatchPlan, pool: ThreadPoolExecutor) -> None:
        """Start building each load balancer's patched release."""
        if plan.changes:
            for lb in lbs:
                plan.builds[lb.name] = pool.submit(self._patch_build, lb, plan.base,
                                                   plan.dirs[lb.name], plan.changes)

    @staticmethod
    def _patch_abandon(plan: _PatchPlan) -> None:
        """Remove the patched releases that no load balancer was sent, once each is built.

        Nothing waits here: a build still running removes its release when it ends (an
        interrupted run leaves none behind).
        """
        while plan.builds:
            _, build = plan.builds.popitem()
            build.add_done_callback(_remove_built)

    def _patch(self, lbs: list[_Lb], plan: _PatchPlan) -> Report | None:
        """Ship a renewal by patching the live releases; None: the full path must run.

        Nothing is pushed before every check passed; from then on it is a deploy like any
        other (phase 1 everywhere, then phase 2).
        """
        base, changes = plan.base, plan.changes
        try:
            missing = self._patch_checks(lbs, plan)
        except patch.NoPatch as e:
            logger.info("renewal fast path not taken: %s", e)
            return None
        report = Report(shops=sum(info.records for _, info in changes)
                        or sum(base.lineages[lin.name].records for lin in plan.renewed))
        if not changes:
            report.unchanged = True
            return report
        report.patched = len(changes)
        renewed_versions = [shared.cert_version(lin.name, lin.fingerprint) for lin, _ in changes]
        with ThreadPoolExecutor(max_workers=len(lbs) or 1) as stager:
            # Each load balancer's phase 1 starts as soon as its release is built.
            staging: dict[str, Future[LbOutcome]] = {}
            try:
                for lb in lbs:
                    out, lb.built = plan.builds[lb.name].result()
                    del plan.builds[lb.name]  # lb.built is removed with the candidates now
                    lb.generation, lb.marker, lb.sites = out.generation, out.marker, out.sites
                    lb.manifest_sha256 = out.manifest_sha256
                    lb.push_versions = [*missing[lb.name], *(
                        v for v in renewed_versions
                        if v not in lb.on_lb and v not in missing[lb.name])]
                    lb.expected = self._patch_expected(base.lbs[lb.name], changes, lb.marker)
                    staging[lb.name] = stager.submit(self._stage, lb)
                report.lbs = [staging[lb.name].result() for lb in lbs]
            except (patch.NoPatch, OSError) as e:
                logger.info("renewal fast path not taken: %s", e)
                self._drop(lbs, staging)
                for lb in lbs:
                    lb.built, lb.expected, lb.sites, lb.push_versions = None, None, None, []
                return None
            except BaseException:
                self._drop(lbs, staging)
                raise
        self._phase1(lbs, report)
        self._phase2(lbs, report)
        self._prune_staged()
        if all(o.went_live for o in report.lbs):
            fingerprints = (set(base.fingerprints) - {info.fingerprint for _, info in changes}
                            | {lineage.fingerprint for lineage, _ in changes})
            infos = dict(base.lineages)
            for lineage, info in changes:
                infos[lineage.name] = replace(info, fingerprint=lineage.fingerprint)
            states = {}
            try:
                for lb, outcome in zip(lbs, report.lbs, strict=True):
                    assert lb.manifest_sha256 and lb.generation and lb.marker and lb.sites
                    states[lb.name] = patch.LbState(
                        outcome.release, lb.manifest_sha256, lb.generation, lb.marker, lb.sites,
                        patch.file_stats(self.spool.releases(lb.name) / outcome.release))
            except OSError as e:  # live everywhere all the same: only the next renewal is slower
                logger.warning("no base for the renewal fast path: %s", e)
                patch.forget(self.spool.patch_base)
                return self._outcome(report)
            patch.store(self.spool.patch_base, patch.PatchBase(
                base.inputs, states, infos, base.contested, frozenset(fingerprints)))
        else:
            patch.forget(self.spool.patch_base)
        return self._outcome(report)

    def _patch_checks(self, lbs: list[_Lb], plan: _PatchPlan) -> dict[str, list[str]]:
        """NoPatch unless every load balancer serves the base; the versions each one lacks."""
        missing_on: dict[str, list[str]] = {}
        renewed_versions = {shared.cert_version(lin.name, info.fingerprint)
                            for lin, info in plan.changes}
        for lb in lbs:
            state, truth = plan.base.lbs[lb.name], lb.truth
            assert truth is not None
            live = truth.live
            if live.release != state.release or not live.exists \
                    or live.manifest_sha256 != state.manifest_sha256:
                raise patch.NoPatch(f"{lb.name} serves {live.release or 'nothing'}, not "
                                    f"{state.release} of the last clean deploy")
            if lb.lb.probe is not None:
                try:
                    served = probe.served_fingerprint(lb.lb.probe, marker.NAME)
                except (OSError, ssl.SSLError) as e:
                    raise patch.NoPatch(f"cannot ask {lb.lb.probe} which release it runs: "
                                        f"{e}") from None
                if served != state.marker:
                    raise patch.NoPatch(f"{lb.name}: nginx does not run the live release")
            local = plan.dirs[lb.name]
            # A version the load balancer lost (or its workers cannot read) is sent again, as
            # the full path does; one that is not here either is the full path's to recover.
            missing = sorted(readback.versions_of(local) - renewed_versions - truth.versions)
            for version in missing:
                if not self.certs.has(version):
                    raise patch.NoPatch(f"{lb.name} lacks the certificate {version} (or its "
                                        "workers cannot read it)")
            missing_on[lb.name] = missing
            lb.live, lb.on_lb, lb.base_dir = live, truth.versions, local
            lb.base = Base(live.release, None)
        for lineage, info in plan.changes:
            version = shared.cert_version(lineage.name, lineage.fingerprint)
            if all(version in lb.on_lb for lb in lbs) or self.certs.has(version):
                continue
            try:
                staged = self.certs.stage(lineage.name, lineage.fullchain.read_bytes(),
                                          lineage.privkey.read_bytes(), info.served)
            except (OSError, CertificateError) as e:
                raise patch.NoPatch(f"the certificate of {lineage.name}: {e}") from None
            if staged != version:
                raise patch.NoPatch(f"the certificate of {lineage.name} changed while read")
        return missing_on

    def _patch_build(self, lb: _Lb, base: patch.PatchBase, base_dir: Path,
                     changes: list[tuple[Lineage, patch.LineageInfo]],
                     ) -> tuple[patch.Patched, release.Built]:
        """Build one load balancer's patched release (see patch.patch); ``lb`` is only read."""
        out = patch.patch(base_dir, base.lbs[lb.name], base, lb.lb.root, changes)
        return out, release.build(self.spool.releases(lb.name), base_dir, out.files,
                                  keep_previous_files=False)

    @staticmethod
    def _patch_expected(state: patch.LbState, changes: list[tuple[Lineage, patch.LineageInfo]],
                        new_marker: str) -> dict[str, str]:
        """The names to probe after a patch, and the fingerprint each must be served with."""
        expected = {}
        for lineage, info in changes:
            expected.update(dict.fromkeys(info.probe, lineage.fingerprint))
        if new_marker != state.marker:
            expected[marker.NAME] = new_marker
        return expected

    def _clean(self, lbs: list[_Lb], selection: Selection, report: Report) -> bool:
        """Whether a full run shipped the inventory as it is: nothing noted, kept or refused."""
        return (self.deploy.mode == "shared" and selection.full and not report.skipped
                and not selection.unready and all(
                    lb.comp is not None and not lb.comp.kept and not lb.comp.notes
                    for lb in lbs))

    def _keep_patch_base(self, lbs: list[_Lb], selection: Selection, source: Source,
                         inputs: str | None,
                         served: Mapping[str, tuple[str | None, Path | None, str | None]]
                         ) -> None:
        """Keep what a renewal may patch (see patch): the releases now live, all clean.

        ``inputs``: their digest taken before the releases were built; a template or setting
        changed since then leaves no base.
        """
        try:
            if inputs is None or self._inputs(source) != inputs:
                raise patch.NoPatch("the templates or settings changed during the run")
            first = lbs[0]
            assert first.comp is not None
            sites = first.comp.sites
            if any(lb.comp is None or lb.comp.sites != sites for lb in lbs[1:]):
                raise patch.NoPatch("the load balancers serve different shops")
            states = {}
            for lb in lbs:
                release_id, directory, sha = served[lb.name]
                if release_id is None or directory is None or sha is None \
                        or lb.generation is None or lb.marker is None:
                    raise patch.NoPatch(f"{lb.name}: the release is not fully known")
                stats = patch.file_stats(directory)  # before the files are read
                if hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest() != sha:
                    raise patch.NoPatch(f"{lb.name}: the spool's manifest is not what went live")
                states[lb.name] = patch.LbState(release_id, sha, lb.generation, lb.marker, {
                    f"sites/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest()
                    for f in (directory / "sites").iterdir()}, stats)
            directory = served[first.name][1]
            assert directory is not None
            own = {f.name for f in (directory / "sites").iterdir()} - {shared.SITE, marker.SITE}
            infos = patch.describe_lineages(
                sites, own, selection.known, (directory / "sites" / shared.SITE).read_bytes(),
                first.lb.root)
            index = lineages.Index(selection.known.values())
            contested: set[str] = set()
            for shop in selection.inventory.active():
                covering = index.coverers(shop)
                if len(covering) > 1:
                    contested.update(lin.name for lin in covering)
            base = patch.PatchBase(inputs, states, infos, frozenset(contested),
                                   frozenset(r.fingerprint for r in sites.values()))
        except (patch.NoPatch, OSError, CertificateError) as e:
            logger.info("no base for the renewal fast path: %s", e)
            patch.forget(self.spool.patch_base)
            return
        patch.store(self.spool.patch_base, base)

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

    def _take_truths(self, lbs: list[_Lb]) -> None:
        """What every load balancer serves, as the session holding its lock read it.

        Any load balancer that cannot be reached stops the run before anything is built.
        """
        def take(lb: _Lb) -> str | None:
            try:
                lb.truth = lb.target.truth()
            except push.PushError as e:
                return f"{lb.name}: {e}"
            return None

        with ThreadPoolExecutor(max_workers=len(lbs) or 1) as pool:
            errors = [e for e in pool.map(take, lbs) if e]
        if errors:
            raise DeployError("nothing went live anywhere: " + "; ".join(errors))

    def _read_truth(self, lbs: list[_Lb], report: Report) -> None:
        """Read what every load balancer serves and mirror it into the spool.

        Any load balancer that cannot be reached stops the run before anything is built.
        """
        shared_mode = self.deploy.mode == "shared"

        def read(lb: _Lb) -> str | None:
            try:
                truth = lb.truth
                assert truth is not None
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

    def _drop(self, lbs: list[_Lb], staging: Mapping[str, Future[LbOutcome]]) -> None:
        """Remove the candidates sent (once their phase 1 ended) and every release built here."""
        self._discard([lb for lb in lbs if lb.name in staging], staging)
        for lb in lbs:
            if lb.built is not None:
                shutil.rmtree(lb.built.path, ignore_errors=True)

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
        done = lb.target.step(scripts.script_go_live(root, outcome.release, lb.lb.reload,
                                                     lb.manifest_sha256))
        if done.status in (scripts.SWITCH_FAILED, scripts.STEP_BUSY, scripts.NOT_OURS):
            return f"cannot switch {root}/current: {done.output.strip()}"
        if done.status != 0:
            return f"'{' '.join(lb.lb.reload)}' failed: {done.output.strip()}"
        expected = _expected(lb) if lb.expected is None else lb.expected
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


def _remove_built(build: Future[tuple[patch.Patched, release.Built]]) -> None:
    """Remove a patched release that was built but is not to be sent."""
    if not build.cancelled() and build.exception() is None:
        shutil.rmtree(build.result()[1].path, ignore_errors=True)


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
    wildcards = patch.wildcards(comp.sites.values())
    for site, record in comp.sites.items():
        if in_map and f"sites/{site}" not in rel.files:
            was = old.get(site)
            if was is None or was.fingerprint != record.fingerprint:
                out.update(dict.fromkeys(patch.probe_names(record, wildcards),
                                         record.fingerprint))
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


__all__ = ["DeployError", "Deployer", "LbOutcome", "Report"]
