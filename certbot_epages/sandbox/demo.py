"""``make demo``: the whole platform flow on the sandbox, narrated for a newcomer.

1. The sandbox comes up (primary name server, BIND secondary and resolver, pebble, two load
   balancers behind sshd, the challenge service).
2. ``certbot-epages sync`` reads the sandbox's shop list and has certbot issue: the platform
   wildcard and a shop's own domain through CNAME-delegated DNS-01 (``epages-dns``), a custom
   domain over HTTP-01 through the challenge service, then deploys to both load balancers.
3. An HTTPS request to each load balancer for each domain shows what is served.
4. ``certbot-epages status``.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages.errors import SandboxError
from certbot_epages.inventory import load_inventory
from certbot_epages.resources import templates_dir
from certbot_epages.sandbox.platform import Sandbox
from certbot_epages.sandbox.primary import NAMES, Kind


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(directory: Path, *, keep: bool, dns: Kind = "bind") -> int:
    """Bring the sandbox up, sync, show what every load balancer serves, tear down."""
    _step(f"starting the sandbox in {directory}")
    started = time.monotonic()
    sandbox = Sandbox.up(directory, dns=dns)
    print(f"   up in {time.monotonic() - started:.1f} s: {NAMES[dns]} {sandbox.ip.primary} "
          f"(primary), BIND "
          f"{sandbox.ip.secondary} (secondary), {sandbox.ip.resolver} (the CA's resolver); "
          f"pebble {sandbox.acme_url}; lb1 {sandbox.ip.lb1}, lb2 {sandbox.ip.lb2}; "
          f"challenge service {sandbox.ip.challenge}")
    try:
        _sync(sandbox)
        _requests(sandbox)
        _status(sandbox)
    except BaseException:
        if not keep:
            sandbox.down()
        raise
    if keep:
        _step("KEEP=1: the sandbox stays up")
        print(sandbox.usage())
    else:
        _step("stopping the sandbox (KEEP=1 leaves it running)")
        sandbox.down()
        print(f"   stopped; logs stay in {sandbox.directory / 'log'}")
    return 0


def _cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(Path(sys.executable).parent / "certbot-epages"), "--config",
            str(sandbox.config_path), *args]
    return subprocess.run(argv, env={**os.environ, **sandbox.env()}, capture_output=True,
                          text=True, timeout=900, check=False)


def _sync(sandbox: Sandbox) -> None:
    _step(f"certbot-epages sync: the shop list ({sandbox.inventory_path}) drives certbot")
    print(f"   *.{sandbox.zones.platform} and {sandbox.zones.customer}: DNS-01, "
          f"_acme-challenge CNAMEd into {sandbox.zones.challenge}, TSIG-signed updates at the "
          "primary, awaited on primary and secondary")
    print(f"   shop1.{sandbox.zones.custom}: HTTP-01, pebble -> load balancer -> challenge "
          f"service; {sandbox.zones.direct}: DNS-01 straight into its own zone")
    started = time.monotonic()
    done = _cli(sandbox, "sync")
    for line in done.stdout.splitlines():
        print(f"   {line}")
    if done.returncode != 0:
        raise SandboxError(f"sync failed:\n{done.stdout}{done.stderr}")
    print(f"   sync took {time.monotonic() - started:.1f} s")


def _requests(sandbox: Sandbox) -> None:
    _step("HTTPS to each load balancer for each domain")
    inventory = load_inventory(sandbox.inventory_path,
                               templates=_names(), safe_vars={})
    for shop in inventory.active():
        name = shop.domain.replace("*", "demo")
        for lb in sandbox.lbs:
            print(f"   {lb.name} {name}: {_describe(lb.address, name)}")


def _names() -> list[str]:
    return [p.name.removesuffix(".conf.j2") for p in (templates_dir() / "nginx").glob("*.conf.j2")]


def _describe(address: str, name: str) -> str:
    """One TLS request: the certificate served, and the first line of the shop's answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pebble's root is not in the system store
    try:
        with socket.create_connection((address, 443), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True) or b""
                tls.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
                body = tls.recv(4096).decode("latin-1").split("\r\n\r\n", 1)[-1].strip()
    except OSError as e:
        return f"FAILED: {e}"
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (f"issuer {cert.issuer.rfc4514_string()}; names "
            f"{', '.join(san.get_values_for_type(x509.DNSName))}; expires "
            f"{cert.not_valid_after_utc.astimezone(timezone.utc):%Y-%m-%d}; sha256 "
            f"{cert.fingerprint(hashes.SHA256()).hex()[:16]}…; says {body!r}")


def _status(sandbox: Sandbox) -> None:
    _step("certbot-epages status")
    done = _cli(sandbox, "status")
    for line in done.stdout.splitlines():
        print(f"   {line}")
