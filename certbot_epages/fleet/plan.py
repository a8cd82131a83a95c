"""What a sync has to do: the shop list and certbot's lineages in, one action per certificate out.

Pure logic: no DNS, no certbot. Each certificate is a *unit*: a custom-domain shop's lineage
(named after its domain, holding its domain and aliases), or a platform domain's wildcard
lineage that every ``shopalias.<platform domain>`` rides on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from certbot_epages.deploy.lineages import Lineage
from certbot_epages.inventory import Shop
from certbot_epages.names import lineage_name, platform_of

__all__ = ["Plan", "Step", "Unit", "is_due", "lineage_name", "make_plan", "platform_of",
           "renewal_time", "step_for", "units"]

# What to do with a unit.
ISSUE = "issue"  # no lineage yet
REISSUE = "reissue"  # the lineage's names differ from the shop's
RENEW = "renew"  # due by certbot's timing
DELETE = "delete"  # the shop was deleted: its lineage goes
KEEP = "keep"  # nothing to do


@dataclass(frozen=True)
class Unit:
    """One certificate the fleet needs: its lineage name, names, and the shops it serves."""

    lineage: str
    names: tuple[str, ...]
    shops: tuple[str, ...]  # domains of the inventory entries it serves
    wildcard_of: str | None = None  # the platform domain, for a platform wildcard
    frozen: bool = False  # renewed as it is: its shop's entry is refused for now


@dataclass(frozen=True)
class Step:
    """A unit and what to do with it, with why."""

    unit: Unit
    action: str
    why: str
    expires: datetime | None = None


@dataclass
class Plan:
    """Every unit's step, and the platform shops that ride on a wildcard."""

    steps: list[Step] = field(default_factory=list)
    riders: dict[str, str] = field(default_factory=dict)  # shop domain -> wildcard lineage

    def of(self, action: str) -> list[Step]:
        """The steps with ``action``."""
        return [s for s in self.steps if s.action == action]


def units(
    shops: Sequence[Shop], platform_domains: Sequence[str]
) -> tuple[list[Unit], dict[str, str]]:
    """The certificates the active shops need, and which shops ride on a platform wildcard."""
    out: dict[str, Unit] = {}
    riders: dict[str, str] = {}
    wildcards = {f"*.{p}": p for p in platform_domains}
    for shop in shops:
        if not shop.is_active:
            continue
        names = shop.server_names
        rides = all(platform_of(n, platform_domains) for n in names)
        if rides and not shop.domain.startswith("*."):
            platform = platform_of(shop.domain, platform_domains)
            assert platform is not None
            riders[shop.domain] = platform
            continue
        name = lineage_name(shop.domain)
        out[name] = Unit(name, tuple(names), (shop.domain,),
                         wildcards.get(shop.domain))
    # Platform wildcards: needed while anything rides on them, or when a shop entry asks.
    for platform in sorted(set(riders.values())):
        name = lineage_name(f"*.{platform}")
        if name not in out:
            out[name] = Unit(name, (f"*.{platform}",), (), platform)
    for shop_domain, platform in list(riders.items()):
        riders[shop_domain] = lineage_name(f"*.{platform}")
    for name, unit in out.items():
        riding = tuple(d for d, lin in riders.items() if lin == name)
        if riding:
            out[name] = Unit(unit.lineage, unit.names, (*unit.shops, *riding), unit.wildcard_of)
    return list(out.values()), riders


def renewal_time(lineage: Lineage) -> datetime:
    """certbot's default timing: the last third of the lifetime (the last half, under 10 days)."""
    if lineage.not_before is None:
        return lineage.not_after - timedelta(days=30)
    lifetime = lineage.not_after - lineage.not_before
    share = 2 if lifetime < timedelta(days=10) else 3
    return lineage.not_after - lifetime / share


def is_due(lineage: Lineage, now: datetime, window_start: datetime | None = None) -> bool:
    """Whether to renew now: in the CA's ARI window where it offers one, else certbot's timing."""
    return now >= (window_start if window_start is not None else renewal_time(lineage))


def step_for(unit: Unit, lineage: Lineage | None, now: datetime,
             window_start: datetime | None = None) -> Step:
    """What to do with one unit whose lineage (if any) is ``lineage``.

    Also how a run decides again when another run changed the lineage after the plan was made
    (``sync --domain`` beside a full sync): a lineage issued meanwhile is kept.
    """
    if lineage is None:
        return Step(unit, ISSUE, "no certificate yet")
    if set(lineage.names) != set(unit.names) and not unit.frozen:
        missing = sorted(set(unit.names) - set(lineage.names))
        extra = sorted(set(lineage.names) - set(unit.names))
        why = "names changed: " + ", ".join(
            [*(f"+{n}" for n in missing), *(f"-{n}" for n in extra)]
        )
        return Step(unit, REISSUE, why, lineage.not_after)
    if is_due(lineage, now, window_start):
        source = "the CA's renewal window" if window_start is not None else "due"
        return Step(unit, RENEW, f"{source}: expires {lineage.not_after:%Y-%m-%d}",
                    lineage.not_after)
    return Step(unit, KEEP, f"valid until {lineage.not_after:%Y-%m-%d}", lineage.not_after)


def make_plan(
    shops: Sequence[Shop],
    lineages: dict[str, Lineage],
    platform_domains: Sequence[str],
    now: datetime,
    windows: Mapping[str, datetime] | None = None,
    frozen: Sequence[Shop] = (),
) -> Plan:
    """One step per unit, and a deletion for each deleted shop's lineage.

    ``windows`` holds, per lineage, the start of the CA's ARI renewal window where known.
    ``frozen`` are active shops whose entry is refused (an ownership conflict): their
    existing lineage is still renewed with the names it has, so what they serve never expires
    while the conflict lasts; nothing else is done for them.
    """
    needed, riders = units(shops, platform_domains)
    taken = {u.lineage for u in needed}
    for shop in frozen:
        name = lineage_name(shop.domain)
        if shop.is_active and name in lineages and name not in taken:
            taken.add(name)
            needed.append(Unit(name, lineages[name].names, (shop.domain,), frozen=True))
    plan = Plan(riders=riders)
    for unit in needed:
        plan.steps.append(step_for(unit, lineages.get(unit.lineage), now,
                                   (windows or {}).get(unit.lineage)))
    wanted = {u.lineage for u in needed}
    for shop in shops:
        name = lineage_name(shop.domain)
        found = lineages.get(name)
        if shop.status != "deleted" or found is None or name in wanted:
            continue
        # Only a lineage that holds nothing but this entry's names, and covers no other shop.
        if not set(found.names) <= set(shop.server_names):
            continue
        if any(other is not shop and other.status != "deleted"
               and any(found.covers(n) for n in other.server_names) for other in shops):
            continue
        plan.steps.append(Step(Unit(name, found.names, (shop.domain,)), DELETE,
                               "the shop was deleted"))
    return plan
