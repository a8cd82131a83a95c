#!/usr/bin/env python3
"""Benchmark of certbot-epages on the sandbox platform (``make bench``; see bench/README.md).

The runner: it starts one sandbox, runs the chosen parts (``epbench/parts/``), keeps what it
measured in ``results.json`` and renders ``results.md`` from it (``epbench/report/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The tests' helpers (epages_testlib) are the bench's too; tests/ holds no package, so it cannot
# shadow the installed certbot_epages.
sys.path.append(str(BENCH_DIR.parent / "tests"))

from epbench.common import BENCH, TIME_LIMIT, WORK, Budget, log, run  # noqa: E402
from epbench.issuer import Issuer  # noqa: E402
from epbench.machine import machine  # noqa: E402
from epbench.parts import ALIASES, ALL_PARTS  # noqa: E402
from epbench.parts.deploy import (  # noqa: E402
    DEPLOY_SIZES,
    QUICK_DEPLOY_SIZES,
    default_probe_timeout,
    part_deploy,
)
from epbench.parts.hooks import part_hooks  # noqa: E402
from epbench.parts.issuance import part_issuance  # noqa: E402
from epbench.parts.lag import part_lag  # noqa: E402
from epbench.parts.modes import MODE_PARTS, QUICK_SHOPS, part_mode  # noqa: E402
from epbench.parts.sync import (  # noqa: E402
    SYNC_FIXED,
    part_sync,
    per_order_estimate,
    sync_orders_for,
    sync_reserve,
)
from epbench.report import render_markdown  # noqa: E402
from epbench.results import kept_from, merged  # noqa: E402

from certbot_epages.sandbox.platform import Sandbox  # noqa: E402


@contextlib.contextmanager
def sandbox_running() -> Iterator[Sandbox]:
    """A sandbox under /tmp (not mode 0700: nginx workers run as nobody), always torn down."""
    directory = Path(tempfile.mkdtemp(prefix="cebench-", dir="/tmp"))
    directory.chmod(0o755)
    sb = Sandbox.up(directory)
    try:
        yield sb
    finally:
        killed = sb.down()
        if killed:
            log(f"force-killed at teardown: {', '.join(killed)}")
        shutil.rmtree(directory, ignore_errors=True)


def chosen_parts(spec: str) -> set[str]:
    """The parts ``--parts`` names (aliases expanded); ValueError for unknown ones."""
    parts: set[str] = set()
    for part in spec.split(","):
        parts.update(ALIASES.get(part.strip(), (part.strip(),)))
    unknown = parts - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join([*ALL_PARTS, *ALIASES])}")
    return parts


def run_dns_and_sites_parts(sb: Sandbox, parts: set[str], args: argparse.Namespace,
                            budget: Budget, results: dict[str, Any]) -> None:
    """Parts 1-5 on one sandbox, in order, adding each one's raw numbers to ``results``."""
    env = {**os.environ, **sb.env()}
    registered = run(sb.certbot_argv("register"), env=env, timeout=120)
    if not registered.ok:
        raise RuntimeError(f"certbot register failed: {registered.stderr}")
    issuer = Issuer(sb)
    if "issuance" in parts:
        results["issuance"] = part_issuance(sb, issuer, args.quick)
        log(f"elapsed {budget.elapsed():.0f}s")
    if "lag" in parts:
        results["lag"] = part_lag(sb, issuer, args.quick)
        log(f"elapsed {budget.elapsed():.0f}s")
    if "hooks" in parts:
        results["hooks"] = part_hooks(sb, issuer, args.quick, results.get("issuance"))
        log(f"elapsed {budget.elapsed():.0f}s")
    if "deploy" in parts:
        results["deploy"] = {}
        sizes = QUICK_DEPLOY_SIZES if args.quick else DEPLOY_SIZES
        for size in sizes:
            small = size == min(sizes)
            # 3 first deploys, 2 rounds of the rest at 1,000 shops; 1 of each at 10,000 (one
            # round there costs ~5 min, mostly nginx -t and reloads).
            runs, rounds = (3, 2) if small and not args.quick else (1, 1)
            always = small or args.quick
            results["deploy"][str(size)] = part_deploy(
                sb, size, runs, rounds, timed_hooks=10 if small else 0,
                may_run=lambda estimate, always=always: always  # type: ignore[misc]
                or budget.left() - estimate > sync_reserve(results, 40),
                smallest=small)
            log(f"elapsed {budget.elapsed():.0f}s")
    if "sync" in parts:
        per_order = per_order_estimate(results)
        orders = sync_orders_for(budget, per_order, fixed=SYNC_FIXED, quick=args.quick)
        results["sync_sizing"] = {"estimated_seconds_per_order": round(per_order, 2),
                                  "left_seconds": round(budget.left(), 1),
                                  "http01_orders": orders}
        results["sync"] = part_sync(sb, orders)


def run_parts(parts: set[str], args: argparse.Namespace, budget: Budget,
              results: dict[str, Any]) -> None:
    """Parts 1-5 on one sandbox, then each mode part on a sandbox of its own.

    nginx never gives memory back: after a sites-mode fleet its processes stay large, so each
    mode part measures RSS (and everything else) on load balancers that started empty.
    """
    if parts - set(MODE_PARTS):
        log("starting the sandbox")
        with sandbox_running() as sb:
            run_dns_and_sites_parts(sb, parts, args, budget, results)
    for key, (mode, shops) in MODE_PARTS.items():
        if key in parts:
            log(f"starting a sandbox for {key}")
            with sandbox_running() as sb:
                results.setdefault("modes", {})[key] = (
                    part_mode(sb, key, mode, QUICK_SHOPS[shops] if args.quick else shops,
                              args.quick, args.profile))
            log(f"elapsed {budget.elapsed():.0f}s")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and write results.md and results.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 run, short sleeps, small fleets (results marked)")
    parser.add_argument("--parts", default="all",
                        help=f"comma-separated parts: {', '.join(ALL_PARTS)}; or "
                             + "; ".join(f"{k} = {'+'.join(v)}" for k, v in ALIASES.items()))
    parser.add_argument("--merge", action="store_true",
                        help="keep the parts not run now from the results.json in --output "
                             "(each part records its own date and load)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the first deploy, last renewal and first batch of each "
                             "mode part (stats in bench/work/profile-*.pstats)")
    parser.add_argument("--render", action="store_true",
                        help="only re-render results.md from the results.json in --output")
    parser.add_argument("--output", type=Path, default=BENCH,
                        help="where results.md and results.json go (default: bench/)")
    args = parser.parse_args(argv)
    if args.render:
        stored = json.loads((args.output / "results.json").read_text())
        (args.output / "results.md").write_text(render_markdown(stored))
        return 0
    try:
        parts = chosen_parts(args.parts)
    except ValueError as e:
        parser.error(str(e))
    if os.geteuid() != 0:
        print("bench/run.py needs root (the sandbox does)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # teardown runs on TERM too
    budget = Budget(TIME_LIMIT)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    results: dict[str, Any] = {"quick": args.quick, "machine": machine(),
                               "default_probe_timeout": default_probe_timeout()}
    kept: dict[str, Any] = {}
    if args.merge and (args.output / "results.json").exists():
        kept = kept_from(json.loads((args.output / "results.json").read_text()), parts,
                         set(parts))
    try:
        run_parts(parts, args, budget, results)
    finally:
        results["total_seconds"] = round(budget.elapsed(), 1)
        results["load_average_at_end"] = list(os.getloadavg())
        (WORK / "rfc2136.ini").unlink(missing_ok=True)
        results["parts_run"] = [  # those that finished
            p for p in sorted(parts)
            if p in results or p in results.get("modes", {})]
        if kept:
            results = merged(kept, results)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output / "results.md").write_text(render_markdown(results))
    log(f"done in {results['total_seconds'] / 60:.1f} min: {args.output / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
