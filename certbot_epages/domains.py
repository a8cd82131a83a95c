"""Domain names from untrusted input (certbot's environment, the inventory), checked.

Standard library only: every manual-hook process checks ``CERTBOT_DOMAIN`` with it.
"""

from __future__ import annotations

import re

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def validate_domain(name: str, *, allow_wildcard: bool = True) -> str:
    """Return ``name`` normalised (lowercase A-labels, no trailing dot) or raise ValueError.

    Accepted are host names of letters, digits and hyphens (internationalised names are
    converted to punycode), labels of 1 to 63 characters not starting or ending with a hyphen,
    at most 253 characters, at least two labels, and a top-level label that is not all digits.
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
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise ValueError(f"{shown}: not a valid internationalised domain name: {e}") from None
    text = text.lower()
    labels = text.split(".")
    for label in labels:
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
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise ValueError(
                    f"{shown}: label {printable(label)} is not valid punycode"
                ) from None
    if len(labels) < 2:
        raise ValueError(f"{shown}: a domain needs at least two labels (like example.com)")
    if labels[-1].isdigit():
        raise ValueError(f"{shown}: the top-level label must not be all digits (no IP addresses)")
    result = f"*.{text}" if wildcard else text
    if len(result) > 253:
        raise ValueError(f"{shown}: longer than 253 characters")
    return result


def printable(text: str, limit: int = 80) -> str:
    """``text`` quoted, with control characters escaped and cut to about ``limit`` characters."""
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown
