"""The ``dns`` section of epages.yaml: TSIG keys, managed zones, DNS-01 settings."""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Mapping
from types import MappingProxyType

from certbot_epages.config.model import DnsConfig, ZoneConfig
from certbot_epages.config.reader import Node
from certbot_epages.dns import keys
from certbot_epages.dns.keys import TsigKey
from certbot_epages.netaddr import HostPort

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def parse_dns(node: Node) -> DnsConfig:
    """The ``dns`` section: keys, zones and the DNS-01 settings."""
    f = node.mapping(
        (
            "tsig_keys", "zones", "resolvers", "delegation", "ttl", "placeholder",
            "propagation_timeout", "allow_weak_algorithms", "state_dir", "stale_after",
        )
    )
    weak = f.opt("allow_weak_algorithms")
    allow_weak = DnsConfig.allow_weak_algorithms if weak is None else weak.boolean()
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
    placeholder = DnsConfig.placeholder
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
        ttl=DnsConfig.ttl if ttl_node is None else ttl_node.integer(1, 86400),
        placeholder=placeholder,
        propagation_timeout=(DnsConfig.propagation_timeout if timeout is None
                             else timeout.positive_number()),
        allow_weak_algorithms=allow_weak,
        state_dir=DnsConfig.state_dir if state_dir is None else state_dir.local_path(),
        stale_after=(DnsConfig.stale_after if stale_after is None
                     else stale_after.positive_number()),
    )


def _parse_tsig_keys(node: Node, allow_weak: bool) -> dict[str, TsigKey]:
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


def _parse_zone(node: Node, tsig_keys: Mapping[str, TsigKey]) -> ZoneConfig:
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


def _zone_name(node: Node) -> str:
    name = node.text().strip().lower()
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        node.expected("a DNS zone name such as dyn.platform.example")
    return name


def _parse_delegation(node: Node) -> str:
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


def _parse_placeholder(node: Node) -> str | None:
    if node.value is None:
        return None
    text = node.text(non_empty=False)
    if len(text) > 255 or any(not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in text):
        node.expected("null or printable ASCII of at most 255 characters without '\"' or '\\'")
    return text


