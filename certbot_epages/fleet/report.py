"""What a sync run did: one outcome per certificate, the deploy, and what was not served.

Its own module so that :mod:`.status` (which records a report) and :mod:`.sync` (which makes
one) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from certbot_epages.deploy.deployer import Report
from certbot_epages.fleet import plan as planning


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
