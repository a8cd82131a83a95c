"""Review of deploy.mode: shared: faults an operator or a hostile tenant can cause.

Each test states what must hold (each failed before the fixes that came with the review).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from epages_testlib import (
    fresh_sandbox,
    make_lineage,
    poll,
    served,
)
from shared_fleet import BIN, Fleet, deploy, https_head, https_status

from certbot_epages.resources import templates_dir
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture
def platform() -> Iterator[Sandbox]:
    with fresh_sandbox() as sandbox:
        yield sandbox


def _own_template(fleet: Fleet) -> None:
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    packaged = (templates_dir() / "nginx" / "custom-domain.conf.j2").read_text()
    (own / "own.conf.j2").write_text("{# epages: own_server #}\n" + packaged)
    fleet.set_deploy(templates=str(fleet.base / "templates"))


# --- a tenant's values ------------------------------------------------------------------------

def test_a_long_variable_the_template_never_uses_does_not_stop_everydeploy(
    platform: Sandbox,
) -> None:
    """One tenant's 4096-character variable (the inventory allows up to 4096) goes into a map
    line in shared mode even though no template uses it; nginx's parser refuses tokens of
    4096 bytes, so `nginx -t` fails and no shop deploys, a renewal included. In sites mode the
    unused variable is never rendered."""
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.shop("three.test")["vars"]["note"] = "x" * 4096
    fleet.write()
    fleet.renew("two.test", "n")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


def test_a_quoted_safe_variable_under_the_limit_does_not_stop_everydeploy(
    platform: Sandbox,
) -> None:
    """A safe variable of 2100 '"' is 2100 characters (allowed) but 4202 once escaped for the
    map: the same `nginx -t` failure for every shop."""
    fleet = Fleet(platform)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    packaged = (templates_dir() / "nginx" / "custom-domain.conf.j2").read_text()
    (own / "banner.conf.j2").write_text("{# epages: safe_vars = banner #}\n" + packaged)
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    assert deploy(fleet.config, "--all").returncode == 0
    shop = fleet.shop("three.test")
    shop["template"] = "banner"
    shop["vars"]["banner"] = '"' * 2100
    fleet.write()
    fleet.renew("two.test", "n")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


MOVED = """\
# test template: a shop may be moved elsewhere (optional variable)
server {
    listen {{ listen_address ~ ':' if listen_address else '' }}443 ssl;
    server_name {{ server_names | join(' ') }};
    ssl_certificate {{ ssl_certificate }};
    ssl_certificate_key {{ ssl_certificate_key }};
{% if vars.moved_to is defined %}
    return 302 https://{{ vars.moved_to }}/;
{% endif %}
    location / { return 204; }
}
"""


@pytest.mark.parametrize("mode", ["sites", "shared"])
def test_an_optional_variable_of_one_shop_does_not_reach_the_other_shops_of_its_template(
    platform: Sandbox, mode: str,
) -> None:
    """A template that guards an optional variable with `is defined` (which required_vars
    treats as optional) renders the guarded directive into the one shared server as soon as
    any shop sets it: every other shop of the template then answers it too (with an empty map
    value), so one tenant's entry changes what every other tenant serves."""
    fleet = Fleet(platform, mode=mode)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    (own / "moved.conf.j2").write_text(MOVED)
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    for domain in ("one.test", "two.test"):
        fleet.shop(domain)["template"] = "moved"
        fleet.shop(domain)["vars"] = {}
    fleet.shop("one.test")["vars"] = {"moved_to": "elsewhere.test"}
    # The platform wildcard and one of its riders in the same template: the rider has no
    # line of its own in the hostnames map, so it would get the wildcard tenant's value.
    fleet.shop("*.platform.test").update(template="moved", vars={"moved_to": "wild.test"})
    fleet.shop("a.platform.test").update(template="moved", vars={})
    fleet.write()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    names = ("one.test", "two.test", "x.platform.test", "a.platform.test")
    expected = {"one.test": "HTTP/1.1 302 Moved Temporarily | Location: https://elsewhere.test/",
                "two.test": "HTTP/1.1 204 No Content",
                "x.platform.test": "HTTP/1.1 302 Moved Temporarily | Location: https://wild.test/",
                "a.platform.test": "HTTP/1.1 204 No Content"}
    for lb in platform.lbs:
        assert {n: https_status(lb.address, n) for n in names} == expected, lb.name


BANNER = """\
{# epages: safe_vars = banner #}
# test template: a banner header
server {
    listen {{ listen_address ~ ':' if listen_address else '' }}443 ssl;
    server_name {{ server_names | join(' ') }};
    ssl_certificate {{ ssl_certificate }};
    ssl_certificate_key {{ ssl_certificate_key }};
    add_header X-Banner "{{ vars.banner }}" always;
    add_header X-Label {{ vars.label }} always;
    location / { proxy_pass http://{{ vars.upstream }}; }
}
"""


def test_hostile_values_reach_the_maps_as_data(platform: Sandbox) -> None:
    """Quotes, braces, semicolons, backslashes, '#' and non-ASCII in a safe variable, non-ASCII
    in a plain one, and an IPv6 upstream: each shop gets exactly its own values."""
    fleet = Fleet(platform)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    (own / "banner.conf.j2").write_text(BANNER)
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    hostile = 'a"b\'c {d} ;e # f \\g \\n "} server { x; ü'
    fleet.shop("one.test").update(template="banner", vars={
        "banner": hostile, "label": "ünïcode", "upstream": platform.backend})
    fleet.shop("two.test").update(template="banner", vars={
        "banner": "", "label": "plain", "upstream": "[::1]:9"})
    fleet.write()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    for lb in platform.lbs:
        one = https_head(lb.address, "one.test")
        assert f"X-Banner: {hostile}" in one and "X-Label: ünïcode" in one, one
        two = https_head(lb.address, "two.test")
        assert two[0].split()[1] == "502" and "X-Label: plain" in two, two


@pytest.mark.parametrize(("mode", "template"), [("sites", "custom-domain"), ("shared", "own")])
def test_a_name_of_253_characters_with_a_file_of_its_own_stops_nodeploy(
    platform: Sandbox, mode: str, template: str,
) -> None:
    """A site file is named `<domain>.conf`: 258 characters for a 253-character name, longer
    than a file name may be (255), so building the release fails for every shop, a renewal
    of another shop included (sites mode, or a template with servers of their own)."""
    fleet = Fleet(platform, mode=mode)
    _own_template(fleet)
    base = ".".join(["b" * 63, "c" * 63, "d" * 56, "test"])
    long_name = f"{'a' * 63}.{base}"
    # Covered by the tenant's wildcard (certbot names that lineage wildcard_.<base>).
    make_lineage(fleet.certbot_dir, f"wildcard_.{base}", [f"*.{base}"], fleet.ca)
    fleet.shops.append({"domain": long_name, "shop": "long", "template": template,
                        "vars": {"upstream": platform.backend}})
    fleet.write()
    fleet.renew("two.test", "n")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


# --- what the load balancers hold -------------------------------------------------------------

def test_deploy_all_repairs_certificate_versions_that_workers_cannot_use(
    platform: Sandbox,
) -> None:
    """On lb2 one version's key lost its mode (0600: only root reads it) and another version
    lost its fullchain.pem (a botched restore). Both still have a key of the workers' group,
    so list_versions counts them as held, nothing is sent again, and `deploy --all` (the repair
    command) reports the live releases up to date while those shops fail every handshake."""
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()
    lb2 = Path(platform.lbs[1].root) / "certs"
    (lb2 / "one.test" / fleet.fingerprints["one.test"][:16] / "privkey.pem").chmod(0o600)
    (lb2 / "two.test" / fleet.fingerprints["two.test"][:16] / "fullchain.pem").unlink()
    assert served(platform, "one.test")["lb2"].startswith("error")  # the fault is real
    assert served(platform, "two.test")["lb2"].startswith("error")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


@pytest.mark.parametrize("mode", ["sites", "shared"])
def test_a_boolean_variable_set_to_false_does_not_switch_a_directive_on(
    platform: Sandbox, mode: str,
) -> None:
    """`{% if vars.moved %}` with a boolean: in shared mode the template sees the nginx
    variable's name (a non-empty string, always true), so a shop that sets `moved: false`
    (and every other shop of its template) gets the directive."""
    fleet = Fleet(platform, mode=mode)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    (own / "moved.conf.j2").write_text(MOVED.replace(
        "{% if vars.moved_to is defined %}", "{% if vars.moved %}").replace(
        "{{ vars.moved_to }}", "www.$host"))
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    fleet.shop("one.test").update(template="moved", vars={"moved": False})
    fleet.shop("two.test").update(template="moved", vars={"moved": True})
    fleet.write()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    for lb in platform.lbs:
        assert https_status(lb.address, "two.test").split()[1] == "302"
        assert https_status(lb.address, "one.test").split()[1] == "204", lb.name

CANON_V1 = MOVED.replace(
    "{% if vars.moved_to is defined %}\n    return 302 https://{{ vars.moved_to }}/;\n"
    "{% endif %}\n", "")
CANON_V2 = CANON_V1.replace("location / { return 204; }",
                            "location / { return 302 https://{{ vars.canonical }}/; }")


@pytest.mark.parametrize("mode", ["sites", "shared"])
def test_a_shop_kept_for_a_missing_template_variable_keeps_what_it_serves(
    platform: Sandbox, mode: str,
) -> None:
    """The operator changes a template so that it needs a new variable; one shop's entry has
    it, another's not yet. The second is reported kept ("its current config (if any) stays")
    but in shared mode it is a line of the maps under the one new shared server: it now
    answers the new directive with an empty value instead of what it served."""
    fleet = Fleet(platform, mode=mode)
    own = fleet.base / "templates" / "nginx"
    own.mkdir(parents=True)
    (own / "canon.conf.j2").write_text(CANON_V1)
    fleet.set_deploy(templates=str(fleet.base / "templates"))
    for domain in ("one.test", "two.test"):
        fleet.shop(domain)["template"] = "canon"
        fleet.shop(domain)["vars"] = {}
    fleet.write()
    assert deploy(fleet.config, "--all").returncode == 0
    for lb in platform.lbs:
        assert https_status(lb.address, "two.test").split()[1] == "204"
    (own / "canon.conf.j2").write_text(CANON_V2)
    fleet.shop("one.test")["vars"] = {"canonical": "www.one.test"}
    fleet.write()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "two.test" in done.stdout + done.stderr  # reported kept
    for lb in platform.lbs:
        assert https_status(lb.address, "one.test").startswith("HTTP/1.1 302")
        assert https_status(lb.address, "two.test").split()[1] == "204", lb.name


def test_a_name_of_253_characters_is_served_in_shared_mode(platform: Sandbox) -> None:
    fleet = Fleet(platform)
    long_name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
    assert len(long_name) == 253
    fingerprint = make_lineage(fleet.certbot_dir, "long.test", [long_name], fleet.ca)
    fleet.shops.append({"domain": long_name, "shop": "long", "template": "custom-domain",
                        "vars": {"upstream": platform.backend}})
    fleet.write()
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    assert set(served(platform, long_name).values()) == {fingerprint}


def test_deploy_all_sends_again_versions_deleted_or_given_away_on_one_lb(
    platform: Sandbox,
) -> None:
    """On lb2 one version was deleted (a restored backup) and another's key belongs to another
    group. list_versions leaves both out, the builder puts both into `push`, but nothing else
    differs from the live releases, so the run stops at "up to date" before phase 1 and
    never sends them: those shops keep failing their handshakes on lb2."""
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    lb2 = Path(platform.lbs[1].root) / "certs"
    shutil.rmtree(lb2 / "one.test" / fleet.fingerprints["one.test"][:16])
    key = lb2 / "two.test" / fleet.fingerprints["two.test"][:16] / "privkey.pem"
    os.chown(key, 0, 0)
    assert served(platform, "one.test")["lb2"].startswith("error")  # the fault is real
    assert served(platform, "two.test")["lb2"].startswith("error")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


# --- partial deploys, killed deploys, mode switches ------------------------------------------

def test_a_wildcard_renewal_with_a_kept_rider_and_a_rider_that_moved_template(
    platform: Sandbox,
) -> None:
    """The deploy hook for the platform wildcard: one rider's entry is invalid now, another
    moved to a template with servers of their own, one.test (own server) cannot ship."""
    fleet = Fleet(platform)
    _own_template(fleet)
    fleet.shop("one.test")["template"] = "own"
    fleet.write()
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()
    fleet.shop("a.platform.test")["vars"]["note"] = "a;b"
    fleet.shop("b.platform.test")["template"] = "own"
    fleet.shop("one.test")["aliases"] = ["www.one.test", "new.one.test"]
    fleet.write()
    fleet.wildcard = make_lineage(fleet.certbot_dir, "wildcard_.platform.test",
                                  ["*.platform.test"], SandboxCA(fleet.base / "w"))
    done = deploy(fleet.config, "--lineage", "wildcard_.platform.test")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()
    for lb in platform.lbs:
        sites = Path(lb.root) / "current" / "sites"
        assert (sites / "b.platform.test.conf").is_file()
        assert (sites / "one.test.conf").is_file()


def test_a_wildcard_renewal_killed_in_phase_two_then_a_hook_then_the_repair(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform)
    assert deploy(fleet.config, "--all").returncode == 0
    started, go = fleet.base / "reload.started", fleet.base / "reload.go"
    finished = fleet.base / "reload.finished"
    data = yaml.safe_load(fleet.config.read_text())
    lb1 = data["deploy"]["load_balancers"][0]
    real_reload = lb1["reload"]
    lb1["reload"] = ["sh", "-c", f'touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; '
                     f'touch {finished}; exit 1', "reload", *real_reload]
    fleet.config.write_text(yaml.safe_dump(data))
    old = fleet.wildcard
    fleet.wildcard = make_lineage(fleet.certbot_dir, "wildcard_.platform.test",
                                  ["*.platform.test"], SandboxCA(fleet.base / "w"))
    proc = subprocess.Popen([str(BIN / "certbot-epages"), "--config", str(fleet.config),
                             "deploy", "--lineage", "wildcard_.platform.test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll("lb1's reload started", lambda: started.exists() or None, timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    go.write_text("go")
    poll("the gate released", lambda: finished.exists() or None, timeout=30)
    assert served(platform, "a.platform.test")["lb1"] == old  # nginx runs the old config
    lb1["reload"] = real_reload
    fleet.config.write_text(yaml.safe_dump(data))
    # The next run is the deploy hook for another lineage, not the repair command.
    fleet.renew("two.test", "n")
    done = deploy(fleet.config, "--lineage", "two.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(served(platform, "two.test").values()) == {fleet.fingerprints["two.test"]}
    assert served(platform, "a.platform.test")["lb1"] == fleet.wildcard  # reloaded
    # Whether lb2 went live before the kill is a race; if not, it keeps its own live release
    # as its base (by design) and the repair command ships the renewal there.
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.assert_serves()


def test_sites_to_shared_with_a_lost_spool_an_invalid_entry_and_an_unready_shop(
    platform: Sandbox,
) -> None:
    fleet = Fleet(platform, mode="sites")
    assert deploy(fleet.config, "--all").returncode == 0
    fleet.assert_serves()
    spool = Path(yaml.safe_load(fleet.config.read_text())["deploy"]["spool"])
    shutil.rmtree(spool)
    fleet.shop("one.test")["aliases"] = ["www.one.test", "new.one.test"]
    fleet.shop("two.test")["vars"]["note"] = 'a"b'
    fleet.shop("a.platform.test")["vars"]["note"] = "{"
    fleet.write()
    fleet.set_deploy(mode="shared")
    done = deploy(fleet.config, "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would remove" not in done.stdout + done.stderr
    fleet.assert_serves()
