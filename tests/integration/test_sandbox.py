"""The sandbox is a real platform: DNS replication, update policy, HTTP-01 through the LBs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
from cryptography import x509
from epages_testlib import certbot, fresh_account, poll, sandbox_dir, txt_at

from certbot_epages import config
from certbot_epages.dns.keys import load_key_file
from certbot_epages.errors import SandboxError
from certbot_epages.sandbox import processes
from certbot_epages.sandbox.platform import KEY_NAME, STATE_FILE, Sandbox

pytestmark = pytest.mark.integration


def _update(sandbox: Sandbox, rdtype: str, value: str, *, signed: bool = True) -> int:
    zone = sandbox.zones.challenge
    key = load_key_file(sandbox.key_file, KEY_NAME, allow_weak=False)
    update = dns.update.UpdateMessage(zone)
    if signed:
        update.use_tsig(key.as_dnspython())
    update.add(f"probe.{zone}.", 60, rdtype, value)
    reply = dns.query.tcp(update, sandbox.ip.primary, timeout=5)
    return reply.rcode()


def test_signed_txt_update_reaches_the_secondary(sandbox: Sandbox) -> None:
    assert _update(sandbox, "TXT", '"replicated"') == dns.rcode.NOERROR
    name = f"probe.{sandbox.zones.challenge}."
    assert "replicated" in txt_at(sandbox.ip.primary, name)
    poll("the secondary to transfer the update",
         lambda: True if "replicated" in txt_at(sandbox.ip.secondary, name) else None)


def test_key_cannot_update_other_types_and_unsigned_updates_are_refused(
    sandbox: Sandbox,
) -> None:
    assert _update(sandbox, "A", "192.0.2.1") == dns.rcode.REFUSED
    assert _update(sandbox, "TXT", '"anonymous"', signed=False) == dns.rcode.REFUSED
    assert "anonymous" not in txt_at(sandbox.ip.primary, f"probe.{sandbox.zones.challenge}.")


def test_ns_records_name_both_authoritative_servers(sandbox: Sandbox) -> None:
    query = dns.message.make_query(sandbox.zones.challenge, dns.rdatatype.NS)
    reply = dns.query.udp(query, sandbox.ip.resolver, timeout=2)
    targets = sorted(str(r.target) for rrset in reply.answer for r in rrset)
    assert targets == ["ns1.platform.test.", "ns2.platform.test."]


def test_pebble_validates_http01_through_the_load_balancers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    domain = sandbox.zones.customer
    certbot(sandbox, "certonly", *fresh_account(tmp_path), "--webroot", "-w",
            str(sandbox.webroot), "-d", domain, "--cert-name", "sandbox-http01")
    live = tmp_path / "config" / "live" / "sandbox-http01"
    chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(sandbox.pebble_roots().encode())
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [domain]
    # The validation came through a load balancer and was answered by the challenge service.
    lb_logs = "".join((Path(lb.prefix) / "logs" / "access.log").read_text() for lb in sandbox.lbs)
    service_log = (sandbox.directory / "challenge" / "logs" / "access.log").read_text()
    assert "/.well-known/acme-challenge/" in lb_logs
    assert "/.well-known/acme-challenge/" in service_log


def test_ssh_reaches_each_load_balancer_with_the_deploy_key(sandbox: Sandbox) -> None:
    for lb in sandbox.lbs:
        done = subprocess.run(
            ["ssh", *sandbox.ssh_options(), f"root@{lb.address}", "test", "-d", lb.root],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 0, done.stderr


def test_generated_config_loads(sandbox: Sandbox) -> None:
    loaded = config.load(sandbox.config_path)
    assert loaded.dns is not None and loaded.deploy is not None
    assert [z.name for z in loaded.dns.zones] == [sandbox.zones.challenge, sandbox.zones.direct]
    assert [lb.name for lb in loaded.deploy.load_balancers] == ["lb1", "lb2"]


def test_two_sandboxes_side_by_side_and_teardown_leaves_nothing(sandbox: Sandbox) -> None:
    with sandbox_dir() as directory:
        _second_sandbox(sandbox, directory)


def test_a_directory_nginx_cannot_enter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not searchable by others"):
        Sandbox.up(tmp_path / "inside-0700")


def _second_sandbox(sandbox: Sandbox, directory: Path) -> None:
    other = Sandbox.up(directory)
    try:
        assert other.ip.base != sandbox.ip.base
        routes = subprocess.run(["ip", "-6", "route", "show"], capture_output=True, text=True,
                                check=True).stdout
        assert f"unreachable {other.ip.unreachable_v6.removesuffix('::2')}::/64" in routes
        assert "hostmaster" not in txt_at(other.ip.primary, f"x.{other.zones.challenge}.")
    finally:
        state = [p for p in _state(other)]
        killed = other.down()
    assert killed == []
    assert state and not any(processes.alive(p) for p in state)
    addresses = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                               text=True, check=True).stdout
    assert f"{other.ip.base}." not in addresses
    routes = subprocess.run(["ip", "-6", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    assert other.ip.unreachable_v6.removesuffix("::2") + "::/64" not in routes
    # The session's sandbox was not disturbed.
    assert sandbox.running() == [p.name for p in _state(sandbox)]


def _state(sandbox: Sandbox) -> list[processes.Recorded]:
    from certbot_epages.sandbox.platform import State

    return State.load(sandbox.directory).processes


def test_cli_env_prints_exports(sandbox: Sandbox) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "certbot_epages.cli", "sandbox", "env", "--dir",
         str(sandbox.directory)],
        capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ},
    )
    assert f"export REQUESTS_CA_BUNDLE={sandbox.ca_bundle}" in done.stdout
    assert f"export CERTBOT_EPAGES_CONFIG={sandbox.config_path}" in done.stdout


def test_up_again_in_a_stopped_sandbox_directory_starts_fresh() -> None:
    with sandbox_dir() as directory:
        first = Sandbox.up(directory)
        first.down()
        second = Sandbox.up(directory)
        try:
            assert second.running() and (directory / "ssh" / "deploy_key").exists()
        finally:
            second.down()
        (directory / "unrelated").write_text("keep me")
        (directory / STATE_FILE).unlink()
        with pytest.raises(SandboxError, match="not empty and holds no sandbox"):
            Sandbox.up(directory)
