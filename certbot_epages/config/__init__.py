"""epages.yaml: the one configuration file, read once into frozen dataclasses.

The file is found by :func:`config_path` (explicit path, then ``$CERTBOT_EPAGES_CONFIG``, then
``/etc/letsencrypt/epages.yaml``), parsed with a safe YAML loader and checked strictly: unknown
keys, wrong types and out-of-range values raise :class:`~certbot_epages.errors.ConfigError`
with the file, the key path (``dns.zones[0].primaries[1]``) and what was expected. Relative
paths in the file are relative to the file's directory. Nothing outside this package sees the
raw YAML data.

:mod:`.model` holds the dataclasses and every default, :mod:`.reader` the YAML reader and its
key-path nodes, :mod:`.sections` a parser per section.
"""

from __future__ import annotations

import os
from pathlib import Path

from certbot_epages.config.model import (
    DEFAULT_CERTBOT_DIR,
    DEFAULT_DNS_STATE,
    DEFAULT_PATH,
    DEFAULT_SPOOL,
    ENV_VAR,
    Config,
    DeployConfig,
    DeployMode,
    DnsConfig,
    FleetConfig,
    FleetLimits,
    Http01Config,
    Http01Mode,
    Http01Target,
    LoadBalancerConfig,
    ZoneConfig,
)
from certbot_epages.config.reader import read_yaml
from certbot_epages.config.sections import parse

__all__ = [
    "DEFAULT_CERTBOT_DIR", "DEFAULT_DNS_STATE", "DEFAULT_PATH", "DEFAULT_SPOOL", "ENV_VAR",
    "Config", "DeployConfig", "DeployMode", "DnsConfig", "FleetConfig", "FleetLimits",
    "Http01Config", "Http01Mode", "Http01Target", "LoadBalancerConfig", "ZoneConfig",
    "config_path", "load", "parse",
]


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
    return parse(read_yaml(source), source)
