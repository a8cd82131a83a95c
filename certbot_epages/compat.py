"""Which library versions certbot-epages works with, checked where they are used.

The floors are the versions ``make compat`` tests (Debian 12's packages); pyproject.toml declares
the same. This module imports nothing outside the standard library at load time: certbot imports
the plugin's module for every command (``certbot plugins`` included), so a missing or too old
library must become an error of this plugin when it is used, never a crash of certbot.
"""

from __future__ import annotations

import importlib
import re
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

#: Oldest tested version of each runtime dependency, as pip and the README name them.
FLOORS: dict[str, tuple[int, ...]] = {
    "certbot": (2, 1),
    "acme": (2, 1),
    "dnspython": (2, 3),
    "idna": (3, 3),
    "jinja2": (3, 1, 2),
    "pyyaml": (6, 0),
}

# What the epages-dns plugin imports, and where each package keeps its version.
_PLUGIN_NEEDS = (
    ("certbot", "certbot", "__version__"),
    ("dnspython", "dns.version", "version"),
    ("pyyaml", "yaml", "__version__"),
)


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of ``text``: ``"2.6.1"`` -> (2, 6, 1), ``"2.0rc1"`` -> (2, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match[0].split(".")) if match else ()


def version_text(version: tuple[int, ...]) -> str:
    """(2, 3) -> ``"2.3"``."""
    return ".".join(map(str, version))


def problem(name: str, found: str | None) -> str | None:
    """Why ``found`` (None: not installed) of package ``name`` is not enough, or None."""
    floor = FLOORS[name]
    if found is not None and parse_version(found) >= floor:
        return None
    return (
        f"epages-dns needs {name} >= {version_text(floor)}, found {found or 'none'}; install "
        f"a newer {name} (pip install '{name}>={version_text(floor)}', or your distribution's "
        f"package) beside this certbot"
    )


def _installed(module: str, attribute: str) -> str | None:
    try:
        loaded: ModuleType = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(loaded, attribute, "") or "") or None


def plugin_problems() -> list[str]:
    """What keeps the epages-dns plugin from working with the installed libraries."""
    found = []
    for name, module, attribute in _PLUGIN_NEEDS:
        message = problem(name, _installed(module, attribute))
        if message is not None:
            found.append(message)
    return found


# cryptography: Debian 12 ships 38, Ubuntu 24.04 41. The timezone-aware validity dates came in
# 42 (and the naive ones are deprecated there); x509.load_pem_x509_certificates in 39, so a
# chain's first certificate is read with load_pem_x509_certificate, which every version has.


def not_valid_before(certificate: x509.Certificate) -> datetime:
    """The start of the certificate's validity, timezone-aware (UTC), on any cryptography."""
    aware: datetime | None = getattr(certificate, "not_valid_before_utc", None)
    return aware if aware is not None else certificate.not_valid_before.replace(
        tzinfo=timezone.utc)


def not_valid_after(certificate: x509.Certificate) -> datetime:
    """The end of the certificate's validity, timezone-aware (UTC), on any cryptography."""
    aware: datetime | None = getattr(certificate, "not_valid_after_utc", None)
    return aware if aware is not None else certificate.not_valid_after.replace(
        tzinfo=timezone.utc)
