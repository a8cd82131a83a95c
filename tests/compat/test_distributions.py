"""Issuance with the certbot operators already run (``make compat``; skipped otherwise).

``make compat`` prepares one Python environment per supported combination of libraries (Debian
12's packages, Ubuntu 24.04's versions, the newest from PyPI), installs the wheel in each with
``--no-deps``, and names them in ``EPAGES_COMPAT_ENVS`` as ``name=python,name=python``. The
sandbox runs from this (the newest) environment; certbot and the hooks run from each.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from epages_testlib import (
    certbot,
    fresh_account,
    poll,
    served,
    txt_at,
    verify_chain,
    write_inventory,
)

from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

ENVS = dict(
    item.split("=", 1) for item in os.environ.get("EPAGES_COMPAT_ENVS", "").split(",") if item
)
PLACEHOLDER = ".empty"
# certbot 2.1 has no `python -m certbot`: every version has certbot.main.main.
RUN_CERTBOT = "import sys; from certbot.main import main; sys.exit(main())"

if not ENVS:
    pytest.skip("run by make compat (EPAGES_COMPAT_ENVS names the environments)",
                allow_module_level=True)


def _program(name: str) -> list[str]:
    return [ENVS[name], "-c", RUN_CERTBOT]


def _versions(name: str) -> str:
    script = ("import certbot, acme, josepy, dns.version, cryptography\n"
              "from importlib.metadata import version\n"
              "print(*(f'{p} {version(p)}' for p in "
              "('certbot', 'acme', 'josepy', 'dnspython', 'cryptography')), sep=', ')")
    done = subprocess.run([ENVS[name], "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def _clean(sandbox: Sandbox, domain: str) -> None:
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."
    poll(f"no challenge TXT left for {domain}", lambda: True if txt_at(
        sandbox.ip.primary, name) == txt_at(sandbox.ip.secondary, name) == {PLACEHOLDER}
        else None)


@pytest.mark.parametrize("env", sorted(ENVS))
def test_epages_dns_apex_and_wildcard_through_the_cname(
    sandbox: Sandbox, env: str, tmp_path: Path
) -> None:
    domain = sandbox.zones.customer
    done = certbot(sandbox, "certonly", *fresh_account(tmp_path), "--authenticator",
                   "epages-dns", "--cert-name", "compat", "-d", domain, "-d", f"*.{domain}",
                   program=_program(env), check=False)
    assert done.returncode == 0, f"{env} ({_versions(env)}):\n{done.stdout}\n{done.stderr}"
    live = tmp_path / "config" / "live" / "compat"
    assert verify_chain(sandbox, live / "fullchain.pem") == [f"*.{domain}", domain]
    renewal = (tmp_path / "config" / "renewal" / "compat.conf").read_text()
    assert f"epages_dns_config = {sandbox.config_path}" in renewal
    _clean(sandbox, domain)


@pytest.mark.parametrize("env", sorted(ENVS))
def test_manual_hooks_apex_and_wildcard_through_the_cname(
    sandbox: Sandbox, env: str, tmp_path: Path
) -> None:
    bin_dir = Path(ENVS[env]).parent
    domain = sandbox.zones.customer
    done = certbot(sandbox, "certonly", *fresh_account(tmp_path), "--manual",
                   "--preferred-challenges", "dns",
                   "--manual-auth-hook", str(bin_dir / "manual-auth-hook"),
                   "--manual-cleanup-hook", str(bin_dir / "manual-cleanup-hook"),
                   "--cert-name", "compat-hooks", "-d", domain, "-d", f"*.{domain}",
                   program=_program(env), check=False)
    assert done.returncode == 0, f"{env} ({_versions(env)}):\n{done.stdout}\n{done.stderr}"
    live = tmp_path / "config" / "live" / "compat-hooks"
    assert verify_chain(sandbox, live / "fullchain.pem") == [f"*.{domain}", domain]
    _clean(sandbox, domain)


@pytest.mark.parametrize("env", sorted(ENVS))
def test_certbot_plugins_lists_every_plugin(sandbox: Sandbox, env: str, tmp_path: Path) -> None:
    """Installing the plugin must not break certbot itself (it did on Debian 12)."""
    done = certbot(sandbox, "plugins", *fresh_account(tmp_path), program=_program(env),
                   check=False)
    assert done.returncode == 0, done.stderr
    for plugin in ("epages-dns", "standalone", "webroot"):  # manual is hidden
        assert f"* {plugin}\n" in done.stdout


@pytest.mark.parametrize("env", sorted(ENVS))
def test_the_cli_checks_a_domain_and_renders_the_stateless_snippet(
    sandbox: Sandbox, env: str, tmp_path: Path
) -> None:
    cli = str(Path(ENVS[env]).parent / "certbot-epages")
    environment = {**os.environ, **sandbox.env()}
    done = subprocess.run([cli, "check", "--json", sandbox.zones.customer], env=environment,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["ready"]
    certbot(sandbox, "register", *fresh_account(tmp_path), program=_program(env))
    done = subprocess.run([cli, "http01-snippet", "--config-dir", str(tmp_path / "config"),
                           "--server", sandbox.acme_url], env=environment,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert 'return 200 "$1.' in done.stdout


@pytest.mark.skipif("debian12" not in ENVS, reason="needs the Debian 12 environment")
def test_sync_with_debian_12_issues_by_both_challenges_and_deploys(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The oldest libraries through everything: sync, certbot 2.1, plugin, hooks, deploy."""
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["fleet"]["certbot"] = _program("debian12")
    data["fleet"]["state_dir"] = str(tmp_path / "fleet")
    data["inventory"] = str(write_inventory(tmp_path / "inventory.yaml", [
        {"domain": "*.platform.test", "shop": "platform", "template": "platform-wildcard",
         "vars": {"upstream": sandbox.backend}},
        {"domain": "h1.custom.test", "shop": "2001", "template": "custom-domain",
         "vars": {"upstream": sandbox.backend}},
    ]))
    config = tmp_path / "epages.yaml"
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o600)
    cli = str(Path(ENVS["debian12"]).parent / "certbot-epages")
    done = subprocess.run([cli, "--config", str(config), "sync"],
                          env={**os.environ, **sandbox.env()}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for lineage, name in (("wildcard_.platform.test", "x.platform.test"),
                          ("h1.custom.test", "h1.custom.test")):
        pem = (sandbox.certbot_config_dir / "live" / lineage / "cert.pem").read_bytes()
        expected = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
        assert served(sandbox, name) == {lb.name: expected for lb in sandbox.lbs}
