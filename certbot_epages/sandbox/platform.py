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
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from certbot_epages.errors import SandboxError
from certbot_epages.sandbox import addresses, files, primary, processes, readiness
from certbot_epages.sandbox.addresses import (
    ACME_PORT,
    MANAGEMENT_PORT,
    ZONES,
    Addresses,
    LoadBalancer,
    Zones,
)
from certbot_epages.sandbox.files import KEY_NAME, certbot_program
from certbot_epages.sandbox.primary import Kind
from certbot_epages.sandbox.processes import run

STATE_FILE = "sandbox.json"

__all__ = ["ACME_PORT", "KEY_NAME", "MANAGEMENT_PORT", "ZONES", "Addresses", "LoadBalancer",
           "Sandbox", "State", "Zones", "certbot_program", "running"]


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
            files.render_lb(self, lb, snippet)
            run(self.nginx_argv(lb, "-t"))
            run(self.nginx_argv(lb, "-s", "reload"))

    def nginx_argv(self, lb: LoadBalancer, *args: str) -> list[str]:
        """An nginx command line for one load balancer's prefix and config."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", f"{lb.prefix}/", "-c", f"{lb.prefix}/nginx.conf",
                "-e", f"{lb.prefix}/logs/error.log", *args]

    def stop_service(self, name: str) -> None:
        """Stop one of the sandbox's processes by name (e.g. ``nginx-challenge``)."""
        state = State.load(self.directory)
        processes.stop([p for p in state.processes if p.name == name])

    def usage(self) -> str:
        """How to use a running sandbox by hand, and how to stop it."""
        ip, d = self.ip, self.directory
        return "\n".join([
            f"sandbox running in {d}",
            f"  primary        {ip.primary}:53   {primary.NAMES[self.dns]} "
            f"(zones {', '.join(vars(self.zones).values())})",
            f"  BIND secondary {ip.secondary}:53   ({self.zones.challenge}, by zone transfer)",
            f"  resolver       {ip.resolver}:53   (pebble validates through it)",
            f"  pebble         {self.acme_url}",
            f"  lb1, lb2       {ip.lb1}, {ip.lb2} (:80, :443; ssh :22)",
            f"  challenge      {ip.challenge}:80 serving {self.webroot}",
            "use it:",
            f"  eval \"$(certbot-epages sandbox env --dir {d})\"",
            f"  certbot -c {self.certbot_ini} certonly --webroot -w {self.webroot} "
            f"-d {self.zones.customer}",
            "stop it:",
            f"  certbot-epages sandbox down --dir {d}",
        ])

    def pebble_roots(self) -> str:
        """PEM of pebble's current issuing root (it changes at every pebble start)."""
        return readiness.https_get(f"{self.management_url}/roots/0", self.ca_bundle).decode()

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
        sandbox = cls(directory, addresses.free_block(), dns)
        state = State(str(sandbox.directory), sandbox.ip.base, dns)
        try:
            state.added_routes = addresses.add_unreachable_route(sandbox.ip.unreachable_v6)
            sandbox.aaaa = addresses.unreachable(sandbox.ip.unreachable_v6)
            files.write_files(sandbox)
            state.added_addresses = addresses.add_addresses(sandbox.ip.named)
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
             lambda: readiness.authoritative(ip.primary, z.platform), self.primary_process),
            ("the secondary to load " + z.challenge,
             lambda: readiness.authoritative(ip.secondary, z.challenge), "named-secondary"),
            ("the transfer relay", lambda: readiness.authoritative(ip.relay, z.challenge),
             "transfer-relay"),
            ("the resolver to answer for " + z.customer,
             lambda: readiness.resolves(ip.resolver, z.customer), "named-resolver"),
            ("pebble's ACME directory",
             lambda: readiness.https_get(self.acme_url, self.ca_bundle), "pebble"),
            *((f"nginx {lb.name}", lambda a=lb.address: readiness.http_status(a, 80),
               f"nginx-{lb.name}") for lb in self.lbs),
            ("the challenge service", lambda: readiness.http_status(ip.challenge, 80),
             "nginx-challenge"),
            *((f"sshd on {a}", lambda a=a: readiness.ssh_banner(a), "sshd")
              for a in (ip.lb1, ip.lb2, ip.challenge)),
        ]
        for what, check, name in checks:
            processes.wait_until(what, check, timeout, watch=[by_name[name]])


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

