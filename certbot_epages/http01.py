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

from certbot_epages import ssh
from certbot_epages.config import Http01Config, Http01Target
from certbot_epages.errors import EpagesError
from certbot_epages.files import atomic_write
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


def publish(settings: Http01Config, token: str, key_authorization: str) -> list[str]:
    """Write the challenge file on every target; return the targets written.

    If one target fails, the file is removed again from those already written.
    """
    check_token(token)
    written: list[str] = []
    try:
        for target in settings.targets:
            _publish_one(settings, target, token, key_authorization)
            written.append(str(target))
    except BaseException as e:
        failures = unpublish(settings, token, written)
        if failures and isinstance(e, Http01Error):
            raise Http01Error(f"{e}; removing it again failed too: {'; '.join(failures)}") from e
        raise
    return written


def _publish_one(settings: Http01Config, target: Http01Target, token: str, content: str) -> None:
    where = f"{target}/{CHALLENGE_DIR}/{token}"
    try:
        if target.is_remote:
            with tempfile.TemporaryDirectory(prefix="certbot-epages-") as tmp:
                staged = Path(tmp) / token
                staged.write_text(content)
                staged.chmod(0o644)
                # Only the token file travels: the webroot's own directories keep their modes
                # and owners (a deploy user may own nothing but acme-challenge/). -s keeps the
                # remote shell away from the path.
                _run(["rsync", "-s", "--mkpath", "--perms", "--chmod=F644", "-e",
                      shlex.join(ssh.command(settings.ssh_options)), "--", str(staged),
                      f"{target}/{CHALLENGE_DIR}/{token}"],
                     f"copy the challenge file to {where}")
        else:
            _write_local(Path(target.path), token, content)
    except OSError as e:
        raise Http01Error(f"cannot write {where}: {e.strerror or e}") from None
    logger.info("wrote %s", where)


def _write_local(webroot: Path, token: str, content: str) -> None:
    """Write the token file without following links someone else may have planted."""
    directory = webroot
    for part in CHALLENGE_DIR.split("/"):
        directory = directory / part
        try:
            directory.mkdir(mode=0o755)
        except FileExistsError:
            pass
        if directory.is_symlink() or not directory.is_dir():
            raise Http01Error(f"{directory} is not a plain directory (a symlink?); refusing")
    atomic_write(directory / token, content, mode=0o644, dir_mode=None)  # O_EXCL: no link


def unpublish(
    settings: Http01Config, token: str, targets: Sequence[str] | None = None
) -> list[str]:
    """Remove exactly this token's file from every target (or those named in ``targets``).

    Returns the failures, one line per target; a file already gone is no failure.
    """
    check_token(token)
    failures = []
    for target in settings.targets:
        if targets is not None and str(target) not in targets:
            continue
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
    _run([*ssh.command(settings.ssh_options), "--", host, shlex.join(["rm", "-f", "--", path])],
         f"remove {target}{path[len(target.path):]}")


def fetch(lb: HostPort, domain: str, token: str, timeout: float) -> tuple[int, str]:
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
                status, body = fetch(lb, domain, token, max(deadline - time.monotonic(), 0.5))
            except OSError as e:
                last[lb] = f"no answer ({e.strerror or e})"
                continue
            except http.client.HTTPException as e:
                last[lb] = f"no valid HTTP ({type(e).__name__})"
                continue
            if status == 200 and body.strip() == key_authorization:
                pending.remove(lb)
                continue
            other = other_account(body if status == 200 else "", token, key_authorization)
            if other is not None:  # waiting cannot help: the answer comes from nginx config
                raise Http01Error(
                    f"{lb} answers the challenge for {domain} with account thumbprint {other}, "
                    f"but this certbot account's thumbprint is {key_authorization.split('.')[1]}: "
                    "the load balancer answers challenges itself (the stateless snippet) for "
                    "another ACME account. Render the snippet for this account with "
                    "'certbot-epages http01-snippet' (with certbot's --config-dir and --server), "
                    "include it on every load balancer and reload nginx"
                )
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


def other_account(body: str, token: str, key_authorization: str) -> str | None:
    """The thumbprint in ``body`` if it is this token's key authorization for another account.

    A stateless load balancer answers ``<token>.<thumbprint>`` (RFC 8555 section 8.1) from its
    config: with another account's thumbprint there, it never serves ours.
    """
    answer = body.strip()
    if answer == key_authorization or not KEY_AUTHORIZATION_RE.fullmatch(answer):
        return None
    answered_token, thumbprint = answer.split(".")
    return thumbprint if answered_token == token else None


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
    from josepy import errors as josepy_errors

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
        try:
            key = jwk.JWK.json_loads(key_file.read_text())
        except (OSError, ValueError, josepy_errors.Error) as e:
            raise Http01Error(f"{key_file}: not a readable account key: {e}") from None
        found[entry.name] = b64.b64encode(key.public_key().thumbprint()).decode()
    return found


def default_server() -> str:
    """The ACME server certbot uses by default (Let's Encrypt production)."""
    from certbot._internal import constants

    return str(constants.CLI_DEFAULTS["server"])

