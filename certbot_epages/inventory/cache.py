"""The checked inventory, kept between runs: a renewal deploy need not parse 100,000 entries.

Parsing a 100,000-entry YAML inventory and checking every entry takes tens of seconds; reading
back the checked result takes a fraction of a second. The cache file
(``<directory>/inventory-cache.json``, mode 0600) is used only when its key matches: the
sha256 of the inventory's bytes, the template names and their safe variables the entries were
checked against, and the versions of the code that checks them (this package, its checking
modules' source, PyYAML, idna, the Unicode database). Anything else (another inventory, a
changed template, an unreadable, truncated or altered file) is a miss: the inventory is parsed
and checked as always and the cache is written anew. Nothing depends on the cache being there.

Layout: one line of JSON header (format, key, sha256 of the rest), then the entries as JSON.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import stat
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from certbot_epages import __version__
from certbot_epages.files import atomic_write
from certbot_epages.inventory.model import Inventory, Problem, Shop

logger = logging.getLogger(__name__)

FILENAME = "inventory-cache.json"
FORMAT = 1
# The modules whose rules decide what a checked entry is: a change to them is a miss.
_CHECKING_CODE = ("inventory/model.py", "inventory/entries.py", "inventory/fetch.py",
                  "inventory/cache.py", "names.py", "netaddr.py")


class _Miss(Exception):
    """The cache cannot be used; the message says why (for -v)."""


def load(directory: Path, raw: bytes, templates: Collection[str],
         safe_vars: Mapping[str, Collection[str]] | None,
         parse: Callable[[], Inventory]) -> Inventory:
    """The inventory checked from ``raw``: from the cache in ``directory``, else ``parse()``.

    After a miss the result of ``parse()`` is written to the cache (a failure to write it is
    logged, never raised). Errors of ``parse()`` (an unreadable inventory) pass through and
    are not cached.
    """
    path = directory / FILENAME
    wanted = key(raw, templates, safe_vars)
    try:
        inventory = read(path, wanted)
    except _Miss as e:
        logger.info("inventory cache %s not used: %s", path, e)
    else:
        logger.info("inventory read from the cache %s", path)
        return inventory
    inventory = parse()
    try:
        write(path, wanted, inventory)
    except OSError as e:
        logger.warning("cannot write the inventory cache %s: %s", path, e.strerror or e)
    return inventory


def key(raw: bytes, templates: Collection[str],
        safe_vars: Mapping[str, Collection[str]] | None) -> str:
    """What a cached inventory must have been checked from to be used for ``raw``."""
    material = {
        "format": FORMAT,
        "inventory_sha256": hashlib.sha256(raw).hexdigest(),
        "templates": sorted(templates),
        "safe_vars": {name: sorted(names) for name, names in sorted((safe_vars or {}).items())},
        "code": _code_version(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _code_version() -> dict[str, str]:
    import importlib.metadata

    import yaml

    here = Path(__file__).parent.parent  # the package's root
    source = hashlib.sha256()
    for name in _CHECKING_CODE:
        with contextlib.suppress(OSError):
            source.update(name.encode() + b"\0" + (here / name).read_bytes())
    try:
        idna = importlib.metadata.version("idna")
    except importlib.metadata.PackageNotFoundError:
        idna = "none"
    return {"certbot_epages": __version__, "source": source.hexdigest(), "idna": idna,
            "pyyaml": yaml.__version__, "unicode": unicodedata.unidata_version}


def read(path: Path, wanted: str) -> Inventory:
    """The cached inventory at ``path`` if its key is ``wanted``; else raise _Miss."""
    try:
        # Non-blocking: a FIFO planted there must not hang the run (regular files ignore it).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _Miss("no cache yet") from None
    except OSError as e:
        raise _Miss(f"cannot open it: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        os.close(fd)
        raise _Miss("not a private file of this user (mode 0600 expected)")
    with os.fdopen(fd, "rb") as f:
        header = f.readline()
        try:
            head = json.loads(header)
        except ValueError:
            raise _Miss("its header is corrupt") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise _Miss("another format")
        if head.get("key") != wanted:
            raise _Miss("the inventory, the templates or the code changed")
        payload = f.read()
    if hashlib.sha256(payload).hexdigest() != head.get("sha256"):
        raise _Miss("its content is corrupt (checksum mismatch)")
    try:
        with _no_gc():
            return _inventory(json.loads(payload))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _Miss(f"its content is corrupt ({e})") from None


def write(path: Path, wanted: str, inventory: Inventory) -> None:
    """Write the cache file atomically (temporary file, fsync, rename), mode 0600."""
    payload = json.dumps(_data(inventory), separators=(",", ":")).encode()
    header = json.dumps({"format": FORMAT, "key": wanted,
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    atomic_write(path, header + b"\n" + payload, dir_mode=0o700)


def _data(inventory: Inventory) -> dict[str, Any]:
    return {
        "shops": [[s.domain, list(s.aliases), s.template, dict(s.vars), s.status, s.shop]
                  for s in inventory.shops],
        "problems": [[p.index, p.domain, p.message, p.name, p.owner, p.status]
                     for p in inventory.problems],
    }


def _inventory(data: dict[str, Any]) -> Inventory:
    shops = tuple(Shop(domain, tuple(aliases), template, variables, status, shop)
                  for domain, aliases, template, variables, status, shop in data["shops"])
    problems = tuple(Problem(*entry) for entry in data["problems"])
    return Inventory(shops=shops, problems=problems)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Build many small objects without the collector running over them again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
