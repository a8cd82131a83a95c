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
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from certbot_epages import ownership
from certbot_epages.config import Config
from certbot_epages.deploy import lineages, served
from certbot_epages.deploy.deployer import Deployer, Report
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.render import TemplateSet
from certbot_epages.dns import client as dns_client
from certbot_epages.errors import EpagesError
from certbot_epages.fleet import ari, preflight, status
from certbot_epages.fleet import limits as budget
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.limits import Ledger, Limits
from certbot_epages.fleet.locks import FleetLocks, LockTimeout
from certbot_epages.inventory import Inventory, Problem, load_inventory
from certbot_epages.names import lineage_name, printable, validate_domain

CERTBOT_TIMEOUT = 900.0
ORDERING = (planning.ISSUE, planning.REISSUE, planning.RENEW)
# How long `sync --domain` waits for a lineage another run is ordering, and for its turn to
# run certbot: one certbot run, at most (a full sync lets it go next).
TURN_WAIT = CERTBOT_TIMEOUT + 60.0
CERTBOT_BUSY = "Another instance of Certbot is already running"


class SyncError(EpagesError):
    """Another sync is running, or the sync could not start."""


@dataclass
class Outcome:
    """What happened to one certificate in this run."""

    step: planning.Step
    state: str  # done | failed | blocked | waiting | kept | deleted | busy
    challenge: str | None = None
    reason: str | None = None
    fix: str | None = None
    not_before: float | None = None
    seconds: float = 0.0


@dataclass
class SyncReport:
    """The run: one outcome per certificate, the deploy, and counts."""

    outcomes: list[Outcome] = field(default_factory=list)
    deploy: Report | None = None
    deploy_error: str | None = None
    # sync --domain: named shops that cannot be served now, and why (refused or invalid
    # entries, platform shops whose name does not point at the load balancers)
    unserved: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        """How many certificates ended in ``state``."""
        return sum(1 for o in self.outcomes if o.state == state)

    def all_served(self) -> bool:
        """Whether every certificate of the run is in place and deployed (sync --domain)."""
        return not (self.deploy_error or self.unserved or any(
            o.state in ("failed", "blocked", "waiting", "busy") for o in self.outcomes))


@dataclass(frozen=True)
class Selection:
    """What ``sync --domain`` acts on: the entries that list the names, and the invalid ones."""

    names: tuple[str, ...]
    shops: frozenset[str]  # domains of the valid entries listing one of the names
    invalid: tuple[Problem, ...] = ()  # invalid entries whose domain is one of the names

    @property
    def domains(self) -> frozenset[str]:
        """Every entry domain whose status this run records."""
        return self.shops | {p.name for p in self.invalid if p.name is not None}


def select(inventory: Inventory, names: Sequence[str], source: str = "the inventory"
           ) -> Selection:
    """The entries whose domain or aliases are among ``names``; SyncError naming the others."""
    wanted = set(names)
    shops = frozenset(shop.domain for shop in inventory.shops
                      if wanted.intersection(shop.server_names))
    invalid = tuple(p for p in inventory.problems if p.name in wanted)
    listed = {n for shop in inventory.shops if shop.domain in shops for n in shop.server_names}
    unknown = [n for n in names if n not in listed and all(p.name != n for p in invalid)]
    if unknown:
        raise SyncError(
            f"not in {source}: {', '.join(unknown)} (no entry lists it as its domain or an "
            "alias); add the shop to the shop software's export first (sync --domain acts "
            "only on listed shops)"
        )
    return Selection(tuple(names), shops, invalid)


def restrict(the_plan: planning.Plan, shops: frozenset[str]) -> planning.Plan:
    """The steps of the certificates that serve ``shops``, and those of them that ride."""
    return planning.Plan(
        steps=[s for s in the_plan.steps if shops.intersection(s.unit.shops)],
        riders={d: lin for d, lin in the_plan.riders.items() if d in shops},
    )


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
        self.certbot_dir = (settings.deploy.certbot_dir if settings.deploy
                            else Path("/etc/letsencrypt"))
        fl = self.fleet.limits
        self.limits = Limits(
            orders_per_account=fl.orders_per_account,
            certs_per_registered_domain=fl.certs_per_registered_domain,
            failures_per_hostname=fl.failures_per_hostname,
            public_suffixes=fl.public_suffixes,
        )
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
        self.say(self._summary(report))
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
            self.say(self._progress(index, len(queue), outcome, report, started))

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
            ok, error = self._certbot(self._certonly(outcome))
        except LockTimeout:
            budget.update(self.ledger_path, lambda ledger: ledger.cancel_order(admitted))
            raise
        if not ok and error is not None and CERTBOT_BUSY in error:
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
        outcome.fix = _failure_fix(outcome, count)

    def _certonly(self, outcome: Outcome) -> list[str]:
        step = outcome.step
        argv = ["certonly", "--non-interactive", "--cert-name", step.unit.lineage]
        for name in step.unit.names:
            argv += ["-d", name]
        if step.action == planning.RENEW:
            argv.append("--force-renewal")
        if step.action == planning.REISSUE:
            argv.append("--renew-with-new-domains")
        if outcome.challenge == "http-01":
            bin_dir = Path(sys.executable).parent
            argv += ["--manual", "--preferred-challenges", "http",
                     "--manual-auth-hook", str(bin_dir / "manual-auth-hook"),
                     "--manual-cleanup-hook", str(bin_dir / "manual-cleanup-hook")]
        else:
            argv += ["--authenticator", "epages-dns",
                     "--epages-dns-config", str(self.settings.source)]
        return argv

    def _certbot(self, args: list[str]) -> tuple[bool, str | None]:
        """Run certbot in this run's turn (one certbot at a time; sync --domain first)."""
        argv = [*self.fleet.certbot, *self.fleet.certbot_args, *args, *self.certbot_args]
        env = {**os.environ, "CERTBOT_EPAGES_CONFIG": str(self.settings.source)}
        with self.locks.certbot_turn(first=bool(self.domains), wait=TURN_WAIT,
                                     on_wait=lambda: self.say("waiting for another run's "
                                                              "certbot to finish")):
            try:
                done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, timeout=CERTBOT_TIMEOUT,
                                      check=False)
            except subprocess.TimeoutExpired:
                return False, f"certbot took longer than {CERTBOT_TIMEOUT:g}s"
            except OSError as e:
                return False, f"cannot run {argv[0]}: {e.strerror}; set fleet.certbot"
        if done.returncode == 0:
            return True, None
        return False, _certbot_error(done.stdout + "\n" + done.stderr)

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
        try:
            report.deploy = Deployer(self.settings, say=self.say).lineages(
                present, inventory=inventory)
        except EpagesError as e:
            report.deploy_error = str(e)
            self.say(f"deploy failed: {e}")

    # --- pieces ------------------------------------------------------------------------------

    def _inventory(self) -> Inventory:
        templates = TemplateSet(self.settings.deploy.templates if self.settings.deploy else None)
        return load_inventory(self.settings.need_inventory("syncs"), templates=templates.names(),
                              safe_vars=templates.all_safe_vars(),
                              timeout=self.settings.inventory_timeout,
                              max_bytes=self.settings.inventory_max_bytes,
                              cache=(self.settings.deploy.spool if self.settings.deploy
                                     else self.fleet.state_dir))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        state = self.fleet.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state / "sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SyncError(
                    f"another sync is running (it holds {state / 'sync.lock'}); two syncs "
                    "never run at once"
                ) from None
            yield
        finally:
            os.close(fd)

    def _progress(self, index: int, total: int, outcome: Outcome, report: SyncReport,
                  started: float) -> str:
        step = outcome.step
        elapsed = time.monotonic() - started
        eta = elapsed / index * (total - index)
        result = outcome.state if outcome.reason is None else f"{outcome.state}: {outcome.reason}"
        via = f" ({outcome.challenge})" if outcome.challenge else ""
        return (f"[{index}/{total}] {step.action} {step.unit.lineage}{via} {result} in "
                f"{outcome.seconds:.1f}s | done {report.count('done')}, failed "
                f"{report.count('failed')}, waiting {report.count('waiting')}, blocked "
                f"{report.count('blocked')} | ETA {eta:.0f}s")

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
            step = outcome.step
            state = "would run" if outcome.state == "pending" else outcome.state
            detail = outcome.reason or step.why
            via = f" via {outcome.challenge}" if outcome.challenge else ""
            self.say(f"  {step.action:8} {step.unit.lineage}{via}: {state} ({detail})"
                     + (f"; fix: {outcome.fix}" if outcome.fix else ""))

    def _summary(self, report: SyncReport) -> str:
        states = ["done", "kept", "failed", "blocked", "waiting", "deleted"]
        if report.count("busy"):
            states.append("busy")
        counts = ", ".join(f"{report.count(s)} {s}" for s in states)
        lines = [f"sync: {counts}"]
        for o in report.outcomes:
            if o.state in ("blocked", "waiting", "failed", "busy"):
                lines.append(f"  {o.state} {o.step.unit.lineage}: {o.reason}"
                             + (f"; fix: {o.fix}" if o.fix else ""))
        lines.extend(f"  not served: {line}" for line in report.unserved)
        if report.deploy is not None:
            lines.append(report.deploy.summary())
        if report.deploy_error:
            lines.append(f"deploy failed: {report.deploy_error}")
        return "\n".join(lines)


def _domain(name: str) -> str:
    try:
        return validate_domain(name)
    except ValueError as e:
        raise SyncError(f"--domain {printable(name)} is not a domain name: {e}") from None


def _fingerprint(lineage: Lineage | None) -> str | None:
    return None if lineage is None else lineage.fingerprint


def _certbot_error(output: str) -> str:
    """The most telling line of certbot's output: the CA's detail, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Detail:"):
            return line[len("Detail:"):].strip()
    for line in reversed(lines):
        if not line.startswith(("Ask for help", "Saving debug log", "See the logfile")):
            return line
    return "certbot failed without output"


def _failure_fix(outcome: Outcome, count: int) -> str:
    names = " ".join(outcome.step.unit.names)
    if outcome.challenge == "http-01":
        hint = (f"check that {names} reach the load balancers and that they proxy "
                "/.well-known/acme-challenge/ to the challenge service")
    else:
        hint = f"run 'certbot-epages check {names}'"
    return f"{hint}; sync retries with backoff (failure {count}: 1 min, 10 min, 100 min, daily)"
