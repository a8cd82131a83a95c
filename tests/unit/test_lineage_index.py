"""Finding a shop's lineage through the index gives what a scan of every lineage gives."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from certbot_epages.deploy.lineages import Index, Lineage
from certbot_epages.inventory import Shop

pytestmark = pytest.mark.unit


def _scan(shop: Shop, lineages: list[Lineage]) -> Lineage | None:
    found = [lin for lin in lineages if all(lin.covers(n) for n in shop.server_names)]
    found.sort(key=lambda lin: (lin.name == shop.domain, lin.not_after), reverse=True)
    return found[0] if found else None


def test_the_index_agrees_with_a_scan_on_random_fleets() -> None:
    rng = random.Random(7)
    names = [f"s{i}.test" for i in range(30)] + [f"a{i}.p.test" for i in range(10)]
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for _ in range(50):
        lineages = []
        for i in range(rng.randint(1, 25)):
            sans = rng.sample(names, rng.randint(1, 3))
            if rng.random() < 0.2:
                sans.append("*.p.test")
            lineages.append(Lineage(f"l{i}", Path("/le/live") / f"l{i}", tuple(sorted(sans)),
                                    start + timedelta(days=rng.randint(0, 3)), f"{i:064x}"))
        index = Index(lineages)
        for domain in [*names, "*.p.test"]:
            aliases = tuple(rng.sample(names, rng.randint(0, 2)))
            shop = Shop(domain, tuple(a for a in aliases if a != domain), "custom-domain")
            assert index.covering(shop) == _scan(shop, lineages), (domain, aliases)
