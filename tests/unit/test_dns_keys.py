"""TSIG key files: BIND's (tsig-keygen) and Knot's (keymgr -t)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from certbot_epages.dns.keys import load_key_file
from certbot_epages.dns.servers import kind_from_version
from certbot_epages.errors import ConfigError

pytestmark = pytest.mark.unit

SECRET = "zHuNYyYDIBEqXAku1g5Evo0RH8EgONIiOv5QQODCx5AxS+6pjTjrPPvT7b5CNkdFvY+reSUewsSBChXpYuXcYw=="
# Exactly what `keymgr -t acme-update hmac-sha512` prints (Knot DNS 3.2).
KEYMGR = f"""\
# hmac-sha512:acme-update:{SECRET}
key:
  - id: acme-update
    algorithm: hmac-sha512
    secret: {SECRET}
"""


def key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acme-update.key"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_knot_key_file_is_read(tmp_path: Path) -> None:
    key = load_key_file(key_file(tmp_path, KEYMGR), "acme-update", allow_weak=False)
    assert (key.name, key.algorithm) == ("acme-update", "hmac-sha512")
    assert key.secret == base64.b64decode(SECRET)


def test_knot_config_with_several_keys_and_other_sections(tmp_path: Path) -> None:
    text = f"""\
server:
    listen: 127.0.0.1@53
key:
  - id: transfer
    algorithm: hmac-sha256
    secret: {base64.b64encode(b"t" * 32).decode()}
  - id: ACME-Update.
    algorithm: hmac-sha512
    secret: {SECRET}
"""
    key = load_key_file(key_file(tmp_path, text), "acme-update", allow_weak=False)
    assert key.name == "ACME-Update" and key.secret == base64.b64decode(SECRET)


def test_knot_key_file_without_that_key_lists_its_ids(tmp_path: Path) -> None:
    path = key_file(tmp_path, KEYMGR)
    with pytest.raises(ConfigError) as info:
        load_key_file(path, "other", allow_weak=False)
    assert "no key named 'other' in this Knot key file; it holds 'acme-update'" in str(info.value)
    assert SECRET not in str(info.value)


def test_weak_knot_key_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path, KEYMGR.replace("hmac-sha512", "hmac-md5"))
    with pytest.raises(ConfigError, match="weak algorithm hmac-md5"):
        load_key_file(path, "acme-update", allow_weak=False)


def test_unknown_format_shows_the_inline_form_and_hides_the_secret(tmp_path: Path) -> None:
    path = key_file(tmp_path, f"hmac-sha512:acme-update:{SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_key_file(path, "acme-update", allow_weak=False)
    text = str(info.value)
    assert "it holds no key block" in text
    assert "{algorithm: hmac-sha512, secret: \"...\"}" in text
    assert SECRET not in text


@pytest.mark.parametrize(("version", "kind"), [
    ("9.18.49-1~deb12u3-Debian", "bind"),
    ("BIND 9", "bind"),
    ("Knot DNS 3.2.6", "knot"),
    ("PowerDNS Authoritative Server 4.7.3", "pdns"),
    ("Served by PowerDNS - https://www.powerdns.com/", "pdns"),
    ("none of your business", ""),
    (None, ""),
])
def test_kind_from_version(version: str | None, kind: str) -> None:
    assert kind_from_version(version) == kind


def test_kind_from_behaviour_tells_powerdns_by_its_unsigned_notauth() -> None:
    import dns.message
    import dns.name
    import dns.rcode

    from certbot_epages.dns.servers import kind_from_behaviour, unknown_key_query

    query = unknown_key_query(dns.name.from_text("dyn.platform.example."))
    assert query.had_tsig and str(query.keyname).endswith(".invalid.")
    unsigned = dns.message.make_response(dns.message.make_query("x.", "SOA"))
    unsigned.set_rcode(dns.rcode.NOTAUTH)
    assert kind_from_behaviour(unsigned) == "pdns"
    badkey = dns.message.make_response(query)
    badkey.set_rcode(dns.rcode.NOTAUTH)
    badkey.use_tsig(query.keyring, tsig_error=17)
    assert kind_from_behaviour(badkey) == ""
    unsigned.set_rcode(dns.rcode.REFUSED)
    assert kind_from_behaviour(unsigned) == ""
