"""Loading the inventory: read, checked, or taken from the cache.

Read by :mod:`.fetch`, checked by :mod:`.entries`, or taken from the cache (:mod:`.cache`)
while nothing it was checked from has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from certbot_epages.inventory import cache as cache_file
from certbot_epages.inventory import fetch
from certbot_epages.inventory.entries import parse_inventory
from certbot_epages.inventory.model import Inventory

if TYPE_CHECKING:
    from certbot_epages.config import Config


class Templates(Protocol):
    """The shop templates entries are checked against (a :class:`~.render.TemplateSet`)."""

    def names(self) -> Collection[str]:  # noqa: D102
        ...

    def all_safe_vars(self) -> Mapping[str, Collection[str]]:  # noqa: D102
        ...


def load_configured(settings: Config, templates: Templates, what: str) -> Inventory:
    """The inventory epages.yaml names, checked against ``templates``, within its limits.

    The checked result is cached in ``deploy.spool`` (else ``fleet.state_dir``). ``what``
    names the runs that need it, for the error when ``inventory`` is not set.
    """
    return read_configured(settings, templates, what).inventory()


def read_configured(settings: Config, templates: Templates, what: str) -> Source:
    """The inventory epages.yaml names, read but not yet checked (see :class:`Source`)."""
    return read_source(
        settings.need_inventory(what), templates=templates.names(),
        safe_vars=templates.all_safe_vars(), timeout=settings.inventory_timeout,
        max_bytes=settings.inventory_max_bytes,
        cache=settings.deploy.spool if settings.deploy else settings.fleet.state_dir)


class Source:
    """An inventory's bytes, read; checked (or taken from the cache) on first use.

    :attr:`key` says what the bytes are, with the templates they are checked against, without
    checking 100,000 entries: a renewal that changes nothing else need not look at them.
    """

    def __init__(self, raw: bytes, templates: Collection[str],
                 safe_vars: Mapping[str, Collection[str]] | None, cache: Path | None,
                 parse: Callable[[], Inventory]) -> None:
        self.raw = raw
        self.templates = templates
        self.safe_vars = safe_vars
        self.cache = cache
        self._parse = parse
        self._key: str | None = None
        self._inventory: Inventory | None = None

    @property
    def key(self) -> str:
        """The inventory cache's key for these bytes (:func:`.cache.key`)."""
        if self._key is None:
            self._key = cache_file.key(self.raw, self.templates, self.safe_vars)
        return self._key

    def inventory(self) -> Inventory:
        """The checked inventory (from the cache while nothing it was checked from changed)."""
        if self._inventory is None:
            if self.cache is None:
                self._inventory = self._parse()
            else:
                self._inventory = cache_file.load(self.cache, self.raw, self.templates,
                                                  self.safe_vars, self._parse)
        return self._inventory


def load_inventory(
    source: str | Path,
    *,
    templates: Collection[str],
    safe_vars: Mapping[str, Collection[str]] | None = None,
    timeout: float = fetch.DEFAULT_TIMEOUT,
    max_bytes: int = fetch.MAX_URL_BYTES,
    cache: Path | None = None,
) -> Inventory:
    """Read the inventory from a file (YAML or JSON) or an http(s) URL (JSON) and check it.

    ``templates`` are the names of the available shop templates; ``safe_vars`` maps a template
    name to the variables it declares safe.  A string ``source`` starting with ``http://`` or
    ``https://`` is fetched within ``timeout`` seconds in all and at most ``max_bytes``; anything
    else is a file path.  Raises
    :class:`InventoryError` naming the source when it cannot be read or is not a list of
    entries; bad entries are reported in :attr:`Inventory.problems`.  With ``cache`` (a
    directory), the checked result is kept there and used again while the bytes read and the
    templates stay the same (:mod:`.cache`).
    """
    return read_source(source, templates=templates, safe_vars=safe_vars, timeout=timeout,
                       max_bytes=max_bytes, cache=cache).inventory()


def read_source(
    source: str | Path,
    *,
    templates: Collection[str],
    safe_vars: Mapping[str, Collection[str]] | None = None,
    timeout: float = fetch.DEFAULT_TIMEOUT,
    max_bytes: int = fetch.MAX_URL_BYTES,
    cache: Path | None = None,
) -> Source:
    """The inventory's bytes, read as :func:`load_inventory` reads them, not yet checked."""
    if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
        where = fetch.redact(source)
        raw = fetch.fetch(source, where, timeout, max_bytes)
        decode = fetch.json_document
    else:
        path = Path(source)
        where = str(path)
        raw = fetch.read_bytes(path)
        decode = fetch.yaml_document

    def parse() -> Inventory:
        return parse_inventory(decode(raw, where), templates=templates, safe_vars=safe_vars,
                               source=where)

    return Source(raw, templates, safe_vars, cache, parse)
