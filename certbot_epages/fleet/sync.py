"""``certbot-epages sync``: bring certificates and load balancers in line with the shop list.

Plan (pure, :mod:`.plan`), preflight every certificate to be ordered (:mod:`.preflight`: no
order for a domain that would fail), admit within the rate-limit budgets and backoff
(:mod:`.limits`), run certbot for each admitted certificate, then one deploy for everything,
and write every domain's status (:mod:`.status`).
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
from certbot_epages.deploy.render import TemplateSet
from certbot_epages.dns import client as dns_client
from certbot_epages.errors import EpagesError
from certbot_epages.fleet import ari, preflight, status
from certbot_epages.fleet import plan as planning
from certbot_epages.fleet.limits import Ledger, Limits
from certbot_epages.inventory import Inventory, load_inventory

CERTBOT_TIMEOUT = 900.0
ORDERING = (planning.ISSUE, planning.REISSUE, planning.RENEW)


class SyncError(EpagesError):
    """Another sync is running, or the sync could not start."""


@dataclass
class Outcome:
    """What happened to one certificate in this run."""

    step: planning.Step
    state: str  # done | failed | blocked | waiting | kept | deleted
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

    def count(self, state: str) -> int:
        """How many certificates ended in ``state``."""
        return sum(1 for o in self.outcomes if o.state == state)


class Sync:
    """One sync run over the inventory."""

    def __init__(
        self,
        settings: Config,
        *,
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
        self._dns: preflight.DnsResolver | None = None

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> SyncReport:
        """Plan, preflight, admit, issue, deploy, report."""
        inventory = self._inventory()  # fetched before any lock: a slow server blocks no one
        with self._locked():
            for problem in inventory.problems:
                self.say(f"inventory: {problem}")
            resolution = self._resolve(inventory)
            for conflict in resolution.conflicts:
                self.say(f"refused: {conflict}; fix: {conflict.fix}")
            now = self.clock()
            known = {lin.name: lin for lin in lineages.scan(self.certbot_dir)}
            the_plan = planning.make_plan(resolution.inventory.shops, known,
                                          self.fleet.platform_domains,
                                          datetime.fromtimestamp(now, timezone.utc),
                                          self._renewal_windows(known),
                                          frozen=[c.shop for c in resolution.conflicts])
            ledger = Ledger.load(self.ledger_path)
            ledger.prune(now, self.limits)
            if self.dry_run:
                ledger = ledger.copy()  # a plan must not spend the real budget
            report = SyncReport()
            queue = self._admit(the_plan, ledger, now, report)
            if self.dry_run:
                self._print_plan(report, queue)
                return report
            self._execute(queue, ledger, report)
            self._deploy(report, inventory)
            known = {lin.name: lin for lin in lineages.scan(self.certbot_dir)}
            status.write(self.settings, resolution.inventory, the_plan, report, known,
                         self.clock(), self._check_riders(the_plan), resolution.conflicts)
            self.say(self._summary(report))
            return report

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

    def _admit(self, the_plan: planning.Plan, ledger: Ledger, now: float,
               report: SyncReport) -> list[Outcome]:
        """Preflight and budget every step; return the ones to run now, in plan order."""
        resolver = self._resolver()
        queue: list[Outcome] = []
        for step in the_plan.steps:
            if step.action == planning.KEEP:
                report.outcomes.append(Outcome(step, "kept", reason=step.why))
                continue
            if step.action == planning.DELETE:
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
            decision = ledger.admit(step.unit.lineage, step.unit.names, now, self.limits)
            outcome = Outcome(step, "pending", challenge=verdict.challenge)
            report.outcomes.append(outcome)
            if not decision.allowed:
                outcome.state, outcome.reason = "waiting", decision.reason
                outcome.not_before = decision.not_before
                continue
            queue.append(outcome)
        return queue

    def _execute(self, queue: list[Outcome], ledger: Ledger, report: SyncReport) -> None:
        started = time.monotonic()
        for index, outcome in enumerate(queue, start=1):
            step = outcome.step
            begun = time.monotonic()
            if step.action == planning.DELETE:
                ok, error = self._certbot(["delete", "--cert-name", step.unit.lineage])
                outcome.state = "deleted" if ok else "failed"
                outcome.reason = error
            else:
                ok, error = self._certbot(self._certonly(outcome))
                now = self.clock()
                if ok:
                    ledger.record_certificate(step.unit.names, now)
                    ledger.record_success(step.unit.lineage)
                    outcome.state = "done"
                else:
                    ledger.record_failure(step.unit.lineage, step.unit.names, error or "", now)
                    count, _, _ = ledger.failures(step.unit.lineage)
                    outcome.state, outcome.reason = "failed", error
                    outcome.fix = _failure_fix(outcome, count)
                ledger.save(self.ledger_path)
            outcome.seconds = time.monotonic() - begun
            self.say(self._progress(index, len(queue), outcome, report, started))

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
        argv = [*self.fleet.certbot, *self.fleet.certbot_args, *args, *self.certbot_args]
        env = {**os.environ, "CERTBOT_EPAGES_CONFIG": str(self.settings.source)}
        try:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=CERTBOT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return False, f"certbot took longer than {CERTBOT_TIMEOUT:g}s"
        except OSError as e:
            return False, f"cannot run {argv[0]}: {e.strerror}; set fleet.certbot"
        if done.returncode == 0:
            return True, None
        return False, _certbot_error(done.stdout + "\n" + done.stderr)

    def _deploy(self, report: SyncReport, inventory: Inventory) -> None:
        if self.settings.deploy is None:
            return
        try:
            report.deploy = Deployer(self.settings, say=self.say).everything(inventory=inventory)
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

    def _print_plan(self, report: SyncReport, queue: list[Outcome]) -> None:
        self.say("dry run: nothing is ordered, deployed or written")
        for outcome in report.outcomes:
            step = outcome.step
            state = "would run" if outcome in queue else outcome.state
            detail = outcome.reason or step.why
            via = f" via {outcome.challenge}" if outcome.challenge else ""
            self.say(f"  {step.action:8} {step.unit.lineage}{via}: {state} ({detail})"
                     + (f"; fix: {outcome.fix}" if outcome.fix else ""))

    def _summary(self, report: SyncReport) -> str:
        counts = ", ".join(f"{report.count(s)} {s}" for s in
                           ("done", "kept", "failed", "blocked", "waiting", "deleted"))
        lines = [f"sync: {counts}"]
        for o in report.outcomes:
            if o.state in ("blocked", "waiting", "failed"):
                lines.append(f"  {o.state} {o.step.unit.lineage}: {o.reason}"
                             + (f"; fix: {o.fix}" if o.fix else ""))
        if report.deploy is not None:
            lines.append(report.deploy.summary())
        if report.deploy_error:
            lines.append(f"deploy failed: {report.deploy_error}")
        return "\n".join(lines)


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
