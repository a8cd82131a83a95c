"""certbot with the epages-dns authenticator against the sandbox: real BIND, real pebble."""

from __future__ import annotations

from pathlib import Path

import pytest
from epages_testlib import (
    certbot,
    fresh_account,
    fresh_sandbox,
    leaf_certificate,
    new_account_beside,
    poll,
    soa_serial,
    txt_at,
    verify_chain,
    write_config,
)

from certbot_epages.sandbox.platform import KEY_NAME, Sandbox

pytestmark = pytest.mark.integration

PLACEHOLDER = ".empty"


def _challenge_txt(sandbox: Sandbox, domain: str) -> dict[str, set[str]]:
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."
    return {
        "primary": txt_at(sandbox.ip.primary, name),
        "secondary": txt_at(sandbox.ip.secondary, name),
    }


def _settled_clean(sandbox: Sandbox, domain: str) -> None:
    """Both servers end with no challenge value left (the placeholder only)."""
    poll(f"no challenge TXT left for {domain} on primary and secondary",
         lambda: True if all(v <= {PLACEHOLDER} for v in _challenge_txt(sandbox, domain).values())
         else None)


def test_apex_and_wildcard_through_the_cname_then_renew_from_stored_config(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    domain = sandbox.zones.customer
    certbot(sandbox, "certonly", "--authenticator", "epages-dns", "--cert-name", "cname",
            "-d", domain, "-d", f"*.{domain}")
    live = sandbox.certbot_config_dir / "live" / "cname"
    assert verify_chain(sandbox, live / "fullchain.pem") == [f"*.{domain}", domain]
    _settled_clean(sandbox, domain)
    assert _challenge_txt(sandbox, domain)["primary"] == {PLACEHOLDER}

    secret = sandbox.key_file.read_text().split('secret "')[1].split('"')[0]
    logs = sandbox.directory / "certbot" / "logs"
    assert all(secret not in log.read_text() for log in logs.glob("letsencrypt.log*"))

    renewal = (sandbox.certbot_config_dir / "renewal" / "cname.conf").read_text()
    assert "authenticator = epages-dns" in renewal
    assert f"epages_dns_config = {sandbox.config_path}" in renewal

    first = leaf_certificate(live / "cert.pem").serial_number
    serial = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
    # A timer has no CERTBOT_EPAGES_CONFIG: the renewal configuration must suffice. A new
    # account, so that pebble cannot reuse the authorizations and the plugin must run.
    with new_account_beside(sandbox, tmp_path) as account:
        certbot(sandbox, "renew", "--cert-name", "cname", "--force-renewal", "--account",
                account, "--no-random-sleep-on-renew", unset=("CERTBOT_EPAGES_CONFIG",))
    assert leaf_certificate(live / "cert.pem").serial_number != first
    assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) != serial
    _settled_clean(sandbox, domain)


def test_the_cas_resolver_lands_on_the_lagging_secondary(sandbox: Sandbox) -> None:
    """Without this, the lag test below would prove nothing."""
    import dns.query
    import dns.rcode
    import dns.update

    from certbot_epages.dns.keys import load_key_file

    key = load_key_file(sandbox.key_file, KEY_NAME, allow_weak=False)
    name = f"lagprobe.{sandbox.zones.challenge}."
    sandbox.hold_transfers(2)
    try:
        update = dns.update.UpdateMessage(sandbox.zones.challenge)
        update.use_tsig(key.as_dnspython())
        update.add(name, 60, "TXT", '"fresh"')
        assert dns.query.tcp(update, sandbox.ip.primary, timeout=5).rcode() == dns.rcode.NOERROR
        assert "fresh" in txt_at(sandbox.ip.primary, name)
        # The primary has it, the CA's resolver does not yet: it asks the secondary.
        import dns.message
        import dns.rdatatype

        reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT),
                              sandbox.ip.resolver, timeout=2)
        assert not reply.answer
    finally:
        sandbox.hold_transfers(0)
    poll("the secondary to catch up", lambda: True if "fresh" in txt_at(
        sandbox.ip.secondary, name) else None, timeout=20)


def test_issuance_waits_for_a_lagging_secondary(sandbox: Sandbox, tmp_path: Path) -> None:
    domain = f"www.{sandbox.zones.customer}"
    sandbox.hold_transfers(2)
    try:
        done = certbot(sandbox, "certonly", *fresh_account(tmp_path), "--authenticator",
                       "epages-dns", "--cert-name", "lagging", "-d", domain)
    finally:
        sandbox.hold_transfers(0)
    assert "Some challenges have failed" not in done.stdout + done.stderr
    live = tmp_path / "config" / "live" / "lagging"
    assert verify_chain(sandbox, live / "fullchain.pem") == [domain]
    _settled_clean(sandbox, domain)


def test_propagation_timeout_fails_naming_the_server_and_leaves_dns_clean(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    domain = sandbox.zones.customer
    config = write_config(sandbox, tmp_path / "epages.yaml", propagation_timeout=1)
    sandbox.hold_transfers(4)
    try:
        done = certbot(sandbox, "certonly", *fresh_account(tmp_path), "--authenticator",
                       "epages-dns", "--epages-dns-config", str(config), "--cert-name",
                       "timeout", "-d", domain, check=False)
    finally:
        sandbox.hold_transfers(0)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{sandbox.ip.secondary}:53" in output and "lacks" in output, output
    assert _challenge_txt(sandbox, domain)["primary"] == {PLACEHOLDER}
    _settled_clean(sandbox, domain)


def test_wrong_secret_is_a_clean_error_and_the_zone_is_unchanged(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    key = tmp_path / "wrong.key"
    key.write_text(f'key "{KEY_NAME}" {{ algorithm hmac-sha512; secret "{"A" * 86}=="; }};\n')
    key.chmod(0o600)
    config = write_config(sandbox, tmp_path / "epages.yaml",
                          tsig_keys={KEY_NAME: {"file": str(key)}})
    before = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
    # A new account: pebble may reuse an authorization (then the plugin would never run).
    done = certbot(sandbox, "certonly", *fresh_account(tmp_path / "certbot"), "--authenticator",
                   "epages-dns", "--epages-dns-config", str(config), "-d",
                   sandbox.zones.customer, "--cert-name", "wrong-secret", check=False)
    log = (tmp_path / "certbot" / "logs" / "letsencrypt.log").read_text()
    assert done.returncode != 0, f"certbot succeeded with a wrong secret; its log:\n{log[-6000:]}"
    output = done.stdout + done.stderr
    assert "secret does not match" in output, output
    assert "A" * 20 not in output
    assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) == before


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("loop", "_acme-challenge.loop.shop.test. -> _acme-challenge.loop2.shop.test."),
        ("foreign", "_acme-challenge.foreign.shop.test. CNAME "
                    "_acme-challenge.foreign.shop.test.dyn.platform.test."),
    ],
)
def test_broken_delegation_fails_before_any_update(
    sandbox: Sandbox, label: str, expected: str
) -> None:
    before = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
    done = certbot(sandbox, "certonly", "--authenticator", "epages-dns",
                   "-d", f"{label}.{sandbox.zones.customer}", "--cert-name", label, check=False)
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr
    assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) == before


def test_first_primary_down_fails_over_to_the_second(sandbox: Sandbox, tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(sandbox.config_path.read_text())
    for zone in data["dns"]["zones"]:
        zone["primaries"] = [f"{sandbox.ip.base}.9:53", f"{sandbox.ip.primary}:53"]
    config = write_config(sandbox, tmp_path / "epages.yaml", zones=data["dns"]["zones"])
    domain = sandbox.zones.direct
    certbot(sandbox, "certonly", *fresh_account(tmp_path / "certbot"), "--authenticator",
            "epages-dns", "--epages-dns-config", str(config), "--cert-name", "failover",
            "-d", domain)
    live = tmp_path / "certbot" / "config" / "live" / "failover"
    assert verify_chain(sandbox, live / "fullchain.pem") == [domain]
    assert txt_at(sandbox.ip.primary, f"_acme-challenge.{domain}.") == {PLACEHOLDER}


def test_check_reports_ready_and_broken_domains_and_leaves_no_probe(sandbox: Sandbox) -> None:
    import json
    import subprocess
    import sys

    customer = sandbox.zones.customer
    done = subprocess.run(
        [sys.executable, "-m", "certbot_epages.cli", "--config", str(sandbox.config_path),
         "check", "--json", customer, f"foreign.{customer}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stderr
    good, broken = json.loads(done.stdout)
    assert good["ready"] and good["zone"] == f"{sandbox.zones.challenge}."
    assert good["primary"] == f"{sandbox.ip.primary}:53"
    # ns2 also has an IPv6 address this host cannot reach: it does not hold the check up.
    v6 = f"[{sandbox.ip.unreachable_v6}]:53"
    assert {s["address"] for s in good["servers"]} == {
        f"{sandbox.ip.primary}:53", f"{sandbox.ip.secondary}:53", v6}
    assert all(any(v.startswith("certbot-epages-check-") for v in s["values"])
               for s in good["servers"] if s["address"] != v6)
    (unreachable,) = [s for s in good["servers"] if s["address"] == v6]
    assert "unreachable from this host" in unreachable["error"]
    assert not broken["ready"]
    assert f"_acme-challenge.foreign.{customer}. CNAME" in broken["error"]
    _settled_clean(sandbox, customer)


def test_values_of_others_stay_and_no_placeholder_joins_them(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    import dns.query
    import dns.rcode
    import dns.update

    from certbot_epages.dns.keys import load_key_file

    key = load_key_file(sandbox.key_file, KEY_NAME, allow_weak=False)
    domain = f"www.{sandbox.zones.customer}"
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."

    def change(add: bool) -> None:
        update = dns.update.UpdateMessage(sandbox.zones.challenge)
        update.use_tsig(key.as_dnspython())
        if add:
            update.add(name, 60, "TXT", '"another-run"')
        else:
            update.delete(name, "TXT", '"another-run"')
        assert dns.query.tcp(update, sandbox.ip.primary, timeout=5).rcode() == dns.rcode.NOERROR

    change(add=True)
    try:
        serial = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
        certbot(sandbox, "certonly", *fresh_account(tmp_path), "--authenticator",
                "epages-dns", "--cert-name", "others", "-d", domain)
        assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) != serial
        assert txt_at(sandbox.ip.primary, name) == {"another-run"}
    finally:
        change(add=False)


def test_reused_authorizations_still_record_the_config_path_for_renew(tmp_path: Path) -> None:
    """The CA reuses valid authorizations: certbot then never calls perform(). The path of
    epages.yaml must reach the renewal configuration all the same, for `certbot renew` from a
    timer, which has no CERTBOT_EPAGES_CONFIG."""
    with fresh_sandbox(authz_reuse=100) as sandbox:
        domain, zone = sandbox.zones.customer, sandbox.zones.challenge
        certbot(sandbox, "certonly", "--authenticator", "epages-dns", "--cert-name", "first",
                "-d", domain)
        serial = soa_serial(sandbox.ip.primary, zone)
        certbot(sandbox, "certonly", "--authenticator", "epages-dns", "--cert-name", "reused",
                "-d", domain)
        assert soa_serial(sandbox.ip.primary, zone) == serial, "perform() ran: nothing reused"
        renewal = sandbox.certbot_config_dir / "renewal" / "reused.conf"
        assert f"epages_dns_config = {sandbox.config_path}" in renewal.read_text()

        # The renewal must validate for real: renew with an account pebble has no
        # authorization for (certbot takes --account over the renewal configuration).
        live = sandbox.certbot_config_dir / "live" / "reused"
        before = leaf_certificate(live / "cert.pem").serial_number
        with new_account_beside(sandbox, tmp_path) as account:
            certbot(sandbox, "renew", "--cert-name", "reused", "--account", account,
                    "--force-renewal", "--no-random-sleep-on-renew",
                    unset=("CERTBOT_EPAGES_CONFIG",))
        assert leaf_certificate(live / "cert.pem").serial_number != before
        assert soa_serial(sandbox.ip.primary, zone) != serial, "the renewal did not validate"
