r"""The shop inventory: which domains the platform serves, read from the shop software.

The inventory is UNTRUSTED input: shop owners choose their domains, and whatever lands in it
ends up in nginx configs on every load balancer.  It is a YAML or JSON list of entries (or a
mapping ``{"shops": [...]}``), read from a file or fetched from an http(s) URL::

    - domain: shop.example.com
      aliases: [www.shop.example.com]
      template: custom-domain            # <templates>/nginx/custom-domain.conf.j2
      vars: {upstream: "10.0.0.5:8080"}
      status: active                     # active | suspended | deleted (default active)
      shop: "4711"                       # the shop's stable id (optional, see below)

Every entry is checked on its own: a bad entry becomes a :class:`Problem` and is skipped while
the others load, so one shop cannot stop certificates for all of them.  A file that cannot be
read or parsed at all raises :class:`InventoryError`.

What an entry may contain:

* ``domain`` and ``aliases``: host names by :func:`~certbot_epages.names.validate_domain`
  (normalised to lowercase A-labels, IDNA 2008).  Who may have which name is decided by
  :mod:`certbot_epages.ownership`, against what the load balancers serve.
* ``template``: the name of an available shop template (``^[a-z0-9][a-z0-9_-]*$``).
* ``vars``: names ``^[a-z_][a-z0-9_]*$``, values strings, integers or booleans.  A string must
  not be able to break out of an nginx directive: no ``; { } " ' \ $ #``, no whitespace, no
  control characters, not empty -- unless the template declares that variable safe (see
  :mod:`certbot_epages.deploy.render`), and even then no control characters or line breaks.
* ``status``: ``active``, ``suspended`` or ``deleted``.
* ``shop``: the shop's stable id in the shop software (1 to 128 of letters, digits and
  ``. _ : @ / + = -``, starting with a letter or digit).  It names the *owner* of the entry's
  names; an entry without it is its own owner, identified by its domain.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import yaml

from certbot_epages.errors import EpagesError
from certbot_epages.names import (
    SHOP_ID_RE,
    implicit_owner,
    printable,
    site_file,
    validate_domain,
)
from certbot_epages.netaddr import HostPort

__all__ = ["Inventory", "InventoryError", "Problem", "Shop", "load_inventory",
           "parse_inventory", "printable", "site_file", "validate_domain", "validate_var"]

VarValue = str | int | bool

STATUSES = ("active", "suspended", "deleted")
ENTRY_KEYS = ("domain", "aliases", "template", "vars", "status", "shop")
TEMPLATE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
VAR_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")
UNSAFE_CHARS = frozenset(";{}\"'\\$#")
# The common case, checked fast: printable ASCII without blanks or UNSAFE_CHARS.
_PLAIN_VALUE = re.compile(r"[!%&(-:<-\[\]-z|~]+")
MAX_VAR_LENGTH = 4096
MAX_URL_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0



class InventoryError(EpagesError):
    """The inventory as a whole could not be read: unreachable, unreadable or not a list."""


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- checks


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


# --------------------------------------------------------------------------- loading


def load_inventory(
    source: str | Path,
    *,
    templates: Collection[str],
    safe_vars: Mapping[str, Collection[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = MAX_URL_BYTES,
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
    templates stay the same (:mod:`certbot_epages.inventory_cache`).
    """
    if isinstance(source, str) and source.lower().startswith(("http://", "https://")):
        where = _redact(source)
        raw = _fetch(source, where, timeout, max_bytes)
        decode = _json_document
    else:
        path = Path(source)
        where = str(path)
        raw = _read_bytes(path)
        decode = _yaml_document

    def parse() -> Inventory:
        return parse_inventory(decode(raw, where), templates=templates, safe_vars=safe_vars,
                               source=where)

    if cache is None:
        return parse()
    from certbot_epages import inventory_cache

    return inventory_cache.load(cache, raw, templates, safe_vars, parse)


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

    raw_aliases = entry.get("aliases")
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

    if "template" not in entry:
        raise ValueError("missing required key 'template'")
    template = entry["template"]
    if not isinstance(template, str) or not TEMPLATE_NAME_RE.fullmatch(template):
        shown = printable(template) if isinstance(template, str) else type(template).__name__
        raise ValueError(f"template {shown} must match ^[a-z0-9][a-z0-9_-]*$")
    if template not in templates:
        known = ", ".join(sorted(templates)) or "none"
        raise ValueError(f"unknown template {template!r}; available: {known}")

    raw_vars = entry.get("vars")
    if raw_vars is None:
        raw_vars = {}
    if not isinstance(raw_vars, dict):
        raise ValueError(f"'vars' must be a mapping, got {type(raw_vars).__name__}")
    declared_safe = safe_vars.get(template, ())
    variables: dict[str, VarValue] = {}
    for key, value in raw_vars.items():
        variables[key] = validate_var(key, value, safe=key in declared_safe)

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
        aliases=tuple(aliases),
        template=template,
        vars=variables,
        status=status,
        shop=shop_id,
    )


def _domain(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    try:
        return validate_domain(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found") from None
    except OSError as e:
        raise InventoryError(f"{path}: cannot read the inventory: {e.strerror or e}") from None


def _yaml_document(raw: bytes, where: str) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InventoryError(f"{where}: the inventory is not UTF-8 text") from None
    try:
        # The C loader when PyYAML has it (4x faster on 10,000 shops); both are safe loaders.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        at = ""
        if e.problem_mark is not None:
            at = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        what = "; ".join(str(p) for p in (e.context, e.problem) if p)
        raise InventoryError(
            f"{where}: the inventory is not valid YAML/JSON{at}: {what or 'syntax error'}"
        ) from None
    except yaml.YAMLError as e:
        raise InventoryError(f"{where}: the inventory is not valid YAML/JSON: {e}") from None
    except RecursionError:
        raise InventoryError(f"{where}: the inventory is nested too deeply") from None


MAX_REDIRECTS = 5


def _fetch(url: str, where: str, timeout: float, max_bytes: int) -> bytes:
    """GET ``url`` (following up to 5 http(s) redirects), all within ``timeout``.

    One deadline covers the whole fetch: a watchdog shuts the socket down when it passes, so
    a server that sends a byte now and then cannot hold a deploy (and its locks) forever.
    """
    deadline = time.monotonic() + timeout
    credentials = _basic_auth(url)
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get(url, where, deadline, timeout, max_bytes, credentials)
        if location is None:
            break
        target = urljoin(url, location)
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            raise InventoryError(f"{where}: fetching the inventory failed: redirect to a "
                                 f"non-http(s) URL refused (HTTP {status})")
        if _origin(target) != origin:
            credentials = None  # never hand the password to another host, or to plain http
        url = target
    else:
        raise InventoryError(f"{where}: more than {MAX_REDIRECTS} redirects")
    return body


def _json_document(raw: bytes, where: str) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InventoryError(f"{where}: the inventory is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InventoryError(f"{where}: the inventory is not valid JSON: {e}") from None
    except RecursionError:
        raise InventoryError(f"{where}: the inventory is nested too deeply") from None


def _get(url: str, where: str, deadline: float, timeout: float, max_bytes: int,
         credentials: str | None) -> tuple[int, str | None, bytes]:
    """One GET: (status, redirect location or None, body)."""
    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise InventoryError(f"{where}: the inventory did not arrive within {timeout:g}s "
                             "(inventory_timeout)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise InventoryError(f"{where}: cannot fetch the inventory: {e}") from None
    if not host:
        raise InventoryError(f"{where}: cannot fetch the inventory: no host in the URL")
    https = parts.scheme.lower() == "https"
    port = port or (443 if https else 80)  # given explicitly: http.client misreads "::1"
    conn = http.client.HTTPConnection(host, port, timeout=remaining)
    expired = threading.Event()
    sockets: list[socket.socket] = []

    def expire() -> None:
        expired.set()
        for sock in sockets:  # the response may hold the socket after the connection let go
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(remaining, expire)
    watchdog.daemon = True
    watchdog.start()
    headers = {"Accept": "application/json"}
    if credentials is not None:
        headers["Authorization"] = f"Basic {credentials}"
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    response: http.client.HTTPResponse | None = None
    try:
        # The watchdog watches the raw socket from the start: a TLS handshake that drips is
        # cut off at the deadline as well.
        raw = socket.create_connection((host, port), timeout=remaining)
        sockets.append(raw)
        if expired.is_set():  # the deadline passed while connecting
            raise OSError("deadline passed")
        conn.sock = (ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                     if https else raw)
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            return response.status, response.getheader("Location") or "", b""
        if response.status != 200:
            raise InventoryError(f"{where}: fetching the inventory failed: HTTP "
                                 f"{response.status} {response.reason}")
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > max_bytes:
                raise InventoryError(f"{where}: the inventory is larger than {max_bytes} "
                                     "bytes (inventory_max_bytes)")
            chunks.append(chunk)
        if expired.is_set():
            raise OSError("deadline passed")
        return response.status, None, b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as e:
        if expired.is_set():
            raise InventoryError(f"{where}: the inventory did not arrive within {timeout:g}s "
                                 "(inventory_timeout)") from None
        raise InventoryError(f"{where}: cannot fetch the inventory: {e}") from None
    finally:
        watchdog.cancel()
        if response is not None:
            response.close()
        conn.close()


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: credentials go only where they were given."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _basic_auth(url: str) -> str | None:
    """The ``Authorization: Basic`` value for credentials in ``url``, if it has any."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return base64.b64encode(pair.encode()).decode("ascii")


def _redact(url: str) -> str:
    """``url`` without a password in it, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
