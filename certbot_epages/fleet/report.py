"""What a sync run did: one outcome per certificate, the deploy, and what was not served.

And how it reads: the progress line per certificate, a dry run's plan, the summary.

Its own module so that :mod:`.status` (which records a report) and :mod:`.sync` (which makes
one) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from certbot_epages.fleet import plan as planning

if TYPE_CHECKING:  # the deploy code (templates, ssh) is not needed to read a report
    from certbot_epages.deploy.deployer import Report


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


def progress_line(index: int, total: int, outcome: Outcome, report: SyncReport,
                  elapsed: float) -> str:
    """One line per certificate as the run goes: what happened, the counts so far, an ETA."""
    step = outcome.step
    eta = elapsed / index * (total - index)
    result = outcome.state if outcome.reason is None else f"{outcome.state}: {outcome.reason}"
    via = f" ({outcome.challenge})" if outcome.challenge else ""
    return (f"[{index}/{total}] {step.action} {step.unit.lineage}{via} {result} in "
            f"{outcome.seconds:.1f}s | done {report.count('done')}, failed "
            f"{report.count('failed')}, waiting {report.count('waiting')}, blocked "
            f"{report.count('blocked')} | ETA {eta:.0f}s")


def plan_line(outcome: Outcome) -> str:
    """One certificate of a dry run: what would happen, or why not."""
    step = outcome.step
    state = "would run" if outcome.state == "pending" else outcome.state
    detail = outcome.reason or step.why
    via = f" via {outcome.challenge}" if outcome.challenge else ""
    return (f"  {step.action:8} {step.unit.lineage}{via}: {state} ({detail})"
            + (f"; fix: {outcome.fix}" if outcome.fix else ""))


def summary(report: SyncReport) -> str:
    """The end of a run: counts, what needs attention and why, what was not served, the deploy."""
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


def failure_fix(outcome: Outcome, count: int) -> str:
    """What to do about a failed order, and when sync tries again (its ``count``-th failure)."""
    names = " ".join(outcome.step.unit.names)
    if outcome.challenge == "http-01":
        hint = (f"check that {names} reach the load balancers and that they proxy "
                "/.well-known/acme-challenge/ to the challenge service")
    else:
        hint = f"run 'certbot-epages check {names}'"
    return f"{hint}; sync retries with backoff (failure {count}: 1 min, 10 min, 100 min, daily)"
