"""epages.yaml loading and checking."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from certbot_epages import config
from certbot_epages.errors import ConfigError
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

SECRET = "iAE13TkKusXgZj6Lji8TQp2RjrhXi/f/UknW6EDzZOYRWcDQJeK7vBDnHzkJsnjOyebAY7+uN7BDMMK9nmjScg=="
KEY_FILE = f"""\
key "acme-update" {{
\talgorithm hmac-sha512;
\tsecret "{SECRET}";
}};
"""

FULL = """\
dns:
  tsig_keys:
    acme-update:
      file: keys/acme-update.key
  zones:
    - name: Dyn.Platform.Example.
      primaries: ["192.0.2.53", "192.0.2.54:5353"]
      key: acme-update
    - name: deep.dyn.platform.example
      primaries: ["[2001:db8::53]:5300"]
      key: acme-update
      nameservers: ["ns1.platform.example", "192.0.2.60:5353"]
  resolvers: ["192.0.2.1"]
  ttl: 120
  propagation_timeout: 90.5
http01:
  targets: ["/var/www/acme", "deploy@10.0.0.21:/var/www/acme", "web2:/srv/acme/"]
  ssh_options: ["-i", "/root/.ssh/challenge_deploy"]
  self_check: ["10.0.0.11", "10.0.0.12:8080"]
inventory: domains.yaml
deploy:
  templates: templates
  load_balancers:
    - name: lb1
      ssh: deploy@10.0.0.11
      ssh_options: ["-p", "22"]
      root: /etc/nginx/epages
      probe: 10.0.0.11
    - name: lb-local
      ssh: local
      root: /etc/nginx/epages
      test: ["/usr/sbin/nginx", "-t", "-q"]
      reload: ["systemctl", "reload", "nginx"]
  keep_releases: 3
"""


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A config directory holding a private BIND key file."""
    write(tmp_path / "keys" / "acme-update.key", KEY_FILE)
    return tmp_path


def dns_section(**extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "tsig_keys": {"acme-update": {"file": "keys/acme-update.key"}},
        "zones": [{"name": "dyn.platform.example", "primaries": ["192.0.2.53"],
                   "key": "acme-update"}],
    }
    section.update(extra)
    return section


def parse_error(data: object, source: Path) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(data, source)
    return str(info.value)


def test_full_config_round_trip(etc: Path) -> None:
    path = write(etc / "epages.yaml", FULL)
    cfg = config.load(path)

    assert cfg.source == path
    dns = cfg.dns
    assert dns is not None
    key = dns.tsig_keys["acme-update"]
    assert (key.name, key.algorithm, key.secret) == (
        "acme-update", "hmac-sha512", base64.b64decode(SECRET)
    )
    first, second = dns.zones
    assert first.name == "dyn.platform.example"
    assert first.primaries == (HostPort("192.0.2.53", 53), HostPort("192.0.2.54", 5353))
    assert first.key is key
    assert first.nameservers is None
    assert second.primaries == (HostPort("2001:db8::53", 5300),)
    assert second.nameservers == (HostPort("ns1.platform.example", 53),
                                  HostPort("192.0.2.60", 5353))
    assert dns.resolvers == (HostPort("192.0.2.1", 53),)
    assert dns.delegation == "_acme-challenge.{domain}.dyn.platform.example"
    assert dns.ttl == 120
    assert dns.placeholder == ".empty"
    assert dns.propagation_timeout == 90.5
    assert dns.allow_weak_algorithms is False

    http = cfg.http01
    assert http is not None
    assert http.mode == "files"
    local, remote, bare = http.targets
    assert (local.user, local.host, local.path, local.is_remote) == (
        None, None, "/var/www/acme", False
    )
    assert (remote.user, remote.host, remote.path, remote.is_remote) == (
        "deploy", "10.0.0.21", "/var/www/acme", True
    )
    assert str(remote) == "deploy@10.0.0.21:/var/www/acme"
    assert (bare.user, bare.host, bare.path) == (None, "web2", "/srv/acme/")
    assert http.ssh_options == ("-i", "/root/.ssh/challenge_deploy")
    assert http.self_check == (HostPort("10.0.0.11", 80), HostPort("10.0.0.12", 8080))
    assert http.timeout == 30

    assert cfg.inventory == etc / "domains.yaml"

    deploy = cfg.deploy
    assert deploy is not None
    assert deploy.templates == etc / "templates"
    assert deploy.keep_releases == 3
    assert deploy.spool == Path("/var/lib/certbot-epages/spool")
    lb1, lb_local = deploy.load_balancers
    assert (lb1.name, lb1.ssh, lb1.is_local, lb1.root) == (
        "lb1", "deploy@10.0.0.11", False, "/etc/nginx/epages"
    )
    assert lb1.ssh_options == ("-p", "22")
    assert lb1.test == ("nginx", "-t")
    assert lb1.reload == ("nginx", "-s", "reload")
    assert lb1.probe == HostPort("10.0.0.11", 443)
    assert lb_local.is_local
    assert lb_local.ssh_options == ()
    assert lb_local.test == ("/usr/sbin/nginx", "-t", "-q")
    assert lb_local.reload == ("systemctl", "reload", "nginx")
    assert lb_local.probe is None


def test_minimal_sections_and_defaults(etc: Path) -> None:
    cfg = config.parse(
        {"dns": dns_section(), "http01": {"mode": "stateless"}}, etc / "epages.yaml"
    )
    assert cfg.dns is not None
    assert cfg.dns.resolvers is None
    assert cfg.dns.ttl == 60
    assert cfg.dns.propagation_timeout == 120
    assert cfg.dns.delegation == "_acme-challenge.{domain}.dyn.platform.example"
    assert cfg.dns.state_dir == Path("/var/lib/certbot-epages/dns")
    assert cfg.dns.stale_after == 3600
    assert cfg.http01 is not None
    assert cfg.http01.targets == ()
    assert cfg.http01.self_check == ()
    assert cfg.deploy is None
    assert cfg.inventory is None


def test_explicit_values(etc: Path) -> None:
    cfg = config.parse(
        {
            "dns": dns_section(
                placeholder=None, delegation="{domain}.acme.example", resolvers=None,
                state_dir="state/dns", stale_after=600,
            ),
            "inventory": "https://inventory.example/domains.yaml",
            "deploy": {
                "spool": "spool",
                "load_balancers": [{"name": "a", "ssh": "lb.example", "root": "/x"}],
            },
        },
        etc / "epages.yaml",
    )
    assert cfg.dns is not None
    assert cfg.dns.placeholder is None
    assert cfg.dns.delegation == "{domain}.acme.example"
    assert cfg.dns.state_dir == etc / "state" / "dns"
    assert cfg.dns.stale_after == 600.0
    assert cfg.inventory == "https://inventory.example/domains.yaml"
    assert cfg.deploy is not None
    assert cfg.deploy.spool == etc / "spool"
    assert cfg.deploy.templates is None


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)
    assert "CERTBOT_EPAGES_CONFIG" in str(info.value)


def test_bad_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path / "epages.yaml", "dns:\n  ttl: 60\n  zones: [a, b\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML at line 4")
    assert "column" in message


def test_bad_yaml_does_not_quote_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "epages.yaml", f'dns:\n  secret: "{SECRET}\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert SECRET not in str(info.value)
    assert "line" in str(info.value)


def test_duplicate_yaml_key_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "epages.yaml", "dns:\n  ttl: 60\n  ttl: 30\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: .*duplicate key 'ttl'"):
        config.load(path)


@pytest.mark.parametrize("data", [["dns"], "dns", 5, None])
def test_top_level_must_be_mapping(tmp_path: Path, data: object) -> None:
    message = parse_error(data, tmp_path / "epages.yaml")
    assert message.startswith(f"{tmp_path / 'epages.yaml'}: ")
    assert "the top level must be a mapping of sections" in message


def test_unknown_key_lists_allowed(etc: Path) -> None:
    dns = dns_section()
    dns["zones"][0]["primarys"] = ["192.0.2.1"]
    message = parse_error({"dns": dns}, etc / "epages.yaml")
    assert f"{etc / 'epages.yaml'}: dns.zones[0].primarys: unknown key" in message
    assert "did you mean 'primaries'?" in message
    assert "key, name, nameservers, primaries" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = parse_error({"dsn": {}}, tmp_path / "epages.yaml")
    assert "dsn: unknown key" in message
    assert "deploy, dns, fleet, http01, inventory, inventory_max_bytes, inventory_timeout" \
        in message


@pytest.mark.parametrize(
    ("dns_extra", "expected"),
    [
        ({"ttl": True}, "dns.ttl: expected an integer, got True (bool)"),
        ({"ttl": "60"}, "dns.ttl: expected an integer, got '60' (str)"),
        ({"ttl": 0}, "dns.ttl: expected an integer from 1 to 86400, got 0 (int)"),
        ({"propagation_timeout": -1}, "dns.propagation_timeout: expected a number greater than 0"),
        ({"allow_weak_algorithms": "no"}, "dns.allow_weak_algorithms: expected true or false"),
        ({"resolvers": []}, "dns.resolvers: expected a non-empty list, got a list"),
        ({"placeholder": 'a"b'}, "dns.placeholder: expected null or printable ASCII"),
        ({"delegation": "_acme.{domain!r}.x"}, "dns.delegation: expected a name with"),
        ({"delegation": "_acme.{domain}.{zone}"}, "dns.delegation: expected a name with"),
        ({"delegation": "_acme.example"}, "dns.delegation: expected a name with"),
        ({"delegation": "_acme.{domain"}, "dns.delegation: expected a name with"),
        ({"stale_after": 0}, "dns.stale_after: expected a number greater than 0, got 0 (int)"),
        ({"stale_after": "1h"}, "dns.stale_after: expected a number, got '1h' (str)"),
        ({"state_dir": ""}, "dns.state_dir: expected a non-empty string"),
        ({"state_dir": 5}, "dns.state_dir: expected a string, got 5 (int)"),
        ({"stale_afer": 5}, "dns.stale_afer: unknown key; did you mean 'stale_after'?"),
    ],
)
def test_wrong_dns_values(etc: Path, dns_extra: dict[str, Any], expected: str) -> None:
    message = parse_error({"dns": dns_section(**dns_extra)}, etc / "epages.yaml")
    assert message.startswith(f"{etc / 'epages.yaml'}: {expected}")


def test_wrong_type_in_list_names_index(etc: Path) -> None:
    dns = dns_section()
    dns["zones"][0]["primaries"] = ["192.0.2.53", 5]
    message = parse_error({"dns": dns}, etc / "epages.yaml")
    assert message == (
        f"{etc / 'epages.yaml'}: dns.zones[0].primaries[1]: expected a string, got 5 (int)"
    )


def test_bad_address(etc: Path) -> None:
    dns = dns_section()
    dns["zones"][0]["primaries"] = ["192.0.2.53:99999"]
    message = parse_error({"dns": dns}, etc / "epages.yaml")
    assert "dns.zones[0].primaries[0]: expected host[:port]" in message
    assert "port must be a number" in message


def test_zone_checks(etc: Path) -> None:
    dns = dns_section()
    dns["zones"].append(dict(dns["zones"][0], name="DYN.platform.example."))
    assert "dns.zones[1].name: zone 'dyn.platform.example' is listed twice" in parse_error(
        {"dns": dns}, etc / "epages.yaml"
    )
    dns = dns_section(zones=[])
    assert "dns.zones: expected a non-empty list" in parse_error({"dns": dns}, etc / "x.yaml")
    dns = dns_section()
    del dns["zones"][0]["primaries"]
    assert "dns.zones[0]: missing required key 'primaries'" in parse_error(
        {"dns": dns}, etc / "epages.yaml"
    )
    dns = dns_section()
    dns["zones"][0]["nameservers"] = "manual"
    assert "dns.zones[0].nameservers: expected 'auto' or a list" in parse_error(
        {"dns": dns}, etc / "epages.yaml"
    )


def test_nameservers_auto(etc: Path) -> None:
    dns = dns_section()
    dns["zones"][0]["nameservers"] = "auto"
    cfg = config.parse({"dns": dns}, etc / "epages.yaml")
    assert cfg.dns is not None
    assert cfg.dns.zones[0].nameservers is None


def test_unknown_key_reference(etc: Path) -> None:
    dns = dns_section()
    dns["zones"][0]["key"] = "acme"
    message = parse_error({"dns": dns}, etc / "epages.yaml")
    assert "dns.zones[0].key: unknown TSIG key 'acme'" in message
    assert "acme-update" in message


def test_key_file_must_be_private(etc: Path) -> None:
    key_file = etc / "keys" / "acme-update.key"
    key_file.chmod(0o644)
    message = parse_error({"dns": dns_section()}, etc / "epages.yaml")
    assert f"chmod 600 {key_file}" in message
    assert SECRET not in message


def test_key_file_name_resolved_relative_to_config(etc: Path, tmp_path_factory: Any) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    old = Path.cwd()
    os.chdir(elsewhere)
    try:
        cfg = config.load(write(etc / "epages.yaml", FULL))
    finally:
        os.chdir(old)
    assert cfg.dns is not None


def inline_config(tmp_path: Path, algorithm: str, mode: int, weak: bool = False) -> Path:
    text = textwrap.dedent(
        f"""\
        dns:
          allow_weak_algorithms: {'true' if weak else 'false'}
          tsig_keys:
            acme-update:
              algorithm: {algorithm}
              secret: "{SECRET}"
          zones:
            - name: dyn.platform.example
              primaries: ["192.0.2.53"]
              key: acme-update
        """
    )
    return write(tmp_path / "epages.yaml", text, mode)


def test_inline_secret_in_private_config(tmp_path: Path) -> None:
    cfg = config.load(inline_config(tmp_path, "hmac-sha256", 0o600))
    assert cfg.dns is not None
    assert cfg.dns.tsig_keys["acme-update"].algorithm == "hmac-sha256"
    assert cfg.dns.tsig_keys["acme-update"].secret == base64.b64decode(SECRET)


def test_inline_secret_in_readable_config_refused(tmp_path: Path) -> None:
    path = inline_config(tmp_path, "hmac-sha512", 0o644)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert "inline TSIG secret" in message
    assert SECRET not in message


def test_weak_algorithm_refused_unless_allowed(tmp_path: Path) -> None:
    path = inline_config(tmp_path, "hmac-sha1", 0o600)
    with pytest.raises(ConfigError, match="weak algorithm hmac-sha1") as info:
        config.load(path)
    assert "dns.tsig_keys.acme-update" in str(info.value)
    assert SECRET not in str(info.value)
    cfg = config.load(inline_config(tmp_path, "hmac-sha1", 0o600, weak=True))
    assert cfg.dns is not None
    assert cfg.dns.allow_weak_algorithms is True
    assert cfg.dns.tsig_keys["acme-update"].algorithm == "hmac-sha1"


def test_tsig_key_spec_checks(etc: Path) -> None:
    both = dns_section(tsig_keys={"acme-update": {"file": "k", "secret": SECRET}})
    message = parse_error({"dns": both}, etc / "epages.yaml")
    assert "dns.tsig_keys.acme-update: give either 'file' or" in message
    neither = dns_section(tsig_keys={"acme-update": {}})
    assert "dns.tsig_keys.acme-update: give 'file'" in parse_error(
        {"dns": neither}, etc / "epages.yaml"
    )
    no_algo = dns_section(tsig_keys={"acme-update": {"secret": SECRET}})
    message = parse_error({"dns": no_algo}, etc / "epages.yaml")
    assert "missing required key 'algorithm'" in message
    assert SECRET not in message
    missing = dns_section()
    del missing["tsig_keys"]
    assert "dns: missing required key 'tsig_keys'" in parse_error(
        {"dns": missing}, etc / "epages.yaml"
    )


def test_wrong_type_secret_is_hidden(tmp_path: Path) -> None:
    source = write(tmp_path / "epages.yaml", "")
    dns = dns_section(tsig_keys={"k": {"algorithm": "hmac-sha512", "secret": 98765432123}})
    message = parse_error({"dns": dns}, source)
    assert "dns.tsig_keys.k.secret: expected a string" in message
    assert "98765432123" not in message


def test_secret_not_in_repr(etc: Path) -> None:
    cfg = config.load(write(etc / "epages.yaml", FULL))
    text = repr(cfg) + str(cfg)
    assert "acme-update" in text
    assert SECRET not in text
    assert repr(base64.b64decode(SECRET)) not in text


def test_env_var_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "other.yaml", "inventory: /srv/domains.yaml\n")
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.config_path() == config.DEFAULT_PATH
    monkeypatch.setenv(config.ENV_VAR, str(path))
    assert config.config_path() == path
    assert config.config_path(tmp_path / "explicit.yaml") == tmp_path / "explicit.yaml"
    cfg = config.load()
    assert cfg.source == path
    assert cfg.inventory == Path("/srv/domains.yaml")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("var/www/acme", "expected an absolute path or [user@]host:/absolute/path"),
        ("/var/www/../etc", "expected a path without '..'"),
        ("host:relative", "expected an absolute path (starting with '/')"),
        ("/var/www/ac me", "without spaces or control characters"),
        ("/var/www/\tacme", "without spaces or control characters"),
        ("", "expected a non-empty string"),
        ("-oProxyCommand=x:/p", "expected a host name or IP address"),
        ("us er@host:/p", "without spaces"),
        ("@host:/p", "a user name"),
        ("[nothex]:/p", "an IPv6 address"),
    ],
)
def test_bad_http01_targets(tmp_path: Path, target: str, expected: str) -> None:
    message = parse_error({"http01": {"targets": [target]}}, tmp_path / "epages.yaml")
    assert "http01.targets[0]: " in message
    assert expected in message


def test_ipv6_http01_target(tmp_path: Path) -> None:
    cfg = config.parse({"http01": {"targets": ["u@[2001:db8::1]:/srv"]}}, tmp_path / "e.yaml")
    assert cfg.http01 is not None
    target = cfg.http01.targets[0]
    assert (target.user, target.host, target.path) == ("u", "2001:db8::1", "/srv")
    assert str(target) == "u@[2001:db8::1]:/srv"


def test_http01_checks(tmp_path: Path) -> None:
    source = tmp_path / "epages.yaml"
    assert "http01: missing required key 'targets'" in parse_error({"http01": {}}, source)
    assert "http01.targets: expected a non-empty list" in parse_error(
        {"http01": {"targets": []}}, source
    )
    assert "http01.mode: expected one of: files, stateless, got 'file' (str)" in parse_error(
        {"http01": {"mode": "file", "targets": ["/x"]}}, source
    )
    assert "http01.timeout: expected a number greater than 0" in parse_error(
        {"http01": {"targets": ["/x"], "timeout": 0}}, source
    )


def lb(**fields: Any) -> dict[str, Any]:
    return {"deploy": {"load_balancers": [dict({"name": "lb1", "ssh": "local", "root": "/r"},
                                               **fields)]}}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "LB1"}, "deploy.load_balancers[0].name: expected a name"),
        ({"ssh": "-oProxyCommand=x"}, "deploy.load_balancers[0].ssh: expected 'local' or"),
        ({"ssh": "deploy@host name"}, "deploy.load_balancers[0].ssh: expected a value without"),
        ({"ssh": "host:22"}, "deploy.load_balancers[0].ssh: expected 'local' or [user@]host (no"),
        ({"root": "etc/nginx"}, "deploy.load_balancers[0].root: expected an absolute path"),
        ({"test": []}, "deploy.load_balancers[0].test: expected a non-empty list"),
        ({"reload": "nginx -s reload"}, "deploy.load_balancers[0].reload: expected a list"),
        ({"probe": "10.0.0.1:0"}, "deploy.load_balancers[0].probe: expected host[:port]"),
        ({"roots": "/x"}, "deploy.load_balancers[0].roots: unknown key; did you mean 'root'?"),
    ],
)
def test_bad_load_balancers(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    assert expected in parse_error(lb(**fields), tmp_path / "epages.yaml")


def test_load_balancer_ssh_forms(tmp_path: Path) -> None:
    for ssh in ("local", "lb.example", "deploy@10.0.0.11", "root@2001:db8::1"):
        cfg = config.parse(lb(ssh=ssh), tmp_path / "e.yaml")
        assert cfg.deploy is not None
        assert cfg.deploy.load_balancers[0].ssh == ssh


def test_deploy_checks(tmp_path: Path) -> None:
    source = tmp_path / "epages.yaml"
    twice = {"deploy": {"load_balancers": [{"name": "a", "ssh": "local", "root": "/r"}] * 2}}
    assert "deploy.load_balancers[1].name: load balancer 'a' is listed twice" in parse_error(
        twice, source
    )
    assert "deploy.keep_releases: expected an integer >= 1, got 0 (int)" in parse_error(
        {"deploy": dict(lb()["deploy"], keep_releases=0)}, source
    )
    assert "deploy: missing required key 'load_balancers'" in parse_error({"deploy": {}}, source)


def test_inventory_checks(tmp_path: Path) -> None:
    source = tmp_path / "epages.yaml"
    assert "inventory: expected a file path or an http(s):// URL" in parse_error(
        {"inventory": "ftp://host/x"}, source
    )
    assert "inventory: expected a string, got 5 (int)" in parse_error({"inventory": 5}, source)


def test_the_old_sandbox_section_is_an_unknown_key(tmp_path: Path) -> None:
    assert "sandbox: unknown key" in parse_error({"sandbox": {}}, tmp_path / "epages.yaml")


def test_resolvers_must_be_ip_addresses(etc: Path) -> None:
    message = parse_error({"dns": dns_section(resolvers=["192.0.2.1", "resolver.example:53"])},
                          etc / "epages.yaml")
    assert "dns.resolvers[1]" in message and "an IP address" in message


def test_deploy_keys_for_listen_thumbprint_and_challenge_service(etc: Path) -> None:
    deploy = {"load_balancers": [{"name": "lb1", "ssh": "local", "root": "/srv/epages",
                                  "listen": "10.0.0.11"}],
              "challenge_service": "10.0.0.20:8080", "account_thumbprint": "A" * 43}
    loaded = config.parse({"deploy": deploy}, etc / "epages.yaml")
    assert loaded.deploy is not None
    assert loaded.deploy.load_balancers[0].listen == "10.0.0.11"
    assert str(loaded.deploy.challenge_service) == "10.0.0.20:8080"
    deploy["load_balancers"][0]["listen"] = "10.0.0.11; include /etc/shadow"  # type: ignore[index]
    assert "load_balancers[0].listen" in parse_error({"deploy": deploy}, etc / "epages.yaml")
