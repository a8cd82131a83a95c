"""Which certificate does a load balancer really serve for a name? A TLS handshake with SNI."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

from certbot_epages.netaddr import HostPort


def served_fingerprint(address: HostPort, server_name: str, timeout: float = 3.0) -> str:
    """SHA-256 (hex) of the leaf certificate ``address`` presents for ``server_name``.

    No verification: the point is to compare with the certificate just deployed.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("no certificate presented")
    return hashlib.sha256(der).hexdigest()


def sni_name(domain: str) -> str:
    """A concrete name to ask for: a wildcard is probed with a label of our own."""
    return f"certbot-epages-probe.{domain[2:]}" if domain.startswith("*.") else domain


def wait_served(
    address: HostPort, expected: dict[str, str], timeout: float
) -> dict[str, str]:
    """Poll until every name serves its expected fingerprint; the names that never did, why.

    ``nginx -s reload`` returns before the new workers serve, hence the polling.
    """
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    last: dict[str, str] = {}
    while pending:
        for name, fingerprint in list(pending.items()):
            try:
                got = served_fingerprint(address, sni_name(name))
            except (OSError, ssl.SSLError) as e:
                last[name] = f"TLS handshake failed: {e}"
                continue
            if got == fingerprint:
                del pending[name]
            else:
                last[name] = f"serves certificate sha256 {got[:16]}…, expected {fingerprint[:16]}…"
        if pending and time.monotonic() >= deadline:
            return {name: last[name] for name in pending}
        if pending:
            time.sleep(0.05)
    return {}
