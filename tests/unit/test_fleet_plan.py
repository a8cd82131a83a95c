"""The sync plan: units, actions, renewal timing and ARI."""

from __future__ import annotations

import datetime as dt
import http.server
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from epages_testlib import http_server

from certbot_epages.deploy.lineages import Lineage
from certbot_epages.fleet import ari
from certbot_epages.fleet.plan import DELETE, ISSUE, KEEP, REISSUE, RENEW, make_plan, units
from certbot_epages.inventory import Shop

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
PLATFORM = ("platform.example",)


def shop(domain: str, *aliases: str, status: str = "active") -> Shop:
    return Shop(domain=domain, aliases=aliases, template="custom-domain", status=status)


def lineage(name: str, *names: str, age_days: float = 10, lifetime_days: float = 90) -> Lineage:
    not_before = NOW - dt.timedelta(days=age_days)
    return Lineage(name=name, live=Path("/nonexistent") / name, names=tuple(sorted(names)),
                   not_after=not_before + dt.timedelta(days=lifetime_days),
                   fingerprint="00", not_before=not_before)


def test_platform_shops_ride_on_one_wildcard_and_custom_shops_get_their_own() -> None:
    shops = [shop("a.platform.example"), shop("b.platform.example"),
             shop("shop.example", "www.shop.example"), shop("gone.example", status="deleted"),
             shop("paused.example", status="suspended")]
    found, riders = units(shops, PLATFORM)
    by_name = {u.lineage: u for u in found}
    assert set(by_name) == {"wildcard_.platform.example", "shop.example"}
    assert by_name["wildcard_.platform.example"].names == ("*.platform.example",)
    assert set(by_name["wildcard_.platform.example"].shops) == {"a.platform.example",
                                                               "b.platform.example"}
    assert by_name["shop.example"].names == ("shop.example", "www.shop.example")
    assert riders == {"a.platform.example": "wildcard_.platform.example",
                      "b.platform.example": "wildcard_.platform.example"}


def test_a_deeper_platform_name_is_not_covered_by_the_wildcard() -> None:
    found, riders = units([shop("x.y.platform.example")], PLATFORM)
    assert riders == {} and [u.lineage for u in found] == ["x.y.platform.example"]


@pytest.mark.parametrize(
    ("existing", "action"),
    [
        (None, ISSUE),
        (lineage("shop.example", "shop.example"), REISSUE),  # www was added
        (lineage("shop.example", "shop.example", "www.shop.example", age_days=70), RENEW),
        (lineage("shop.example", "shop.example", "www.shop.example", age_days=10), KEEP),
    ],
)
def test_actions(existing: Lineage | None, action: str) -> None:
    known = {existing.name: existing} if existing else {}
    plan = make_plan([shop("shop.example", "www.shop.example")], known, PLATFORM, NOW)
    assert [s.action for s in plan.steps] == [action]
    if action == REISSUE:
        assert "+www.shop.example" in plan.steps[0].why


def test_short_lived_certificates_renew_at_half_their_lifetime() -> None:
    young = lineage("s.example", "s.example", age_days=2.9, lifetime_days=6)
    old = lineage("s.example", "s.example", age_days=3.1, lifetime_days=6)
    assert make_plan([shop("s.example")], {"s.example": young}, (), NOW).steps[0].action == KEEP
    assert make_plan([shop("s.example")], {"s.example": old}, (), NOW).steps[0].action == RENEW


def test_an_ari_window_that_has_started_renews_early() -> None:
    fresh = lineage("s.example", "s.example", age_days=5)
    windows = {"s.example": NOW - dt.timedelta(hours=1)}
    step = make_plan([shop("s.example")], {"s.example": fresh}, (), NOW, windows).steps[0]
    assert step.action == RENEW and "renewal window" in step.why


def test_a_deleted_shops_lineage_is_deleted_and_others_are_left_alone() -> None:
    known = {"gone.example": lineage("gone.example", "gone.example"),
             "other.example": lineage("other.example", "other.example")}
    plan = make_plan([shop("gone.example", status="deleted")], known, (), NOW)
    assert [(s.action, s.unit.lineage) for s in plan.steps] == [(DELETE, "gone.example")]


# --- ARI ------------------------------------------------------------------------------------


def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s.example")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(0x87654321)
        .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.AuthorityKeyIdentifier(b"\x69\x88\x5b\x6b\x87\x46\x40\x41\xe1\xb3"
                                                   b"\x7b\x84\x7b\xa0\xae\x2c\xde\x01\xc8\xd4",
                                                   None, None), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_cert_id_is_aki_and_serial_in_base64url() -> None:
    # RFC 9773 section 4.1's example: AKI 69:88:5B:..., serial 0x87654321 -> "AIdlQyE"
    assert ari.cert_id(_certificate()) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@pytest.fixture
def acme() -> Iterator[str]:
    """A stand-in CA offering renewalInfo, on loopback."""
    cert_id = ari.cert_id(_certificate())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            base = f"http://{self.headers['Host']}"
            body: dict[str, object]
            if self.path == "/dir":
                body = {"renewalInfo": f"{base}/ari/"}
            elif self.path == f"/ari/{cert_id}":
                body = {"suggestedWindow": {"start": "2026-11-20T00:00:00Z",
                                            "end": "2026-11-22T00:00:00Z"}}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as server:
        yield f"http://127.0.0.1:{server.port}/dir"


def test_window_start_from_the_ca_and_none_where_it_has_no_ari(acme: str) -> None:
    client = ari.Client()
    start = client.window_start(acme, _certificate())
    assert start == dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    assert client.window_start(acme.replace("/dir", "/nodir"), _certificate()) is None


def test_server_of_reads_the_renewal_configuration(tmp_path: Path) -> None:
    (tmp_path / "renewal").mkdir()
    (tmp_path / "renewal" / "s.example.conf").write_text(
        "version = 5.8.0\n[renewalparams]\nserver = https://acme.example/dir\n")
    assert ari.server_of(tmp_path, "s.example") == "https://acme.example/dir"
    assert ari.server_of(tmp_path, "missing") is None


def test_a_shop_on_the_platform_apex_does_not_take_the_wildcards_lineage() -> None:
    found, riders = units([shop("platform.example"), shop("a.platform.example")], PLATFORM)
    assert {u.lineage: u.names for u in found} == {
        "platform.example": ("platform.example",),
        "wildcard_.platform.example": ("*.platform.example",),
    }
    assert riders == {"a.platform.example": "wildcard_.platform.example"}


def test_a_refused_shop_keeps_its_lineage_renewed_with_the_names_it_has() -> None:
    # Its entry now lists a name another shop has: nothing new, but no expiry either.
    refused = shop("victim.example", "www.victim.example", "taken.example")
    lineages = {"victim.example": lineage("victim.example", "victim.example",
                                          "www.victim.example", age_days=70)}
    plan = make_plan([], lineages, PLATFORM, NOW, frozen=[refused])
    (step,) = plan.steps
    assert step.action == RENEW
    assert step.unit.names == ("victim.example", "www.victim.example")
    fresh = {"victim.example": lineage("victim.example", "victim.example")}
    assert [s.action for s in make_plan([], fresh, PLATFORM, NOW, frozen=[refused]).steps] == [
        KEEP]


def test_a_deleted_entry_deletes_only_a_lineage_of_its_own_names() -> None:
    lineages = {
        "wildcard.shop.example": lineage("wildcard.shop.example", "*.shop.example"),
        "gone.example": lineage("gone.example", "gone.example", "www.gone.example"),
        "shared.example": lineage("shared.example", "shared.example"),
    }
    shops = [
        # A tenant's deleted entry named like another lineage: that lineage holds other names.
        shop("wildcard.shop.example", status="deleted"),
        shop("gone.example", "www.gone.example", status="deleted"),
        # Covered by the deleted shop's lineage, but someone else's now (suspended).
        shop("shared.example", status="deleted"),
        shop("shared.example", status="suspended"),
    ]
    deletes = [s.unit.lineage for s in make_plan(shops, lineages, PLATFORM, NOW).steps
               if s.action == DELETE]
    assert deletes == ["gone.example"]
