"""The address plan of a sandbox: its zones, one loopback block, and setting up ``lo``."""

from __future__ import annotations

import ipaddress
import random
import socket
import subprocess
from dataclasses import dataclass

from certbot_epages.errors import SandboxError
from certbot_epages.sandbox.processes import run

ACME_PORT = 14000
MANAGEMENT_PORT = 15000


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


def lo_addresses() -> set[str]:
    """The IPv4 addresses on ``lo``."""
    out = run(["ip", "-o", "-4", "addr", "show", "dev", "lo"])
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def free_block() -> str:
    """A ``127.A.B`` block whose addresses nobody uses and whose ports are all free."""
    taken = lo_addresses()
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


def add_addresses(addresses: tuple[str, ...]) -> list[str]:
    """Add the addresses missing on ``lo``; the ones added (to remove at teardown)."""
    added = []
    present = lo_addresses()
    for address in addresses:
        if address not in present:
            run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
            added.append(address)
    return added


def add_unreachable_route(address: str) -> list[str]:
    """Make ``address``'s /64 unreachable from this host (no packet leaves); what was added."""
    prefix = str(ipaddress.ip_network(f"{address}/64", strict=False))
    done = subprocess.run(["ip", "-6", "route", "add", "unreachable", prefix],
                          capture_output=True, check=False, timeout=10)
    return [prefix] if done.returncode == 0 else []


def unreachable(address: str) -> bool:
    """Whether sending to ``address`` fails at once on this host (connecting UDP sends nothing)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect((address, 53))
    except OSError:
        return True
    return False
