"""What epages.yaml holds, as frozen dataclasses: the one place its defaults live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from certbot_epages.dns.keys import TsigKey
from certbot_epages.errors import ConfigError
from certbot_epages.netaddr import HostPort

DEFAULT_PATH = Path("/etc/letsencrypt/epages.yaml")
ENV_VAR = "CERTBOT_EPAGES_CONFIG"
DEFAULT_SPOOL = Path("/var/lib/certbot-epages/spool")
DEFAULT_DNS_STATE = Path("/var/lib/certbot-epages/dns")
DEFAULT_CERTBOT_DIR = Path("/etc/letsencrypt")

Http01Mode = Literal["files", "stateless"]
DeployMode = Literal["sites", "shared"]


@dataclass(frozen=True)
class ZoneConfig:
    """A DNS zone we may update: where to send updates, with which key, whom to check."""

    name: str
    primaries: tuple[HostPort, ...]
    key: TsigKey
    nameservers: tuple[HostPort, ...] | None = None  # None: the zone's NS records ("auto")


@dataclass(frozen=True)
class DnsConfig:
    """The ``dns`` section: TSIG keys, managed zones and DNS-01 settings."""

    tsig_keys: Mapping[str, TsigKey]
    zones: tuple[ZoneConfig, ...]
    delegation: str  # the CNAME target customers create; default: below the first zone
    resolvers: tuple[HostPort, ...] | None = None  # None: the system resolver
    ttl: int = 60
    placeholder: str | None = ".empty"  # TXT left where no other value remains
    propagation_timeout: float = 120.0
    allow_weak_algorithms: bool = False  # hmac-md5 / hmac-sha1
    state_dir: Path = DEFAULT_DNS_STATE  # claims and the journal of values written
    stale_after: float = 3600.0  # seconds before an ended run's values are removed


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

    mode: Http01Mode = "files"
    targets: tuple[Http01Target, ...] = ()
    ssh_options: tuple[str, ...] = ()
    self_check: tuple[HostPort, ...] = ()
    timeout: float = 30.0  # seconds the self-check may take


@dataclass(frozen=True)
class LoadBalancerConfig:
    """One nginx load balancer that certificates are deployed to."""

    name: str
    ssh: str  # "local" or an ssh destination, [user@]host
    root: str
    ssh_options: tuple[str, ...] = ()
    test: tuple[str, ...] = ("nginx", "-t")
    reload: tuple[str, ...] = ("nginx", "-s", "reload")
    probe: HostPort | None = None
    listen: str = ""  # the address shop servers listen on; "" for all
    worker_group: str = "www-data"  # shared mode: the group nginx workers read keys as

    @property
    def is_local(self) -> bool:
        """True if the load balancer is this machine (no ssh)."""
        return self.ssh == "local"


@dataclass(frozen=True)
class DeployConfig:
    """The ``deploy`` section: templates, load balancers and release bookkeeping."""

    load_balancers: tuple[LoadBalancerConfig, ...]
    templates: Path | None = None  # None: the packaged templates
    keep_releases: int = 5
    spool: Path = DEFAULT_SPOOL
    certbot_dir: Path = DEFAULT_CERTBOT_DIR  # certbot's config dir: live/<lineage>/
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
    limits: FleetLimits = field(default_factory=FleetLimits)
    prometheus: Path | None = None  # a node_exporter textfile to write after every sync
    platform_shop: str | None = None  # the shop id that owns the platform's own entries


@dataclass(frozen=True)
class Config:
    """The whole of epages.yaml; a missing section is None."""

    source: Path
    dns: DnsConfig | None = None
    http01: Http01Config | None = None
    inventory: str | Path | None = None  # an http(s) URL (str) or a file (Path)
    deploy: DeployConfig | None = None
    fleet: FleetConfig = field(default_factory=FleetConfig)
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
