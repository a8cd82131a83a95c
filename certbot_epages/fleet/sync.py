"""``certbot-epages sync``: bring certificates and load balancers in line with the shop list.

Plan (pure, :mod:`.plan`), preflight every certificate to be ordered (:mod:`.preflight`: no
order for a domain that would fail), admit within the rate-limit budgets and backoff
(:mod:`.limits`), run certbot for each admitted certificate, then one deploy for everything,
and write every domain's status (:mod:`.status`).

``sync --domain NAME...`` does the same for the shops whose entry lists one of the names, and
deploys only their lineages: the shop software calls it when a tenant adds a domain. It runs
beside a full sync (which may take hours) rather than after it. The locks (:mod:`.locks`):
``sync.lock`` keeps full syncs apart; a lineage's lock is held while a run re-checks and orders
it (a full sync skips a lineage another run holds, ``sync --domain`` waits for it); certbot
itself runs one at a time (it locks its directories), and a waiting ``sync --domain`` goes
before the full sync's next certbot run; the ledger and status.json are changed under short
locks; the deploy takes the spool's and the load balancers' locks only while it deploys.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from certbot_epages import ownership
from certbot_epages.config import Config
from certbot_epages.deploy import lineages, served
from certbot_epages.deploy.deployer import Deployer
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.render import TemplateSet
from certbot_epages.dns import client as dns_client
from certbot_epages.errors import EpagesError, SyncError
from certbot_epages.files import held
from certbot_epages.fleet import ari, certbot, preflight, status
from certbot_epages.fleet import limits as budget
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.limits import Ledger
from certbot_epages.fleet.locks import FleetLocks, LockTimeout
from certbot_epages.fleet.report import (
    Outcome,
    SyncReport,
    failure_fix,
    plan_line,
    progress_line,
    summary,
)
from certbot_epages.fleet.selection import Selection, restrict, select
from certbot_epages.inventory import Inventory, load_configured
from certbot_epages.names import lineage_name, printable, validate_domain

# How long `sync --domain` waits for a lineage another run is ordering, and for its turn to
# run certbot: one certbot run, at most (a full sync lets it go next).
TURN_WAIT = certbot.TIMEOUT + 60.0


class Sync:
    """One sync run over the inventory."""

    def __init__(
        self,
        settings: Config,
        *,
        domains: Sequence[str] = (),
        certbot_args: Sequence[str] = (),
        dry_run: bool = False,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings.need_inventory("syncs")
        self.dns = settings.need_dns("sync (DNS-01 and preflight checks)")
        self.settings = settings
        self.fleet = settings.fleet
        self.certbot_args = tuple(certbot_args)
        self.dry_run = dry_run
        self.say = say
        self.clock = clock
        self.certbot_dir = settings.certbot_dir
        self.limits = self.fleet.limits
        self.ledger_path = self.fleet.state_dir / "ledger.json"
        self.locks = FleetLocks(self.fleet.state_dir)
        self.domains = tuple(_domain(d) for d in dict.fromkeys(domains))
        self.known: dict[str, Lineage] = {}  # the lineages as the plan saw them
        self._dns: preflight.DnsResolver | None = None

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> SyncReport:
        """Plan, preflight, admit, issue, deploy, report."""
        started = self.clock()
        inventory = self._inventory()  # fetched before any lock: a slow server blocks no one
        if self.domains:
            source = self.settings.inventory
            where = str(source) if isinstance(source, Path) else "the inventory URL's list"
            return self._run(inventory, started, select(inventory, self.domains, where))
        with self._locked():
            return self._run(inventory, started, None)

    def _run(self, inventory: Inventory, started: float,
             selection: Selection | None) -> SyncReport:
        report = SyncReport()
        for problem in inventory.problems:
            if selection is None or problem in selection.invalid:
                self.say(f"inventory: {problem}")
                if selection is not None:
                    report.unserved.append(str(problem))
        resolution = self._resolve(inventory)
        conflicts = [c for c in resolution.conflicts
                     if selection is None or c.shop.domain in selection.shops]
        for conflict in conflicts:
            self.say(f"refused: {conflict}; fix: {conflict.fix}")
            if selection is not None:
                report.unserved.append(f"refused: {conflict}; fix: {conflict.fix}")
        now = self.clock()
        self.known = self._lineages(selection)
        the_plan = planning.make_plan(resolution.inventory.shops, self.known,
                                      self.fleet.platform_domains,
                                      datetime.fromtimestamp(now, timezone.utc),
                                      self._renewal_windows(self.known),
                                      frozen=[c.shop for c in resolution.conflicts])
        if selection is not None:
            the_plan = restrict(the_plan, selection.shops)
        queue = self._preflight(the_plan, report)
        if self.dry_run:
            ledger = Ledger.load(self.ledger_path).copy()  # a plan must not spend the budget
            ledger.prune(now, self.limits)
            self._print_plan(report, queue, ledger, now)
            return report
        self._execute(queue, report)
        if selection is None:
            self._deploy(report)
        else:
            self._deploy_lineages(report, inventory, the_plan)
        known = (self._lineages(selection) if selection is not None
                 else {lin.name: lin for lin in lineages.scan(self.certbot_dir)})
        riders = self._check_riders(the_plan)
        if selection is not None:
            report.unserved.extend(f"{domain}: {reason}; fix: {fix}"
                                   for domain, (reason, fix) in sorted(riders.items()))
        status.write(self.settings, resolution.inventory, the_plan, report, known,
                     self.clock(), riders, conflicts,
                     only=None if selection is None else selection.domains, started=started)
        self.say(summary(report))
        return report

    def _lineages(self, selection: Selection | None) -> dict[str, Lineage]:
        """certbot's lineages: all of them, or (sync --domain) those the named shops may use."""
        if selection is None:
            return {lin.name: lin for lin in lineages.scan(self.certbot_dir)}
        wanted = {lineage_name(d) for d in selection.shops}
        wanted.update(lineage_name(f"*.{p}") for p in self.fleet.platform_domains)
        found = {}
        for name in sorted(wanted):
            lineage = self._lineage(name)
            if lineage is not None:
                found[name] = lineage
        return found

    def _lineage(self, name: str) -> Lineage | None:
        """The lineage as it is on disk now, if there is one."""
        live = self.certbot_dir / "live" / name
        if not live.is_dir():
            return None
        try:
            return lineages.load(live)
        except lineages.LineageError:
            return None

    def _resolve(self, inventory: Inventory) -> ownership.Resolution:
        """Who may have which name, against what the load balancers record.

        Nothing is ordered for a name that belongs to another shop (the deploy decides again,
        under its locks, against what it finds then).
        """
        recorded = []
        if self.settings.deploy is not None:
            for answer in served.read_all(self.settings.deploy):
                if answer.error:
                    self.say(f"{answer.lb}: {answer.error}")
                if answer.manifest is not None:
                    recorded.append(answer.manifest.claims)
        return ownership.resolve(inventory, recorded, ownership.rules_for(self.settings))

    def _resolver(self) -> preflight.DnsResolver:
        """One resolver for the run's preflights: its CAA answers are cached across them."""
        if self._dns is None:
            self._dns = preflight.DnsResolver(dns_client.from_config(self.dns))
        return self._dns

    def _check_riders(self, the_plan: planning.Plan) -> dict[str, tuple[str, str]]:
        """Platform shops need no order, but their names must still point at the LBs."""
        resolver = self._resolver()
        failing = {}
        for domain in the_plan.riders:
            verdict = preflight.check(
                [domain], resolver=resolver, lb_addresses=self.fleet.lb_addresses,
                platform_domains=self.fleet.platform_domains,
                ca_identities=self.fleet.ca_identities,
            )
            if not verdict.ok:
                failing[domain] = (verdict.reason or "preflight failed", verdict.fix or "")
        return failing

    def _renewal_windows(self, known: dict[str, lineages.Lineage]) -> dict[str, datetime]:
        """ARI windows of the lineages whose CA offers renewal information."""
        client = ari.Client()
        windows = {}
        for name, lineage in known.items():
            directory = ari.server_of(self.certbot_dir, name)
            if directory is None:
                continue
            try:
                cert = x509.load_pem_x509_certificate((lineage.live / "cert.pem").read_bytes())
            except (OSError, ValueError):
                continue
            start = client.window_start(directory, cert)
            if start is not None:
                windows[name] = start
        return windows

    def _preflight(self, the_plan: planning.Plan, report: SyncReport) -> list[Outcome]:
        """Preflight every step to be ordered; return the ones to run, in plan order.

        The budgets are checked later, step by step just before certbot runs (:meth:`_one`),
        against the ledger as every run has left it by then.
        """
        resolver = self._resolver()
        queue: list[Outcome] = []
        for step in the_plan.steps:
            if step.action == planning.KEEP:
                report.outcomes.append(Outcome(step, "kept", reason=step.why))
                continue
            if step.action == planning.DELETE:
                if self.domains:
                    report.outcomes.append(Outcome(step, "kept", reason=(
                        "a deleted shop's lineage and site go at the next full sync")))
                    continue
                outcome = Outcome(step, "pending")
                report.outcomes.append(outcome)
                queue.append(outcome)
                continue
            verdict = preflight.check(
                step.unit.names, resolver=resolver, lb_addresses=self.fleet.lb_addresses,
                platform_domains=self.fleet.platform_domains,
                ca_identities=self.fleet.ca_identities,
            )
            if not verdict.ok:
                report.outcomes.append(Outcome(step, "blocked", reason=verdict.reason,
                                               fix=verdict.fix))
                continue
            outcome = Outcome(step, "pending", challenge=verdict.challenge)
            report.outcomes.append(outcome)
            queue.append(outcome)
        return queue

    def _execute(self, queue: list[Outcome], report: SyncReport) -> None:
        started = time.monotonic()
        for index, outcome in enumerate(queue, start=1):
            begun = time.monotonic()
            self._one(outcome)
            outcome.seconds = time.monotonic() - begun
            self.say(progress_line(index, len(queue), outcome, report,
                                   time.monotonic() - started))

    def _one(self, outcome: Outcome) -> None:
        """Re-check, admit and order one certificate while holding its lineage's lock."""
        name = outcome.step.unit.lineage
        lock = self.locks.lineage_path(name)
        wait = TURN_WAIT if self.domains else 0.0
        with self.locks.lineage(name, wait=wait, on_wait=lambda: self.say(
                f"{name}: waiting for the run that holds {lock} (it is ordering this "
                "certificate)")) as got:
            if not got:
                outcome.state = "busy"
                outcome.reason = (f"another run holds {lock} and is ordering this certificate; "
                                  "that run records and deploys it")
                return
            try:
                self._order(outcome)
            except LockTimeout as e:
                outcome.state, outcome.reason = "busy", str(e)

    def _order(self, outcome: Outcome) -> None:
        step = outcome.step
        name = step.unit.lineage
        current = self._lineage(name)
        if step.action == planning.DELETE:
            if current is None:
                outcome.state, outcome.reason = "deleted", "another run deleted it meanwhile"
                return
            back = self._back_in_inventory(step.unit)
            if back is not None:
                outcome.state, outcome.reason = "kept", back
                return
            ok, error = self._certbot(["delete", "--cert-name", name])
            outcome.state = "deleted" if ok else "failed"
            outcome.reason = error
            return
        planned = self.known.get(name)
        if _fingerprint(current) != _fingerprint(planned):
            # Another run ordered (or removed) it after the plan: decide again.
            step = planning.step_for(step.unit, current,
                                     datetime.fromtimestamp(self.clock(), timezone.utc))
            if step.action == planning.KEEP:
                outcome.state = "kept"
                outcome.reason = f"another run ordered it meanwhile ({step.why})"
                return
            outcome.step = step
        admitted = self.clock()
        decision = budget.update(
            self.ledger_path,
            lambda ledger: ledger.admit(name, step.unit.names, admitted, self.limits),
            prune=(admitted, self.limits))
        if not decision.allowed:
            outcome.state, outcome.reason = "waiting", decision.reason
            outcome.not_before = decision.not_before
            return
        try:
            ok, error = self._certbot(certbot.certonly_args(
                outcome.step, outcome.challenge, self.settings.source))
        except LockTimeout:
            budget.update(self.ledger_path, lambda ledger: ledger.cancel_order(admitted))
            raise
        if not ok and error is not None and certbot.BUSY in error:
            # A certbot started outside of sync: no order was placed, nothing failed.
            budget.update(self.ledger_path, lambda ledger: ledger.cancel_order(admitted))
            outcome.state = "busy"
            outcome.reason = f"{error} (outside of certbot-epages); the next sync orders it"
            return
        now = self.clock()
        if ok:
            def succeeded(ledger: Ledger) -> None:
                ledger.record_certificate(step.unit.names, now)
                ledger.record_success(name)

            budget.update(self.ledger_path, succeeded)
            outcome.state = "done"
            return

        def failed(ledger: Ledger) -> int:
            ledger.record_failure(name, step.unit.names, error or "", now)
            return ledger.failures(name)[0]

        count = budget.update(self.ledger_path, failed)
        outcome.state, outcome.reason = "failed", error
        outcome.fix = failure_fix(outcome, count)

    def _certbot(self, args: list[str]) -> tuple[bool, str | None]:
        """Run certbot in this run's turn (one certbot at a time; sync --domain first)."""
        argv = [*self.fleet.certbot, *self.fleet.certbot_args, *args, *self.certbot_args]
        env = {**os.environ, "CERTBOT_EPAGES_CONFIG": str(self.settings.source)}
        with self.locks.certbot_turn(first=bool(self.domains), wait=TURN_WAIT,
                                     on_wait=lambda: self.say("waiting for another run's "
                                                              "certbot to finish")):
            return certbot.run(argv, env)

    def _deploy(self, report: SyncReport) -> None:
        """Deploy everything, from the inventory as it is now.

        Read again (from the cache, unless it changed): shops that ``sync --domain`` added
        while this run ordered must not be dropped by a deploy of the list read hours ago.
        """
        if self.settings.deploy is None:
            return
        try:
            report.deploy = Deployer(self.settings, say=self.say).everything()
        except EpagesError as e:
            report.deploy_error = str(e)
            self.say(f"deploy failed: {e}")

    def _deploy_lineages(self, report: SyncReport, inventory: Inventory,
                         the_plan: planning.Plan) -> None:
        """sync --domain: deploy the lineages of the named shops, nothing else."""
        if self.settings.deploy is None:
            return
        present = [lin for lin in (self._lineage(s.unit.lineage) for s in the_plan.steps
                                   if s.action != planning.DELETE) if lin is not None]
        if not present:
            self.say("deploy: no certificate of these shops to deploy")
            return
        named = set(self.domains)
        only = {s.domain for s in inventory.shops if named & set(s.server_names)}
        try:
            report.deploy = Deployer(self.settings, say=self.say).lineages(
                present, inventory=inventory, only=only)
        except EpagesError as e:
            report.deploy_error = str(e)
            self.say(f"deploy failed: {e}")

    # --- pieces ------------------------------------------------------------------------------

    def _back_in_inventory(self, unit: planning.Unit) -> str | None:
        """Why a lineage planned for deletion stays: its shop is listed again, or unknown.

        The plan may be hours old; meanwhile the tenant may have added the domain again and
        ``sync --domain`` served it with this very certificate.
        """
        try:
            fresh = self._inventory()
        except EpagesError as e:
            return f"cannot read the inventory again before deleting it ({e}); it stays"
        names = set(unit.names)
        back = sorted(s.domain for s in fresh.shops if s.status != "deleted"
                      and (s.domain in unit.shops or names & set(s.server_names)))
        if not back:
            return None
        return f"{', '.join(back)} is in the inventory again: its certificate stays"

    def _inventory(self) -> Inventory:
        templates = TemplateSet(self.settings.deploy.templates if self.settings.deploy else None)
        return load_configured(self.settings, templates, "syncs")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        state = self.fleet.state_dir
        with held(state / "sync.lock") as got:
            if not got:
                raise SyncError(
                    f"another sync is running (it holds {state / 'sync.lock'}); two syncs "
                    "never run at once"
                )
            yield

    def _print_plan(self, report: SyncReport, queue: list[Outcome], ledger: Ledger,
                    now: float) -> None:
        """The plan, with the budgets as they stand (spent on a copy of the ledger)."""
        for outcome in queue:
            step = outcome.step
            if step.action == planning.DELETE:
                continue
            decision = ledger.admit(step.unit.lineage, step.unit.names, now, self.limits)
            if not decision.allowed:
                outcome.state, outcome.reason = "waiting", decision.reason
                outcome.not_before = decision.not_before
        self.say("dry run: nothing is ordered, deployed or written")
        for outcome in report.outcomes:
            self.say(plan_line(outcome))


def _domain(name: str) -> str:
    try:
        return validate_domain(name)
    except ValueError as e:
        raise SyncError(f"--domain {printable(name)} is not a domain name: {e}") from None


def _fingerprint(lineage: Lineage | None) -> str | None:
    return None if lineage is None else lineage.fingerprint
