"""``deploy.mode: shared``: one server per template, certificates and per-shop values from maps.

With a server block per shop, nginx parses every block and loads every certificate at each
``nginx -t`` and reload (17 s and ~0.9 GiB per process at 10,000 shops). In shared mode a
release holds one server per shop template; which certificate a handshake gets comes from a
``map`` on ``$ssl_server_name`` and each shop's values (``vars``) from maps on ``$host``::

    map $ssl_server_name $epages_certdir {
        hostnames;
        default /etc/nginx/epages/certs/_default/5f1c.../;
        shop.example /etc/nginx/epages/certs/shop.example/9a7b.../;
        *.platform.example /etc/nginx/epages/certs/wildcard_.platform.example/03de.../;
    }
    server {
        listen 443 ssl;
        server_name shop.example www.shop.example a.platform.example ...;
        ssl_certificate ${epages_certdir}fullchain.pem;
        ...
        proxy_pass http://$epages_custom_domain_upstream;   # an upstream {} block's name
    }

The certificate is only ever chosen through the map: a name built from the client's SNI (which
nginx 1.22 does not sanitise: ``../../x`` escapes a directory) never reaches a path, and an
unknown name gets the default certificate. Certificates live outside the releases, in
directories named by lineage and fingerprint that are never modified (``<root>/certs/``):
workers open them at handshake time, so switching ``current`` for the phase-1 test never
changes what a handshake gets, and a renewal is a new directory plus a changed map value.

Templates render as in sites mode, once per kind of shop (:attr:`Config.kinds`: the
template, the variables its shops set, the values of those it decides on), with
``ssl_certificate`` and each printed ``vars.<name>`` being the nginx variables above,
``domain`` ``$host`` and ``server_names`` every name of the kind's shops. A template whose
shops need blocks of their own (a variable in a directive that takes no variables, say) says so
with ``{# epages: own_server #}``; its shops are then rendered one server each, with their
certificate by absolute path.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from certbot_epages.names import base_of
from certbot_epages.netaddr import HostPort

SITE = "_epages-shared.conf"
VERSIONS = "certs.list"  # in a release: the certificate versions it uses, one per line
DEFAULT_LINEAGE = "_default"  # never a lineage name (those start with a letter or digit)
CERT_VAR = "$epages_certdir"  # a directory ending in "/"
MAX_MAP_VALUE = 2048  # well below nginx's 4096-byte limit of one token in a config file


def cert_version(lineage: str, fingerprint: str) -> str:
    """A certificate's directory below ``<root>/certs``: ``<lineage>/<fingerprint[:16]>``."""
    return f"{lineage}/{fingerprint[:16]}"


def cert_dir(root: str, lineage: str, fingerprint: str) -> str:
    """The absolute directory of a certificate on a load balancer."""
    return posixpath.join(root, "certs", cert_version(lineage, fingerprint))


@functools.lru_cache(maxsize=1024)  # a few templates and variables, asked for every shop
def var_name(template: str, var: str) -> str:
    """The nginx variable that carries ``vars.<var>`` for shops of ``template``."""
    return f"$epages_{re.sub(r'[^a-z0-9_]', '_', template)}_{var}"


@functools.lru_cache(maxsize=4096)
def upstream_name(value: str) -> str:
    """The ``upstream {}`` block of a ``host:port`` upstream."""
    return "epages_up_" + hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One shop as the shared config needs it."""

    domain: str
    names: tuple[str, ...]
    template: str
    vars: Mapping[str, str | int | bool]
    lineage: str
    fingerprint: str


Kind = tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]


@dataclass
class Config:
    """The parts of the shared config, before they are joined into text."""

    cert_map: list[tuple[str, str]] = field(default_factory=list)  # name -> directory
    var_maps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # var -> lines
    upstreams: dict[str, str] = field(default_factory=dict)  # block name -> host:port
    # (template, the variables its shops set, the values of those it decides on) -> those
    # shops: one server each, so a template's `vars.x is defined` or `{% if vars.flag %}`
    # holds in the server of exactly the shops it holds for.
    kinds: dict[Kind, list[Entry]] = field(default_factory=dict)


class MapValueError(ValueError):
    """A shop's value cannot go into a map (the shop is left out, the caller says why)."""


def plan(entries: Sequence[Entry], root: str,
         fixed: Mapping[str, frozenset[str]] | None = None) -> tuple[Config, dict[str, str]]:
    """Group shops by template and build the maps; shops that cannot go in, and why.

    ``fixed``: per template, the variables it decides on (a test, a filter, a comparison)
    rather than prints: they take their shops' values in the server of their kind, not a map.
    """
    fixed = fixed or {}
    config = Config()
    refused: dict[str, str] = {}
    wildcard_dirs: dict[str, str] = {}
    certs = posixpath.join(root, "certs")
    directories = [f"{certs}/{cert_version(e.lineage, e.fingerprint)}/" for e in entries]
    for entry, directory in zip(entries, directories, strict=True):
        for name in entry.names:
            if name.startswith("*."):
                wildcard_dirs[base_of(name)] = directory
    for entry, directory in sorted(zip(entries, directories, strict=True),
                                   key=lambda x: x[0].domain):
        decided = fixed.get(entry.template, frozenset())
        try:
            lines = _var_lines(entry, config, decided)
        except MapValueError as e:
            refused[entry.domain] = str(e)
            continue
        for var, line in lines:
            config.var_maps.setdefault(var, []).extend(line)
        for name in entry.names:
            parent = name.split(".", 1)[1] if "." in name else ""
            if not name.startswith("*.") and wildcard_dirs.get(parent) == directory:
                continue  # a rider: the wildcard's line covers it
            config.cert_map.append((name, directory))
        kind = (entry.template,
                tuple(sorted(entry.vars)) if len(entry.vars) > 1 else tuple(entry.vars),
                tuple(sorted((v, repr(entry.vars[v])) for v in decided if v in entry.vars))
                if decided else ())
        config.kinds.setdefault(kind, []).append(entry)
    return config, refused


def _var_lines(entry: Entry, config: Config,
               decided: frozenset[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for var, value in sorted(entry.vars.items()) if len(entry.vars) > 1 else entry.vars.items():
        if var in decided:
            continue  # the server of its kind has the value itself
        if var == "upstream":
            address = str(value)
            problem = _upstream_problem(address)  # checked before; never a unix: path
            if problem is not None:
                raise MapValueError(problem)
            block = upstream_name(address)
            config.upstreams[block] = address
            text = block
        else:
            text = _map_value(var, value)
        out.append((var_name(entry.template, var), [(n, text) for n in entry.names]))
    return out


def value_problem(values: Mapping[str, str | int | bool]) -> str | None:
    """Why a shop's variables cannot go into maps, or None (the first by name)."""
    for var, value in sorted(values.items()) if len(values) > 1 else values.items():
        try:
            _map_value(var, value)
            if var == "upstream":
                problem = _upstream_problem(str(value))
                if problem is not None:
                    return problem
        except MapValueError as e:
            return str(e)
    return None


@functools.lru_cache(maxsize=4096)  # a fleet has few distinct upstreams
def _upstream_problem(address: str) -> str | None:
    try:
        HostPort.parse(address, 80)
    except ValueError as e:
        return f"variable 'upstream': {e}"
    return None


_NEEDS_QUOTES = re.compile(r"[ \";{}#\\']")  # what ends or escapes an nginx token


def _map_value(var: str, value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    if "$" in text:
        raise MapValueError(f"variable {var!r}: '$' cannot go into a map in shared mode (nginx "
                          "would read it as a variable)")
    if _NEEDS_QUOTES.search(text) or not text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if len(text) > MAX_MAP_VALUE:
        raise MapValueError(f"variable {var!r}: {len(text)} characters once quoted for a map; "
                            f"a map value may have at most {MAX_MAP_VALUE}")
    return text


def render_maps(config: Config, default_dir: str) -> str:
    """The maps and upstream blocks, as nginx config text."""
    parts = ["# Managed by certbot-epages (deploy.mode: shared). Do not edit.\n",
             f"map $ssl_server_name {CERT_VAR} {{\n    hostnames;\n    default {default_dir};\n"]
    parts.extend(f"    {name} {directory};\n" for name, directory in sorted(set(config.cert_map)))
    parts.append("}\n")
    for var, lines in sorted(config.var_maps.items()):
        parts.append(f"map $host {var} {{\n    hostnames;\n    default \"\";\n")
        parts.extend(f"    {name} {value};\n" for name, value in sorted(set(lines)))
        parts.append("}\n")
    for block, address in sorted(config.upstreams.items()):
        parts.append(f"upstream {block} {{\n    server {address};\n}}\n")
    return "".join(parts)


def template_context(template: str, entries: Sequence[Entry],
                     decided: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a template renders with in shared mode (see the module's docstring).

    ``entries`` are the shops of one kind (:attr:`Config.kinds`): the same variables, and the
    same values of the ``decided`` ones, which the template gets as they are.
    """
    names = sorted({n for e in entries for n in e.names})
    variables = sorted({v for e in entries for v in e.vars})
    values: dict[str, Any] = {
        v: entries[0].vars[v] if v in decided else var_name(template, v) for v in variables}
    return {
        "domain": "$host",
        "aliases": [],
        "server_names": names,
        "ssl_certificate": "${epages_certdir}fullchain.pem",
        "ssl_certificate_key": "${epages_certdir}privkey.pem",
        "vars": values,
        "shop": {"domain": "$host", "aliases": [], "server_names": names, "template": template,
                 "vars": values, "status": "active", "shop": None},
        "shared": True,
    }
