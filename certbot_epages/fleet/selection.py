"""``sync --domain``: the inventory entries a run acts on, and the plan cut down to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from certbot_epages.errors import SyncError
from certbot_epages.fleet import plan as planning
from certbot_epages.inventory import Inventory, Problem


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
