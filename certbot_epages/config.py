"""epages.yaml: the one configuration file, read once into frozen dataclasses.

The file is found by :func:`config_path` (explicit path, then ``$CERTBOT_EPAGES_CONFIG``, then
``/etc/letsencrypt/epages.yaml``), parsed with a safe YAML loader and checked strictly: unknown
keys, wrong types and out-of-range values raise :class:`~certbot_epages.errors.ConfigError`
with the file, the key path (``dns.zones[0].primaries[1]``) and what was expected.  Relative
paths in the file are relative to the file's directory.  Nothing outside this module sees the
raw YAML data.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal, NoReturn
from urllib.parse import urlsplit

import yaml

from certbot_epages.dns import keys
from certbot_epages.dns.keys import TsigKey
from certbot_epages.errors import ConfigError
from certbot_epages.names import SHOP_ID_RE, validate_domain
from certbot_epages.netaddr import HostPort

DEFAULT_PATH = Path("/etc/letsencrypt/epages.yaml")
ENV_VAR = "CERTBOT_EPAGES_CONFIG"
DEFAULT_SPOOL = Path("/var/lib/certbot-epages/spool")
DEFAULT_DNS_STATE = Path("/var/lib/certbot-epages/dns")
DEFAULT_CERTBOT_DIR = Path("/etc/letsencrypt")

Http01Mode = Literal["files", "stateless"]
DeployMode = Literal["sites", "shared"]


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ZoneConfig:
    """A DNS zone we may update: where to send updates, with which key, whom to check."""

    name: str
    primaries: tuple[HostPort, ...]
    key: TsigKey
    nameservers: tuple[HostPort, ...] | None  # None: the zone's NS records ("auto")


@dataclass(frozen=True)
class DnsConfig:
    """The ``dns`` section: TSIG keys, managed zones and DNS-01 settings."""

    tsig_keys: Mapping[str, TsigKey]
    zones: tuple[ZoneConfig, ...]
    resolvers: tuple[HostPort, ...] | None  # None: the system resolver
    delegation: str
    ttl: int
    placeholder: str | None
    propagation_timeout: float
    allow_weak_algorithms: bool
    state_dir: Path = DEFAULT_DNS_STATE  # claims and the journal of values written
    stale_after: float = 3600.0  # seconds before an ended run's values are removed

    def zone_for(self, name: str) -> ZoneConfig | None:
        """Return the zone holding ``name`` (longest suffix on label boundaries), or None."""
        wanted = name.strip().rstrip(".").lower()
        best: ZoneConfig | None = None
        for zone in self.zones:
            if wanted == zone.name or wanted.endswith("." + zone.name):
                if best is None or len(zone.name) > len(best.name):
                    best = zone
        return best


@dataclass(frozen=True)
class Http01Target:
    """Where HTTP-01 challenge files go: a local directory, or ``[user@]host:/path`` via rsync."""

    user: str | None
    host: str | None
    path: str

    @property
    def is_remote(self) -> bool:
        """True if the directory is on another host (reached with rsync over ssh)."""
        return self.host is not None

    def __str__(self) -> str:
        if self.host is None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}:{self.path}"


@dataclass(frozen=True)
class Http01Config:
    """The ``http01`` section: how challenge responses reach the web servers."""

    mode: Http01Mode
    targets: tuple[Http01Target, ...]
    ssh_options: tuple[str, ...]
    self_check: tuple[HostPort, ...]
    timeout: float


@dataclass(frozen=True)
class LoadBalancerConfig:
    """One nginx load balancer that certificates are deployed to."""

    name: str
    ssh: str  # "local" or an ssh destination, [user@]host
    ssh_options: tuple[str, ...]
    root: str
    test: tuple[str, ...]
    reload: tuple[str, ...]
    probe: HostPort | None
    listen: str = ""  # the address shop servers listen on; "" for all
    worker_group: str = "www-data"  # shared mode: the group nginx workers read keys as

    @property
    def is_local(self) -> bool:
        """True if the load balancer is this machine (no ssh)."""
        return self.ssh == "local"


@dataclass(frozen=True)
class DeployConfig:
    """The ``deploy`` section: templates, load balancers and release bookkeeping."""

    templates: Path | None  # None: the packaged templates
    load_balancers: tuple[LoadBalancerConfig, ...]
    keep_releases: int
    spool: Path
    certbot_dir: Path = Path("/etc/letsencrypt")  # certbot's config dir: live/<lineage>/
    challenge_service: HostPort | None = None  # HTTP-01 proxy target in shop configs
    account_thumbprint: str | None = None  # for http01.mode stateless
    probe_timeout: float = 120.0  # a reload of 10,000 sites takes ~40 s to take effect
    mode: DeployMode = "sites"  # sites: a server per shop; shared: maps, see deploy/shared.py


@dataclass(frozen=True)
class FleetLimits:
    """Let's Encrypt's rate limits that sync budgets for (defaults: the published numbers)."""

    orders_per_account: int = 300  # new orders per ACME account per 3 hours
    certs_per_registered_domain: int = 50  # certificates per registered domain per week
    failures_per_hostname: int = 5  # failed validations per hostname per hour
    public_suffixes: tuple[str, ...] = ()  # multi-label suffixes such as co.uk


@dataclass(frozen=True)
class FleetConfig:
    """The ``fleet`` section: what ``certbot-epages sync`` needs beyond dns/http01/deploy."""

    platform_domains: tuple[str, ...] = ()  # names below ride on *.<platform domain>
    lb_addresses: tuple[str, ...] = ()  # where shop names must point (HTTP-01 and serving)
    ca_identities: tuple[str, ...] = ("letsencrypt.org",)  # CAA issuer domain names
    state_dir: Path = Path("/var/lib/certbot-epages/fleet")
    certbot: tuple[str, ...] = ("certbot",)  # the certbot command
    certbot_args: tuple[str, ...] = ()  # added to every certbot run (e.g. -c cli.ini)
    limits: FleetLimits = FleetLimits()
    prometheus: Path | None = None  # a node_exporter textfile to write after every sync
    platform_shop: str | None = None  # the shop id that owns the platform's own entries


@dataclass(frozen=True)
class Config:
    """The whole of epages.yaml; a missing section is None."""

    source: Path
    dns: DnsConfig | None
    http01: Http01Config | None
    inventory: str | Path | None  # an http(s) URL (str) or a file (Path)
    deploy: DeployConfig | None
    fleet: FleetConfig
    sandbox: Mapping[str, object]
    inventory_timeout: float = 30.0  # seconds for the whole fetch of an inventory URL
    inventory_max_bytes: int = 64 * 1024 * 1024

    def need_deploy(self) -> DeployConfig:
        """The ``deploy`` section, or a ConfigError saying it is missing."""
        if self.deploy is None:
            raise ConfigError(f"{self.source}: no 'deploy' section; deploys need "
                              "deploy.load_balancers (see the README's deploy section)")
        return self.deploy

    def need_dns(self, what: str) -> DnsConfig:
        """The ``dns`` section, or a ConfigError saying that ``what`` needs it."""
        if self.dns is None:
            raise ConfigError(f"{self.source}: no 'dns' section; {what} needs dns.zones")
        return self.dns

    def need_inventory(self, what: str) -> str | Path:
        """The inventory source, or a ConfigError saying that ``what`` needs it."""
        if self.inventory is None:
            raise ConfigError(f"{self.source}: 'inventory' is not set; {what} need the shop "
                              "list (a file or an http(s) URL)")
        return self.inventory


# --------------------------------------------------------------------------- entry points


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the config file: ``explicit``, else ``$CERTBOT_EPAGES_CONFIG``, else the default."""
    if explicit is not None:
        return Path(explicit)
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return Path(from_env)
    return DEFAULT_PATH


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check the config file chosen by :func:`config_path`."""
    source = config_path(path).absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: config file not found; create it, or point {ENV_VAR} at the "
            f"config file to use"
        ) from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the config file is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # SafeLoader subclass: plain data only
    except yaml.MarkedYAMLError as e:
        # Build the message ourselves: str(e) quotes the offending line, which may hold a secret.
        where = ""
        if e.problem_mark is not None:
            where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        what = "; ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"{source}: invalid YAML{where}: {what or 'syntax error'}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    return parse(data, source)


def parse(data: object, source: Path) -> Config:
    """Check already-parsed YAML ``data``; ``source`` is named in errors and anchors paths."""
    source = Path(source).absolute()
    root = _Node(data, "", source)
    sections = ("dns", "http01", "inventory", "inventory_timeout", "inventory_max_bytes",
                "deploy", "fleet", "sandbox")
    if not isinstance(data, dict):
        got = "an empty file" if data is None else _describe(data, secret=False)
        names = ", ".join(sections)
        root.error(f"the top level must be a mapping of sections ({names}), got {got}")
    top = root.mapping(sections, what="sections")
    dns = top.opt("dns", nullable=True)
    http01 = top.opt("http01", nullable=True)
    inventory = top.opt("inventory", nullable=True)
    deploy = top.opt("deploy", nullable=True)
    fleet = top.opt("fleet", nullable=True)
    sandbox = top.opt("sandbox", nullable=True)
    timeout = top.opt("inventory_timeout")
    max_bytes = top.opt("inventory_max_bytes")
    return Config(
        source=source,
        dns=None if dns is None else _parse_dns(dns),
        http01=None if http01 is None else _parse_http01(http01),
        inventory=None if inventory is None else _parse_inventory(inventory),
        deploy=None if deploy is None else _parse_deploy(deploy),
        fleet=_parse_fleet(fleet),
        sandbox=_parse_sandbox(sandbox),
        inventory_timeout=(Config.inventory_timeout if timeout is None
                           else timeout.positive_number()),
        inventory_max_bytes=(Config.inventory_max_bytes if max_bytes is None
                             else max_bytes.integer(1024)),
    )


# --------------------------------------------------------------------------- YAML loading


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------- reader helper

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Node:
    """One value from the YAML tree with its key path, and typed getters that check it."""

    def __init__(self, value: object, path: str, source: Path, *, secret: bool = False) -> None:
        self.value = value
        self.path = path
        self.source = source
        self.secret = secret

    @property
    def where(self) -> str:
        """``file: key.path`` for messages."""
        return f"{self.source}: {self.path}" if self.path else str(self.source)

    @property
    def base_dir(self) -> Path:
        """The directory relative paths are resolved against."""
        return self.source.parent

    def child(self, key: str | int, value: object, *, secret: bool = False) -> _Node:
        """Return the node for ``key`` (a mapping key or a list index) below this one."""
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            path = f"{self.path}.{key}" if self.path else key
        else:
            path = f"{self.path}[{key!r}]"
        return _Node(value, path, self.source, secret=secret)

    def error(self, message: str) -> NoReturn:
        """Raise a ConfigError about this node."""
        raise ConfigError(f"{self.where}: {message}")

    def expected(self, what: str) -> NoReturn:
        """Raise "expected <what>, got <value> (<type>)"."""
        self.error(f"expected {what}, got {_describe(self.value, secret=self.secret)}")

    def text(self, *, non_empty: bool = True) -> str:
        """Return the value as a string."""
        if not isinstance(self.value, str):
            self.expected("a string")
        if non_empty and not self.value.strip():
            self.expected("a non-empty string")
        return self.value

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        """Return the value as an int (not a bool) within the bounds."""
        value = self.value
        if not isinstance(value, int) or isinstance(value, bool):
            self.expected("an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                self.expected(f"an integer >= {minimum}")
            self.expected(f"an integer from {minimum} to {maximum}")
        return value

    def positive_number(self) -> float:
        """Return the value as a finite number greater than zero."""
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.expected("a number")
        if not math.isfinite(value) or value <= 0:
            self.expected("a number greater than 0")
        return float(value)

    def boolean(self) -> bool:
        """Return the value as a bool (true/false)."""
        if not isinstance(self.value, bool):
            self.expected("true or false")
        return self.value

    def items(self, *, non_empty: bool = False) -> list[_Node]:
        """Return the value as a list of nodes."""
        if not isinstance(self.value, list):
            self.expected("a list")
        if non_empty and not self.value:
            self.expected("a non-empty list")
        return [self.child(i, item) for i, item in enumerate(self.value)]

    def strings(self, *, non_empty: bool = False) -> tuple[str, ...]:
        """Return the value as a list of strings (an argv or option list)."""
        return tuple(item.text(non_empty=False) for item in self.items(non_empty=non_empty))

    def hostport(self, default_port: int) -> HostPort:
        """Return the value as ``host[:port]``."""
        try:
            return HostPort.parse(self.text(), default_port)
        except ValueError as e:
            self.error(f"expected host[:port]: {e}")

    def hostports(self, default_port: int, *, non_empty: bool = False) -> tuple[HostPort, ...]:
        """Return the value as a list of ``host[:port]``."""
        return tuple(item.hostport(default_port) for item in self.items(non_empty=non_empty))

    def local_path(self) -> Path:
        """Return the value as a local path; relative ones are anchored at the config's dir."""
        text = self.text()
        if "\0" in text:
            self.expected("a path")
        return self.base_dir / text

    def mapping(self, allowed: Collection[str], *, what: str = "keys") -> _Fields:
        """Return the value as a mapping whose keys must all be in ``allowed``."""
        if not isinstance(self.value, dict):
            self.expected("a mapping")
        fields: dict[str, object] = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                self.error(f"keys must be strings, got {_describe(key, secret=False)}")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                mean = f"did you mean {hint[0]!r}? " if hint else ""
                self.child(key, value).error(
                    f"unknown key; {mean}allowed {what}: {', '.join(sorted(allowed))}"
                )
            fields[key] = value
        return _Fields(self, fields)

    def named_mapping(self) -> list[tuple[str, _Node]]:
        """Return the value as a mapping of free-form names (strings) to nodes."""
        if not isinstance(self.value, dict):
            self.expected("a mapping")
        result = []
        for key, value in self.value.items():
            if not isinstance(key, str) or not key.strip():
                self.error(f"names must be non-empty strings, got {_describe(key, secret=False)}")
            result.append((key, self.child(key, value)))
        return result


class _Fields:
    """The checked keys of one mapping, with required/optional access."""

    def __init__(self, node: _Node, values: dict[str, object]) -> None:
        self.node = node
        self.values = values

    def req(self, key: str, *, secret: bool = False) -> _Node:
        """Return the node for a key that must be present (and not null)."""
        if key not in self.values:
            self.node.error(f"missing required key {key!r}")
        child = self.node.child(key, self.values[key], secret=secret)
        if child.value is None:
            child.error("a value is required (got null)")
        return child

    def opt(self, key: str, *, nullable: bool = False, secret: bool = False) -> _Node | None:
        """Return the node for an optional key; None if absent (or null, when ``nullable``)."""
        if key not in self.values:
            return None
        if nullable and self.values[key] is None:
            return None
        return self.node.child(key, self.values[key], secret=secret)

    def has(self, key: str) -> bool:
        """Tell whether the key is present, even as null."""
        return key in self.values


def _describe(value: object, *, secret: bool) -> str:
    """Describe a bad value for "got ..." (never showing the value itself if secret)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = type(value).__name__
    if secret:
        return f"a value of type {kind} (hidden)"
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


# --------------------------------------------------------------------------- dns

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _parse_dns(node: _Node) -> DnsConfig:
    f = node.mapping(
        (
            "tsig_keys", "zones", "resolvers", "delegation", "ttl", "placeholder",
            "propagation_timeout", "allow_weak_algorithms", "state_dir", "stale_after",
        )
    )
    weak = f.opt("allow_weak_algorithms")
    allow_weak = False if weak is None else weak.boolean()
    zones_node = f.req("zones")
    tsig_keys = _parse_tsig_keys(f.req("tsig_keys"), allow_weak)

    zones: list[ZoneConfig] = []
    seen: set[str] = set()
    for item in zones_node.items(non_empty=True):
        zone = _parse_zone(item, tsig_keys)
        if zone.name in seen:
            item.child("name", zone.name).error(f"zone {zone.name!r} is listed twice")
        seen.add(zone.name)
        zones.append(zone)

    resolvers_node = f.opt("resolvers", nullable=True)
    resolvers = None if resolvers_node is None else resolvers_node.hostports(53, non_empty=True)
    for index, resolver in enumerate(resolvers or ()):
        try:
            ipaddress.ip_address(resolver.host)
        except ValueError:
            resolvers_node.child(index, resolver.host).expected(  # type: ignore[union-attr]
                "an IP address (a resolver cannot be found by name without a resolver)"
            )

    delegation_node = f.opt("delegation")
    if delegation_node is None:
        delegation = "_acme-challenge.{domain}." + zones[0].name
    else:
        delegation = _parse_delegation(delegation_node)

    ttl_node = f.opt("ttl")
    placeholder: str | None = ".empty"
    if f.has("placeholder"):
        placeholder = _parse_placeholder(f.node.child("placeholder", f.values["placeholder"]))
    timeout = f.opt("propagation_timeout")
    state_dir = f.opt("state_dir")
    stale_after = f.opt("stale_after")
    return DnsConfig(
        tsig_keys=MappingProxyType(dict(tsig_keys)),
        zones=tuple(zones),
        resolvers=resolvers,
        delegation=delegation,
        ttl=60 if ttl_node is None else ttl_node.integer(1, 86400),
        placeholder=placeholder,
        propagation_timeout=120.0 if timeout is None else timeout.positive_number(),
        allow_weak_algorithms=allow_weak,
        state_dir=DEFAULT_DNS_STATE if state_dir is None else state_dir.local_path(),
        stale_after=3600.0 if stale_after is None else stale_after.positive_number(),
    )


def _parse_tsig_keys(node: _Node, allow_weak: bool) -> dict[str, TsigKey]:
    result: dict[str, TsigKey] = {}
    inline = False
    for name, spec in node.named_mapping():
        f = spec.mapping(("file", "algorithm", "secret"))
        file = f.opt("file")
        algorithm = f.opt("algorithm")
        secret = f.opt("secret", secret=True)
        if file is not None and (algorithm is not None or secret is not None):
            spec.error("give either 'file' or 'algorithm' and 'secret', not both")
        if file is not None:
            result[name] = keys.load_key_file(file.local_path(), name, allow_weak=allow_weak)
        elif algorithm is not None or secret is not None:
            algorithm = f.req("algorithm")
            secret = f.req("secret", secret=True)
            result[name] = keys.make_key(
                name, algorithm.text(), secret.text(), allow_weak=allow_weak, where=spec.where
            )
            inline = True
        else:
            spec.error("give 'file' (a BIND key file) or 'algorithm' and 'secret'")
    if not result:
        node.expected("at least one key")
    if inline:
        keys.check_private(
            node.source, "the config file (it holds an inline TSIG secret)"
        )
    return result


def _parse_zone(node: _Node, tsig_keys: Mapping[str, TsigKey]) -> ZoneConfig:
    f = node.mapping(("name", "primaries", "key", "nameservers"))
    name = _zone_name(f.req("name"))
    primaries = f.req("primaries").hostports(53, non_empty=True)
    key_node = f.req("key")
    key_name = key_node.text()
    if key_name not in tsig_keys:
        known = ", ".join(sorted(tsig_keys))
        key_node.error(f"unknown TSIG key {key_name!r}; dns.tsig_keys defines: {known}")
    ns_node = f.opt("nameservers")
    nameservers: tuple[HostPort, ...] | None = None
    if ns_node is not None:
        if isinstance(ns_node.value, str):
            if ns_node.value != "auto":
                ns_node.expected("'auto' or a list of host[:port]")
        elif isinstance(ns_node.value, list):
            nameservers = ns_node.hostports(53, non_empty=True)
        else:
            ns_node.expected("'auto' or a list of host[:port]")
    return ZoneConfig(
        name=name, primaries=primaries, key=tsig_keys[key_name], nameservers=nameservers
    )


def _zone_name(node: _Node) -> str:
    name = node.text().strip().lower()
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        node.expected("a DNS zone name such as dyn.platform.example")
    return name


def _parse_delegation(node: _Node) -> str:
    text = node.text()
    try:
        fields = [
            (field, spec, conv)
            for _, field, spec, conv in string.Formatter().parse(text)
            if field is not None
        ]
        text.format(domain="x")
    except (ValueError, KeyError, IndexError, AttributeError):
        fields = [("?", None, None)]
    if not fields or any(f != ("domain", "", None) for f in fields):
        node.expected(
            "a name with the placeholder {domain} and no other braces, "
            "e.g. _acme-challenge.{domain}.dyn.platform.example"
        )
    return text


def _parse_placeholder(node: _Node) -> str | None:
    if node.value is None:
        return None
    text = node.text(non_empty=False)
    if len(text) > 255 or any(not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in text):
        node.expected("null or printable ASCII of at most 255 characters without '\"' or '\\'")
    return text


# --------------------------------------------------------------------------- http01

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_REMOTE = re.compile(r"(?:(?P<user>[^@:/\[\]]*)@)?(?P<host>\[[^\]]*\]|[^@:/\[\]]*):(?P<path>.*)")


def _parse_http01(node: _Node) -> Http01Config:
    f = node.mapping(("mode", "targets", "ssh_options", "self_check", "timeout"))
    mode_node = f.opt("mode")
    mode: Http01Mode = "files"
    if mode_node is not None:
        if mode_node.value == "stateless":
            mode = "stateless"
        elif mode_node.value != "files":
            mode_node.expected("one of: files, stateless")
    targets_node = f.opt("targets")
    if targets_node is None:
        if mode == "files":
            node.error("missing required key 'targets' (needed with mode: files)")
        targets: tuple[Http01Target, ...] = ()
    else:
        items = targets_node.items(non_empty=mode == "files")
        targets = tuple(_parse_target(item) for item in items)
    ssh_options = f.opt("ssh_options")
    self_check = f.opt("self_check")
    timeout = f.opt("timeout")
    return Http01Config(
        mode=mode,
        targets=targets,
        ssh_options=() if ssh_options is None else ssh_options.strings(),
        self_check=() if self_check is None else self_check.hostports(80),
        timeout=30.0 if timeout is None else timeout.positive_number(),
    )


def _parse_target(node: _Node) -> Http01Target:
    text = node.text()
    _no_blanks(node, text)
    if text.startswith("/"):
        return Http01Target(user=None, host=None, path=_absolute(node, text))
    match = _REMOTE.fullmatch(text)
    if match is None:
        node.expected("an absolute path or [user@]host:/absolute/path")
    user = match["user"]
    if user is not None and not _USER.fullmatch(user):
        node.expected("a user name of letters, digits, '_', '.' and '-' before '@'")
    host = match["host"]
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            node.expected("an IPv6 address inside [...]")
    else:
        _check_host(node, host)
    return Http01Target(user=user, host=host, path=_absolute(node, match["path"]))


def _no_blanks(node: _Node, text: str) -> None:
    if any(c.isspace() or not c.isprintable() for c in text):
        node.expected("a value without spaces or control characters")


def _absolute(node: _Node, path: str) -> str:
    _no_blanks(node, path)
    if not path.startswith("/"):
        node.expected("an absolute path (starting with '/')")
    if ".." in PurePosixPath(path).parts:
        node.expected("a path without '..'")
    return path


def _check_host(node: _Node, host: str) -> None:
    if not host or host.startswith("-"):
        node.expected("a host name or IP address (not starting with '-')")
    try:
        if HostPort.parse(host, 22).host != host:
            raise ValueError(host)
    except ValueError:
        node.expected("a host name or IP address")


# --------------------------------------------------------------------------- inventory


def _parse_inventory(node: _Node) -> str | Path:
    text = node.text()
    if "://" in text:
        url = urlsplit(text)
        if url.scheme.lower() not in ("http", "https") or not url.netloc:
            node.expected("a file path or an http(s):// URL")
        return text
    return node.local_path()


# --------------------------------------------------------------------------- deploy

_LB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _parse_deploy(node: _Node) -> DeployConfig:
    f = node.mapping((
        "templates", "load_balancers", "keep_releases", "spool", "certbot_dir",
        "challenge_service", "account_thumbprint", "probe_timeout", "mode",
    ))
    templates = f.opt("templates", nullable=True)
    lbs: list[LoadBalancerConfig] = []
    for item in f.req("load_balancers").items(non_empty=True):
        lb = _parse_load_balancer(item)
        if any(other.name == lb.name for other in lbs):
            item.child("name", lb.name).error(f"load balancer {lb.name!r} is listed twice")
        lbs.append(lb)
    keep = f.opt("keep_releases")
    spool = f.opt("spool")
    certbot_dir = f.opt("certbot_dir")
    challenge = f.opt("challenge_service", nullable=True)
    thumbprint_node = f.opt("account_thumbprint", nullable=True)
    thumbprint = None
    if thumbprint_node is not None:
        thumbprint = thumbprint_node.text()
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", thumbprint):
            thumbprint_node.expected(
                "the base64url thumbprint that 'certbot-epages http01-snippet' prints"
            )
    probe_timeout = f.opt("probe_timeout")
    mode_node = f.opt("mode")
    mode: DeployMode = DeployConfig.mode
    if mode_node is not None:
        text = mode_node.text()
        if text not in ("sites", "shared"):
            mode_node.expected("'sites' (a server block per shop) or 'shared' (one server per "
                               "template, certificates chosen by a map)")
        mode = "shared" if text == "shared" else "sites"
    return DeployConfig(
        templates=None if templates is None else templates.local_path(),
        load_balancers=tuple(lbs),
        keep_releases=5 if keep is None else keep.integer(1),
        spool=DEFAULT_SPOOL if spool is None else spool.local_path(),
        certbot_dir=DEFAULT_CERTBOT_DIR if certbot_dir is None else certbot_dir.local_path(),
        challenge_service=None if challenge is None else challenge.hostport(80),
        account_thumbprint=thumbprint,
        probe_timeout=120.0 if probe_timeout is None else probe_timeout.positive_number(),
        mode=mode,
    )


def _parse_fleet(node: _Node | None) -> FleetConfig:
    if node is None:
        return FleetConfig()
    f = node.mapping((
        "platform_domains", "lb_addresses", "ca_identities", "state_dir", "certbot",
        "certbot_args", "limits", "prometheus", "platform_shop",
    ))
    defaults = FleetConfig()
    platform = f.opt("platform_domains")
    domains = () if platform is None else platform.strings()
    normalised = []
    for index, name in enumerate(domains):
        try:
            normalised.append(validate_domain(name, allow_wildcard=False))
        except ValueError:
            platform.child(index, name).expected(  # type: ignore[union-attr]
                "a domain name such as platform.example"
            )
    addresses_node = f.opt("lb_addresses")
    addresses = () if addresses_node is None else addresses_node.strings()
    for index, address in enumerate(addresses):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            addresses_node.child(index, address).expected("an IP address")  # type: ignore[union-attr]
    identities = f.opt("ca_identities")
    state_dir = f.opt("state_dir")
    certbot = f.opt("certbot")
    certbot_args = f.opt("certbot_args")
    limits = f.opt("limits")
    prometheus = f.opt("prometheus", nullable=True)
    platform_shop_node = f.opt("platform_shop", nullable=True)
    platform_shop = None
    if platform_shop_node is not None:
        platform_shop = platform_shop_node.text()
        if not SHOP_ID_RE.fullmatch(platform_shop):
            platform_shop_node.expected("a shop id as the inventory's 'shop' (letters, digits "
                                        "and . _ : @ / + = -)")
    return FleetConfig(
        platform_domains=tuple(normalised),
        lb_addresses=tuple(addresses),
        ca_identities=defaults.ca_identities if identities is None else identities.strings(
            non_empty=True),
        state_dir=defaults.state_dir if state_dir is None else state_dir.local_path(),
        certbot=defaults.certbot if certbot is None else _argv(certbot),
        certbot_args=() if certbot_args is None else certbot_args.strings(),
        limits=FleetLimits() if limits is None else _parse_limits(limits),
        prometheus=None if prometheus is None else prometheus.local_path(),
        platform_shop=platform_shop,
    )


def _parse_limits(node: _Node) -> FleetLimits:
    f = node.mapping((
        "orders_per_account", "certs_per_registered_domain", "failures_per_hostname",
        "public_suffixes",
    ))
    d = FleetLimits()
    orders, certs, failures = (f.opt(k) for k in (
        "orders_per_account", "certs_per_registered_domain", "failures_per_hostname"))
    suffixes = f.opt("public_suffixes")
    return FleetLimits(
        orders_per_account=d.orders_per_account if orders is None else orders.integer(1),
        certs_per_registered_domain=(
            d.certs_per_registered_domain if certs is None else certs.integer(1)),
        failures_per_hostname=d.failures_per_hostname if failures is None else failures.integer(1),
        public_suffixes=() if suffixes is None else suffixes.strings(),
    )


def _parse_load_balancer(node: _Node) -> LoadBalancerConfig:
    f = node.mapping(
        ("name", "ssh", "ssh_options", "root", "test", "reload", "probe", "listen",
         "worker_group")
    )
    name_node = f.req("name")
    name = name_node.text()
    if not _LB_NAME.fullmatch(name):
        name_node.expected("a name of up to 63 of a-z, 0-9, '_' and '-', starting with a-z or 0-9")
    ssh_node = f.req("ssh")
    ssh = _parse_ssh_destination(ssh_node)
    root_node = f.req("root")
    ssh_options = f.opt("ssh_options")
    test = f.opt("test")
    reload = f.opt("reload")
    probe = f.opt("probe", nullable=True)
    group_node = f.opt("worker_group")
    worker_group = LoadBalancerConfig.worker_group
    if group_node is not None:
        worker_group = group_node.text()
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", worker_group):
            group_node.expected("a Unix group name such as www-data")
    listen_node = f.opt("listen", nullable=True)
    listen = ""
    if listen_node is not None:
        listen = listen_node.text()
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            listen_node.expected("an IP address for the shop servers' listen directives")
        if ":" in listen:
            listen = f"[{listen}]"
    return LoadBalancerConfig(
        name=name,
        ssh=ssh,
        ssh_options=() if ssh_options is None else ssh_options.strings(),
        root=_absolute(root_node, root_node.text()),
        test=("nginx", "-t") if test is None else _argv(test),
        reload=("nginx", "-s", "reload") if reload is None else _argv(reload),
        probe=None if probe is None else probe.hostport(443),
        listen=listen,
        worker_group=worker_group,
    )


def _parse_ssh_destination(node: _Node) -> str:
    text = node.text()
    if text == "local":
        return text
    _no_blanks(node, text)
    if text.startswith("-"):
        node.expected("'local' or [user@]host, not starting with '-'")
    user, at, host = text.rpartition("@")
    if at and not _USER.fullmatch(user):
        node.expected("'local' or [user@]host with a user of letters, digits, '_', '.' and '-'")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            node.expected("'local' or [user@]host (no ':port'; put '-p PORT' in ssh_options)")
    else:
        _check_host(node, host)
    return text


def _argv(node: _Node) -> tuple[str, ...]:
    argv = node.strings(non_empty=True)
    if not argv[0].strip():
        node.child(0, argv[0]).expected("a command name")
    return argv


# --------------------------------------------------------------------------- sandbox


def _parse_sandbox(node: _Node | None) -> Mapping[str, object]:
    if node is None:
        return MappingProxyType({})
    if not isinstance(node.value, dict):
        node.expected("a mapping")
    frozen = _freeze(node, node.value, {}, set())
    assert isinstance(frozen, MappingProxyType)
    return frozen


def _freeze(node: _Node, value: object, memo: dict[int, object], active: set[int]) -> object:
    """Copy deeply into immutables (dict -> MappingProxyType, list -> tuple, set -> frozenset)."""
    if not isinstance(value, (dict, list, set)):
        return value
    if id(value) in memo:  # an alias seen before: share the frozen copy
        return memo[id(value)]
    if id(value) in active:
        node.error("recursive YAML aliases are not supported")
    active.add(id(value))
    frozen: object
    if isinstance(value, dict):
        frozen = MappingProxyType({k: _freeze(node, v, memo, active) for k, v in value.items()})
    elif isinstance(value, list):
        frozen = tuple(_freeze(node, v, memo, active) for v in value)
    else:
        frozen = frozenset(value)
    active.discard(id(value))
    memo[id(value)] = frozen
    return frozen
