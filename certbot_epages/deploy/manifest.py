"""The manifest of a release: which site serves which names for whom, with which certificate.

Every release carries ``manifest.json``; the one that ``current`` points to on a load balancer
is the truth about what that load balancer serves. Format 2::

    {"format": 2,
     "generation": "<sha256 of the nginx config of the release>",
     "marker": "<sha256 of the certificate served for epages-release.invalid>",
     "sites": {"<domain>.conf": {"domain": ..., "names": [...], "owner": ...,
                                 "lineage": ..., "fingerprint": ...}},
     "claims": {"<name>": "<owner>"}}

``claims`` holds every name an owner has: the names its sites serve, and the names of its
suspended shops.
Format 1 (a plain mapping of site file to ``domain``, ``names``, ``lineage`` and
``fingerprint``, written before owners existed) is still read: each site's owner is then
``<domain> (before shop ids)``, which :mod:`certbot_epages.ownership` hands to the one entry
that lists the name (and holds when several do).
Reading never guesses: a manifest that does not parse raises :class:`ManifestError`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from certbot_epages.errors import EpagesError
from certbot_epages.names import legacy_owner

FILENAME = "manifest.json"
FORMAT = 2
_HEX = re.compile(r"[0-9a-f]{64}")
_PLAIN = re.compile(r"[A-Za-z0-9._~-]+")  # JSON text of such a string: the string in quotes


class ManifestError(EpagesError):
    """A manifest is not valid JSON or not a manifest of a known format."""


@dataclass(frozen=True)
class SiteRecord:
    """One site of a release: its names, its owner and the certificate it is served with."""

    domain: str
    names: tuple[str, ...]
    owner: str
    lineage: str
    fingerprint: str
    # Shared mode renders every release's config anew: what a kept shop is rendered with.
    template: str | None = None
    vars: Mapping[str, str | int | bool] | None = None

    @functools.cached_property
    def json_text(self) -> str:
        """The record as compact JSON text, made once per record.

        The manifests of every load balancer hold the same records (100,000 of them at scale).
        """
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))

    def as_json(self) -> dict[str, Any]:
        """The record as JSON data."""
        data: dict[str, Any] = {"domain": self.domain, "names": list(self.names),
                                "owner": self.owner, "lineage": self.lineage,
                                "fingerprint": self.fingerprint}
        if self.template is not None:
            data["template"] = self.template
            data["vars"] = dict(self.vars or {})
        return data


@dataclass(frozen=True)
class Manifest:
    """A release's sites and claims, and the generation of its nginx config."""

    sites: Mapping[str, SiteRecord] = field(default_factory=lambda: MappingProxyType({}))
    claims: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    generation: str | None = None
    marker: str | None = None  # fingerprint of the release marker's certificate
    mode: str = "sites"  # deploy.mode of the release
    format: int = FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def owner_of(self, name: str) -> str | None:
        """Who holds ``name`` in this release (None: nobody)."""
        return self.claims.get(name)

    def sites_of(self, owner: str) -> dict[str, SiteRecord]:
        """The sites of one owner, by file name."""
        return {f: s for f, s in self.sites.items() if s.owner == owner}

    def dumps(self) -> bytes:
        """The manifest as written into a release (stable: same content, same bytes)."""
        def text(value: object) -> str:
            return json.dumps(value, sort_keys=True, separators=(",", ":"))

        # Compact (indenting takes json's pure-Python encoder: 0.5 s at 10,000 sites), keys in
        # order, each record's text made once.
        def key(name: str) -> str:
            return f'"{name}"' if _PLAIN.fullmatch(name) else text(name)

        sites = ",".join(f"{key(name)}:{self.sites[name].json_text}"
                         for name in sorted(self.sites))
        return (f'{{"claims":{text(dict(self.claims))},"format":{FORMAT},'
                f'"generation":{text(self.generation)},"marker":{text(self.marker)},'
                f'"mode":{text(self.mode)},"sites":{{{sites}}}}}\n').encode()


def loads(data: bytes, where: str = FILENAME) -> Manifest:
    """Parse a manifest of format 1 or 2; raise :class:`ManifestError` naming ``where``."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    try:
        if "format" not in raw:
            return _format1(raw)
        if raw["format"] != FORMAT:
            raise ValueError(f"unknown format {raw['format']!r} (this version reads 1 and 2)")
        return _format2(raw)
    except KeyError as e:
        raise ManifestError(f"{where}: not a release manifest: missing key {e}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise ManifestError(f"{where}: not a release manifest: {e}") from None


def _format1(raw: Mapping[str, Any]) -> Manifest:
    sites = {}
    claims: dict[str, str] = {}
    for name, entry in raw.items():
        site = _site_file(name)
        domain = _text(entry["domain"], f"{name}.domain")
        record = SiteRecord(
            domain=domain,
            names=_names(entry.get("names", [domain]), name),
            owner=legacy_owner(domain),
            lineage=_text(entry["lineage"], f"{name}.lineage"),
            fingerprint=_fingerprint(entry["fingerprint"], name),
        )
        sites[site] = record
        claims.update(dict.fromkeys(record.names, record.owner))
    return Manifest(sites=sites, claims=claims, format=1)


def _format2(raw: Mapping[str, Any]) -> Manifest:
    sites = {}
    for name, entry in _mapping(raw["sites"], "sites").items():
        site = _site_file(name)
        sites[site] = SiteRecord(
            domain=_text(entry["domain"], f"{name}.domain"),
            names=_names(entry["names"], name),
            owner=_text(entry["owner"], f"{name}.owner"),
            lineage=_text(entry["lineage"], f"{name}.lineage"),
            fingerprint=_fingerprint(entry["fingerprint"], name),
            template=None if entry.get("template") is None
            else _text(entry["template"], f"{name}.template"),
            vars=_vars(entry.get("vars"), name),
        )
    claims = {_text(k, "claims"): _text(v, f"claims.{k}")
              for k, v in _mapping(raw.get("claims", {}), "claims").items()}
    for record in sites.values():
        for name in record.names:
            if claims.setdefault(name, record.owner) != record.owner:
                raise ValueError(f"claims.{name}: {claims[name]!r}, but site of "
                                 f"{record.domain} serves it for {record.owner!r}")
    generation = raw.get("generation")
    marker = raw.get("marker")
    mode = raw.get("mode", "sites")
    if mode not in ("sites", "shared"):
        raise ValueError(f"mode: unknown {mode!r}")
    return Manifest(
        sites=sites, claims=claims,
        generation=None if generation is None else _text(generation, "generation"),
        marker=None if marker is None else _fingerprint(marker, "marker"),
        mode=mode,
    )


def _vars(value: object, what: str) -> Mapping[str, str | int | bool] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, bool)) for k, v in value.items()):
        raise ValueError(f"{what}.vars: expected an object of strings, numbers and booleans")
    return dict(value)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a non-empty string")
    return value


def _names(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what}.names: expected a list of names")
    return tuple(_text(v, f"{what}.names") for v in value)


def _fingerprint(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError(f"{what}: expected a sha256 fingerprint in hex")
    return value


def _site_file(name: object) -> str:
    if not isinstance(name, str) or "/" in name or not name.endswith(".conf") or name[0] == ".":
        raise ValueError(f"site {name!r}: expected a file name <domain>.conf")
    return name
