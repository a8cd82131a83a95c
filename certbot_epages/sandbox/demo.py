"""``make demo``: the platform flow on the sandbox, narrated for a newcomer."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages.errors import SandboxError
from certbot_epages.sandbox.commands import usage
from certbot_epages.sandbox.platform import Sandbox


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(directory: Path, *, keep: bool) -> int:
    """Bring the sandbox up, issue over HTTP-01 through a load balancer, show it, tear down."""
    _step(f"starting the sandbox in {directory}")
    started = time.monotonic()
    sandbox = Sandbox.up(directory)
    print(f"   up in {time.monotonic() - started:.1f} s")
    try:
        _http01_issuance(sandbox)
    except BaseException:
        if not keep:
            sandbox.down()
        raise
    if keep:
        _step("KEEP=1: the sandbox stays up")
        print(usage(sandbox))
    else:
        _step("stopping the sandbox (KEEP=1 leaves it running)")
        sandbox.down()
        print(f"   stopped; logs stay in {sandbox.directory / 'log'}")
    return 0


def _http01_issuance(sandbox: Sandbox) -> None:
    domains = [sandbox.zones.customer, f"www.{sandbox.zones.customer}"]
    _step(f"HTTP-01 for {', '.join(domains)}: pebble -> load balancer -> challenge service")
    print(f"   {domains[0]} resolves (via the CA's resolver {sandbox.ip.resolver}) to "
          f"lb1 {sandbox.ip.lb1} and lb2 {sandbox.ip.lb2}; both proxy "
          f"/.well-known/acme-challenge/ to {sandbox.ip.challenge}:80")
    argv = sandbox.certbot_argv(
        "certonly", "--webroot", "-w", str(sandbox.webroot), "--cert-name", domains[0],
        *(arg for d in domains for arg in ("-d", d)),
    )
    print("   $ " + " ".join(argv))
    started = time.monotonic()
    done = subprocess.run(argv, env={**os.environ, **sandbox.env()}, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SandboxError(f"certbot failed:\n{done.stdout}{done.stderr}")
    print(f"   certbot issued in {time.monotonic() - started:.1f} s")
    _show_certificate(sandbox, sandbox.certbot_config_dir / "live" / domains[0])
    for lb in sandbox.lbs:
        log = Path(lb.prefix) / "logs" / "access.log"
        hits = [line for line in log.read_text().splitlines() if "acme-challenge" in line]
        print(f"   {lb.name} proxied {len(hits)} challenge request(s) from pebble")


def _show_certificate(sandbox: Sandbox, live: Path) -> None:
    chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    leaf = chain[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    root = x509.load_pem_x509_certificate(sandbox.pebble_roots().encode())
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    print(f"   {live / 'fullchain.pem'}")
    print(f"     names:   {', '.join(names.get_values_for_type(x509.DNSName))}")
    print(f"     issuer:  {leaf.issuer.rfc4514_string()}")
    print(f"     expires: {leaf.not_valid_after_utc.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"     sha256:  {leaf.fingerprint(hashes.SHA256()).hex(':')}")
    print("     chain verified up to pebble's current root")
