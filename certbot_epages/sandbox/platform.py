"""The sandbox platform: every server of a shop platform, on loopback, in one directory.

Each sandbox takes a block of loopback addresses ``127.A.B.0/24`` of its own, so every server
listens on its standard port (53, 80, 443, 22) and NS-record discovery works as on the Internet,
while two sandboxes side by side never collide:

====================  ==========  ==================================================
server                address     role
====================  ==========  ==================================================
primary               127.A.B.1   every zone; RFC 2136 updates of TXT by TSIG key
                                  (BIND, or Knot DNS or PowerDNS: see :mod:`.primary`)
BIND secondary        127.A.B.2   the challenge zone, by NOTIFY + zone transfer
BIND resolver         127.A.B.3   the CA's resolver (pebble), cache capped at 1 s
transfer relay        127.A.B.5   secondary -> primary transfers; can hold them back
pebble                127.A.B.4   ACME on :14000, management on :15000
nginx lb1, lb2        .11, .12    terminate TLS; proxy HTTP-01 to the challenge service
challenge service     127.A.B.20  nginx serving the HTTP-01 webroot
sshd                  .11 .12 .20 how deploys reach the load balancers and challenge host
====================  ==========  ==================================================

``named`` only listens on addresses configured on an interface, so the three DNS addresses are
added to ``lo`` (root needed) and removed again at teardown. The secondary's NS name also has an
IPv6 address that this host cannot reach (a route of type ``unreachable`` for a documentation
prefix, added and removed with the sandbox): every propagation wait meets a name server with an
address family it cannot use, as on a host without IPv6.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from certbot_epages.errors import SandboxError
from certbot_epages.resources import jinja_env
from certbot_epages.sandbox import primary, processes
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.primary import Kind

KEY_NAME = "acme-update"
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
STATE_FILE = "sandbox.json"


@dataclass(frozen=True)
class Zones:
    """The sandbox's DNS zones."""

    customer: str = "shop.test"  # a customer's own zone, delegating _acme-challenge by CNAME
    challenge: str = "dyn.platform.test"  # the platform's challenge zone (updates allowed)
    direct: str = "direct.test"  # a zone updated directly, without CNAME
    platform: str = "platform.test"  # shops get shopalias.platform.test names
    custom: str = "custom.test"  # many shops' own domains: HTTP-01, DNS-01 and broken ones


ZONES = Zones()


@dataclass(frozen=True)
class Addresses:
    """The loopback addresses of one sandbox, all in ``<base>.0/24``."""

    base: str

    @property
    def primary(self) -> str:  # noqa: D102
        return f"{self.base}.1"

    @property
    def secondary(self) -> str:  # noqa: D102
        return f"{self.base}.2"

    @property
    def resolver(self) -> str:  # noqa: D102
        return f"{self.base}.3"

    @property
    def pebble(self) -> str:  # noqa: D102
        return f"{self.base}.4"

    @property
    def relay(self) -> str:
        """The transfer relay between secondary and primary (see :mod:`.relay`)."""
        return f"{self.base}.5"

    @property
    def lb1(self) -> str:  # noqa: D102
        return f"{self.base}.11"

    @property
    def lb2(self) -> str:  # noqa: D102
        return f"{self.base}.12"

    @property
    def challenge(self) -> str:  # noqa: D102
        return f"{self.base}.20"

    @property
    def unreachable_v6(self) -> str:
        """An IPv6 address of the secondary's NS name that no route leads to."""
        _, a, b = self.base.split(".")
        return f"2001:db8:{a}:{b}::2"

    @property
    def named(self) -> tuple[str, ...]:
        """The addresses ``named`` listens on: they must exist on ``lo``."""
        return (self.primary, self.secondary, self.resolver)

    def as_dict(self) -> dict[str, str]:
        """Every role's address, for templates and the state file."""
        roles = ("primary", "secondary", "resolver", "pebble", "relay", "lb1", "lb2", "challenge")
        return {role: getattr(self, role) for role in roles}

    def listeners(self) -> list[tuple[str, int, int]]:
        """(address, port, socket type) of every listener the sandbox opens."""
        tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
        dns_servers = (*self.named, self.relay)
        out: list[tuple[str, int, int]] = [(a, 53, t) for a in dns_servers for t in (tcp, udp)]
        out += [(self.pebble, ACME_PORT, tcp), (self.pebble, MANAGEMENT_PORT, tcp)]
        out += [(a, p, tcp) for a in (self.lb1, self.lb2) for p in (80, 443, 22)]
        out += [(self.challenge, p, tcp) for p in (80, 8080, 22)]
        return out


@dataclass(frozen=True)
class LoadBalancer:
    """One sandbox load balancer: its nginx prefix and the managed deploy tree."""

    name: str
    address: str
    prefix: str
    root: str


@dataclass
class State:
    """What a running sandbox is made of; saved as ``sandbox.json`` for ``down`` and ``env``."""

    directory: str
    base: str
    dns: str = "bind"  # the primary's software
    added_addresses: list[str] = field(default_factory=list)
    added_routes: list[str] = field(default_factory=list)
    processes: list[processes.Recorded] = field(default_factory=list)

    def save(self) -> None:
        """Write the state file (atomically)."""
        path = Path(self.directory) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> State:
        """Read the state file of the sandbox in ``directory``."""
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SandboxError(
                f"no sandbox in {directory} ({STATE_FILE} not found); start one with "
                f"'certbot-epages sandbox up --dir {directory}'"
            ) from None
        data["processes"] = [processes.Recorded(**p) for p in data["processes"]]
        return cls(**data)


class Sandbox:
    """A sandbox platform rooted at ``directory``: paths, addresses, and start/stop."""

    def __init__(self, directory: Path, base: str, dns: Kind = "bind") -> None:
        self.directory = directory.resolve()
        self.ip = Addresses(base)
        self.dns: Kind = dns
        self.zones = ZONES
        self.aaaa = False  # whether the secondary's NS name has its unreachable IPv6 address
        d = self.directory
        self.key_file = d / "dns" / f"{KEY_NAME}.key"
        self.ca_bundle = d / "pki" / "ca.crt"
        self.config_path = d / "epages.yaml"
        self.certbot_ini = d / "certbot" / "cli.ini"
        self.certbot_config_dir = d / "certbot" / "config"
        self.webroot = d / "challenge" / "webroot"
        self.ssh_key = d / "ssh" / "deploy_key"
        self.known_hosts = d / "ssh" / "known_hosts"
        self.transfer_delay_file = d / "dns" / "transfer-delay"
        self.inventory_path = d / "inventory.yaml"
        self.backend = f"{self.ip.challenge}:8080"
        self.lbs = tuple(
            LoadBalancer(name, addr, str(d / name), str(d / name / "epages"))
            for name, addr in (("lb1", self.ip.lb1), ("lb2", self.ip.lb2))
        )

    # ----------------------------------------------------------------- facts for users and tests

    @property
    def acme_url(self) -> str:
        """Pebble's ACME directory URL."""
        return f"https://{self.ip.pebble}:{ACME_PORT}/dir"

    @property
    def management_url(self) -> str:
        """Pebble's management API (issuing roots and intermediates)."""
        return f"https://{self.ip.pebble}:{MANAGEMENT_PORT}"

    def env(self) -> dict[str, str]:
        """Environment for running certbot and the hooks against this sandbox by hand."""
        return {
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "CERTBOT_EPAGES_CONFIG": str(self.config_path),
            "CERTBOT_EPAGES_SANDBOX": str(self.directory),
            "SANDBOX_ACME_SERVER": self.acme_url,
            "SANDBOX_CERTBOT_INI": str(self.certbot_ini),
        }

    def certbot_argv(self, *args: str) -> list[str]:
        """A certbot command line against this sandbox's pebble and certbot directories."""
        return [certbot_program(), "-c", str(self.certbot_ini), *args]

    def ssh_options(self) -> list[str]:
        """Ssh options that reach the sandbox's sshd as root with the deploy key."""
        return [
            "-i", str(self.ssh_key),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
        ]

    def hold_transfers(self, seconds: float) -> None:
        """Make the secondary lag: every transfer request waits ``seconds`` (0 lifts it)."""
        tmp = self.transfer_delay_file.with_suffix(".tmp")
        tmp.write_text(f"{seconds:g}\n")
        tmp.replace(self.transfer_delay_file)

    def set_http01_snippet(self, snippet: str) -> None:
        """Replace the load balancers' HTTP-01 snippet (e.g. with the stateless one), reload."""
        for lb in self.lbs:
            self._render_lb(lb, snippet)
            _run(self.nginx_argv(lb, "-t"))
            _run(self.nginx_argv(lb, "-s", "reload"))

    def nginx_argv(self, lb: LoadBalancer, *args: str) -> list[str]:
        """An nginx command line for one load balancer's prefix and config."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", f"{lb.prefix}/", "-c", f"{lb.prefix}/nginx.conf",
                "-e", f"{lb.prefix}/logs/error.log", *args]

    def stop_service(self, name: str) -> None:
        """Stop one of the sandbox's processes by name (e.g. ``nginx-challenge``)."""
        state = State.load(self.directory)
        processes.stop([p for p in state.processes if p.name == name])

    def pebble_roots(self) -> str:
        """PEM of pebble's current issuing root (it changes at every pebble start)."""
        return _https_get(f"{self.management_url}/roots/0", self.ca_bundle).decode()

    def pebble_intermediates(self) -> str:
        """PEM of pebble's current intermediate."""
        return _https_get(f"{self.management_url}/intermediates/0", self.ca_bundle).decode()

    # ------------------------------------------------------------------------- start and stop

    @classmethod
    def open(cls, directory: Path) -> Sandbox:
        """The running sandbox in ``directory``."""
        state = State.load(directory)
        dns = state.dns if state.dns in primary.KINDS else "bind"
        return cls(Path(state.directory), state.base, dns)

    @classmethod
    def up(cls, directory: Path, *, timeout: float = 30.0, dns: Kind = "bind",
           authz_reuse: int = 0) -> Sandbox:
        """Create and start a sandbox in ``directory``; stop everything again if any part fails.

        ``dns`` picks the primary's software: BIND, Knot DNS ("knot") or PowerDNS ("pdns").
        ``authz_reuse`` is the percentage of orders for which pebble reuses a valid
        authorization (100: always, so certbot skips the authenticator; 0: 99 %, see NOTES).
        """
        directory = directory.resolve()
        if (directory / STATE_FILE).exists():
            state = State.load(directory)
            if any(processes.alive(p) for p in state.processes):
                raise SandboxError(
                    f"a sandbox is already running in {directory}; stop it with "
                    f"'certbot-epages sandbox down --dir {directory}'"
                )
        _require_root_tools(dns)
        _clear_stopped_sandbox(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # nginx workers (nobody) must reach the webroot
        _require_traversable(directory)
        sandbox = cls(directory, _free_block(), dns)
        state = State(str(sandbox.directory), sandbox.ip.base, dns)
        try:
            state.added_routes = _add_unreachable_route(sandbox.ip.unreachable_v6)
            sandbox.aaaa = _unreachable(sandbox.ip.unreachable_v6)
            sandbox._write_files()
            state.added_addresses = _add_addresses(sandbox.ip.named)
            state.save()
            sandbox._start(state, timeout, authz_reuse)
        except BaseException:
            _teardown(state)
            raise
        return sandbox

    def down(self) -> list[str]:
        """Stop every process of this sandbox and remove its addresses; names force-killed."""
        return _teardown(State.load(self.directory))

    def running(self) -> list[str]:
        """Names of this sandbox's processes that are still alive."""
        return [p.name for p in State.load(self.directory).processes if processes.alive(p)]

    # ----------------------------------------------------------------------- files on disk

    def _context(self) -> dict[str, object]:
        return {
            "dir": str(self.directory),
            "ip": self.ip.as_dict(),
            "zones": asdict(self.zones),
            "ports": {"acme": ACME_PORT, "pebble_management": MANAGEMENT_PORT},
            "key_name": KEY_NAME,
            "key_file": str(self.key_file),
            "webroot": str(self.webroot),
            "lbs": [asdict(lb) for lb in self.lbs],
            "dns": self.dns,
            "ssh_key": str(self.ssh_key),
            "known_hosts": str(self.known_hosts),
            "backend": self.backend,
            "certbot": certbot_program(),
        }

    def _render(self, template: str, target: Path, **extra: object) -> None:
        text = jinja_env().get_template(f"sandbox/{template}").render({**self._context(), **extra})
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def _write_files(self) -> None:
        d = self.directory
        for sub in ("dns", "pki", "ssh", "certbot", "log", "spool"):
            (d / sub).mkdir(exist_ok=True)
        os.chmod(d / "dns", 0o700)
        os.chmod(d / "ssh", 0o700)
        primary.write_key(self.dns, self.key_file, KEY_NAME)
        self._write_zones()
        for server in ("secondary", "resolver"):
            (d / "dns" / server).mkdir(exist_ok=True)
            self._render(f"named-{server}.conf.j2", d / "dns" / server / "named.conf",
                         dir=str(d / "dns" / server))
        primary.write_config(self.dns, d / "dns" / "primary", self._context())
        self._render("root.hint.j2", d / "dns" / "resolver" / "root.hint")

        ca = SandboxCA(d / "pki")
        ca.issue("pebble", ["localhost", self.ip.pebble])
        self._render("pebble.json.j2", d / "pki" / "pebble.json", dir=str(d / "pki"))

        nginx = jinja_env()
        proxy = nginx.get_template("nginx/acme-challenge-proxy.conf.j2").render(
            challenge_service=f"{self.ip.challenge}:80"
        )
        for lb in self.lbs:
            prefix = Path(lb.prefix)
            (prefix / "logs").mkdir(parents=True, exist_ok=True)
            (Path(lb.root) / "releases").mkdir(parents=True, exist_ok=True)
            crt, key = ca.issue(f"{lb.name}-default", [f"default.{lb.name}.sandbox", lb.address])
            shutil.move(crt, prefix / "default.crt")
            shutil.move(key, prefix / "default.key")
            self._render_lb(lb, proxy)
        service = nginx.get_template("nginx/challenge-service.conf.j2").render(
            listen=f"{self.ip.challenge}:80", webroot=str(self.webroot)
        )
        challenge = d / "challenge"
        (challenge / "logs").mkdir(parents=True, exist_ok=True)
        (self.webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
        self._render("challenge-nginx.conf.j2", challenge / "nginx.conf",
                     prefix=str(challenge), challenge_service=service, backend=self.backend)
        self._render("inventory.yaml.j2", self.inventory_path)

        self._write_ssh()
        self._render("epages.yaml.j2", self.config_path)
        os.chmod(self.config_path, 0o600)
        self.certbot_ini.write_text(
            "# certbot against the sandbox's pebble; use: certbot -c this-file ...\n"
            f"server = {self.acme_url}\n"
            f"config-dir = {self.certbot_config_dir}\n"
            f"work-dir = {d / 'certbot' / 'work'}\n"
            f"logs-dir = {d / 'certbot' / 'logs'}\n"
            "agree-tos = true\n"
            "register-unsafely-without-email = true\n"
            "non-interactive = true\n"
        )

    def _render_lb(self, lb: LoadBalancer, http01_snippet: str) -> None:
        self._render("lb-nginx.conf.j2", Path(lb.prefix) / "nginx.conf", name=lb.name,
                     prefix=lb.prefix, root=lb.root, address=lb.address,
                     challenge_proxy=http01_snippet)

    def _write_zones(self) -> None:
        z, ip = self.zones, self.ip
        lbs = (ip.lb1, ip.lb2)

        def a(owner: str) -> list[str]:
            return [f"{owner} IN A {addr}" for addr in lbs]

        zones: dict[str, tuple[list[str], list[str]]] = {
            # The TLD itself, so lookups that climb the tree (CAA) get answers, as on the Internet.
            "test": (
                [f"ns1.{z.platform}"],
                [*(f"{child.removesuffix('.test')} IN NS ns1.{z.platform}."
                   for child in (z.platform, z.customer, z.direct, z.custom)),
                 f"ns1.{z.platform.removesuffix('.test')} IN A {ip.primary}"],
            ),
            z.platform: (
                [f"ns1.{z.platform}", f"ns2.{z.platform}"],
                [f"ns1 IN A {ip.primary}", f"ns2 IN A {ip.secondary}",
                 *([f"ns2 IN AAAA {ip.unreachable_v6}"] if self.aaaa else []),
                 f"dyn IN NS ns1.{z.platform}.", f"dyn IN NS ns2.{z.platform}.",
                 f"_acme-challenge IN CNAME _acme-challenge.{z.platform}.{z.challenge}.",
                 *a("*")],
            ),
            z.challenge: ([f"ns1.{z.platform}", f"ns2.{z.platform}"], []),
            z.customer: (
                [f"ns1.{z.platform}"],
                [*a("@"), *a("www"),
                 f"_acme-challenge IN CNAME _acme-challenge.{z.customer}.{z.challenge}.",
                 f"_acme-challenge.www IN CNAME _acme-challenge.www.{z.customer}.{z.challenge}.",
                 # Broken delegations, for the error paths: a loop, and a zone we do not manage.
                 f"_acme-challenge.loop IN CNAME _acme-challenge.loop2.{z.customer}.",
                 f"_acme-challenge.loop2 IN CNAME _acme-challenge.loop.{z.customer}.",
                 f"_acme-challenge.foreign IN CNAME _acme-challenge.foreign.{z.platform}."],
            ),
            z.direct: ([f"ns1.{z.platform}"], [*a("@"), *a("www"), *a("*")]),
            # Custom domains of many shops: d1..d9 delegate DNS-01 by CNAME, every other name
            # points at the load balancers (HTTP-01), and three are broken on purpose.
            z.custom: (
                [f"ns1.{z.platform}"],
                [*a("*"),
                 *(line for i in range(1, 10) for line in (
                     *a(f"d{i}"), *a(f"www.d{i}"),
                     f"_acme-challenge.d{i} IN CNAME "
                     f"_acme-challenge.d{i}.{z.custom}.{z.challenge}.",
                     f"_acme-challenge.www.d{i} IN CNAME "
                     f"_acme-challenge.www.d{i}.{z.custom}.{z.challenge}.")),
                 "nodns IN TXT \"a name with no address\"",
                 "*.nodns IN TXT \"no address here either\"",
                 "elsewhere IN A 127.0.0.99", "www.elsewhere IN A 127.0.0.99",
                 *a("caa"), *a("www.caa"),
                 'caa IN CAA 0 issue "other-ca.example"',
                 'www.caa IN CAA 0 issue "other-ca.example"'],
            ),
        }
        env = jinja_env()
        template = env.get_template("sandbox/zone.j2")
        for origin, (nameservers, records) in zones.items():
            text = template.render(origin=origin, zones=asdict(z), nameservers=nameservers,
                                   records=records)
            for server in ("primary", "secondary") if origin == z.challenge else ("primary",):
                target = self.directory / "dns" / server / f"{origin}.zone"
                target.parent.mkdir(parents=True, exist_ok=True)
                # The secondary starts from the same data; its transfers keep it current.
                target.write_text(text)

    def _write_ssh(self) -> None:
        ssh = self.directory / "ssh"
        for key in (ssh / "host_ed25519", self.ssh_key):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "certbot-epages-sandbox",
                  "-f", str(key)])
        shutil.copy(f"{self.ssh_key}.pub", ssh / "authorized_keys")
        host_pub = (ssh / "host_ed25519.pub").read_text().split()
        addresses = [self.ip.lb1, self.ip.lb2, self.ip.challenge]
        self.known_hosts.write_text(
            "".join(f"{a} {host_pub[0]} {host_pub[1]}\n" for a in addresses)
        )
        self._render("sshd_config.j2", ssh / "sshd_config", dir=str(ssh), addresses=addresses)

    # -------------------------------------------------------------------------- processes

    def _start(self, state: State, timeout: float, authz_reuse: int = 0) -> None:
        d, log = self.directory, self.directory / "log"
        named = shutil.which("named") or "/usr/sbin/named"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        pebble_env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # no random validation delays
            "PEBBLE_AUTHZREUSE": str(authz_reuse),  # 0: (almost) every order validates
            "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce
        }
        pebble_env.pop("PEBBLE_VA_ALWAYS_VALID", None)
        commands: list[tuple[str, list[str], dict[str, str] | None]] = [
            (self.primary_process, primary.command(self.dns, d / "dns" / "primary"), None),
            *((f"named-{s}", [named, "-g", "-n", "1", "-c", str(d / "dns" / s / "named.conf")],
               None) for s in ("secondary", "resolver")),
            ("transfer-relay", [sys.executable, "-m", "certbot_epages.sandbox.relay",
                                "--listen", f"{self.ip.relay}:53", "--to", f"{self.ip.primary}:53",
                                "--delay-file", str(self.transfer_delay_file)], None),
            ("pebble", ["pebble", "-config", str(d / "pki" / "pebble.json"),
                        "-dnsserver", f"{self.ip.resolver}:53"], pebble_env),
            *((f"nginx-{lb.name}", [*self.nginx_argv(lb), "-g", "daemon off;"], None)
              for lb in self.lbs),
            ("nginx-challenge", [nginx, "-p", f"{d / 'challenge'}/", "-c",
                                 str(d / "challenge" / "nginx.conf"), "-e",
                                 str(d / "challenge" / "logs" / "error.log"),
                                 "-g", "daemon off;"], None),
            ("sshd", [sshd, "-D", "-e", "-f", str(d / "ssh" / "sshd_config")], None),
        ]
        for name, argv, env in commands:
            state.processes.append(processes.start(name, argv, log / f"{name}.log", env))
            state.save()
        self._wait_ready(state.processes, timeout)

    @property
    def primary_process(self) -> str:
        """The name the primary's process is recorded under (``named-primary`` for BIND)."""
        return {"bind": "named-primary", "knot": "knotd-primary", "pdns": "pdns-primary"}[
            self.dns]

    def _wait_ready(self, procs: list[processes.Recorded], timeout: float) -> None:
        by_name = {p.name: p for p in procs}
        z, ip = self.zones, self.ip
        checks: list[tuple[str, Callable[[], object], str]] = [
            ("the primary to serve " + z.platform,
             lambda: _authoritative(ip.primary, z.platform), self.primary_process),
            ("the secondary to load " + z.challenge,
             lambda: _authoritative(ip.secondary, z.challenge), "named-secondary"),
            ("the transfer relay", lambda: _authoritative(ip.relay, z.challenge),
             "transfer-relay"),
            ("the resolver to answer for " + z.customer,
             lambda: _resolves(ip.resolver, z.customer), "named-resolver"),
            ("pebble's ACME directory",
             lambda: _https_get(self.acme_url, self.ca_bundle), "pebble"),
            *((f"nginx {lb.name}", lambda a=lb.address: _http_status(a, 80), f"nginx-{lb.name}")
              for lb in self.lbs),
            ("the challenge service", lambda: _http_status(ip.challenge, 80), "nginx-challenge"),
            *((f"sshd on {a}", lambda a=a: _ssh_banner(a), "sshd")
              for a in (ip.lb1, ip.lb2, ip.challenge)),
        ]
        for what, check, name in checks:
            processes.wait_until(what, check, timeout, watch=[by_name[name]])


def certbot_program() -> str:
    """The certbot beside this Python (the same venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "certbot"
    return str(beside) if beside.exists() else (shutil.which("certbot") or "certbot")


def _teardown(state: State) -> list[str]:
    killed = processes.stop(state.processes)
    for address in state.added_addresses:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                       capture_output=True, check=False, timeout=10)
    for prefix in state.added_routes:
        subprocess.run(["ip", "-6", "route", "del", "unreachable", prefix],
                       capture_output=True, check=False, timeout=10)
    state.added_addresses = []
    state.added_routes = []
    if Path(state.directory).exists():
        state.save()
    return killed


# --------------------------------------------------------------------------------- helpers


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        raise SandboxError(f"cannot run {argv[0]}: {e.strerror}") from None
    if done.returncode != 0:
        raise SandboxError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _require_root_tools(dns: Kind) -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (named must listen on added loopback "
                           "addresses, nginx and sshd on ports below 1024)")
    missing = [t for t in ("named", "nginx", "sshd", "pebble", "ssh-keygen", "ip")
               if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())]
    missing += primary.missing_programs(dns)
    if missing:
        raise SandboxError(
            f"missing programs: {', '.join(missing)}; install them with: apt-get install "
            "bind9 bind9-dnsutils pebble nginx rsync openssh-server openssh-client iproute2 "
            + primary.PACKAGES
        )


def _clear_stopped_sandbox(directory: Path) -> None:
    """Make room for a new sandbox: an old, stopped one is removed; anything else is refused."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise SandboxError(f"{directory} exists and is not a directory")
    if (directory / STATE_FILE).exists():
        shutil.rmtree(directory)
    elif any(directory.iterdir()):
        raise SandboxError(
            f"{directory} is not empty and holds no sandbox; choose an empty or new --dir"
        )


def _require_traversable(directory: Path) -> None:
    """Nginx workers run as nobody: every directory above the webroot must let others pass."""
    for parent in (directory, *directory.parents):
        if not parent.stat().st_mode & 0o001:
            raise SandboxError(
                f"{parent} is not searchable by others (mode {parent.stat().st_mode & 0o777:04o}),"
                f" so nginx workers (user nobody) could not serve the sandbox's webroot; choose a "
                f"--dir below /tmp or /var/tmp, or chmod o+x {parent}"
            )


def _lo_addresses() -> set[str]:
    out = _run(["ip", "-o", "-4", "addr", "show", "dev", "lo"])
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def _free_block() -> str:
    """A ``127.A.B`` block whose addresses nobody uses and whose ports are all free."""
    taken = _lo_addresses()
    rng = random.SystemRandom()
    for _ in range(50):
        base = f"127.{rng.randint(64, 254)}.{rng.randint(0, 255)}"
        if any(a.startswith(base + ".") for a in taken):
            continue
        if all(_can_bind(a, p, t) for a, p, t in Addresses(base).listeners()):
            return base
    raise SandboxError("no free block of loopback addresses found in 127.64.0.0-127.254.255.0")


def _can_bind(address: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _add_addresses(addresses: tuple[str, ...]) -> list[str]:
    added = []
    present = _lo_addresses()
    for address in addresses:
        if address not in present:
            _run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
            added.append(address)
    return added


def _add_unreachable_route(address: str) -> list[str]:
    """Make ``address``'s /64 unreachable from this host (no packet leaves); what was added."""
    prefix = str(ipaddress.ip_network(f"{address}/64", strict=False))
    done = subprocess.run(["ip", "-6", "route", "add", "unreachable", prefix],
                          capture_output=True, check=False, timeout=10)
    return [prefix] if done.returncode == 0 else []


def _unreachable(address: str) -> bool:
    """Whether sending to ``address`` fails at once on this host (connecting UDP sends nothing)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect((address, 53))
    except OSError:
        return True
    return False


def _authoritative(server: str, zone: str) -> bool | None:
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, server, timeout=0.5)
    ok = reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AA) and reply.answer
    return True if ok else None


def _resolves(server: str, name: str) -> bool | None:
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server, timeout=0.5)
    return True if reply.rcode() == dns.rcode.NOERROR and reply.answer else None


def _ssl_context(ca_bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_bundle))


def _https_get(url: str, ca_bundle: Path) -> bytes:
    with urllib.request.urlopen(url, timeout=2, context=_ssl_context(ca_bundle)) as reply:
        body: bytes = reply.read()
        return body


def _http_status(address: str, port: int) -> int:
    with socket.create_connection((address, port), timeout=1) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: ready.check\r\n\r\n")
        head = s.recv(64).decode("latin-1")
    if not head.startswith("HTTP/"):
        raise SandboxError(f"{address}:{port} did not answer HTTP")
    return int(head.split()[1])


def _ssh_banner(address: str) -> bool:
    with socket.create_connection((address, 22), timeout=1) as s:
        return s.recv(64).startswith(b"SSH-")


@contextlib.contextmanager
def running(
    directory: Path, *, timeout: float = 30.0, dns: Kind = "bind", authz_reuse: int = 0
) -> Iterator[Sandbox]:
    """A sandbox for the duration of a ``with`` block; stopped even when the block fails."""
    sandbox = Sandbox.up(directory, timeout=timeout, dns=dns, authz_reuse=authz_reuse)
    try:
        yield sandbox
    finally:
        sandbox.down()

