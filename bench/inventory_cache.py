"""Micro benchmark: loading a large inventory parsed and checked, against the inventory cache.

No sandbox, no servers: ``.venv/bin/python bench/inventory_cache.py [--shops 100000]``.
Prints the seconds of each way (median of ``--runs``) and the sizes of the files.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from certbot_epages import inventory_cache
from certbot_epages.inventory import Inventory, load_inventory

TEMPLATES = ("custom-domain", "platform-wildcard")


def write_inventory(path: Path, shops: int) -> None:
    """Custom domains with an alias and an upstream each, the way the shop software exports."""
    entries = [{"domain": f"shop{i}.customer{i % 997}.example",
                "aliases": [f"www.shop{i}.customer{i % 997}.example"],
                "template": "custom-domain",
                "vars": {"upstream": f"10.{i % 200}.{i % 250}.{i % 199 + 1}:8080"},
                "shop": f"s{i}"} for i in range(shops)]
    path.write_text(yaml.safe_dump(entries, width=200))


def timed(runs: int, body: Callable[[], Inventory]) -> tuple[float, Inventory]:
    """The median seconds of ``runs`` calls, and the last result."""
    seconds = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = body()
        seconds.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(seconds), result


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shops", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        inventory = Path(directory) / "inventory.yaml"
        cache = Path(directory) / "spool"
        write_inventory(inventory, args.shops)

        def uncached() -> Inventory:
            return load_inventory(inventory, templates=TEMPLATES)

        def cached() -> Inventory:
            return load_inventory(inventory, templates=TEMPLATES, cache=cache)

        parse_s, parsed = timed(args.runs, uncached)
        miss_s, _ = timed(1, cached)  # parses, checks and writes the cache
        hit_s, hit = timed(args.runs, cached)
        assert hit == parsed and len(hit.shops) == args.shops
        size = inventory.stat().st_size
        cache_size = (cache / inventory_cache.FILENAME).stat().st_size
    print(f"{args.shops} shops, inventory {size / 1e6:.1f} MB YAML, "
          f"cache {cache_size / 1e6:.1f} MB")
    print(f"parse and check (no cache): {parse_s:8.2f} s  (median of {args.runs})")
    print(f"first load (miss, writes):  {miss_s:8.2f} s")
    print(f"from the cache (hit):       {hit_s:8.2f} s  (median of {args.runs}), "
          f"{parse_s / hit_s:.0f}x faster")


if __name__ == "__main__":
    main()
