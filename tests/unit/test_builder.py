"""A release's files from a decided composition: what carries over, and nothing lost silently."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages import ownership
from certbot_epages.deploy import builder, decide, shared
from certbot_epages.deploy.certstore import CertStore
from certbot_epages.deploy.decide import Base
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import Manifest, SiteRecord
from certbot_epages.deploy.render import TemplateSet
from certbot_epages.inventory import Inventory, Shop
from certbot_epages.names import site_file
from certbot_epages.sandbox.pki import SandboxCA

pytestmark = pytest.mark.unit

ROOT = "/srv/lb"
UP = {"upstream": "10.0.0.5:8080"}


def lineage(tmp: Path, ca: SandboxCA, name: str, names: list[str]) -> Lineage:
    live = tmp / "le" / "live" / name
    live.mkdir(parents=True, exist_ok=True)
    crt, key = ca.issue(f"l-{name}", names)
    (live / "fullchain.pem").write_bytes(crt.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    fp = x509.load_pem_x509_certificate(crt.read_bytes()).fingerprint(hashes.SHA256()).hex()
    return Lineage(name=name, live=live, names=tuple(sorted(names)),
                   not_after=datetime(2030, 1, 1, tzinfo=timezone.utc), fingerprint=fp)


def shop(domain: str, template: str = "custom-domain", **values: str) -> Shop:
    return Shop(domain, (f"www.{domain}",), template, values or UP, shop=f"id-{domain}")


def not_covered(domain: str) -> Shop:
    """An active shop with a new alias no certificate covers: it cannot ship now."""
    return Shop(domain, (f"www.{domain}", f"new.{domain}"), "custom-domain", UP,
                shop=f"id-{domain}")


def record(s: Shop, lin: Lineage) -> SiteRecord:
    return SiteRecord(s.domain, s.server_names, s.owner, lin.name, lin.fingerprint,
                      template=s.template, vars=dict(s.vars))


def build(tmp: Path, mode: str, live: list[SiteRecord], live_mode: str, shops: list[Shop],
          known: list[Lineage], *, on_lb: frozenset[str] = frozenset(),
          files: dict[str, str] | None = None,
          templates: TemplateSet | None = None) -> tuple[builder.Output, decide.Composition,
                                                           list[str]]:
    base_dir = tmp / "live"
    (base_dir / "sites").mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (base_dir / "sites" / name).write_text(text)
    if live_mode == "shared":  # a shared-mode release lists the versions it uses
        (base_dir / shared.VERSIONS).write_text(
            "".join(f"{shared.cert_version(r.lineage, r.fingerprint)}\n" for r in live))
    sites = {site_file(r.domain): r for r in live}
    base = Base("20260101T000000Z-0001",
                Manifest(sites=sites, claims={n: r.owner for r in live for n in r.names},
                         mode=live_mode))
    inventory = Inventory(shops=tuple(shops), problems=())
    resolution = ownership.resolve(inventory, [base.known.claims], ownership.Rules())
    selection = decide.select(resolution, known)
    notes: list[str] = []
    settings = builder.Settings(templates or TemplateSet(), CertStore(tmp / "staged"), mode,
                                "", "# acme\n", selection.known)
    target = builder.Target("lb1", ROOT, "", base, base_dir, on_lb)
    b = builder.Builder(settings, target, notes.append)
    rendered, failures = b.render(selection)
    comp = decide.compose(base, selection, failures=failures)
    return b.build(comp, rendered), comp, notes


def test_a_kept_map_shop_uses_the_version_its_load_balancer_holds(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    one, two = shop("one.test"), shop("two.test")
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    held = shared.cert_version("two.test", lin2.fingerprint)
    # two.test cannot ship now (a new alias), and certbot's copy of its certificate is gone:
    # the version the load balancer holds is enough.
    unready = not_covered("two.test")
    out, comp, _ = build(tmp_path, "shared", [record(one, lin1), record(two, lin2)], "shared",
                         [one, unready], [lin1], on_lb=frozenset({held}))
    assert "two.test.conf" in comp.sites and "two.test.conf" in comp.kept
    listed = out.files[shared.VERSIONS].read().decode().split()
    assert held in listed and held not in out.push
    assert shared.cert_version("one.test", lin1.fingerprint) in out.push
    config = out.files["sites/_epages-shared.conf"].read().decode()
    assert f"two.test /srv/lb/certs/{held}/;" in config


def test_a_kept_shop_whose_certificate_is_nowhere_is_dropped_with_the_reason(
    tmp_path: Path,
) -> None:
    ca = SandboxCA(tmp_path)
    two = shop("two.test")
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    unready = not_covered("two.test")
    out, comp, notes = build(tmp_path, "shared", [record(two, lin2)], "shared", [unready], [])
    assert "two.test.conf" in comp.dropped and "no copy of its certificate" in \
        comp.dropped["two.test.conf"]
    assert any("two.test.conf" in n for n in notes)
    assert "two.test" not in out.files["sites/_epages-shared.conf"].read().decode()


def test_a_kept_map_shop_whose_template_is_gone_stops_the_build(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    gone = record(shop("two.test", template="retired"), lin2)
    unready = not_covered("two.test")
    with pytest.raises(builder.BuildError, match="template 'retired' is gone but two.test"):
        build(tmp_path, "shared", [gone], "shared", [unready], [lin2])


def test_back_to_sites_mode_a_kept_map_shop_gets_a_file_naming_its_version(
    tmp_path: Path,
) -> None:
    ca = SandboxCA(tmp_path)
    two = shop("two.test")
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    version = shared.cert_version("two.test", lin2.fingerprint)
    unready = not_covered("two.test")
    out, comp, _ = build(tmp_path, "sites", [record(two, lin2)], "shared", [unready], [],
                         on_lb=frozenset({version}))
    text = out.files["sites/two.test.conf"].read().decode()
    assert f"{ROOT}/certs/{version}/fullchain.pem" in text
    assert out.files[shared.VERSIONS].read().decode().split() == [version]
    assert "two.test.conf" in comp.kept


def test_one_shop_without_a_variable_its_template_needs_stays_out_alone(
    tmp_path: Path,
) -> None:
    ca = SandboxCA(tmp_path)
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    bare = Shop("two.test", ("www.two.test",), "custom-domain", {}, shop="id-two.test")
    out, comp, notes = build(tmp_path, "shared", [], "sites", [shop("one.test"), bare],
                             [lin1, lin2])
    assert set(comp.rendered) == {"one.test.conf"}
    assert any("vars.upstream" in n and "two.test" in n for n in notes)
    assert "one.test" in out.files["sites/_epages-shared.conf"].read().decode()


def test_a_kept_file_keeps_the_version_it_names_through_a_renewal_of_another(
    tmp_path: Path,
) -> None:
    ca = SandboxCA(tmp_path)
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    one = shop("one.test")
    version = shared.cert_version("one.test", lin1.fingerprint)
    own = SiteRecord("one.test", one.server_names, one.owner, "one.test", lin1.fingerprint,
                     template="retired-own", vars=UP)
    unready = not_covered("one.test")
    text = f"server {{ ssl_certificate {ROOT}/certs/{version}/fullchain.pem; }}\n"
    out, comp, _ = build(tmp_path, "shared", [own], "shared", [unready], [],
                         on_lb=frozenset({version}), files={"one.test.conf": text})
    assert out.files["sites/one.test.conf"].read().decode() == text
    assert version in out.files[shared.VERSIONS].read().decode().split()


MOVED = """server {
    listen 443 ssl;
    server_name {{ server_names | join(' ') }};
    ssl_certificate {{ ssl_certificate }};
    ssl_certificate_key {{ ssl_certificate_key }};
{% if vars.moved_to is defined %}
    return 302 https://{{ vars.moved_to }}/;
{% endif %}
    location / { proxy_pass http://{{ vars.upstream }}; }
}
"""


def test_an_optional_variable_reaches_only_the_shops_that_set_it(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    own = tmp_path / "t" / "nginx"
    own.mkdir(parents=True)
    (own / "moved.conf.j2").write_text(MOVED)
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    shops = [shop("one.test", "moved", upstream="10.0.0.5:80", moved_to="elsewhere.test"),
             shop("two.test", "moved", upstream="10.0.0.5:80")]
    out, _, _ = build(tmp_path, "shared", [], "sites", shops, [lin1, lin2],
                      templates=TemplateSet(tmp_path / "t"))
    config = out.files["sites/_epages-shared.conf"].read().decode()
    servers = config.split("server {")[1:]
    assert len(servers) == 2
    moved = [s for s in servers if "return 302" in s]
    assert len(moved) == 1 and "one.test" in moved[0] and "two.test" not in moved[0]
    # The release keeps the template it rendered with (for shops a later one cannot render).
    assert out.files["templates/moved.conf.j2"].read().decode() == MOVED


def test_only_the_variables_a_template_uses_go_into_maps(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    shops = [shop("one.test", note="x" * 4096, **UP),
             shop("two.test", upstream="10.0.0.5:80", **{"other": "y"})]
    out, comp, _ = build(tmp_path, "shared", [], "sites", shops, [lin1, lin2])
    assert set(comp.rendered) == {"one.test.conf", "two.test.conf"}
    config = out.files["sites/_epages-shared.conf"].read().decode()
    assert "xxxx" not in config and "_other" not in config and "_note" not in config


def test_a_value_too_long_for_a_map_keeps_only_its_shop_out(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path)
    own = tmp_path / "t" / "nginx"
    own.mkdir(parents=True)
    banner = MOVED.replace("{% if vars.moved_to is defined %}\n    return 302 https://"
                           "{{ vars.moved_to }}/;\n{% endif %}\n",
                           "    add_header X-Banner {{ vars.banner }};\n")
    assert "moved_to" not in banner
    (own / "banner.conf.j2").write_text("{# epages: safe_vars = banner #}\n" + banner)
    lin1 = lineage(tmp_path, ca, "one.test", ["one.test", "www.one.test"])
    lin2 = lineage(tmp_path, ca, "two.test", ["two.test", "www.two.test"])
    shops = [shop("one.test", "banner", banner='"' * 1100, **UP),
             shop("two.test", "banner", banner="hello", **UP)]
    out, comp, notes = build(tmp_path, "shared", [], "sites", shops, [lin1, lin2],
                             templates=TemplateSet(tmp_path / "t"))
    assert set(comp.rendered) == {"two.test.conf"}
    assert any("one.test" in n and "at most 2048" in n for n in notes)
