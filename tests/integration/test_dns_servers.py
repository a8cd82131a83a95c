"""DNS-01 against each primary operators run: BIND, Knot DNS and PowerDNS.

Issuance (apex + wildcard through a CNAME, with the plugin and with the manual hooks), exact
cleanup and the placeholder run against all three; every diagnostic runs against the real
server that produces it (extra PowerDNS servers for the lua policy and the bind backend).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.name
import dns.query
import dns.rcode
import dns.update
import pytest
import yaml
from epages_testlib import (
    certbot,
    epages,
    fresh_sandbox,
    poll,
    soa_serial,
    txt_at,
    verify_chain,
    write_config,
)

from certbot_epages import config
from certbot_epages.dns import servers
from certbot_epages.dns.client import from_config
from certbot_epages.dns.keys import load_key_file
from certbot_epages.errors import UpdateError
from certbot_epages.netaddr import HostPort
from certbot_epages.sandbox import primary, processes
from certbot_epages.sandbox.platform import KEY_NAME, Sandbox

pytestmark = pytest.mark.integration

PLACEHOLDER = ".empty"
BIN = Path(sys.executable).parent
NAMES = {"bind": "(BIND)", "knot": "(Knot DNS)", "pdns": "(PowerDNS)"}
N = dns.name.from_text


@pytest.fixture(scope="session")
def knot_sandbox() -> Iterator[Sandbox]:
    with fresh_sandbox("knot") as platform:
        yield platform


@pytest.fixture(scope="session")
def pdns_sandbox() -> Iterator[Sandbox]:
    with fresh_sandbox("pdns") as platform:
        yield platform


@pytest.fixture(params=primary.KINDS)
def platform(request: pytest.FixtureRequest) -> Sandbox:
    """The sandbox whose primary is BIND, Knot DNS or PowerDNS."""
    name = {"bind": "sandbox", "knot": "knot_sandbox", "pdns": "pdns_sandbox"}[request.param]
    sandbox: Sandbox = request.getfixturevalue(name)
    assert sandbox.dns == request.param
    return sandbox


def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def record(sandbox: Sandbox, domain: str) -> str:
    """Where the challenge of ``domain`` (a d<N>.custom.test shop) is written."""
    return f"_acme-challenge.{domain}.{sandbox.zones.challenge}."


def settled(sandbox: Sandbox, name: str, expected: set[str] | None = None) -> None:
    """Primary and secondary both end with ``expected`` (the placeholder alone) at ``name``."""
    want = {PLACEHOLDER} if expected is None else expected
    poll(f"{want} at {name} on primary and secondary",
         lambda: True if txt_at(sandbox.ip.primary, name) == want
         == txt_at(sandbox.ip.secondary, name) else None, timeout=20)


def signed_change(sandbox: Sandbox, name: str, value: str, *, add: bool) -> None:
    """Another client's value at ``name``, written or removed with the sandbox's key."""
    key = load_key_file(sandbox.key_file, KEY_NAME, allow_weak=False)
    update = dns.update.UpdateMessage(sandbox.zones.challenge, keyring=key.as_dnspython())
    if add:
        update.add(name, 60, "TXT", f'"{value}"')
    else:
        update.delete(name, "TXT", f'"{value}"')
    assert dns.query.tcp(update, sandbox.ip.primary, timeout=5).rcode() == dns.rcode.NOERROR


def check(sandbox: Sandbox, *domains: str, config_path: Path | None = None) -> dict[str, object]:
    """``certbot-epages check --json DOMAIN`` (one domain); its report."""
    done = epages(sandbox, "check", "--json", *domains, config=config_path)
    assert done.returncode in (0, 1), done.stderr
    reports: list[dict[str, object]] = json.loads(done.stdout)
    assert len(reports) == 1
    return reports[0]


# --- issuance, cleanup, placeholder ------------------------------------------------------------


def test_plugin_issues_apex_and_wildcard_through_the_cname_and_cleans_exactly(
    platform: Sandbox,
) -> None:
    domain = "d5.custom.test"
    name = record(platform, domain)
    signed_change(platform, name, "another-run", add=True)
    try:
        certbot(platform, "certonly", "--authenticator", "epages-dns", "--cert-name", "d5",
                "-d", domain, "-d", f"*.{domain}")
        live = platform.certbot_config_dir / "live" / "d5"
        assert verify_chain(platform, live / "fullchain.pem") == [f"*.{domain}", domain]
        # Exactly this run's values went: the other client's value stays, with no placeholder.
        settled(platform, name, {"another-run"})
    except BaseException:
        signed_change(platform, name, "another-run", add=False)
        raise
    settings = config.load(platform.config_path)
    assert settings.dns is not None
    assert json.loads((settings.dns.state_dir / "journal.json").read_text()) == []
    # The last value to go leaves the placeholder behind.
    client = from_config(settings.dns)
    client.remove([(client.locate(domain), "another-run")])
    settled(platform, name)


def test_manual_hooks_issue_apex_and_wildcard_through_the_cname(platform: Sandbox) -> None:
    domain = "d6.custom.test"
    certbot(platform, "certonly", "--manual", "--preferred-challenges", "dns",
            "--manual-auth-hook", str(BIN / "manual-auth-hook"),
            "--manual-cleanup-hook", str(BIN / "manual-cleanup-hook"),
            "--cert-name", "d6-manual", "-d", domain, "-d", f"*.{domain}")
    live = platform.certbot_config_dir / "live" / "d6-manual"
    assert verify_chain(platform, live / "fullchain.pem") == [f"*.{domain}", domain]
    settled(platform, record(platform, domain))


def test_check_is_ready_and_an_unreachable_address_family_does_not_count(
    platform: Sandbox,
) -> None:
    report = check(platform, "www.d5.custom.test")
    assert report["ready"], report["error"]
    assert report["primary"] == f"{platform.ip.primary}:53"
    servers = {s["address"]: s for s in report["servers"]}  # type: ignore[attr-defined]
    v6 = f"[{platform.ip.unreachable_v6}]:53"
    assert set(servers) == {f"{platform.ip.primary}:53", f"{platform.ip.secondary}:53", v6}
    assert servers[v6]["name"] == "ns2.platform.test."
    assert "unreachable from this host" in servers[v6]["error"]


# --- diagnostics -------------------------------------------------------------------------------

KEY_PROBLEM = {
    "wrong secret": {
        "bind": ["answered NOTAUTH with TSIG error BADSIG", "the key secret does not match"],
        "knot": ["answered NOTAUTH with TSIG error BADSIG", "the key secret does not match"],
        "pdns": ["answered REFUSED (unsigned)", "a key problem, not the update policy",
                 "pdnsutil import-tsig-key acme-update hmac-sha512 SECRET"],
    },
    "unknown key": {
        "bind": ["answered NOTAUTH with TSIG error BADKEY",
                 "does not know a key named stranger with algorithm hmac-sha512",
                 'key "stranger" { algorithm hmac-sha512;'],
        "knot": ["answered NOTAUTH with TSIG error BADKEY",
                 "does not know a key named stranger with algorithm hmac-sha512",
                 "Knot also answers so when no acl of zone dyn.platform.test. names the key"],
        "pdns": ["answered REFUSED (unsigned)", "a key problem, not the update policy",
                 "pdnsutil import-tsig-key stranger hmac-sha512 SECRET"],
    },
}


@pytest.mark.parametrize("problem", sorted(KEY_PROBLEM))
def test_a_key_problem_is_named_as_the_server_reports_it(
    platform: Sandbox, tmp_path: Path, problem: str
) -> None:
    real = load_key_file(platform.key_file, KEY_NAME, allow_weak=False)
    name = "stranger" if problem == "unknown key" else KEY_NAME
    secret = "A" * 86 + "==" if problem == "wrong secret" else b64(real.secret)
    config_path = write_config(
        platform, tmp_path / "epages.yaml",
        tsig_keys={KEY_NAME: {"algorithm": "hmac-sha512", "secret": secret}},
    )
    if name != KEY_NAME:
        data = yaml.safe_load(config_path.read_text())
        data["dns"]["tsig_keys"] = {name: data["dns"]["tsig_keys"][KEY_NAME]}
        for zone in data["dns"]["zones"]:
            zone["key"] = name
        config_path.write_text(yaml.safe_dump(data))
    before = soa_serial(platform.ip.primary, platform.zones.challenge)
    report = check(platform, "www.d5.custom.test", config_path=config_path)
    error = str(report["error"])
    assert not report["ready"]
    assert f"{platform.ip.primary}:53 {NAMES[platform.dns]}" in error
    for part in KEY_PROBLEM[problem][platform.dns]:
        assert part in error
    assert "policy problem" not in error and "A" * 20 not in error
    assert soa_serial(platform.ip.primary, platform.zones.challenge) == before


POLICY = {
    # BIND and PowerDNS refuse an update to a zone that grants the key nothing (shop.test),
    # with a signed REFUSED; Knot denies by its acl (direct.test: two names only) with
    # NOTAUTH + BADKEY, which a signed query tells from an unknown key.
    "bind": ("nocname.shop.test", ["answered REFUSED to the UPDATE for zone shop.test.",
                                   "a policy problem",
                                   "update-policy { grant acme-update zonesub TXT; };"]),
    "knot": ("nope.direct.test", ["answered NOTAUTH with TSIG error BADKEY",
                                  "a policy problem: the server knows key acme-update",
                                  "check the zone's acl on that server (and its update-owner"]),
    "pdns": ("nocname.shop.test", ["answered REFUSED to the UPDATE for zone shop.test.",
                                   "a policy problem",
                                   "pdnsutil set-meta shop.test. TSIG-ALLOW-DNSUPDATE"]),
}


def test_a_policy_refusal_is_named_as_such_with_the_servers_own_advice(
    platform: Sandbox, tmp_path: Path
) -> None:
    domain, parts = POLICY[platform.dns]
    data = yaml.safe_load(platform.config_path.read_text())
    zones = [*data["dns"]["zones"], {**data["dns"]["zones"][0], "name": platform.zones.customer}]
    config_path = write_config(platform, tmp_path / "epages.yaml", zones=zones)
    report = check(platform, domain, config_path=config_path)
    error = str(report["error"])
    assert f"{platform.ip.primary}:53 {NAMES[platform.dns]}" in error
    for part in parts:
        assert part in error
    assert "key problem" not in error and "does not know a key" not in error


def test_a_propagation_timeout_blames_the_secondary_and_names_notify_dnsupdate_on_powerdns(
    platform: Sandbox, tmp_path: Path
) -> None:
    config_path = write_config(platform, tmp_path / "epages.yaml", propagation_timeout=1)
    platform.hold_transfers(3)
    try:
        report = check(platform, "www.d9.custom.test", config_path=config_path)
    finally:
        platform.hold_transfers(0)
    error = str(report["error"])
    assert f'ns2.platform.test. {platform.ip.secondary}:53 lacks "certbot-epages-check-' in error
    assert ("pdnsutil set-meta dyn.platform.test. NOTIFY-DNSUPDATE 1" in error) == (
        platform.dns == "pdns")
    assert platform.ip.unreachable_v6 not in error
    settled(platform, record(platform, "www.d9.custom.test"))


def test_a_delete_applied_after_its_timeout_gets_the_placeholder_back(
    platform: Sandbox, tmp_path: Path
) -> None:
    # The zone's primary is reached through the transfer relay, which can hold requests back.
    data = yaml.safe_load(platform.config_path.read_text())
    for zone in data["dns"]["zones"]:
        zone["primaries"] = [f"{platform.ip.relay}:53"]
    settings = config.load(write_config(platform, tmp_path / "epages.yaml",
                                        zones=data["dns"]["zones"]))
    assert settings.dns is not None
    client = from_config(settings.dns, timeout=0.5)
    location = client.locate("www.d8.custom.test")
    name, value = str(location.record), f"late-{secrets.token_hex(6)}"
    client.add([(location, value)])
    assert txt_at(platform.ip.primary, name) == {value}
    platform.hold_transfers(1.5)
    try:
        with pytest.raises(UpdateError, match="timed out"):
            client.remove([(location, value)])
        # The relay delivers the delete late: the name is left without any TXT.
        poll("the late delete", lambda: True if txt_at(platform.ip.primary, name) == set()
             else None)
    finally:
        platform.hold_transfers(0)
    done = epages(platform, "check", "--clean")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'removed "{value}" at {name}' in done.stdout and "not confirmed" in done.stdout
    settled(platform, name)


def test_the_server_is_told_by_its_version_and_powerdns_also_by_its_behaviour(
    platform: Sandbox,
) -> None:
    server, zone = HostPort(platform.ip.primary, 53), N(platform.zones.challenge + ".")
    assert servers.identify(server, zone) == platform.dns
    assert servers.by_version(server) == platform.dns
    # With its version string changed, PowerDNS still shows by how it answers an unknown key.
    assert servers.by_behaviour(server, zone) == ("pdns" if platform.dns == "pdns" else "")


def test_knot_reads_the_key_file_keymgr_wrote(knot_sandbox: Sandbox) -> None:
    text = knot_sandbox.key_file.read_text()
    assert text.startswith("# hmac-sha512:acme-update:") and "\nkey:\n  - id: acme-update\n" in text
    settings = config.load(knot_sandbox.config_path)
    assert settings.dns is not None
    key = settings.dns.tsig_keys[KEY_NAME]
    assert b64(key.secret) in text  # the key in use came from that file


@contextlib.contextmanager
def extra_pdns(sandbox: Sandbox, name: str, octet: int, **options: object) -> Iterator[HostPort]:
    """Another PowerDNS serving the challenge zone, on ``127.A.B.<octet>:53``."""
    directory = sandbox.directory / "extra" / name
    address = f"{sandbox.ip.base}.{octet}"
    zone = sandbox.zones.challenge
    primary.write_pdns(
        directory, address=address, port=53,
        zones={zone: sandbox.directory / "dns" / "primary" / f"{zone}.zone"},
        key_file=sandbox.key_file, key_name=KEY_NAME, updatable=(zone,),
        **options,  # type: ignore[arg-type]
    )
    started = primary.start_pdns(name, directory)
    try:
        processes.wait_until(f"{name} to serve {zone}",
                             lambda: soa_serial(address, zone), 20, watch=[started])
        yield HostPort(address, 53)
    finally:
        processes.stop([started])


def only_at(sandbox: Sandbox, path: Path, server: HostPort) -> Path:
    """A config whose challenge zone is updated at and served by ``server`` alone."""
    data = yaml.safe_load(sandbox.config_path.read_text())
    zone = {**data["dns"]["zones"][0], "primaries": [str(server)], "nameservers": [str(server)]}
    return write_config(sandbox, path, zones=[zone])


LUA_TXT_AT_WWW_ONLY = """\
  if request:getTsigName():toString() ~= "acme-update." then return false end
  if request:getQType() ~= pdns.TXT then return false end
  return string.find(request:getQName():toString(), "^_acme%-challenge%.www%.") ~= nil"""


def test_an_update_powerdns_drops_fails_at_once_naming_the_primary(
    pdns_sandbox: Sandbox, tmp_path: Path
) -> None:
    with extra_pdns(pdns_sandbox, "pdns-lua", 6, lua_policy=LUA_TXT_AT_WWW_ONLY) as server:
        config_path = only_at(pdns_sandbox, tmp_path / "epages.yaml", server)
        allowed = check(pdns_sandbox, "www.d5.custom.test", config_path=config_path)
        assert allowed["ready"], allowed["error"]  # the script lets these names through
        report = check(pdns_sandbox, "d5.custom.test", config_path=config_path)
    error = str(report["error"])
    assert (f"{server} (PowerDNS) answered NOERROR to the UPDATE for zone "
            "dyn.platform.test.") in error
    assert 'but does not serve "certbot-epages-check-' in error
    assert "lua-dnsupdate-policy-script refuses" in error
    assert "lacks" not in error  # not blamed on propagation after its timeout


def test_notimp_from_the_powerdns_bind_backend_is_explained(
    pdns_sandbox: Sandbox, tmp_path: Path
) -> None:
    with extra_pdns(pdns_sandbox, "pdns-bind", 7, backend="bind") as server:
        report = check(pdns_sandbox, "d5.custom.test",
                       config_path=only_at(pdns_sandbox, tmp_path / "epages.yaml", server))
    error = str(report["error"])
    assert f"{server} (PowerDNS) answered NOTIMP to the UPDATE" in error
    assert "PowerDNS cannot update zones of its bind backend" in error
