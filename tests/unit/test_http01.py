"""HTTP-01 self-check decisions, and the self-check against a local HTTP server."""

from __future__ import annotations

import http.server
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from epages_testlib import http_server

from certbot_epages.config import Http01Config, Http01Target
from certbot_epages.http01 import (
    CHALLENGE_DIR,
    Http01Error,
    account_thumbprints,
    check_token,
    other_account,
    publish,
    self_check,
    stateless_snippet,
    unpublish,
)
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

TOKEN = "tok-EN_1"
OURS = f"{TOKEN}.our-THUMB_print"

ASKED: list[str] = []  # what the fake load balancer was asked


@pytest.mark.parametrize(
    ("body", "other"),
    [
        (f"{TOKEN}.their-thumbprint\n", "their-thumbprint"),
        (OURS, None),
        (f"{OURS}\n", None),
        ("another-token.their-thumbprint", None),  # a stale answer, not an account mismatch
        ("<html>404 Not Found</html>", None),
        ("", None),
    ],
)
def test_other_account(body: str, other: str | None) -> None:
    assert other_account(body, TOKEN, OURS) == other


@pytest.fixture
def stateless_lb_of_another_account() -> Iterator[HostPort]:
    """Answers every token as nginx with another account's stateless snippet would."""

    class Stateless(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            ASKED.append(self.path)
            body = f"{self.path.rsplit('/', 1)[1]}.their-thumbprint".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Stateless) as server:
        yield HostPort("127.0.0.1", server.port)


def test_another_accounts_stateless_answer_fails_at_once(
    stateless_lb_of_another_account: HostPort,
) -> None:
    settings = Http01Config(mode="stateless", targets=(), ssh_options=(),
                            self_check=(stateless_lb_of_another_account,), timeout=30)
    ASKED.clear()
    with pytest.raises(Http01Error) as caught:
        self_check(settings, "shop.example", TOKEN, OURS)
    assert len(ASKED) == 1  # asked once and failed: no polling until the 30 s timeout
    message = str(caught.value)
    assert "their-thumbprint" in message and "our-THUMB_print" in message
    assert "certbot-epages http01-snippet" in message
    assert str(stateless_lb_of_another_account) in message


# --- tokens, files on local targets, the snippet, account thumbprints ------------------------


@pytest.mark.parametrize("token", ["", "../x", "a/b", "a.b", "x" * 256, "tok\n"])
def test_a_token_that_could_leave_the_directory_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        check_token(token)
    assert check_token("A-z_09") == "A-z_09"


def local(*webroots: Path) -> Http01Config:
    return Http01Config(targets=tuple(Http01Target(None, None, str(w)) for w in webroots))


def test_publish_writes_every_target_and_unpublish_removes_only_what_it_is_told(
        tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    settings = local(one, two)
    assert publish(settings, TOKEN, OURS) == [str(one), str(two)]
    for webroot in (one, two):
        path = webroot / CHALLENGE_DIR / TOKEN
        assert path.read_text() == OURS
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    other = one / CHALLENGE_DIR / "other-token"
    other.write_text("x")
    assert unpublish(settings, TOKEN, [str(two)]) == []
    assert (one / CHALLENGE_DIR / TOKEN).exists() and not (two / CHALLENGE_DIR / TOKEN).exists()
    assert unpublish(settings, TOKEN) == []  # a file already gone is no failure
    assert not (one / CHALLENGE_DIR / TOKEN).exists() and other.exists()


def test_publish_refuses_a_planted_link_and_takes_back_what_it_wrote(tmp_path: Path) -> None:
    good, bad, elsewhere = tmp_path / "good", tmp_path / "bad", tmp_path / "elsewhere"
    for d in (good, bad, elsewhere):
        d.mkdir()
    (bad / ".well-known").mkdir()
    (bad / CHALLENGE_DIR).symlink_to(elsewhere)
    with pytest.raises(Http01Error, match="not a plain directory"):
        publish(local(good, bad), TOKEN, OURS)
    assert not (good / CHALLENGE_DIR / TOKEN).exists()  # nothing half-applied
    assert list(elsewhere.iterdir()) == []


def test_the_stateless_snippet_answers_with_the_thumbprint() -> None:
    snippet = stateless_snippet("our-THUMB_print")
    assert 'return 200 "$1.our-THUMB_print";' in snippet
    with pytest.raises(ValueError):
        stateless_snippet('x"; return 200 "owned')


def test_account_thumbprints_are_rfc7638_of_each_account_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from josepy import b64, jwk

    server = "https://acme.example/directory"
    accounts = tmp_path / "accounts" / "acme.example" / "directory"
    key = jwk.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    (accounts / "abc123").mkdir(parents=True)
    (accounts / "abc123" / "private_key.json").write_text(key.json_dumps())
    (accounts / "no-key-here").mkdir()
    expected = b64.b64encode(key.public_key().thumbprint()).decode()
    assert account_thumbprints(tmp_path, server) == {"abc123": expected}
    with pytest.raises(Http01Error, match="register one first"):
        account_thumbprints(tmp_path, "https://other.example/dir")
