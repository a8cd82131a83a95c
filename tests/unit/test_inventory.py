"""The shop inventory: domain validation, entry checks, file and URL loading."""

from __future__ import annotations

import http.server
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from epages_testlib import http_server

from certbot_epages.inventory import (
    Inventory,
    InventoryError,
    Problem,
    Shop,
    load_inventory,
    parse_inventory,
    validate_domain,
    validate_var,
)

pytestmark = pytest.mark.unit

TEMPLATES = ("custom-domain", "platform-wildcard")
LONGEST = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
GOOD = {
    "domain": "shop.example.com",
    "template": "custom-domain",
    "vars": {"upstream": "10.0.0.5:8080"},
}


def parse(entries: object, **kwargs: object) -> Inventory:
    return parse_inventory(entries, templates=TEMPLATES, **kwargs)  # type: ignore[arg-type]


def entry(**fields: object) -> dict[str, object]:
    return {**GOOD, **fields}


# --------------------------------------------------------------------------- validate_domain


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.COM.", "shop.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("*.platform.example", "*.platform.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("a-b.c0.example", "a-b.c0.example"),
        ("1shop.example", "1shop.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (LONGEST, LONGEST),
    ],
)
def test_validate_domain_good(name: str, expected: str) -> None:
    assert len(LONGEST) == 253
    assert validate_domain(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x",
        "com.",
        "evil.com; include /etc/shadow",
        "evil.com;",
        "shop.example.com/x",
        "a..b",
        ".a.com",
        "-a.com",
        "a-.com",
        "*.*.a.com",
        "a.*.com",
        "*a.com",
        "*",
        "*.com",
        "under_score.com",
        "sp ace.com",
        "tab\t.com",
        "new\nline.com",
        "nul\x00.com",
        "bell\x07.com",
        "shop.example.com\n",
        "a" * 64 + ".example",
        LONGEST + "b",
        "1.2.3.4",
        "shop.example.com}",
        "$host.example",
        "xn--zz-.example",
        "soft\u00adhyphen.example",
    ],
)
def test_validate_domain_bad(name: str) -> None:
    with pytest.raises(ValueError):
        validate_domain(name)


def test_validate_domain_wildcard_can_be_refused() -> None:
    with pytest.raises(ValueError, match="wildcard"):
        validate_domain("*.example.com", allow_wildcard=False)


def test_validate_domain_message_is_printable() -> None:
    with pytest.raises(ValueError) as info:
        validate_domain("evil.com\nserver { }")
    assert "\n" not in str(info.value)
    assert "\\n" in str(info.value)


# --------------------------------------------------------------------------- validate_var


@pytest.mark.parametrize("value", ["10.0.0.5:8080", "[2001:db8::1]:80", "backend", 8080, True])
def test_validate_var_good(value: object) -> None:
    assert validate_var("upstream", value) == value


@pytest.mark.parametrize(
    "value",
    ["", "a;b", "a b", "a\tb", "a\nb", "{", "}", '"', "'", "\\", "$host", "#x", "\x00", "\u2028"]
    + [1.5, None, ["x"], {"x": 1}],
)
def test_validate_var_bad(value: object) -> None:
    with pytest.raises(ValueError):
        validate_var("upstream", value)


@pytest.mark.parametrize("name", ["Upstream", "1x", "a-b", "a b", ""])
def test_validate_var_bad_name(name: str) -> None:
    with pytest.raises(ValueError, match="variable name"):
        validate_var(name, "x")


def test_safe_var_allows_quotes_and_spaces_but_not_newlines() -> None:
    assert validate_var("csp", "default-src 'self'; img-src *", safe=True) == (
        "default-src 'self'; img-src *"
    )
    assert validate_var("csp", "", safe=True) == ""
    for bad in ("a\nb", "a\rb", "a\tb", "a\x00b", "a\u2028b", "a\x1bb"):
        with pytest.raises(ValueError, match="control characters"):
            validate_var("csp", bad, safe=True)


# --------------------------------------------------------------------------- entries


def test_good_entry() -> None:
    inventory = parse(
        [
            {
                "domain": "Shop.Example.com",
                "aliases": ["www.shop.example.com", "bücher.example"],
                "template": "custom-domain",
                "vars": {"upstream": "10.0.0.5:8080", "port": 8080, "tls": True},
                "status": "suspended",
            }
        ]
    )
    assert inventory.problems == ()
    (shop,) = inventory.shops
    assert shop == Shop(
        domain="shop.example.com",
        aliases=("www.shop.example.com", "xn--bcher-kva.example"),
        template="custom-domain",
        vars={"upstream": "10.0.0.5:8080", "port": 8080, "tls": True},
        status="suspended",
    )
    assert shop.server_names == (
        "shop.example.com",
        "www.shop.example.com",
        "xn--bcher-kva.example",
    )
    assert not shop.is_active
    assert inventory.active() == ()
    assert shop.as_dict() == {
        "domain": "shop.example.com",
        "aliases": ["www.shop.example.com", "xn--bcher-kva.example"],
        "server_names": ["shop.example.com", "www.shop.example.com", "xn--bcher-kva.example"],
        "template": "custom-domain",
        "vars": {"upstream": "10.0.0.5:8080", "port": 8080, "tls": True},
        "status": "suspended",
        "shop": None,
    }


def test_defaults() -> None:
    (shop,) = parse([{"domain": "a.example", "template": "custom-domain"}]).shops
    assert shop.aliases == ()
    assert dict(shop.vars) == {}
    assert shop.status == "active"
    assert shop.is_active


def test_shop_is_immutable() -> None:
    (shop,) = parse([GOOD]).shops
    with pytest.raises(TypeError):
        shop.vars["upstream"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry(domain="evil.com; include /etc/shadow"), "domain"),
        (entry(domain="evil.com\n}\nserver {"), "domain"),
        (entry(domain=None), "domain must be a string"),
        (entry(domain=["a.example"]), "domain must be a string"),
        ({"template": "custom-domain"}, "missing required key 'domain'"),
        (entry(aliases=["ok.example", "bad;.example"]), r"aliases\[1\]"),
        (entry(aliases="www.shop.example.com"), "'aliases' must be a list"),
        (entry(aliases=["shop.example.com"]), "listed twice"),
        (entry(aliases=["x.example", "X.example"]), "listed twice"),
        (entry(template="../../../etc/passwd"), "must match"),
        (entry(template="../x"), "must match"),
        (entry(template="Custom-Domain"), "must match"),
        (entry(template="nonexistent"), "unknown template 'nonexistent'"),
        (entry(template=None), "must match"),
        ({"domain": "a.example"}, "missing required key 'template'"),
        (entry(vars={"upstream": "10.0.0.5:8080;\ninclude /etc/shadow"}), "not allowed"),
        (entry(vars={"upstream": "a\nb"}), "not allowed"),
        (entry(vars={"upstream": "$host"}), "not allowed"),
        (entry(vars={"upstream": "x }"}), "not allowed"),
        (entry(vars={"upstream": ""}), "must not be empty"),
        (entry(vars={"upstream": 1.5}), "string, integer or boolean"),
        (entry(vars={"upstream": ["x"]}), "string, integer or boolean"),
        (entry(vars={"Bad-Name": "x"}), "variable name"),
        (entry(vars={1: "x"}), "variable name"),
        (entry(vars=["upstream"]), "'vars' must be a mapping"),
        (entry(status="gone"), "status 'gone' must be one of"),
        (entry(status=None), "must be one of"),
        (entry(extra="x"), "unknown key"),
        ("shop.example.com", "must be a mapping"),
        (None, "must be a mapping"),
    ],
)
def test_bad_entry_is_a_problem_and_the_rest_loads(bad: object, message: str) -> None:
    inventory = parse([entry(domain="first.example"), bad, entry(domain="last.example")])
    assert [s.domain for s in inventory.shops] == ["first.example", "last.example"]
    (problem,) = inventory.problems
    assert problem.index == 1
    assert problem.message
    assert re.search(message, problem.message), problem.message
    assert "\n" not in str(problem)


def test_problem_names_the_entry() -> None:
    inventory = parse([entry(domain="evil.com; include /etc/shadow")])
    (problem,) = inventory.problems
    assert problem == Problem(0, "evil.com; include /etc/shadow", problem.message, status="active")
    assert str(problem).startswith("inventory entry 0 (evil.com; include /etc/shadow): ")
    assert parse([{"template": "x"}]).problems[0].domain is None
    newline = parse([entry(domain="a\nb")]).problems[0]
    assert newline.domain == "a\\nb"


def test_every_valid_entry_loads_whoever_else_lists_its_names() -> None:
    # Who gets a name is decided against what the load balancers serve (ownership.py), never
    # by the order of entries.
    inventory = parse([entry(domain="a.example"), entry(domain="d.example", aliases=["a.example"])])
    assert [s.domain for s in inventory.shops] == ["a.example", "d.example"]
    assert inventory.problems == ()


def test_a_rejected_entry_claims_no_names() -> None:
    inventory = parse([entry(domain="a.example", template="nope"), entry(domain="a.example")])
    assert [s.domain for s in inventory.shops] == ["a.example"]
    assert [p.index for p in inventory.problems] == [0]


def test_safe_vars_are_per_template() -> None:
    csp = "default-src 'self'"
    safe = {"custom-domain": ("csp",)}
    inventory = parse(
        [
            entry(domain="a.example", vars={"upstream": "x:1", "csp": csp}),
            entry(domain="b.example", template="platform-wildcard", vars={"csp": csp}),
            entry(domain="c.example", vars={"upstream": "a b"}),
            entry(domain="d.example", vars={"csp": "line\nbreak"}),
        ],
        safe_vars=safe,
    )
    assert [s.domain for s in inventory.shops] == ["a.example"]
    assert inventory.shops[0].vars["csp"] == csp
    assert [p.index for p in inventory.problems] == [1, 2, 3]
    assert "control characters" in inventory.problems[2].message


def test_mapping_with_shops() -> None:
    inventory = parse({"shops": [GOOD]})
    assert [s.domain for s in inventory.shops] == ["shop.example.com"]
    assert parse([]) == Inventory((), ())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "got an empty document"),
        ("shop.example.com", "expected a list of shops, got str"),
        (42, "expected a list of shops, got int"),
        ({"shop": []}, "unknown top-level key"),
        ({}, "no 'shops' list"),
        ({"shops": {"a": 1}}, "expected a list of shops, got dict"),
    ],
)
def test_bad_top_level(data: object, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        parse_inventory(data, templates=TEMPLATES, source="inv.yaml")


# --------------------------------------------------------------------------- files


def test_load_yaml_file_with_malicious_entries(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        """\
- domain: shop.example.com
  aliases: [www.shop.example.com]
  template: custom-domain
  vars: {upstream: "10.0.0.5:8080"}
- domain: "evil.com; include /etc/shadow"
  template: custom-domain
  vars: {upstream: "10.0.0.6:8080"}
- domain: newline.example
  template: custom-domain
  vars: {upstream: "10.0.0.7:8080\\n}\\nserver { listen 80"}
- domain: traversal.example
  template: ../../etc/passwd
- domain: dollar.example
  template: custom-domain
  vars: {upstream: "$host"}
- domain: unknown.example
  template: no-such-template
- domain: "*.platform.example"
  template: platform-wildcard
  vars: {upstream: "10.0.1.1:80"}
  status: active
""",
        encoding="utf-8",
    )
    inventory = load_inventory(path, templates=TEMPLATES)
    assert [s.domain for s in inventory.shops] == ["shop.example.com", "*.platform.example"]
    assert [p.index for p in inventory.problems] == [1, 2, 3, 4, 5]


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"shops": [GOOD]}), encoding="utf-8")
    assert load_inventory(str(path), templates=TEMPLATES).shops[0].domain == "shop.example.com"


def test_yaml_types_other_than_plain_values_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "- {domain: a.example, template: custom-domain, vars: {upstream: 2024-01-01}}\n"
        "- {domain: b.example, template: custom-domain, vars: {upstream: 1.5}}\n",
        encoding="utf-8",
    )
    inventory = load_inventory(path, templates=TEMPLATES)
    assert inventory.shops == ()
    assert len(inventory.problems) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"- domain: [unclosed\n", "not valid YAML/JSON at line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "empty document"),
        (b"domain: a.example\n", "unknown top-level key"),
        (b"!!python/object:os.system {}\n", "not valid YAML/JSON"),
    ],
)
def test_broken_file_raises(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(content)
    with pytest.raises(InventoryError, match=message) as info:
        load_inventory(path, templates=TEMPLATES)
    assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not found"):
        load_inventory(tmp_path / "nope.yaml", templates=TEMPLATES)


# --------------------------------------------------------------------------- URLs


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b"not found"))
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", body.decode())
            body = b""
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    with http_server(_Handler) as httpd:
        yield f"http://127.0.0.1:{httpd.port}"


def test_load_from_url(server: str) -> None:
    bad = entry(domain="evil.com; include /etc/shadow")
    _Handler.routes = {
        "/inventory": (200, json.dumps([GOOD, bad]).encode()),
        "/broken": (200, b"[not json"),
        "/yaml": (200, yaml.safe_dump([GOOD]).encode()),
        "/ftp": (302, b"ftp://127.0.0.1/inventory"),
        "/moved": (302, b"/inventory"),
    }
    inventory = load_inventory(f"{server}/inventory", templates=TEMPLATES, timeout=5)
    assert [s.domain for s in inventory.shops] == ["shop.example.com"]
    assert [p.index for p in inventory.problems] == [1]
    moved = load_inventory(f"{server}/moved", templates=TEMPLATES, timeout=5)
    assert [s.domain for s in moved.shops] == ["shop.example.com"]
    with pytest.raises(InventoryError, match="not valid JSON"):
        load_inventory(f"{server}/broken", templates=TEMPLATES, timeout=5)
    with pytest.raises(InventoryError, match="not valid JSON"):
        load_inventory(f"{server}/yaml", templates=TEMPLATES, timeout=5)
    with pytest.raises(InventoryError, match="HTTP 404"):
        load_inventory(f"{server}/missing", templates=TEMPLATES, timeout=5)
    with pytest.raises(InventoryError, match="non-http"):
        load_inventory(f"{server}/ftp", templates=TEMPLATES, timeout=5)


def test_url_password_is_not_shown(server: str) -> None:
    _Handler.routes = {}
    url = server.replace("http://", "http://user:s3cret@") + "/missing"
    with pytest.raises(InventoryError) as info:
        load_inventory(url, templates=TEMPLATES, timeout=5)
    assert "s3cret" not in str(info.value)
    assert "user:***@" in str(info.value)


class _Drip(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        for _ in range(100):  # a byte every 100 ms: no single read ever times out
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            self.server.stop.wait(0.1)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_one_deadline_covers_the_whole_fetch() -> None:
    with http_server(_Drip) as httpd, \
            pytest.raises(InventoryError, match=r"did not arrive within 0.5s"):
        load_inventory(f"http://127.0.0.1:{httpd.port}/", templates=TEMPLATES, timeout=0.5)


def test_the_size_cap_applies(server: str) -> None:
    _Handler.routes = {"/big": (200, json.dumps([GOOD] * 200).encode())}
    with pytest.raises(InventoryError, match="larger than 2048 bytes"):
        load_inventory(f"{server}/big", templates=TEMPLATES, timeout=5, max_bytes=2048)


def test_unreachable_url() -> None:
    with pytest.raises(InventoryError, match="cannot fetch"):
        load_inventory("http://127.0.0.1:9/inventory", templates=TEMPLATES, timeout=2)


@pytest.mark.parametrize("upstream", ["unix:/var/run/docker.sock:", "10.0.0.5:99999", "a_b:80"])
def test_upstream_is_host_and_port_only(upstream: str) -> None:
    with pytest.raises(ValueError, match="'upstream' must be host:port"):
        validate_var("upstream", upstream)


def test_domains_are_mapped_with_idna_2008_not_2003() -> None:
    assert validate_domain("straße.test") == "xn--strae-oqa.test"  # IDNA 2003: strasse.test
    assert validate_domain("xn--strae-oqa.test") == "xn--strae-oqa.test"
    for rejected in ("☃.test", "xn--n3h.test"):  # a symbol IDNA 2008 disallows
        with pytest.raises(ValueError, match="IDNA 2008"):
            validate_domain(rejected)
    inventory = parse([entry(domain="☃.test")])
    assert inventory.shops == () and "IDNA 2008" in inventory.problems[0].message
