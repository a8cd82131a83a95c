"""Domain-name rules, in one place: validation, platform membership, file names, rate limits.

Every name from outside (the shop software's inventory, certbot's environment, the config)
passes :func:`validate_domain` before it reaches DNS, a file path, a command or an nginx config.
Internationalised names are mapped with IDNA 2008 (UTS 46, non-transitional, through the
``idna`` package that certbot already brings): ``straße.example`` is
``xn--strae-oqa.example``, never ``strasse.example`` as IDNA 2003 would have it. Rate limits
count by :func:`registered_domain`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A shop id: nothing that could end an nginx directive or need quoting anywhere.
SHOP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
# Owners that no shop id can spell (ids have no blanks): an entry without an id, and a name
# recorded before shop ids existed (format 1 manifests, manifests rebuilt from files).
IMPLICIT_OWNER = "{domain} (no shop id)"
LEGACY_OWNER = "{domain} (before shop ids)"
WILDCARD_FILE = "_wildcard_"
WILDCARD_LINEAGE = "wildcard_"  # '_' never appears in a domain: no lineage name collides


def printable(text: str, limit: int = 80) -> str:
    """``text`` quoted, with control characters escaped and cut to about ``limit`` characters."""
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown


def validate_domain(name: object, *, allow_wildcard: bool = True) -> str:
    """Return ``name`` normalised (lowercase A-labels, no trailing dot) or raise ValueError.

    Accepted are host names of letters, digits and hyphens (internationalised names are mapped
    with IDNA 2008), labels of 1 to 63 characters not starting or ending with a hyphen, at
    most 253 characters, at least two labels, and a top-level label that is not all digits.
    With ``allow_wildcard`` the leftmost label may be ``*`` (``*.example.com``), with at least
    two labels below it.
    """
    if not isinstance(name, str):
        raise ValueError(f"a domain must be a string, got {type(name).__name__}")
    shown = printable(name)
    if not name:
        raise ValueError("the domain is empty")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"{shown}: a domain must not contain whitespace or control characters")
    text = name[:-1] if name.endswith(".") else name
    wildcard = text.startswith("*.")
    if wildcard:
        if not allow_wildcard:
            raise ValueError(f"{shown}: a wildcard is not allowed here")
        text = text[2:]
    if "*" in text:
        raise ValueError(f"{shown}: '*' is only allowed as the whole leftmost label ('*.')")
    text = text.lower() if text.isascii() else _idna(text, shown)
    labels = text.split(".")
    for label in labels:
        _check_label(label, shown)
    if len(labels) < 2:
        raise ValueError(f"{shown}: a domain needs at least two labels (like example.com)")
    if labels[-1].isdigit():
        raise ValueError(f"{shown}: the top-level label must not be all digits (no IP addresses)")
    result = f"*.{text}" if wildcard else text
    if len(result) > 253:
        raise ValueError(f"{shown}: longer than 253 characters")
    return result


def _idna(text: str, shown: str) -> str:
    import idna  # only for internationalised names: the hooks' plain names need no tables

    try:
        return idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"{shown}: not a valid internationalised domain name (IDNA 2008): "
                         f"{e}") from None


def _check_label(label: str, shown: str) -> None:
    if not label:
        raise ValueError(f"{shown}: empty label (leading dot or '..')")
    if len(label) > 63:
        raise ValueError(f"{shown}: label {printable(label)} is longer than 63 characters")
    if not _LABEL_RE.fullmatch(label):
        raise ValueError(
            f"{shown}: label {printable(label)} must consist of letters, digits and "
            "hyphens, and must not start or end with a hyphen"
        )
    if label.startswith("xn--"):
        # An A-label must be what IDNA 2008 makes of its U-label.
        import idna

        try:
            unicode = idna.decode(label)
            if idna.encode(unicode, uts46=True, transitional=False).decode() != label:
                raise idna.IDNAError("not the canonical form")
        except (idna.IDNAError, UnicodeError) as e:
            raise ValueError(f"{shown}: label {printable(label)} is not a valid IDNA 2008 "
                             f"A-label: {e}") from None


def implicit_owner(domain: str) -> str:
    """The owner of an entry without a shop id."""
    return IMPLICIT_OWNER.format(domain=domain)


def legacy_owner(domain: str) -> str:
    """The owner recorded for a site from before shop ids."""
    return LEGACY_OWNER.format(domain=domain)


def is_legacy_owner(owner: str) -> bool:
    """Whether ``owner`` was recorded before shop ids (so which entry it is, is unknown)."""
    return owner.endswith(LEGACY_OWNER.format(domain=""))


def site_file(domain: str) -> str:
    """The site config file of a normalised domain: ``<domain>.conf``, ``*`` as ``_wildcard_``.

    A name too long for a file name (more than 255 bytes with the suffix: a domain may have
    253 characters) keeps its first 200 and gains ``~`` and a hash of the whole domain; ``~``
    is in no domain, so no other domain's file has that name.
    """
    name = domain.replace("*", WILDCARD_FILE) + ".conf"
    if len(name) <= 255:
        return name
    digest = hashlib.sha256(domain.encode()).hexdigest()[:16]
    return f"{name[:200]}~{digest}.conf"


def lineage_name(domain: str) -> str:
    """The certbot lineage (``--cert-name``) of a certificate named after ``domain``.

    ``*.<base>`` gives ``wildcard_.<base>``: no domain contains ``_``, so a wildcard's lineage
    never collides with the lineage of a custom domain, even one named ``wildcard.<base>``.
    """
    return f"{WILDCARD_LINEAGE}.{domain[2:]}" if domain.startswith("*.") else domain


def base_of(name: str) -> str:
    """The name a wildcard covers the children of (``*.x`` gives ``x``); others unchanged."""
    return name[2:] if name.startswith("*.") else name


def is_within(name: str, zone: str) -> bool:
    """Whether ``name`` is ``zone`` or a name below it (label boundaries, no wildcard base)."""
    return name == zone or name.endswith("." + zone)


def is_below(name: str, zone: str) -> bool:
    """Whether ``name`` is strictly below ``zone``."""
    return name.endswith("." + zone)


def platform_of(name: str, platform_domains: Sequence[str]) -> str | None:
    """The platform domain ``name`` is a direct subdomain of (what ``*.platform`` covers)."""
    for platform in platform_domains:
        if name.endswith("." + platform) and "." not in name[: -len(platform) - 1] \
                and not name.startswith("*."):
            return platform
    return None


def bare_host(name: str) -> str:
    """The name as rate limits count it: lowercase, no trailing dot, no wildcard prefix."""
    name = name.strip().lower().rstrip(".")
    while name.startswith("*."):
        name = name[2:]
    return name


def registered_domain(name: str, public_suffixes: Sequence[str] = ()) -> str:
    """The registered domain of ``name``: one label more than its public suffix.

    Without a matching entry in ``public_suffixes`` (multi-label suffixes such as ``co.uk``;
    the longest match wins) the suffix is the last label, so the result is the last two
    labels. A wildcard prefix and a trailing dot are ignored; the result is lowercase. A name
    that is itself a suffix, or has no more labels, is returned as it is.

    >>> registered_domain("*.shop.example.co.uk", ("co.uk",))
    'example.co.uk'
    """
    host = bare_host(name)
    labels = host.split(".")
    suffix_labels = 1
    for suffix in public_suffixes:
        suffix = suffix.strip().lower().strip(".")
        if not suffix:
            continue
        count = suffix.count(".") + 1
        if count > suffix_labels and (host == suffix or host.endswith("." + suffix)):
            suffix_labels = count
    if len(labels) <= suffix_labels:
        return host
    return ".".join(labels[-(suffix_labels + 1):])
