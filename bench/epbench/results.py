"""results.json across runs: a run of some parts keeps the other parts of an earlier run."""

from __future__ import annotations

from typing import Any

from epbench.parts import DNS_PARTS

# Parts whose results sit at the top level of results.json (the mode parts live under "modes").
TOP_LEVEL_PARTS = (*DNS_PARTS, "deploy", "sync")
def kept_from(previous: dict[str, Any], parts: set[str], modes_now: set[str]) -> dict[str, Any]:
    """What to keep of an earlier results.json: the parts not run now, with that run's facts.

    ``modes_now``: the keys under "modes" this run writes.
    """
    kept: dict[str, Any] = {}
    old = [p for p in TOP_LEVEL_PARTS if p in previous and p not in parts]
    if old:
        kept = {p: previous[p] for p in old}
        if "sync" in old and "sync_sizing" in previous:
            kept["sync_sizing"] = previous["sync_sizing"]
        # These parts are described with the machine facts of the run that measured them.
        kept["earlier_run"] = previous.get("earlier_run") or {
            "machine": previous.get("machine"), "total_seconds": previous.get("total_seconds"),
            "load_average_at_end": previous.get("load_average_at_end"),
            "default_probe_timeout": previous.get("default_probe_timeout"),
            "quick": previous.get("quick"), "parts": old}
    modes = {k: v for k, v in previous.get("modes", {}).items() if k not in modes_now}
    if modes:
        kept["modes"] = modes
    return kept


def merged(kept: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The results of this run, with the kept parts of an earlier one."""
    out = dict(results)
    for key, value in kept.items():
        if key == "modes":
            out["modes"] = {**value, **results.get("modes", {})}
        elif key not in out:
            out[key] = value
    return out
