"""Loading the inventory: read, checked, or taken from the cache.

Read by :mod:`.fetch`, checked by :mod:`.entries`, or taken from the cache (:mod:`.cache`)
while nothing it was checked from has changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
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
    return load_inventory(
        settings.need_inventory(what), templates=templates.names(),
        safe_vars=templates.all_safe_vars(), timeout=settings.inventory_timeout,
        max_bytes=settings.inventory_max_bytes,
        cache=settings.deploy.spool if settings.deploy else settings.fleet.state_dir)


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

    if cache is None:
        return parse()
    return cache_file.load(cache, raw, templates, safe_vars, parse)
