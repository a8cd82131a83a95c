r"""Rendering the nginx ``server {}`` config of one shop from its template.

Shop templates are ``nginx/<name>.conf.j2``: first in the operator's template directory
(``deploy.templates`` in epages.yaml), then the packaged ones (``custom-domain``,
``platform-wildcard``).  An operator's template of the same name replaces the packaged one;
the challenge snippets (``acme-challenge-*``, ``challenge-service``) are not shop templates.

Templates are Jinja2 with undefined variables as errors and no HTML escaping.  The context:

=======================  ===================================================================
``domain``               the shop's domain (lowercase A-labels; may be ``*.example.com``)
``aliases``              list of the further names
``server_names``         ``domain`` followed by ``aliases``; use ``server_names | join(' ')``
``ssl_certificate``      path on the load balancer of the certificate chain (fullchain.pem)
``ssl_certificate_key``  path on the load balancer of the private key (privkey.pem)
``vars``                 the entry's variables (``vars.upstream``; use ``vars["name"]`` for a
                         name that is also a dict method, such as ``items`` or ``keys``)
``lb``                   the load balancer: ``lb.name``, ``lb.root`` (its deploy root)
``listen_address``       the address to listen on, ``""`` for all: write
                         ``listen {{ listen_address ~ ':' if listen_address else '' }}443 ssl;``
``acme_challenge``       the HTTP-01 location for port-80 servers: the proxy to the
                         challenge service, or the stateless answer (``http01.mode``)
``challenge_service``    ``host:port`` of the HTTP-01 challenge service
``shop``                 the whole entry as plain data (:meth:`Shop.as_dict`)
=======================  ===================================================================

The inventory is untrusted, so a variable's value may not contain anything that ends an nginx
directive or block (see :func:`certbot_epages.inventory.validate_var`).  A template that
quotes a variable properly can allow more by declaring it safe in a comment line::

    {# epages: safe_vars = csp_header, banner #}

Safe variables may contain spaces and ``; { } " ' \ $ #`` but never control characters or line
breaks; the template is then responsible for quoting them.
"""

from __future__ import annotations

import functools
import posixpath
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from certbot_epages.errors import EpagesError
from certbot_epages.inventory import TEMPLATE_NAME_RE, VAR_NAME_RE, Shop, validate_var
from certbot_epages.names import site_file, validate_domain
from certbot_epages.resources import jinja_env, templates_dir

SUFFIX = ".conf.j2"
SNIPPETS = frozenset({"acme-challenge-proxy", "acme-challenge-stateless", "challenge-service",
                      "epages-release"})

_OWN_SERVER_RE = re.compile(r"\{#-?\s*epages:\s*own_server\s*-?#\}")
_SAFE_VARS_RE = re.compile(r"\{#-?\s*epages:\s*safe_vars\s*=([^\n#]*?)-?#\}")


class RenderError(EpagesError):
    """A shop's site config could not be rendered: unknown template, template error, bad data."""


class TemplateSet:
    """The shop templates: the operator's ``<directory>/nginx`` first, then the packaged ones."""

    def __init__(self, directory: Path | None = None) -> None:
        search: list[Path] = []
        if directory is not None:
            own = Path(directory) / "nginx"
            if not own.is_dir():
                raise RenderError(
                    f"{directory}: the template directory has no nginx/ subdirectory "
                    f"(expected shop templates as {own}/<name>{SUFFIX})"
                )
            search.append(own)
        search.append(templates_dir() / "nginx")
        self.directory = directory
        self.search_path: tuple[Path, ...] = tuple(search)
        self.env = jinja_env()
        self.env.loader = jinja2.FileSystemLoader([str(p) for p in self.search_path])
        self._names: tuple[str, ...] | None = None
        self._safe: dict[str, frozenset[str]] = {}
        self._paths: dict[str, Path] = {}
        self._own: dict[str, bool] = {}
        self._uses: dict[str, VarUses] = {}

    def names(self) -> tuple[str, ...]:
        """The names of the available shop templates, sorted (read once per TemplateSet)."""
        if self._names is None:
            self._names = self._scan()
        return self._names

    def _scan(self) -> tuple[str, ...]:
        found: set[str] = set()
        for folder in self.search_path:
            for path in folder.glob(f"*{SUFFIX}"):
                name = path.name[: -len(SUFFIX)]
                if (
                    TEMPLATE_NAME_RE.fullmatch(name)
                    and name not in SNIPPETS
                    and not name.startswith("acme-challenge-")
                ):
                    found.add(name)
        return tuple(sorted(found))

    def path(self, name: str) -> Path:
        """The file the shop template ``name`` is read from (the operator's, if it has one)."""
        if name in self._paths:
            return self._paths[name]
        self._check_name(name)
        for folder in self.search_path:
            candidate = folder / f"{name}{SUFFIX}"
            if candidate.is_file():
                self._paths[name] = candidate
                return candidate
        raise RenderError(f"template {name!r} not found in {self._where()}")

    def source(self, name: str) -> str:
        """The text of the shop template ``name``."""
        path = self.path(name)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RenderError(f"{path}: cannot read the template: {e}") from None

    def safe_vars(self, name: str) -> frozenset[str]:
        """The variables template ``name`` declares safe (``{# epages: safe_vars = a, b #}``)."""
        if name not in self._safe:
            self._safe[name] = self._declared_safe(name)
        return self._safe[name]

    def _declared_safe(self, name: str) -> frozenset[str]:
        path = self.path(name)
        declared: set[str] = set()
        for match in _SAFE_VARS_RE.finditer(self.source(name)):
            for item in match.group(1).split(","):
                var = item.strip()
                if not var:
                    continue
                if not VAR_NAME_RE.fullmatch(var):
                    raise RenderError(
                        f"{path}: safe_vars declares {var!r}, which is not a variable name "
                        "(^[a-z_][a-z0-9_]*$)"
                    )
                declared.add(var)
        return frozenset(declared)

    def own_server(self, name: str) -> bool:
        """Whether template ``name`` wants a server block per shop in shared mode.

        It says so with ``{# epages: own_server #}``.
        """
        if name not in self._own:
            self._own[name] = bool(_OWN_SERVER_RE.search(self.source(name)))
        return self._own[name]

    def required_vars(self, name: str) -> frozenset[str]:
        """The ``vars.<x>`` template ``name`` uses without asking whether they are set.

        A shop that lacks one fails to render in sites mode (undefined variables are errors);
        in shared mode its map value would silently be empty, so it is checked per shop. A use
        under ``is defined`` / ``is undefined`` or ``| default`` is optional.
        """
        return self._var_uses(name).required

    def decided_vars(self, name: str) -> frozenset[str]:
        """The ``vars.<x>`` template ``name`` decides on rather than prints.

        In a test, a filter, a comparison: in shared mode such a variable has its shops' value
        in the server of their kind, never an nginx variable.
        """
        return self._var_uses(name).decided

    def used_vars(self, name: str) -> frozenset[str]:
        """Every ``vars.<x>`` template ``name`` refers to (what shared mode puts into maps).

        :data:`ALL_VARS` among them: it also reads the mapping as a whole (``vars.get``, a
        loop), so every variable counts.
        """
        return self._var_uses(name).used

    def _var_uses(self, name: str) -> VarUses:
        if name not in self._uses:
            self._uses[name] = _var_uses(self.env, self.source(name), self.path(name))
        return self._uses[name]

    def all_safe_vars(self) -> dict[str, frozenset[str]]:
        """``safe_vars`` of every shop template, by name (for ``load_inventory(safe_vars=)``)."""
        return {name: self.safe_vars(name) for name in self.names()}

    def _check_name(self, name: str) -> None:
        if name not in self.names():
            known = ", ".join(self.names()) or "none"
            raise RenderError(
                f"unknown shop template {name!r} in {self._where()}; available: {known}"
            )

    def _where(self) -> str:
        return ", ".join(str(p) for p in self.search_path)


ALL_VARS = "*"  # in used_vars(): the template reads the mapping as a whole (never a var name)
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})


@dataclass(frozen=True)
class VarUses:
    """How a template uses its shops' variables."""

    used: frozenset[str]  # every vars.<x> it refers to (ALL_VARS: the mapping as a whole)
    required: frozenset[str]  # ... without asking whether it is set
    decided: frozenset[str]  # ... other than printed as it is (a test, a filter, a comparison)


def _var_uses(env: jinja2.Environment, source: str, path: Path) -> VarUses:
    """How a template uses ``vars.<x>`` (see :class:`VarUses`)."""
    from jinja2 import nodes

    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"{e.filename or path}:{e.lineno}: template syntax error: "
                          f"{e.message}") from None

    def var_of(node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Getattr):
            attr, owner = node.attr, node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str):
            attr, owner = node.arg.value, node.node
        else:
            return None
        if isinstance(owner, nodes.Name) and owner.name == "vars":
            return attr
        if isinstance(owner, nodes.Getattr) and owner.attr == "vars" \
                and isinstance(owner.node, nodes.Name) and owner.node.name == "shop":
            return attr
        return None

    used: set[str] = set()
    optional: set[str] = set()
    printed = {id(child) for out in tree.find_all(nodes.Output) for child in out.nodes}
    decided: set[str] = set()  # used other than printed as it is: in a test, filter, ...
    named = 0  # uses of the mapping by one name (vars.x, vars["x"]): a method is not one
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        var = var_of(node)
        if var is not None and var not in _MAPPING_METHODS:
            used.add(var)
            named += 1
            if id(node) not in printed:
                decided.add(var)
    mappings = sum(1 for n in tree.find_all(nodes.Name) if n.name == "vars") + sum(
        1 for n in tree.find_all(nodes.Getattr)
        if n.attr == "vars" and isinstance(n.node, nodes.Name) and n.node.name == "shop")
    if named != mappings:  # the mapping itself is used (a loop, .get): every variable counts
        used.add(ALL_VARS)
    for node in tree.find_all((nodes.Test, nodes.Filter)):
        guarded = (node.name in ("defined", "undefined") if isinstance(node, nodes.Test)
                   else node.name in ("default", "d"))
        var = var_of(node.node) if guarded and node.node is not None else None
        if var is not None:
            optional.add(var)
    return VarUses(frozenset(used), frozenset(used - optional - {ALL_VARS}),
                   frozenset(decided))


def lb_cert_dir(lb_root: str, cert_name: str) -> str:
    """The directory of certificate ``cert_name`` below a load balancer's deploy root."""
    return posixpath.join(lb_root, "current", "certs", cert_name)


def render_site(
    templates: TemplateSet,
    shop: Shop,
    *,
    lb_name: str,
    lb_root: str,
    cert_dir: str,
    challenge_service: str,
    listen_address: str = "",
    acme_challenge: str | None = None,
    source: str | None = None,
) -> str:
    """Render the nginx config of ``shop`` for one load balancer.

    ``source``: the text of the shop's template as an earlier release stored it (a kept shop
    of a shared server that the current template cannot render), instead of the current one.

    ``cert_dir`` is the directory on the load balancer holding ``fullchain.pem`` and
    ``privkey.pem`` (see :func:`lb_cert_dir`).  The shop is checked again (names normalised,
    variables as in the inventory) so a hand-built :class:`Shop` cannot inject directives.
    Raises :class:`RenderError` naming the template and the shop.
    """
    path = templates.path(shop.template)
    what = f"{path}: cannot render the site of {shop.domain!r}"
    safe = templates.safe_vars(shop.template)
    try:
        for name in shop.server_names:
            if validate_domain(name) != name:
                raise ValueError(f"{name!r} is not normalised (expected {validate_domain(name)})")
        variables = {
            key: validate_var(key, value, safe=key in safe) for key, value in shop.vars.items()
        }
        _check_settings(lb_name, lb_root, cert_dir, challenge_service, listen_address)
    except ValueError as e:
        raise RenderError(f"{what}: {e}") from None

    context: dict[str, Any] = {
        "domain": shop.domain,
        "aliases": list(shop.aliases),
        "server_names": list(shop.server_names),
        "ssl_certificate": posixpath.join(cert_dir, "fullchain.pem"),
        "ssl_certificate_key": posixpath.join(cert_dir, "privkey.pem"),
        "vars": variables,
        "lb": {"name": lb_name, "root": lb_root},
        "listen_address": listen_address,
        "challenge_service": challenge_service,
        "shop": shop.as_dict(),
    }
    return _render(templates, path, context, what, shop.domain, challenge_service,
                   acme_challenge, source)


def render_shared(
    templates: TemplateSet,
    template: str,
    context: dict[str, Any],
    *,
    lb_name: str,
    lb_root: str,
    challenge_service: str,
    listen_address: str = "",
    acme_challenge: str | None = None,
) -> str:
    """Render template ``template`` once for all its shops (``deploy.mode: shared``).

    ``context`` comes from :func:`certbot_epages.deploy.shared.template_context`.
    """
    path = templates.path(template)
    what = f"{path}: cannot render the shared server of template {template!r}"
    try:
        _check_settings(lb_name, lb_root, lb_root, challenge_service, listen_address)
    except ValueError as e:
        raise RenderError(f"{what}: {e}") from None
    context = {**context, "lb": {"name": lb_name, "root": lb_root},
               "listen_address": listen_address, "challenge_service": challenge_service}
    return _render(templates, path, context, what, f"template {template}", challenge_service,
                   acme_challenge)


def _render(templates: TemplateSet, path: Path, context: dict[str, Any], what: str,
            subject: str, challenge_service: str, acme_challenge: str | None,
            source: str | None = None) -> str:
    if acme_challenge is None:
        acme_challenge = templates.env.get_template("acme-challenge-proxy" + SUFFIX).render(
            challenge_service=challenge_service
        )
    context["acme_challenge"] = acme_challenge
    try:
        if source is not None:
            return templates.env.from_string(source).render(context)
        return templates.env.get_template(path.name).render(context)
    except jinja2.TemplateSyntaxError as e:
        where = f"{e.filename or path}:{e.lineno}"
        raise RenderError(f"{where}: template syntax error: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        raise RenderError(f"{what}: included template {e.name!r} not found") from None
    except jinja2.UndefinedError as e:
        raise RenderError(
            f"{_location(e, path)}: cannot render the site of {subject!r}: "
            f"undefined variable: {e.message}"
        ) from None
    except jinja2.TemplateError as e:
        raise RenderError(f"{_location(e, path)}: {what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a template's own mistake, e.g. adding str and int
        raise RenderError(f"{_location(e, path)}: {what}: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=4096)
def _check_settings(lb_name: str, lb_root: str, cert_dir: str, challenge_service: str,
                    listen_address: str) -> None:
    """The load balancer's own values go into every site: checked once, not once per shop."""
    for key, value in (("lb_name", lb_name), ("lb_root", lb_root), ("cert_dir", cert_dir)):
        validate_var(key, value)
    for key, value in (("challenge_service", challenge_service),
                       ("listen_address", listen_address)):
        if value:
            validate_var(key, value)


def site_filename(shop: Shop) -> str:
    """The file name of the shop's site config: ``<domain>.conf``, ``*`` as ``_wildcard_``."""
    try:
        normal = validate_domain(shop.domain)
    except ValueError as e:
        raise RenderError(f"no site file name for the shop: {e}") from None
    if normal != shop.domain:
        raise RenderError(f"no site file name for {shop.domain!r}: the domain is not normalised")
    return site_file(normal)


def _location(error: BaseException, path: Path) -> str:
    """``template:line`` of the innermost template frame in ``error``'s traceback."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.endswith(SUFFIX):
            return f"{frame.filename}:{frame.lineno}"
    return str(path)
