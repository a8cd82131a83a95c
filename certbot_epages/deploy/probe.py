"""Which certificate does a load balancer really serve for a name? A TLS handshake with SNI."""

from __future__ import annotations

import functools
import hashlib
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from certbot_epages.deploy.marker import NAME as MARKER
from certbot_epages.netaddr import HostPort


@functools.cache
def _context() -> ssl.SSLContext:
    # One context for every probe: building one loads the system CA store (about 40 ms), which
    # is wasted here since nothing is verified.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_fingerprint(address: HostPort, server_name: str, timeout: float = 3.0) -> str:
    """SHA-256 (hex) of the leaf certificate ``address`` presents for ``server_name``.

    No verification: the point is to compare with the certificate just deployed.
    """
    server_name.encode("idna")  # raises here: ssl's own check would leak the socket (CPython)
    with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
        tls = _context().wrap_socket(raw, server_hostname=server_name,
                                     do_handshake_on_connect=False)
        try:
            tls.do_handshake()  # a failed handshake must not leave the TLS socket open
            der = tls.getpeercert(binary_form=True)
        finally:
            tls.close()
    if der is None:
        raise ssl.SSLError("no certificate presented")
    return hashlib.sha256(der).hexdigest()


def sni_name(domain: str) -> str:
    """A concrete name to ask for: a wildcard is probed with a label of our own."""
    return f"certbot-epages-probe.{domain[2:]}" if domain.startswith("*.") else domain


CONFIRM_PAUSE = 0.05  # seconds between seeing every name new and asking again
CONFIRM_NAMES = 8  # names asked again (the release marker first, when it is one of them)


def _confirmation(expected: dict[str, str]) -> list[str]:
    """The names asked once more: the marker (it changes with any config) and a few others."""
    names = sorted(expected, key=lambda n: (n != MARKER, n))
    return names[:CONFIRM_NAMES]


def wait_served(
    address: HostPort, expected: dict[str, str], timeout: float
) -> dict[str, str]:
    """Poll until every name serves its expected fingerprint; the names that never did, why.

    ``nginx -s reload`` returns before the new workers serve, hence the polling. The new
    configuration arrives all at once, so a name counts as failed only if it was still wrong
    when asked after the first name showed the new state (or when nothing did by the deadline):
    a slow round of probes that began before the reload took effect proves nothing. Once every
    name showed it, a few (the release marker first) are asked again a moment later: an old
    worker that has not yet handled its signal to quit still accepts connections with the old
    config, and a load balancer serves the new release only once none does.
    """
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    last: dict[str, str] = {}
    switched: float | None = None
    failed_after_switch: set[str] = set()
    confirmed = False

    def ask(name: str) -> tuple[str, float, str | None]:
        asked = time.monotonic()
        try:
            got = served_fingerprint(address, sni_name(name),
                                     timeout=max(min(3.0, deadline - asked), 0.5))
        except (OSError, ssl.SSLError) as e:
            return name, asked, f"TLS handshake failed: {e}"
        if got == pending[name]:
            return name, asked, None
        return name, asked, (f"serves certificate sha256 {got[:16]}…, "
                             f"expected {pending[name][:16]}…")

    # Ask again soon (a small config's reload takes effect within tens of ms), then less
    # often, up to every 0.2 s: a slow reload needs the CPU more than the probes do.
    pause = 0.02
    # A few probes at a time: a reloading nginx with thousands of sites needs the CPU more.
    with ThreadPoolExecutor(max_workers=min(4, max(len(expected), 1))) as pool:
        while pending:
            for name, asked, problem in pool.map(ask, list(pending)):
                if problem is None:
                    del pending[name]
                    switched = asked if switched is None else min(switched, asked)
                else:
                    last[name] = problem
                    if switched is not None and asked >= switched:
                        failed_after_switch.add(name)
            if not pending and not confirmed:
                confirmed = True
                time.sleep(CONFIRM_PAUSE)
                pending = {n: expected[n] for n in _confirmation(expected)}
                continue
            if not pending:
                break
            confirmed = False  # a name went back: confirm again once all are new
            if time.monotonic() >= deadline and (
                switched is None or set(pending) <= failed_after_switch
            ):
                return {name: last[name] for name in pending}
            time.sleep(pause)
            pause = min(pause * 1.5, 0.2)
    return {}
