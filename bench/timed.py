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
scripts = _module("certbot_epages.deploy.scripts")
builder = _module("certbot_epages.deploy.builder")
release = _module("certbot_epages.deploy.release")
shared = _module("certbot_epages.deploy.shared")
manifest = _module("certbot_epages.deploy.manifest")
sync = _module("certbot_epages.fleet.sync")
preflight = _module("certbot_epages.fleet.preflight")
inventory_load = _module("certbot_epages.inventory.load")

IMPORTED = time.monotonic()
_phases: dict[str, dict[str, list[float]]] = {}
_lock = threading.Lock()
_local = threading.local()  # the load balancer a thread works for, where known
_kinds: dict[str, str] = {}  # remote step script -> what it does


_timeline: list[tuple[str, str, float, float]] = []  # phase, lb, start, end (since STARTED)


def _record(phase: str, lb: str, seconds: float) -> None:
    now = time.monotonic() - STARTED
    with _lock:
        _phases.setdefault(phase, {}).setdefault(lb, []).append(round(seconds, 4))
        _timeline.append((phase, lb, round(now - seconds, 3), round(now, 3)))


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
    source_cls = getattr(inventory_load, "Source", None)
    if source_cls is not None:  # every way to the checked inventory goes through it
        _wrap(source_cls, "inventory", "inventory")
    else:
        _wrap(deploy_cls, "load_inventory", "inventory")
    _wrap(lineages, "scan", "lineages_scan")
    _wrap(deployer, "_connect", "connect", lambda args: args[0].name)
    _wrap(target, "truth", "truth_wait", target_lb)
    _wrap(deploy_cls, "_take_truths", "take_truths")  # waits for the lock sessions' answers
    _wrap(deploy_cls, "_read_truth", "read_truth")
    _wrap(ownership, "resolve", "ownership_resolve")
    _wrap(decide, "select", "select")
    _per_lb(deploy_cls, "_build", "build")
    _wrap(deploy_cls, "_patch_checks", "read_truth")  # the renewal fast path's truth
    _per_lb(deploy_cls, "_patch_build", "build")
    _wrap(builder, "render_site", "render_sites")
    _wrap(builder, "render_shared", "render_shared_servers")
    _wrap(decide, "compose", "compose")
    _wrap(shared, "plan", "shared_plan")
    _wrap(shared, "render_maps", "shared_render_maps")
    _wrap(getattr(builder, "Builder", None), "_stage", "stage_certs")
    _wrap(marker, "generation", "marker_generation")
    _wrap(getattr(manifest, "Manifest", None), "dumps", "manifest_dumps")
    _wrap(release, "build", "release_build")
    _per_lb(deploy_cls, "_stage", "stage")
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
    _tag(scripts, "script_test", "nginx_test")
    _tag(scripts, "script_go_live", "switch_reload")
    _tag(scripts, "script_prepare", "read_live")
    _tag(scripts, "script_prune", "prune")
    _tag(scripts, "script_prune_certs", "prune_certs")


def main() -> None:
    """Run the entry point named in argv[2] with the rest of argv; write the timings."""
    out, entry, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    install()
    profile = os.environ.get("BENCH_PROFILE")
    code: list[int] = [1]

    def write() -> None:
        data = {"import_seconds": round(IMPORTED - STARTED, 4),
                "main_seconds": round(time.monotonic() - IMPORTED, 4),
                "exit_code": code[0], "phases": _phases,
                "timeline": sorted(_timeline, key=lambda t: t[2])}
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
