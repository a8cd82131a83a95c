"""Rendering shop site configs from templates, and the packaged templates under nginx -t."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from certbot_epages.deploy.render import (
    RenderError,
    TemplateSet,
    lb_cert_dir,
    render_site,
    site_filename,
)
from certbot_epages.inventory import Shop, load_inventory

# Every test is "unit" but the nginx -t one, which is "integration" only.
unit = pytest.mark.unit

CERT_DIR = "/srv/lb/current/certs/shop.example.com"


def shop(**fields: object) -> Shop:
    values: dict[str, object] = {
        "domain": "shop.example.com",
        "aliases": ("www.shop.example.com",),
        "template": "custom-domain",
        "vars": {"upstream": "10.0.0.5:8080"},
    }
    values.update(fields)
    return Shop(**values)  # type: ignore[arg-type]


def render(templates: TemplateSet, entry: Shop, **kwargs: str) -> str:
    args = {
        "lb_name": "lb1",
        "lb_root": "/srv/lb",
        "cert_dir": CERT_DIR,
        "challenge_service": "127.1.2.20:80",
    }
    args.update(kwargs)
    return render_site(templates, entry, **args)


def operator_dir(tmp_path: Path, templates: dict[str, str]) -> Path:
    nginx = tmp_path / "templates" / "nginx"
    nginx.mkdir(parents=True)
    for name, text in templates.items():
        (nginx / f"{name}.conf.j2").write_text(text, encoding="utf-8")
    return tmp_path / "templates"


# --------------------------------------------------------------------------- TemplateSet


@unit
def test_packaged_names_exclude_snippets() -> None:
    templates = TemplateSet(None)
    names = templates.names()
    assert "custom-domain" in names
    assert "platform-wildcard" in names
    assert not any(n.startswith("acme-challenge") or n == "challenge-service" for n in names)
    assert templates.safe_vars("custom-domain") == frozenset()


@unit
def test_operator_templates_come_first(tmp_path: Path) -> None:
    directory = operator_dir(
        tmp_path,
        {
            "custom-domain": "# operator's {{ domain }}\n",
            "own-shop": "{# epages: safe_vars = banner, csp #}\n"
            "{#- epages: safe_vars = extra #}\n"
            "server_name {{ domain }}; # {{ vars.banner }}\n",
            "Bad Name": "x",
        },
    )
    (directory / "nginx" / "README.txt").write_text("not a template", encoding="utf-8")
    templates = TemplateSet(directory)
    assert set(templates.names()) >= {"custom-domain", "platform-wildcard", "own-shop"}
    assert "Bad Name" not in templates.names()
    assert templates.path("custom-domain") == directory / "nginx" / "custom-domain.conf.j2"
    assert render(templates, shop()) == "# operator's shop.example.com\n"
    assert templates.safe_vars("own-shop") == {"banner", "csp", "extra"}
    assert templates.all_safe_vars()["own-shop"] == {"banner", "csp", "extra"}


@unit
def test_operator_dir_without_nginx_subdir(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="no nginx/ subdirectory"):
        TemplateSet(tmp_path)


@unit
def test_bad_safe_vars_declaration(tmp_path: Path) -> None:
    templates = TemplateSet(operator_dir(tmp_path, {"t": "{# epages: safe_vars = Bad-Name #}"}))
    with pytest.raises(RenderError, match="not a variable name"):
        templates.safe_vars("t")


@pytest.mark.parametrize("name", ["../custom-domain", "acme-challenge-proxy", "nope", ""])
@unit
def test_unknown_template_is_refused(name: str) -> None:
    with pytest.raises(RenderError, match="unknown shop template"):
        render(TemplateSet(None), shop(template=name))


# --------------------------------------------------------------------------- render_site


@unit
def test_custom_domain() -> None:
    text = render(TemplateSet(None), shop(), listen_address="127.1.2.11")
    assert "listen 127.1.2.11:80;" in text
    assert "listen 127.1.2.11:443 ssl;" in text
    assert "ssl on" not in text
    assert "http2" not in text
    assert "[::]" not in text
    assert text.count("server_name shop.example.com www.shop.example.com;") == 2
    assert "location ^~ /.well-known/acme-challenge/ {" in text
    assert "proxy_pass http://127.1.2.20:80;" in text
    assert "return 301 https://$host$request_uri;" in text
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in text
    assert f"ssl_certificate {CERT_DIR}/fullchain.pem;" in text
    assert f"ssl_certificate_key {CERT_DIR}/privkey.pem;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "proxy_pass http://10.0.0.5:8080;" in text
    assert "proxy_set_header X-Forwarded-Proto https;" in text
    assert "{{" not in text and "{%" not in text and "{#" not in text


@unit
def test_listen_on_all_addresses_by_default() -> None:
    text = render(TemplateSet(None), shop())
    assert "listen 80;" in text
    assert "listen 443 ssl;" in text


@unit
def test_platform_wildcard() -> None:
    entry = shop(
        domain="*.platform.example",
        aliases=("platform.example",),
        template="platform-wildcard",
        vars={"upstream": "10.0.1.1:80"},
    )
    text = render(TemplateSet(None), entry, cert_dir=lb_cert_dir("/srv/lb", "platform.example"))
    assert text.count("server_name *.platform.example platform.example;") == 2
    assert "ssl_certificate /srv/lb/current/certs/platform.example/fullchain.pem;" in text
    assert "listen 443 ssl;" in text
    assert "ssl on" not in text


@unit
def test_context(tmp_path: Path) -> None:
    directory = operator_dir(
        tmp_path,
        {
            "ctx": "{{ domain }}|{{ aliases | join(',') }}|{{ server_names | join(',') }}|"
            "{{ ssl_certificate }}|{{ ssl_certificate_key }}|{{ vars.upstream }}|{{ vars.n }}|"
            "{{ lb.name }}|{{ lb.root }}|{{ listen_address }}|{{ challenge_service }}|"
            "{{ shop.status }}|{{ shop.template }}|{{ shop.vars.upstream }}\n"
        },
    )
    entry = shop(template="ctx", vars={"upstream": "u:1", "n": 3}, status="suspended")
    text = render(TemplateSet(directory), entry, listen_address="127.0.0.9")
    assert text == (
        "shop.example.com|www.shop.example.com|shop.example.com,www.shop.example.com|"
        f"{CERT_DIR}/fullchain.pem|{CERT_DIR}/privkey.pem|u:1|3|lb1|/srv/lb|127.0.0.9|"
        "127.1.2.20:80|suspended|ctx|u:1\n"
    )


@unit
def test_undefined_variable_names_template_and_shop() -> None:
    with pytest.raises(RenderError) as info:
        render(TemplateSet(None), shop(vars={}))
    message = str(info.value)
    assert "custom-domain.conf.j2" in message
    assert "shop.example.com" in message
    assert "upstream" in message


@unit
def test_undefined_in_operator_template(tmp_path: Path) -> None:
    templates = TemplateSet(operator_dir(tmp_path, {"t": "line 1\n{{ no_such_thing }}\n"}))
    with pytest.raises(RenderError, match=r"t\.conf\.j2:2: .*'no_such_thing' is undefined"):
        render(templates, shop(template="t"))


@unit
def test_syntax_error_names_template(tmp_path: Path) -> None:
    templates = TemplateSet(operator_dir(tmp_path, {"t": "ok\n{% if %}\n"}))
    with pytest.raises(RenderError, match=r"t\.conf\.j2:2: template syntax error"):
        render(templates, shop(template="t"))


@unit
def test_missing_include(tmp_path: Path) -> None:
    templates = TemplateSet(operator_dir(tmp_path, {"t": '{% include "nope.conf.j2" %}'}))
    with pytest.raises(RenderError, match="'nope.conf.j2' not found"):
        render(templates, shop(template="t"))


@unit
def test_operator_template_includes_packaged_snippet(tmp_path: Path) -> None:
    templates = TemplateSet(
        operator_dir(tmp_path, {"t": '{% include "acme-challenge-proxy.conf.j2" %}'})
    )
    text = render(templates, shop(template="t"))
    assert "proxy_pass http://127.1.2.20:80;" in text


@pytest.mark.parametrize(
    "entry",
    [
        shop(domain="evil.com; include /etc/shadow"),
        shop(domain="Shop.Example.com"),
        shop(aliases=("a.example\n}",)),
        shop(vars={"upstream": "10.0.0.5:8080;\ninclude /etc/shadow"}),
        shop(vars={"upstream": "$host"}),
        shop(vars={"upstream": "a b"}),
    ],
)
@unit
def test_hand_built_bad_shop_is_refused(entry: Shop) -> None:
    with pytest.raises(RenderError):
        render(TemplateSet(None), entry)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cert_dir": "/x; include /etc/shadow"},
        {"challenge_service": "a:1;\n"},
        {"listen_address": "127.0.0.1 default_server"},
        {"lb_root": "/srv/{lb}"},
    ],
)
@unit
def test_bad_settings_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(RenderError):
        render(TemplateSet(None), shop(), **kwargs)


@unit
def test_safe_var_may_carry_a_space_but_not_a_newline(tmp_path: Path) -> None:
    directory = operator_dir(
        tmp_path,
        {
            "banner": "{# epages: safe_vars = banner #}\n"
            "add_header X-Banner \"{{ vars.banner | replace('\\\\', '') | replace('\"', '') }}\";\n"
        },
    )
    templates = TemplateSet(directory)
    inventory_file = tmp_path / "inventory.yaml"
    inventory_file.write_text(
        """\
- {domain: a.example, template: banner, vars: {banner: "Hello world"}}
- {domain: b.example, template: banner, vars: {banner: "Hello\\nadd_header X 1"}}
- {domain: c.example, template: custom-domain, vars: {upstream: "a b"}}
""",
        encoding="utf-8",
    )
    inventory = load_inventory(
        inventory_file, templates=templates.names(), safe_vars=templates.all_safe_vars()
    )
    assert [s.domain for s in inventory.shops] == ["a.example"]
    assert [p.index for p in inventory.problems] == [1, 2]
    assert render(templates, inventory.shops[0]) == 'add_header X-Banner "Hello world";\n'
    with pytest.raises(RenderError, match="control characters"):
        render(templates, shop(domain="b.example", template="banner", vars={"banner": "a\nb"}))


@unit
def test_malicious_entries_never_reach_rendered_output(tmp_path: Path) -> None:
    inventory_file = tmp_path / "inventory.yaml"
    inventory_file.write_text(
        """\
- domain: good.example
  template: custom-domain
  vars: {upstream: "10.0.0.5:8080"}
- domain: "evil.com; include /etc/shadow"
  template: custom-domain
  vars: {upstream: "10.0.0.6:8080"}
- domain: newline.example
  template: custom-domain
  vars: {upstream: "10.0.0.7:8080;\\n include /etc/shadow"}
- domain: traversal.example
  template: "../sandbox/lb-nginx"
  vars: {upstream: "10.0.0.8:8080"}
- domain: dollar.example
  template: custom-domain
  vars: {upstream: "$http_x_evil"}
- domain: unknown.example
  template: no-such-template
  vars: {upstream: "10.0.0.9:8080"}
""",
        encoding="utf-8",
    )
    templates = TemplateSet(None)
    inventory = load_inventory(
        inventory_file, templates=templates.names(), safe_vars=templates.all_safe_vars()
    )
    assert len(inventory.problems) == 5
    output = "".join(render(templates, s) for s in inventory.shops)
    assert "good.example" in output
    for needle in ("evil", "shadow", "newline", "traversal", "$http_x_evil", "unknown", "10.0.0.6"):
        assert needle not in output


# --------------------------------------------------------------------------- site_filename


@unit
def test_site_filename() -> None:
    assert site_filename(shop()) == "shop.example.com.conf"
    wildcard = shop(domain="*.platform.example", template="platform-wildcard")
    assert site_filename(wildcard) == "_wildcard_.platform.example.conf"
    assert site_filename(shop(domain="xn--bcher-kva.example")) == "xn--bcher-kva.example.conf"


@pytest.mark.parametrize("domain", ["../../etc/x.example", "a/b.example", "Shop.example", "x"])
@unit
def test_site_filename_refuses_unsafe_domains(domain: str) -> None:
    with pytest.raises(RenderError):
        site_filename(shop(domain=domain))


# --------------------------------------------------------------------------- nginx -t


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:  # make test installs it: a missing nginx must not pass silently
        pytest.fail("nginx is not installed; 'make deps' installs it")
    return found


@pytest.mark.integration
@pytest.mark.parametrize("listen_address", ["", "127.1.2.11"])
def test_packaged_templates_pass_nginx_t(tmp_path: Path, listen_address: str) -> None:
    nginx = _nginx()
    prefix = tmp_path / "nginx"
    sites = prefix / "sites"
    sites.mkdir(parents=True)
    templates = TemplateSet(None)
    shops = [
        shop(),
        shop(domain="xn--bcher-kva.example", aliases=(), vars={"upstream": "127.0.0.1:8080"}),
        shop(
            domain="*.platform.example",
            aliases=("platform.example",),
            template="platform-wildcard",
            vars={"upstream": "127.0.0.1:8081"},
        ),
    ]
    for entry in shops:
        cert_dir = Path(lb_cert_dir(str(prefix), entry.domain.replace("*", "_wildcard_")))
        cert_dir.mkdir(parents=True)
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-subj", "/CN=x", "-days", "1",
                "-keyout", str(cert_dir / "privkey.pem"), "-out", str(cert_dir / "fullchain.pem"),
            ],
            check=True,
            capture_output=True,
        )
        text = render_site(
            templates,
            entry,
            lb_name="lb1",
            lb_root=str(prefix),
            cert_dir=str(cert_dir),
            challenge_service="127.1.2.20:80",
            listen_address=listen_address,
        )
        (sites / site_filename(entry)).write_text(text, encoding="utf-8")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"pid {prefix}/nginx.pid;\n"
        "events {}\n"
        "http {\n"
        f"    access_log {prefix}/access.log;\n"
        f"{temp}\n"
        "    server_names_hash_bucket_size 128;\n"
        "    include sites/*.conf;\n"
        "}\n",
        encoding="utf-8",
    )
    (prefix / "tmp").mkdir()
    result = subprocess.run(
        [nginx, "-t", "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "error.log"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr
