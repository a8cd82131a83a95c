"""A checked inventory: the shops that passed every check, and the entries that did not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from certbot_epages.errors import EpagesError
from certbot_epages.names import implicit_owner

VarValue = str | int | bool


class InventoryError(EpagesError):
    """The inventory as a whole could not be read: unreachable, unreadable or not a list."""


@dataclass(frozen=True)
class Shop:
    """One checked inventory entry: a shop's names, its template and the template's vars."""

    domain: str
    aliases: tuple[str, ...]
    template: str
    vars: Mapping[str, VarValue] = field(default_factory=lambda: MappingProxyType({}))
    status: str = "active"
    shop: str | None = None  # the shop's id in the shop software

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "vars", MappingProxyType(dict(self.vars)))

    @property
    def server_names(self) -> tuple[str, ...]:
        """The domain followed by the aliases: every name the shop answers to."""
        return (self.domain, *self.aliases)

    @property
    def owner(self) -> str:
        """Who the shop's names belong to: its shop id, else the entry's own domain.

        An entry without an id is an owner no id can spell (``<domain> (no shop id)``), so no
        entry can pose as it by choosing an id.
        """
        return self.shop if self.shop is not None else implicit_owner(self.domain)

    @property
    def is_active(self) -> bool:
        """True if the shop is to be served (not suspended or deleted)."""
        return self.status == "active"

    def as_dict(self) -> dict[str, Any]:
        """The entry as plain data (dicts, lists, scalars) for templates."""
        return {
            "domain": self.domain,
            "aliases": list(self.aliases),
            "server_names": list(self.server_names),
            "template": self.template,
            "vars": dict(self.vars),
            "status": self.status,
            "shop": self.shop,
        }


@dataclass(frozen=True)
class Problem:
    """An inventory entry that was skipped, and why.

    ``index`` is the entry's position in the list (from 0); ``domain`` is the entry's domain
    as given, made printable and shortened for messages, or None when it had none.  ``name`` is
    the domain normalised, when it is a valid one, and ``owner`` the entry's owner when it can
    be told (its valid ``shop`` id, else ``name``): what an invalid entry had still belongs to
    it.
    """

    index: int
    domain: str | None
    message: str
    name: str | None = None
    owner: str | None = None
    status: str | None = None  # the entry's status, when it is a valid one

    def __str__(self) -> str:
        name = f" ({self.domain})" if self.domain is not None else ""
        return f"inventory entry {self.index}{name}: {self.message}"


@dataclass(frozen=True)
class Inventory:
    """The loaded inventory: the entries that passed every check, and the ones that did not."""

    shops: tuple[Shop, ...]
    problems: tuple[Problem, ...]

    def active(self) -> tuple[Shop, ...]:
        """The shops with status ``active``."""
        return tuple(shop for shop in self.shops if shop.is_active)
