#!/usr/bin/env python3
"""Run ``certbot-epages`` or the deploy hook with the phases of the deploy timed (bench only).

    python bench/timed.py TIMINGS.json cli --config C deploy --all
    python bench/timed.py TIMINGS.json cli --config C sync --domain DOMAIN
    python bench/timed.py TIMINGS.json hook [--defer]

It wraps functions of the installed package (nothing in the package changes) and writes, at
exit, the seconds spent in each phase, per load balancer where phases run once per load
balancer: ``{"phases": {"build": {"lb1": [1.2], "lb2": [1.1]}, ...}, "main_seconds": ...}``.
With ``BENCH_PROFILE=FILE`` in the environment the run is also profiled with cProfile (the
stats go to FILE; read them with ``python -m pstats FILE``).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

STARTED = time.monotonic()  # before the package's imports: they are part of what a run costs

import importlib  # noqa: E402
import types  # noqa: E402


def _module(name: str) -> types.ModuleType | None:
    """A package module to wrap, or None once a restructuring has moved it.

    Phases of moved code are then simply not timed; the totals still are.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


ownership = _module("certbot_epages.ownership")
decide = _module("certbot_epages.deploy.decide")
deployer = _module("certbot_epages.deploy.deployer")
lineages = _module("certbot_epages.deploy.lineages")
marker = _module("certbot_epages.deploy.marker")
probe = _module("certbot_epages.deploy.probe")
push = _module("certbot_epages.deploy.push")
release = _module("certbot_epages.deploy.release")
shared = _module("certbot_epages.deploy.shared")
manifest = _module("certbot_epages.deploy.manifest")
sync = _module("certbot_epages.fleet.sync")
preflight = _module("certbot_epages.fleet.preflight")

IMPORTED = time.monotonic()
_phases: dict[str, dict[str, list[float]]] = {}
_lock = threading.Lock()
_local = threading.local()  # the load balancer a thread works for, where known
_kinds: dict[str, str] = {}  # remote step script -> what it does


def _record(phase: str, lb: str, seconds: float) -> None:
    with _lock:
        _phases.setdefault(phase, {}).setdefault(lb, []).append(round(seconds, 4))


def _wrap(owner: Any, attr: str, phase: str | Callable[[tuple[Any, ...]], str],
          lb_of: Callable[[tuple[Any, ...]], str] | None = None) -> None:
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            name = phase(args) if callable(phase) else phase
            lb = lb_of(args) if lb_of is not None else getattr(_local, "lb", "")
            _record(name, lb, time.monotonic() - started)

    setattr(owner, attr, timed)


def _tag(owner: Any, attr: str, kind: str) -> None:
    """Remember which remote step a script built by ``owner.attr`` is."""
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    def tagged(*args: Any, **kwargs: Any) -> str:
        script = original(*args, **kwargs)
        _kinds[script] = kind
        return str(script)

    setattr(owner, attr, tagged)


def _per_lb(owner: Any, attr: str, phase: str) -> None:
    """Time a per-load-balancer method (``self`` or the first argument is a ``_Lb``)."""
    original = getattr(owner, attr, None)
    if original is None:
        return
    lb_type = getattr(deployer, "_Lb", None)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        lb = next((a.name for a in args if lb_type and isinstance(a, lb_type)), "")
        _local.lb = lb
        started = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            _record(phase, lb, time.monotonic() - started)

    setattr(owner, attr, timed)


def install() -> None:
    """Wrap the phases of a deploy (what still exists of them)."""
    deploy_cls = getattr(deployer, "Deployer", None)
    target = getattr(push, "Target", None)
    target_lb: Callable[[tuple[Any, ...]], str] = lambda args: args[0].name  # noqa: E731
    _wrap(deploy_cls, "load_inventory", "inventory")
    _wrap(lineages, "scan", "lineages_scan")
    _wrap(deploy_cls, "_read_truth", "read_truth")
    _wrap(ownership, "resolve", "ownership_resolve")
    _wrap(decide, "select", "select")
    _per_lb(deploy_cls, "_build", "build")
    _wrap(deployer, "render_site", "render_sites")
    _wrap(deployer, "render_shared", "render_shared_servers")
    _wrap(decide, "compose", "compose")
    _wrap(shared, "plan", "shared_plan")
    _wrap(shared, "render_maps", "shared_render_maps")
    _wrap(deploy_cls, "_stage", "stage_certs")
    _wrap(marker, "generation", "marker_generation")
    _wrap(getattr(manifest, "Manifest", None), "dumps", "manifest_dumps")
    _wrap(release, "build", "release_build")
    _wrap(deploy_cls, "_phase1", "phase1", lambda args: "")
    _wrap(deploy_cls, "_phase2", "phase2", lambda args: "")
    _wrap(target, "push_certs", "push_certs", target_lb)
    _wrap(target, "rsync", "rsync", target_lb)
    _wrap(target, "pull", "pull", target_lb)
    _wrap(target, "step", lambda args: _kinds.get(args[1], "other_steps"), target_lb)
    _wrap(probe, "wait_served", "probe", lambda args: f"{args[0].host}")
    _wrap(getattr(sync, "Sync", None), "_certbot", "certbot", lambda args: "")
    _wrap(getattr(sync, "Sync", None), "_inventory", "inventory")
    _wrap(preflight, "check", "preflight", lambda args: "")
    _tag(push, "script_test", "nginx_test")
    _tag(push, "script_go_live", "switch_reload")
    _tag(push, "script_prepare", "read_live")
    _tag(push, "script_prune", "prune")
    _tag(push, "script_prune_certs", "prune_certs")


def _indexed_covering() -> None:
    """BENCH_INDEXED_COVERING=1: ``lineages.covering`` through an index of the SANs.

    The package's ``covering`` tests every lineage for every shop (``decide.select`` calls
    it once per active shop): shops x lineages ``covers`` calls, 25 s at 10,000 shops with
    1,001 lineages and hours at 100,000 with 10,001. This returns the same lineage (the
    candidates are the lineages holding the shop's first name or its parent's wildcard, then
    the package's own test and order), so the bench can measure everything else at 100,000.
    Results say when it was on.
    """
    original = getattr(lineages, "covering", None)
    if original is None:
        return
    cache: list[Any] = [None, {}, {}]  # the lineage sequence last indexed, its index, order

    def covering(shop: Any, known: Any) -> Any:
        names = tuple(shop.server_names)
        if not names or not isinstance(known, (list, tuple)):
            return original(shop, known)
        if cache[0] is not known:
            index: dict[str, list[Any]] = {}
            for lin in known:
                for san in lin.names:
                    index.setdefault(san, []).append(lin)
            cache[0], cache[1] = known, index
            cache[2] = {id(lin): position for position, lin in enumerate(known)}
        first = names[0]
        found = list(cache[1].get(first, ()))
        if not first.startswith("*.") and "." in first:
            found += cache[1].get(f"*.{first.split('.', 1)[1]}", ())
        candidates = sorted((lin for lin in dict.fromkeys(found)
                             if all(lin.covers(n) for n in names)),
                            key=lambda lin: cache[2][id(lin)])  # the package's order on ties
        if not candidates:
            return None
        candidates.sort(key=lambda lin: (lin.name == shop.domain, lin.not_after), reverse=True)
        return candidates[0]

    lineages.covering = covering  # type: ignore[union-attr]


def _indexed_probe_names() -> None:
    """BENCH_INDEXED_COVERING=1 also: ``deployer._probe_names`` with its wildcards computed once.

    The package's version collects the wildcards of the record's lineage by walking every
    site of the composition, once per changed record: sites x sites steps when every site
    changes (a first deploy or a mode switch in shared mode: about a minute at 10,000 shops,
    hours at 100,000). This returns the same names from the wildcards of each lineage,
    collected once per composition.
    """
    if getattr(deployer, "_probe_names", None) is None:
        return
    cache: list[Any] = [None, 0, {}]  # the composition last seen, its size, lineage -> bases

    def probe_names(record: Any, comp: Any) -> list[str]:
        if cache[0] is not comp or cache[1] != len(comp.sites):
            wildcards: dict[str, set[str]] = {}
            for r in comp.sites.values():
                for n in r.names:
                    if n.startswith("*."):
                        wildcards.setdefault(r.lineage, set()).add(n[2:])
            cache[0], cache[1], cache[2] = comp, len(comp.sites), wildcards
        bases = cache[2].get(record.lineage, set())
        return [n for n in record.names
                if n.startswith("*.") or n.split(".", 1)[-1] not in bases]

    deployer._probe_names = probe_names  # type: ignore[union-attr]


def main() -> None:
    """Run the entry point named in argv[2] with the rest of argv; write the timings."""
    out, entry, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if os.environ.get("BENCH_INDEXED_COVERING") == "1":
        _indexed_covering()
        _indexed_probe_names()
    install()
    profile = os.environ.get("BENCH_PROFILE")
    code: list[int] = [1]

    def write() -> None:
        data = {"import_seconds": round(IMPORTED - STARTED, 4),
                "main_seconds": round(time.monotonic() - IMPORTED, 4),
                "exit_code": code[0], "phases": _phases}
        with open(out, "w") as f:
            json.dump(data, f, indent=1)

    atexit.register(write)
    if entry == "cli":
        from certbot_epages.cli import main as run
    elif entry == "hook":
        from certbot_epages.deploy.hook import hook_main as run
    else:
        raise SystemExit(f"timed.py: unknown entry point {entry!r} (cli or hook)")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        code[0] = profiler.runcall(run, args)
        profiler.dump_stats(profile)
    else:
        code[0] = run(args)
    sys.exit(code[0])


if __name__ == "__main__":
    main()
