"""HTTP-01 self-check decisions, and the self-check against a local HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from certbot_epages.config import Http01Config
from certbot_epages.http01 import Http01Error, other_account, self_check
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

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stateless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HostPort("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


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
