"""HTTP-01 through the central challenge service behind the load balancers.

``files`` mode writes ``.well-known/acme-challenge/<token>`` into every target (a local webroot,
or a challenge host's webroot reached with rsync over ssh) and fetches it back through every
load balancer before certbot asks the CA. ``stateless`` mode needs no files at all: the load
balancers answer every token with ``<token>.<account thumbprint>`` from nginx config alone
(:func:`stateless_snippet`).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from certbot_epages.config import Http01Config, Http01Target
from certbot_epages.errors import EpagesError
from certbot_epages.netaddr import HostPort
from certbot_epages.resources import jinja_env

logger = logging.getLogger(__name__)

CHALLENGE_DIR = ".well-known/acme-challenge"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
KEY_AUTHORIZATION_RE = re.compile(r"[A-Za-z0-9_-]{1,255}\.[A-Za-z0-9_-]{1,255}")


class Http01Error(EpagesError):
    """A challenge file could not be placed, removed or seen through a load balancer."""


def check_token(token: str) -> str:
    """An ACME token is base64url (RFC 8555 section 8.3): nothing that could leave a directory."""
    if not TOKEN_RE.fullmatch(token):
        raise ValueError("not a base64url token (only A-Z a-z 0-9 - _ are allowed)")
    return token


def _run(argv: Sequence[str], what: str, timeout: float = 60) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Http01Error(f"{what}: cannot run {argv[0]}: {e}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise Http01Error(f"{what}: {argv[0]} exited {done.returncode}: "
                          f"{detail[-1] if detail else 'no output'}")


def _ssh_command(options: Sequence[str]) -> str:
    # rsync splits its -e value itself, honouring quotes.
    return shlex.join(["ssh", *options])


def publish(settings: Http01Config, token: str, key_authorization: str) -> list[str]:
    """Write the challenge file on every target; return the targets written."""
    check_token(token)
    written: list[str] = []
    for target in settings.targets:
        where = f"{target}/{CHALLENGE_DIR}/{token}"
        if target.is_remote:
            with tempfile.TemporaryDirectory(prefix="certbot-epages-") as tmp:
                staged = Path(tmp) / CHALLENGE_DIR
                staged.mkdir(parents=True)
                (staged / token).write_text(key_authorization)
                for d in (Path(tmp), Path(tmp) / ".well-known", staged):
                    d.chmod(0o755)
                (staged / token).chmod(0o644)
                _run(["rsync", "-r", "--perms", "--chmod=D755,F644", "-e",
                      _ssh_command(settings.ssh_options), f"{tmp}/", f"{target}/"],
                     f"copy the challenge file to {where}")
        else:
            directory = Path(target.path) / CHALLENGE_DIR
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o755)
                tmp_file = directory / f".{token}.tmp"
                tmp_file.write_text(key_authorization)
                tmp_file.chmod(0o644)
                tmp_file.replace(directory / token)
            except OSError as e:
                raise Http01Error(f"cannot write {where}: {e.strerror}") from None
        written.append(str(target))
        logger.info("wrote %s", where)
    return written


def unpublish(settings: Http01Config, token: str) -> list[str]:
    """Remove exactly this token's file from every target; errors for the ones that failed."""
    check_token(token)
    failures = []
    for target in settings.targets:
        path = f"{target.path}/{CHALLENGE_DIR}/{token}"
        try:
            if target.is_remote:
                _remove_remote(settings, target, path)
            else:
                Path(path).unlink(missing_ok=True)
        except (OSError, Http01Error) as e:
            failures.append(f"{target}: {e}")
    return failures


def _remove_remote(settings: Http01Config, target: Http01Target, path: str) -> None:
    host = f"{target.user}@{target.host}" if target.user else str(target.host)
    # ssh hands the remote shell one string: quote it; token and path were validated already.
    _run(["ssh", *settings.ssh_options, host, shlex.join(["rm", "-f", "--", path])],
         f"remove {target}{path[len(target.path):]}")


def fetch(lb: HostPort, domain: str, token: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET the challenge URL from one load balancer with ``domain`` as Host."""
    conn = http.client.HTTPConnection(lb.host, lb.port, timeout=timeout)
    try:
        conn.request("GET", f"/{CHALLENGE_DIR}/{token}", headers={"Host": domain})
        reply = conn.getresponse()
        return reply.status, reply.read(512).decode("utf-8", "replace")
    finally:
        conn.close()


def self_check(
    settings: Http01Config, domain: str, token: str, key_authorization: str
) -> None:
    """Poll every load balancer until it serves the key authorization for ``domain``."""
    deadline = time.monotonic() + settings.timeout
    pending = list(settings.self_check)
    last: dict[HostPort, str] = {}
    while pending:
        for lb in list(pending):
            try:
                status, body = fetch(lb, domain, token)
            except OSError as e:
                last[lb] = f"no answer ({e.strerror or e})"
                continue
            if status == 200 and body.strip() == key_authorization:
                pending.remove(lb)
            else:
                last[lb] = f"HTTP {status} {json.dumps(body.strip()[:80])}"
        if not pending:
            break
        if time.monotonic() >= deadline:
            lines = "; ".join(f"{lb} served {last[lb]}" for lb in pending)
            raise Http01Error(
                f"the challenge for {domain} is not served through every load balancer after "
                f"{settings.timeout:g}s: {lines}; expected HTTP 200 with the key authorization. "
                "Check that the load balancer proxies /.well-known/acme-challenge/ to the "
                "challenge service (templates/nginx/acme-challenge-proxy.conf.j2)"
            )
        time.sleep(0.05)


def stateless_snippet(thumbprint: str) -> str:
    """Nginx config that answers every token with ``<token>.<thumbprint>`` by itself."""
    if not TOKEN_RE.fullmatch(thumbprint):
        raise ValueError("not a base64url account thumbprint")
    return jinja_env().get_template("nginx/acme-challenge-stateless.conf.j2").render(
        thumbprint=thumbprint
    )


def account_thumbprints(config_dir: Path, server: str) -> dict[str, str]:
    """Thumbprints (RFC 7638, base64url) of the certbot accounts for ``server``, by account id."""
    from josepy import b64, jwk

    parts = urlsplit(server)
    accounts = config_dir / "accounts" / f"{parts.netloc}{parts.path}"
    found: dict[str, str] = {}
    try:
        entries = sorted(accounts.iterdir())
    except OSError as e:
        raise Http01Error(
            f"no certbot accounts for {server} under {accounts} ({e.strerror}); register one "
            "first (certbot register), or pass --config-dir and --server as certbot uses them"
        ) from None
    for entry in entries:
        key_file = entry / "private_key.json"
        if not key_file.is_file():
            continue
        key = jwk.JWK.json_loads(key_file.read_text())
        found[entry.name] = b64.b64encode(key.public_key().thumbprint()).decode()
    return found


def default_server() -> str:
    """The ACME server certbot uses by default (Let's Encrypt production)."""
    from certbot._internal import constants

    return str(constants.CLI_DEFAULTS["server"])

