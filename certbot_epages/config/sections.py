"""The sections of epages.yaml, each checked into its dataclass (see :mod:`.model`)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from certbot_epages.config.dns_section import parse_dns
from certbot_epages.config.model import (
    Config,
    DeployConfig,
    DeployMode,
    FleetConfig,
    FleetLimits,
    Http01Config,
    Http01Mode,
    Http01Target,
    LoadBalancerConfig,
)
from certbot_epages.config.reader import Node, describe
from certbot_epages.names import SHOP_ID_RE, validate_domain
from certbot_epages.netaddr import HostPort

SECTIONS = ("dns", "http01", "inventory", "inventory_timeout", "inventory_max_bytes", "deploy",
            "fleet")


def parse(data: object, source: Path) -> Config:
    """Check already-parsed YAML ``data``; ``source`` is named in errors and anchors paths."""
    source = Path(source).absolute()
    root = Node(data, "", source)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else describe(data, secret=False)
        root.error(f"the top level must be a mapping of sections ({', '.join(SECTIONS)}), "
                   f"got {got}")
    top = root.mapping(SECTIONS, what="sections")
    dns = top.opt("dns", nullable=True)
    http01 = top.opt("http01", nullable=True)
    inventory = top.opt("inventory", nullable=True)
    deploy = top.opt("deploy", nullable=True)
    fleet = top.opt("fleet", nullable=True)
    timeout = top.opt("inventory_timeout")
    max_bytes = top.opt("inventory_max_bytes")
    return Config(
        source=source,
        dns=None if dns is None else parse_dns(dns),
        http01=None if http01 is None else _parse_http01(http01),
        inventory=None if inventory is None else _parse_inventory(inventory),
        deploy=None if deploy is None else _parse_deploy(deploy),
        fleet=_parse_fleet(fleet),
        inventory_timeout=(Config.inventory_timeout if timeout is None
                           else timeout.positive_number()),
        inventory_max_bytes=(Config.inventory_max_bytes if max_bytes is None
                             else max_bytes.integer(1024)),
    )


# --------------------------------------------------------------------------- http01

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_REMOTE = re.compile(r"(?:(?P<user>[^@:/\[\]]*)@)?(?P<host>\[[^\]]*\]|[^@:/\[\]]*):(?P<path>.*)")


def _parse_http01(node: Node) -> Http01Config:
    f = node.mapping(("mode", "targets", "ssh_options", "self_check", "timeout"))
    mode_node = f.opt("mode")
    mode: Http01Mode = Http01Config.mode
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
        timeout=Http01Config.timeout if timeout is None else timeout.positive_number(),
    )


def _parse_target(node: Node) -> Http01Target:
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


def _no_blanks(node: Node, text: str) -> None:
    if any(c.isspace() or not c.isprintable() for c in text):
        node.expected("a value without spaces or control characters")


def _absolute(node: Node, path: str) -> str:
    _no_blanks(node, path)
    if not path.startswith("/"):
        node.expected("an absolute path (starting with '/')")
    if ".." in PurePosixPath(path).parts:
        node.expected("a path without '..'")
    return path


def _check_host(node: Node, host: str) -> None:
    if not host or host.startswith("-"):
        node.expected("a host name or IP address (not starting with '-')")
    try:
        if HostPort.parse(host, 22).host != host:
            raise ValueError(host)
    except ValueError:
        node.expected("a host name or IP address")


# --------------------------------------------------------------------------- inventory


def _parse_inventory(node: Node) -> str | Path:
    text = node.text()
    if "://" in text:
        url = urlsplit(text)
        if url.scheme.lower() not in ("http", "https") or not url.netloc:
            node.expected("a file path or an http(s):// URL")
        return text
    return node.local_path()


# --------------------------------------------------------------------------- deploy

_LB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _parse_deploy(node: Node) -> DeployConfig:
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
        keep_releases=DeployConfig.keep_releases if keep is None else keep.integer(1),
        spool=DeployConfig.spool if spool is None else spool.local_path(),
        certbot_dir=(DeployConfig.certbot_dir if certbot_dir is None
                     else certbot_dir.local_path()),
        challenge_service=None if challenge is None else challenge.hostport(80),
        account_thumbprint=thumbprint,
        probe_timeout=(DeployConfig.probe_timeout if probe_timeout is None
                       else probe_timeout.positive_number()),
        mode=mode,
    )


def _parse_fleet(node: Node | None) -> FleetConfig:
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


def _parse_limits(node: Node) -> FleetLimits:
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


def _parse_load_balancer(node: Node) -> LoadBalancerConfig:
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
        test=LoadBalancerConfig.test if test is None else _argv(test),
        reload=LoadBalancerConfig.reload if reload is None else _argv(reload),
        probe=None if probe is None else probe.hostport(443),
        listen=listen,
        worker_group=worker_group,
    )


def _parse_ssh_destination(node: Node) -> str:
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


def _argv(node: Node) -> tuple[str, ...]:
    argv = node.strings(non_empty=True)
    if not argv[0].strip():
        node.child(0, argv[0]).expected("a command name")
    return argv
