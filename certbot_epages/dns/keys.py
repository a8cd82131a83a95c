"""TSIG keys: key files of BIND (``tsig-keygen``) and Knot (``keymgr -t``), inline secrets.

Secrets never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.tsig
import yaml

from certbot_epages.errors import ConfigError

# BIND algorithm names -> dnspython's names (dnspython spells hmac-md5 the RFC 2845 way).
ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
WEAK_ALGORITHMS = frozenset({"hmac-md5", "hmac-sha1"})

_KEY_BLOCK = re.compile(
    r'key\s+"?(?P<name>[A-Za-z0-9._-]+)"?\s*\{(?P<body>[^{}]*)\}\s*;', re.DOTALL
)
_STATEMENT = re.compile(r'(?P<word>algorithm|secret)\s+"?(?P<value>[^";\s]+)"?\s*;')
# Comments in BIND syntax; quoted strings are matched too, so "//" inside a secret survives.
_COMMENT_OR_STRING = re.compile(r'"[^"]*"|(#|//)[^\n]*|/\*.*?\*/', re.DOTALL)


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: its name as BIND knows it, its algorithm, and the secret (hidden in repr)."""

    name: str
    algorithm: str
    secret: bytes = field(repr=False)

    @property
    def dns_name(self) -> dns.name.Name:
        """The key name as a DNS name, as it travels in the TSIG record."""
        return dns.name.from_text(self.name)

    @property
    def dns_algorithm(self) -> dns.name.Name:
        """The algorithm as dnspython names it."""
        return ALGORITHMS[self.algorithm]

    def as_dnspython(self) -> dns.tsig.Key:
        """The key in the form dnspython's ``Message.use_tsig`` takes."""
        return dns.tsig.Key(self.dns_name, self.secret, self.dns_algorithm)


def make_key(
    name: str, algorithm: str, secret_b64: str, *, allow_weak: bool, where: str
) -> TsigKey:
    """Build a key from its parts; ``where`` names the source for error messages."""
    algo = algorithm.strip().lower()
    if algo not in ALGORITHMS:
        raise ConfigError(
            f"{where}: unknown TSIG algorithm {algorithm!r}; use one of "
            f"{', '.join(sorted(ALGORITHMS))} (hmac-sha512 recommended)"
        )
    if algo in WEAK_ALGORITHMS and not allow_weak:
        raise ConfigError(
            f"{where}: TSIG key {name!r} uses the weak algorithm {algo}; create a new key with "
            f"'tsig-keygen -a hmac-sha512 {name}', or set dns.allow_weak_algorithms: true"
        )
    try:
        secret = base64.b64decode(secret_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{where}: the secret of TSIG key {name!r} is not valid base64"
        ) from None
    if not secret:
        raise ConfigError(f"{where}: the secret of TSIG key {name!r} is empty")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException:
        raise ConfigError(f"{where}: {name!r} is not a valid TSIG key name") from None
    return TsigKey(name=name, algorithm=algo, secret=secret)


def check_private(path: Path, what: str) -> None:
    """Refuse a secret-bearing file that group or others can read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    _check_mode(path, mode, what)


def _check_mode(path: Path, mode: int, what: str) -> None:
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{path}: {what} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); fix with: chmod 600 {path} (if named must read it "
            "too, give certbot-epages a copy of its own)"
        )


def load_key_file(path: Path, name: str, *, allow_weak: bool) -> TsigKey:
    """Read key ``name`` from a key file.

    BIND's format (``tsig-keygen``, what ``nsupdate -k`` reads) or Knot's YAML (``keymgr -t``).
    """
    try:
        # Check the mode of what was opened, not of whatever the path names a moment earlier.
        with open(path, "rb") as f:
            _check_mode(path, os.fstat(f.fileno()).st_mode, "the TSIG key file")
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the TSIG key file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the TSIG key file is not UTF-8 text") from None
    bind_text = _COMMENT_OR_STRING.sub(lambda m: m[0] if m[0].startswith('"') else " ", text)
    found = []
    for block in _KEY_BLOCK.finditer(bind_text):
        found.append(block["name"])
        if not _same_name(block["name"], name):
            continue
        values = {m["word"]: m["value"] for m in _STATEMENT.finditer(block["body"])}
        missing = [w for w in ("algorithm", "secret") if w not in values]
        if missing:
            raise ConfigError(f"{path}: key {name!r} has no {' and no '.join(missing)} statement")
        return make_key(
            block["name"], values["algorithm"], values["secret"],
            allow_weak=allow_weak, where=str(path),
        )
    if not found:
        knot = _knot_keys(text)
        if knot is not None:
            return _from_knot(path, knot, name, allow_weak=allow_weak)
    seen = f"; it holds {', '.join(repr(n) for n in found)}" if found else "; it holds no key block"
    raise ConfigError(
        f"{path}: no key named {name!r}{seen}. The key name in epages.yaml must match the "
        f"name BIND knows (the quoted name after 'key'). Key files in BIND's format "
        f"(tsig-keygen) and Knot's (keymgr -t) are read; for any other, give the key inline: "
        f"{{algorithm: hmac-sha512, secret: \"...\"}}"
    )


def _same_name(a: str, b: str) -> bool:
    return a.rstrip(".").lower() == b.rstrip(".").lower()


def _knot_keys(text: str) -> list[dict[object, object]] | None:
    """The ``key:`` list of Knot's YAML (``keymgr -t`` output or a knot.conf), else None."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # no details: the parser would quote the line, which may hold the secret
    if not isinstance(data, dict) or not isinstance(data.get("key"), list):
        return None
    return [item for item in data["key"] if isinstance(item, dict)]


def _from_knot(
    path: Path, entries: list[dict[object, object]], name: str, *, allow_weak: bool
) -> TsigKey:
    ids = [str(entry.get("id")) for entry in entries]
    for entry in entries:
        if not _same_name(str(entry.get("id")), name):
            continue
        missing = [w for w in ("algorithm", "secret") if not isinstance(entry.get(w), str)]
        if missing:
            raise ConfigError(
                f"{path}: Knot key {name!r} has no {' and no '.join(missing)} (as text)"
            )
        return make_key(
            str(entry["id"]).rstrip("."), str(entry["algorithm"]), str(entry["secret"]),
            allow_weak=allow_weak, where=str(path),
        )
    raise ConfigError(
        f"{path}: no key named {name!r} in this Knot key file; it holds "
        f"{', '.join(repr(i) for i in ids) or 'no key'}. The key name in epages.yaml must match "
        f"the key's id"
    )


def owner_only(path: Path) -> None:
    """Restrict a file we wrote that holds a secret to its owner."""
    os.chmod(path, 0o600)
