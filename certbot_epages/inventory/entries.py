"""The checks of every inventory entry: names, template, variables, status and shop id.

A bad entry becomes a :class:`~.model.Problem` and is skipped while the others load.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from certbot_epages.inventory.model import Inventory, InventoryError, Problem, Shop, VarValue
from certbot_epages.names import SHOP_ID_RE, implicit_owner, printable, validate_domain
from certbot_epages.netaddr import HostPort

STATUSES = ("active", "suspended", "deleted")
ENTRY_KEYS = ("domain", "aliases", "template", "vars", "status", "shop")
TEMPLATE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
VAR_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")
UNSAFE_CHARS = frozenset(";{}\"'\\$#")
# The common case, checked fast: printable ASCII without blanks or UNSAFE_CHARS.
_PLAIN_VALUE = re.compile(r"[!%&(-:<-\[\]-z|~]+")
MAX_VAR_LENGTH = 4096


def validate_var(name: str, value: object, *, safe: bool = False) -> VarValue:
    r"""Return the template variable's value if it may go into an nginx config, else ValueError.

    ``name`` must match ``^[a-z_][a-z0-9_]*$``; the value must be a string, an integer or a
    boolean.  Strings must be non-empty, without whitespace, control characters or any of
    ``; { } " ' \ $ #``.  A ``safe`` variable (declared so by its template) may contain those
    and be empty, but still no control characters or line breaks.
    """
    if not isinstance(name, str) or not VAR_NAME_RE.fullmatch(name):
        raise ValueError(
            f"variable name {printable(str(name))} must match ^[a-z_][a-z0-9_]*$"
        )
    if isinstance(value, (bool, int)):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"variable {name!r} must be a string, integer or boolean, "
            f"got {type(value).__name__}"
        )
    if len(value) > MAX_VAR_LENGTH:
        raise ValueError(f"variable {name!r} is longer than {MAX_VAR_LENGTH} characters")
    if safe:
        if any(not c.isprintable() and c != " " for c in value):
            raise ValueError(
                f"variable {name!r} must not contain control characters or line breaks: "
                f"{printable(value)}"
            )
        return value
    if not value:
        raise ValueError(f"variable {name!r} must not be empty")
    if _PLAIN_VALUE.fullmatch(value):
        bad = []
    else:
        bad = sorted({c for c in value if c in UNSAFE_CHARS or c.isspace() or not c.isprintable()})
    if bad:
        shown = " ".join(printable(c) for c in bad)
        raise ValueError(
            f"variable {name!r} contains characters that are not allowed in an nginx "
            f"directive ({shown}): {printable(value)}; a template may declare the variable "
            "safe with {# epages: safe_vars = " + name + " #}"
        )
    if name == "upstream":
        # proxy_pass http://<upstream>: only host:port, never "unix:/some/socket:" on the LB.
        try:
            HostPort.parse(value, 80)
        except ValueError as e:
            raise ValueError(f"variable 'upstream' must be host:port: {e}") from None
    return value


def parse_inventory(
    data: object,
    *,
    templates: Collection[str],
    safe_vars: Mapping[str, Collection[str]] | None = None,
    source: str = "inventory",
) -> Inventory:
    """Check already-parsed inventory ``data``; ``source`` is named in an InventoryError."""
    if isinstance(data, dict):
        unknown = sorted(str(k) for k in data if k != "shops")
        if unknown:
            raise InventoryError(
                f"{source}: unknown top-level key(s) {', '.join(unknown)}; expected a list of "
                "shops or a mapping with the single key 'shops'"
            )
        if "shops" not in data:
            raise InventoryError(f"{source}: the mapping has no 'shops' list")
        data = data["shops"]
    if not isinstance(data, list):
        got = "an empty document" if data is None else type(data).__name__
        raise InventoryError(f"{source}: expected a list of shops, got {got}")
    safe = safe_vars or {}
    problems: list[Problem] = []
    parsed: list[tuple[int, str | None, Shop]] = []
    for index, entry in enumerate(data):
        given = _given_domain(entry)
        try:
            parsed.append((index, given, _parse_entry(entry, templates, safe)))
        except ValueError as e:
            name, owner, status = _identity(entry)
            problems.append(Problem(index, given, str(e), name, owner, status))
    # Which entry may have which name is not decided here but against what the load balancers
    # serve (certbot_epages.ownership): the order of entries must not matter.
    problems.sort(key=lambda p: p.index)
    return Inventory(shops=tuple(shop for _, _, shop in parsed), problems=tuple(problems))


def _given_domain(entry: object) -> str | None:
    if isinstance(entry, dict):
        domain = entry.get("domain")
        if isinstance(domain, str):
            shown = repr(domain[:80])[1:-1] or "''"
            return shown + "..." if len(domain) > 80 else shown
    return None


def _identity(entry: object) -> tuple[str | None, str | None, str | None]:
    """The normalised domain, the owner and the status of an entry that failed its checks.

    What an invalid entry's owner serves stays (unless the entry says it is suspended or
    deleted): the owner is its valid ``shop`` id, else its valid domain.
    """
    if not isinstance(entry, dict):
        return None, None, None
    try:
        name: str | None = validate_domain(entry.get("domain"))
    except ValueError:
        name = None
    shop = entry.get("shop")
    status = entry.get("status", "active")
    status = status if status in STATUSES else None
    if isinstance(shop, str) and SHOP_ID_RE.fullmatch(shop):
        return name, shop, status
    if shop is not None:
        return name, None, status  # an id that is not valid names nobody
    return name, None if name is None else implicit_owner(name), status


def _parse_entry(
    entry: object, templates: Collection[str], safe_vars: Mapping[str, Collection[str]]
) -> Shop:
    if not isinstance(entry, dict):
        raise ValueError(f"an entry must be a mapping, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        names = ", ".join(printable(str(k)) for k in unknown)
        raise ValueError(f"unknown key(s) {names}; allowed: {', '.join(ENTRY_KEYS)}")
    if "domain" not in entry:
        raise ValueError("missing required key 'domain'")
    domain = _domain(entry["domain"], "domain")
    aliases = _aliases(entry.get("aliases"), domain)
    template = _template(entry, templates)
    variables = _variables(entry.get("vars"), safe_vars.get(template, ()))

    status = entry.get("status", "active")
    if status not in STATUSES:
        shown = printable(status) if isinstance(status, str) else type(status).__name__
        raise ValueError(f"status {shown} must be one of: {', '.join(STATUSES)}")

    shop_id = entry.get("shop")
    if shop_id is not None and (not isinstance(shop_id, str)
                                or not SHOP_ID_RE.fullmatch(shop_id)):
        shown = printable(shop_id) if isinstance(shop_id, str) else type(shop_id).__name__
        raise ValueError(f"shop {shown} must be the shop's id in the shop software: 1 to 128 "
                         "of letters, digits and . _ : @ / + = -, starting with a letter or digit")

    return Shop(
        domain=domain,
        aliases=aliases,
        template=template,
        vars=variables,
        status=status,
        shop=shop_id,
    )


def _aliases(raw_aliases: object, domain: str) -> tuple[str, ...]:
    if raw_aliases is None:
        raw_aliases = []
    if not isinstance(raw_aliases, list):
        raise ValueError(f"'aliases' must be a list, got {type(raw_aliases).__name__}")
    aliases: list[str] = []
    for i, raw in enumerate(raw_aliases):
        alias = _domain(raw, f"aliases[{i}]")
        if alias == domain or alias in aliases:
            raise ValueError(f"aliases[{i}]: {alias} is listed twice")
        aliases.append(alias)
    return tuple(aliases)


def _template(entry: Mapping[str, object], templates: Collection[str]) -> str:
    if "template" not in entry:
        raise ValueError("missing required key 'template'")
    template = entry["template"]
    if not isinstance(template, str) or not TEMPLATE_NAME_RE.fullmatch(template):
        shown = printable(template) if isinstance(template, str) else type(template).__name__
        raise ValueError(f"template {shown} must match ^[a-z0-9][a-z0-9_-]*$")
    if template not in templates:
        known = ", ".join(sorted(templates)) or "none"
        raise ValueError(f"unknown template {template!r}; available: {known}")
    return template


def _variables(raw_vars: object, declared_safe: Collection[str]) -> dict[str, VarValue]:
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        raise ValueError(f"'vars' must be a mapping, got {type(raw_vars).__name__}")
    variables: dict[str, VarValue] = {}
    for key, value in raw_vars.items():
        variables[key] = validate_var(key, value, safe=key in declared_safe)
    return variables


def _domain(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    try:
        return validate_domain(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
