"""ACME Renewal Information (RFC 9773): when the CA wants a certificate renewed.

Where the CA's directory offers ``renewalInfo``, a lineage is due once the CA's suggested
window has started (earlier than certbot's own timing when the CA plans a revocation, for
example). Where it does not, or the CA does not answer, certbot's timing applies.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

logger = logging.getLogger(__name__)
TIMEOUT = 10.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 certificate identifier: base64url(AKI keyIdentifier).base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's Authority Key Identifier has no key identifier")
    serial = cert.serial_number
    der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER INTEGER: sign bit 0
    return f"{_b64url(aki.key_identifier)}.{_b64url(der)}"


def server_of(certbot_dir: Path, lineage: str) -> str | None:
    """The ACME directory URL a lineage renews against (its renewal configuration)."""
    try:
        text = (certbot_dir / "renewal" / f"{lineage}.conf").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "server" and value.strip().startswith("https://"):
            return value.strip()
    return None


class Client:
    """Asks CAs for renewal windows; remembers each directory for the run."""

    def __init__(self) -> None:
        self._endpoints: dict[str, str | None] = {}
        bundle = os.environ.get("REQUESTS_CA_BUNDLE")  # what certbot itself trusts
        self._context = ssl.create_default_context(cafile=bundle if bundle else None)

    def _get(self, url: str) -> object:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=self._context) as reply:
            return json.loads(reply.read(1 << 20))

    def endpoint(self, directory: str) -> str | None:
        """The directory's renewalInfo URL, or None where the CA has none."""
        if directory not in self._endpoints:
            try:
                data = self._get(directory)
                found = data.get("renewalInfo") if isinstance(data, dict) else None
                self._endpoints[directory] = found if isinstance(found, str) else None
            except (OSError, ValueError, urllib.error.URLError) as e:
                logger.info("no ACME directory at %s (%s): certbot's timing applies", directory, e)
                self._endpoints[directory] = None
        return self._endpoints[directory]

    def window_start(self, directory: str, cert: x509.Certificate) -> datetime | None:
        """The start of the CA's suggested renewal window, or None (then certbot's timing)."""
        base = self.endpoint(directory)
        if base is None:
            return None
        try:
            data = self._get(f"{base.rstrip('/')}/{cert_id(cert)}")
            start = data["suggestedWindow"]["start"]  # type: ignore[index]
            when = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
            # RFC 3339 requires an offset; a CA that leaves it out means UTC.
            return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError) as e:
            logger.info("no renewal information from %s (%s): certbot's timing applies", base, e)
            return None
