"""Who may have which name: one owner per name, sticky, and names no tenant may take.

Pure logic. The inventory comes from the shop software, where tenants type in their own
domains, so every entry is a possible adversary. An entry's *owner* is its ``shop`` id (or its
domain when it has none). The rules, applied to every entry that is not deleted:

* **Sticky ownership.** A name the load balancers serve (or hold for a suspended shop) for
  one owner stays that owner's while any entry of that owner still lists it (an invalid entry
  of that owner counts as still listing it): another owner's claim is refused, whatever the
  order of the entries. A name its owner released (shop deleted, name dropped) may be taken.
  A new name claimed by two owners at once goes to neither.
* **Reserved names.** Only ``fleet.platform_shop`` may have a platform domain, its wildcard,
  or names more than one label below it; other owners may have ``<alias>.<platform domain>``
  (riders of the platform wildcard). A wildcard ``*.X`` is refused when X is or lies below a
  platform domain, or when another owner holds X or a name below X; a name below another
  owner's live wildcard is refused too. Names in the challenge zone are never shop names.
* **Disagreeing load balancers.** When load balancers record different owners for a name
  that both still claim, the name is held: it serves as it is and every claim is refused.

An entry with any refused name is refused whole: it is not ordered, not deployed, and what its
owner serves stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from certbot_epages.config import Config
from certbot_epages.errors import ConfigError
from certbot_epages.inventory import Inventory, Shop
from certbot_epages.names import LEGACY_OWNER, base_of, is_legacy_owner, is_within, platform_of


@dataclass(frozen=True)
class Rules:
    """The names that belong to the platform, and the zone no shop may use."""

    platform_domains: tuple[str, ...] = ()
    platform_shop: str | None = None
    challenge_zone: str | None = None


@dataclass(frozen=True)
class Conflict:
    """An entry refused because of some of its names."""

    shop: Shop
    names: tuple[str, ...]
    reason: str
    fix: str
    other: str | None = None  # the owner the names belong to, if one

    def __str__(self) -> str:
        return f"{self.shop.domain} (shop {self.shop.owner}): {self.reason}"


@dataclass(frozen=True)
class Resolution:
    """The entries that may have their names, the refused ones, and who holds what."""

    inventory: Inventory  # the granted entries (and the inventory's invalid ones)
    conflicts: tuple[Conflict, ...] = ()
    held: Mapping[str, str] = field(default_factory=dict)  # name -> why nobody may claim it
    claims: Mapping[str, str] = field(default_factory=dict)  # name -> owner, settled

    def conflict_of(self, domain: str) -> Conflict | None:
        """The conflict that refused the entry of ``domain``, if any."""
        return next((c for c in self.conflicts if c.shop.domain == domain), None)


def resolve(inventory: Inventory, recorded: Sequence[Mapping[str, str]],
            rules: Rules) -> Resolution:
    """Decide every entry's claim against what the load balancers record (one map each)."""
    listed: dict[str, set[str]] = {}  # name -> owners whose valid, undeleted entries list it
    for shop in inventory.shops:
        if shop.status != "deleted":
            for name in shop.server_names:
                listed.setdefault(name, set()).add(shop.owner)
    invalid_owners = {p.owner for p in inventory.problems if p.owner is not None}
    invalid_names = {p.name for p in inventory.problems if p.name is not None}
    held: dict[str, str] = {}
    owners_of: dict[str, set[str]] = {}
    for claims in recorded:
        for name, recorded_owner in claims.items():
            owner = (_migrate(name, recorded_owner, listed, invalid_names, held)
                     if is_legacy_owner(recorded_owner) else recorded_owner)
            if owner is not None:
                owners_of.setdefault(name, set()).add(owner)

    def still_claims(owner: str, name: str) -> bool:
        return (owner in listed.get(name, set()) or owner in invalid_owners
                or (is_legacy_owner(owner) and name in held))

    live: dict[str, str] = {}  # name -> the one recorded owner who still claims it
    for name, owners in owners_of.items():
        claiming = sorted(o for o in owners if still_claims(o, name))
        if len(claiming) > 1:
            held[name] = (f"the load balancers record different owners for {name} "
                          f"({', '.join(claiming)})")
        elif claiming and name not in held:
            live[name] = claiming[0]
    live_wildcards = {base_of(n): o for n, o in live.items() if n.startswith("*.")}
    twice = _listed_twice(inventory.shops)

    granted: list[Shop] = []
    conflicts: list[Conflict] = []
    for shop in inventory.shops:
        if shop.status == "deleted":
            conflict = _reserved(shop, rules) or _foreign_deletion(shop, owners_of, listed)
        else:
            conflict = (_reserved(shop, rules) or twice.get(id(shop))
                        or _taken(shop, live, held, listed, live_wildcards, rules))
        if conflict is not None:
            conflicts.append(conflict)
        else:
            granted.append(shop)
    # Recorded: the names their owners still claim (served, suspended, or an owner's invalid
    # entry), and the names of suspended shops. Served names are added by the deploy.
    claims = dict(live)
    for shop in granted:
        if shop.status == "suspended":
            claims.update(dict.fromkeys(shop.server_names, shop.owner))
    return Resolution(
        inventory=Inventory(shops=tuple(granted), problems=inventory.problems),
        conflicts=tuple(conflicts), held=held, claims=claims,
    )


def _migrate(name: str, legacy: str, listed: Mapping[str, set[str]],
             invalid_names: set[str], held: dict[str, str]) -> str | None:
    """Who a name recorded before shop ids belongs to now: the one owner that lists it.

    Several owners listing it: nobody may tell which one had it, so it is held. Nobody listing
    it: released, unless an invalid entry of its domain may still be the one.
    """
    owners = sorted(listed.get(name, set()))
    if len(owners) == 1:
        return owners[0]
    if len(owners) > 1:
        held[name] = (f"{name} was recorded before shop ids, and shops {', '.join(owners)} "
                      "list it")
        return None
    domain = legacy[: -len(LEGACY_OWNER.format(domain=""))]
    return legacy if domain in invalid_names else None


def _listed_twice(shops: Sequence[Shop]) -> dict[int, Conflict]:
    """Every entry of an owner that lists a name in more than one of its entries."""
    entries: dict[tuple[str, str], list[Shop]] = {}
    for shop in shops:
        if shop.status != "deleted":
            for name in shop.server_names:
                entries.setdefault((shop.owner, name), []).append(shop)
    out: dict[int, Conflict] = {}
    for (owner, name), listing in entries.items():
        if len(listing) < 2:
            continue
        domains = ", ".join(s.domain for s in listing)
        for shop in listing:
            out.setdefault(id(shop), Conflict(
                shop, (name,), f"{name} is listed by more than one entry of shop {owner} "
                f"({domains})", f"list {name} in one entry of shop {owner} only"))
    return out


def _foreign_deletion(shop: Shop, owners_of: Mapping[str, set[str]],
                      listed: Mapping[str, set[str]]) -> Conflict | None:
    """A deleted entry releases names and makes sync delete a lineage: only its own names."""
    foreign = [n for n in shop.server_names
               if (shop.owner not in owners_of[n] if n in owners_of
                   else bool(listed.get(n, set()) - {shop.owner}))]
    if not foreign:
        return None
    return Conflict(shop, tuple(foreign), f"a deleted entry for {', '.join(foreign)}, which "
                    "another shop has or lists", "remove the entry")


def _reserved(shop: Shop, rules: Rules) -> Conflict | None:
    """Names of the platform (for every owner but the platform's) and of the challenge zone."""
    bad = []
    for name in shop.server_names:
        base = base_of(name)
        if rules.challenge_zone and is_within(base, rules.challenge_zone):
            return Conflict(shop, (name,), f"{name} is in the challenge zone "
                            f"{rules.challenge_zone}, which holds no shop names",
                            f"remove {name} from the entry")
        if shop.owner == rules.platform_shop:
            continue
        for platform in rules.platform_domains:
            if not is_within(base, platform):
                continue
            if name.startswith("*.") or base == platform or platform_of(name, [platform]) \
                    is None:
                bad.append(name)
    if not bad:
        return None
    owner = (f"fleet.platform_shop ({rules.platform_shop})" if rules.platform_shop
             else "the platform's own entries (set fleet.platform_shop to their shop id)")
    return Conflict(shop, tuple(bad),
                    f"{', '.join(bad)} belong{'s' if len(bad) == 1 else ''} to the platform",
                    f"only {owner} may have a platform domain, its wildcard or names deeper "
                    "than one label below it; a shop may use <alias>.<platform domain>")


def _taken(shop: Shop, live: Mapping[str, str], held: Mapping[str, str],
           listed: Mapping[str, set[str]], live_wildcards: Mapping[str, str],
           rules: Rules) -> Conflict | None:
    """Names another owner has (sticky), holds by a wildcard, or claims at the same time."""
    me = shop.owner
    for name in shop.server_names:
        if name in held:
            return Conflict(shop, (name,), f"{name} is held: {held[name]}",
                            f"drop {name} from the entry of the shop that must not have it")
        owner = live.get(name)
        if owner is not None and owner != me:
            return _owned(shop, name, owner)
        if owner is None:
            rivals = sorted(listed.get(name, set()) - {me})
            if rivals:
                return Conflict(shop, (name,), f"{name} is claimed by shops {me} and "
                                f"{', '.join(rivals)} at once, and neither has it yet",
                                f"keep {name} in the entry of one shop only", rivals[0])
        platform_wildcard = me == rules.platform_shop and base_of(name) in rules.platform_domains
        if name.startswith("*.") and owner != me and not platform_wildcard:
            # A new wildcard: everything below its base must be this shop's. (Once live, names
            # below it are refused to others instead.)
            base = base_of(name)
            for other, other_owner in sorted(live.items()):
                if other_owner != me and is_within(base_of(other), base):
                    return Conflict(shop, (name,), f"{name} would cover {other}, which is "
                                    f"served for shop {other_owner}",
                                    f"a wildcard needs every name below {base} to be the same "
                                    "shop's", other_owner)
            for other, owners in sorted(listed.items()):
                rivals = sorted(owners - {me})
                if rivals and is_within(base_of(other), base) and other != name:
                    return Conflict(shop, (name,), f"{name} would cover {other}, which shop "
                                    f"{rivals[0]} claims", f"a wildcard needs every name "
                                    f"below {base} to be the same shop's", rivals[0])
        for base, owner in live_wildcards.items():
            if owner == me or not is_within(base_of(name), base):
                continue
            if owner == rules.platform_shop and base in rules.platform_domains:
                continue  # riders of the platform wildcard are what it is for
            return Conflict(shop, (name,), f"{name} lies under *.{base}, which is served for "
                            f"shop {owner}", f"only shop {owner} may have names below {base}",
                            owner)
    return None


def _owned(shop: Shop, name: str, owner: str) -> Conflict:
    return Conflict(
        shop, (name,), f"{name} belongs to shop {owner}, whose entry still lists it",
        f"remove {name} from shop {shop.owner}'s entry; it can move only once shop {owner} "
        "releases it (drops it from its entry, or is deleted)", owner)


def rules_for(settings: Config) -> Rules:
    """The rules a config implies: platform domains and shop, the challenge zone.

    The challenge zone is what the delegation puts after ``{domain}``
    (``_acme-challenge.{domain}.dyn.platform.example`` gives ``dyn.platform.example``): the
    names customers delegate into, never a shop's.
    """
    zone = None
    if settings.dns is not None:
        template = settings.dns.delegation.rstrip(".").lower()
        head, marker, tail = template.partition("{domain}.")
        if marker and tail and "{" not in tail:
            zone = tail
    for platform in settings.fleet.platform_domains:
        if zone is not None and is_within(platform, zone):
            raise ConfigError(
                f"{settings.source}: fleet.platform_domains: {platform} lies in the challenge "
                f"zone {zone} (dns.delegation), which holds no shop names; delegate into a "
                "zone of its own, such as _acme-challenge.{domain}.dyn.<platform domain>")
    return Rules(platform_domains=settings.fleet.platform_domains,
                 platform_shop=settings.fleet.platform_shop, challenge_zone=zone)
