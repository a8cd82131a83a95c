"""deploy.mode: shared: the maps, the per-template servers and the certificate checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from certbot_epages.deploy import shared
from certbot_epages.deploy.certstore import CertificateError, CertStore, check
from certbot_epages.deploy.render import TemplateSet, render_shared
from certbot_epages.sandbox.pki import SandboxCA

pytestmark = pytest.mark.unit

FP = "ab" * 32
WILD = "cd" * 32


def entry(domain: str, *names: str, template: str = "custom-domain", lineage: str | None = None,
          fingerprint: str = FP, **values: str) -> shared.Entry:
    return shared.Entry(domain, (domain, *names), template,
                        values or {"upstream": "10.0.0.5:8080"}, lineage or domain, fingerprint)


def test_riders_need_no_certificate_line_of_their_own() -> None:
    entries = [entry("*.p.test", template="platform-wildcard", lineage="wildcard_.p.test",
                     fingerprint=WILD),
               entry("a.p.test", lineage="wildcard_.p.test", fingerprint=WILD),
               entry("shop.test", "www.shop.test")]
    config, refused = shared.plan(entries, "/srv/lb")
    assert refused == {}
    assert dict(config.cert_map) == {
        "*.p.test": f"/srv/lb/certs/wildcard_.p.test/{WILD[:16]}/",
        "shop.test": f"/srv/lb/certs/shop.test/{FP[:16]}/",
        "www.shop.test": f"/srv/lb/certs/shop.test/{FP[:16]}/",
    }
    text = shared.render_maps(config, "/srv/lb/certs/_default/0000000000000000/")
    assert "map $ssl_server_name $epages_certdir {\n    hostnames;\n    default /srv/lb" in text
    block = shared.upstream_name("10.0.0.5:8080")
    assert f"    a.p.test {block};" in text
    assert f"upstream {block} {{\n    server 10.0.0.5:8080;\n}}" in text


def test_values_are_quoted_and_dollars_refused() -> None:
    config, refused = shared.plan([entry("a.test", banner='say "hi"; now'),
                                   entry("b.test", banner="$request_uri")], "/srv")
    assert set(refused) == {"b.test"} and "'$'" in refused["b.test"]
    text = shared.render_maps(config, "/d/")
    assert '    a.test "say \\"hi\\"; now";' in text


def test_a_template_renders_once_for_all_its_shops() -> None:
    members = [entry("a.test", "www.a.test"), entry("b.test")]
    text = render_shared(TemplateSet(), "custom-domain",
                         shared.template_context("custom-domain", members),
                         lb_name="lb1", lb_root="/srv/lb", challenge_service="10.0.0.20:80",
                         listen_address="10.0.0.11")
    assert text.count("server {") == 2  # port 80 and 443, once for both shops
    assert "server_name a.test b.test www.a.test;" in text
    assert "ssl_certificate ${epages_certdir}fullchain.pem;" in text
    assert "proxy_pass http://$epages_custom_domain_upstream;" in text


def test_certificates_are_checked_before_they_can_be_switched_to(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    crt, key = ca.issue("one", ["one.test", "www.one.test"])
    other_crt, other_key = ca.issue("two", ["two.test"])
    now = datetime.now(timezone.utc)
    chain, private = crt.read_bytes(), key.read_bytes()
    assert len(check(chain, private, ["one.test", "www.one.test"], now)) == 64
    with pytest.raises(CertificateError, match="does not belong"):
        check(chain, other_key.read_bytes(), ["one.test"], now)
    with pytest.raises(CertificateError, match="does not cover shop.one.test"):
        check(chain, private, ["shop.one.test"], now)
    with pytest.raises(CertificateError, match="not now"):
        check(chain, private, ["one.test"], now + timedelta(days=3650))
    with pytest.raises(CertificateError, match="does not parse"):
        check(b"garbage", private, ["one.test"], now)
    store = CertStore(tmp_path / "certs")
    version = store.stage("one.test", chain, private, ["one.test"])
    assert store.has(version) and version.startswith("one.test/")
    assert (store.path(version) / "privkey.pem").stat().st_mode & 0o777 == 0o600
    assert store.stage("one.test", chain, private, ["one.test"]) == version
    default = store.default()
    assert default.startswith("_default/") and store.default() == default
    store.prune(set())
    assert not store.has(version) and store.has(default)
    assert other_crt.exists()


def test_an_upstream_that_is_no_address_is_a_value_problem_not_a_crash() -> None:
    assert shared.value_problem({"upstream": "10.0.0.5:8080"}) is None
    problem = shared.value_problem({"upstream": "[::1"})
    assert problem is not None and "upstream" in problem


def test_a_template_says_which_vars_every_shop_must_set(tmp_path: Path) -> None:
    own = tmp_path / "nginx"
    own.mkdir()
    (own / "t.conf.j2").write_text(
        "proxy_pass http://{{ vars.upstream }};\n"
        "{% if vars.banner is defined %}add_header X-Banner {{ vars.banner }};{% endif %}\n"
        "add_header X-Tier {{ vars['tier'] }};\n"
        "add_header X-Note {{ shop.vars.note | default('none') }};\n"
        "{{ vars.get('extra', '') }}\n")
    assert TemplateSet(tmp_path).required_vars("t") == {"upstream", "tier"}
    assert TemplateSet().required_vars("custom-domain") == {"upstream"}


def test_the_default_certificate_ignores_unfinished_versions(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    first = store.default()
    (tmp_path / shared.DEFAULT_LINEAGE / ".ffffffffffffffff.tmp").mkdir()
    (tmp_path / shared.DEFAULT_LINEAGE / ".ffffffffffffffff.tmp" / "fullchain.pem").write_text("")
    assert store.default() == first and store.has(first)
