"""The manual hooks with real certbot --manual, BIND, pebble, sshd/rsync and the load balancers."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from epages_testlib import (
    certbot,
    fresh_account,
    fresh_sandbox,
    poll,
    soa_serial,
    txt_at,
    verify_chain,
)

from certbot_epages.sandbox.platform import Sandbox

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
AUTH_HOOK = str(BIN / "manual-auth-hook")
CLEANUP_HOOK = str(BIN / "manual-cleanup-hook")
PLACEHOLDER = ".empty"


def _hook_args(challenge: str) -> list[str]:
    return ["certonly", "--manual", "--preferred-challenges", challenge,
            "--manual-auth-hook", AUTH_HOOK, "--manual-cleanup-hook", CLEANUP_HOOK]


def _http_config(sandbox: Sandbox, path: Path, **http01: object) -> Path:
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["http01"].update(http01)
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def _hook_env(sandbox: Sandbox, env: dict[str, str], config: Path | None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CERTBOT_")}
    environment.update(sandbox.env())
    if config is not None:
        environment["CERTBOT_EPAGES_CONFIG"] = str(config)
    environment.update(env)
    return environment


def _run_hook(hook: str, sandbox: Sandbox, env: dict[str, str],
              config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hook], env=_hook_env(sandbox, env, config), capture_output=True,
                          text=True, timeout=60, check=False)


# One process named certbot that runs the hooks it is sent, one after the other, as certbot
# does: the hooks recognise their run by it.
FAKE_CERTBOT = """\
import json, subprocess, sys
for line in sys.stdin:
    hook, env = json.loads(line)
    done = subprocess.run([hook], env=env, capture_output=True, text=True, timeout=60)
    print(json.dumps([done.returncode, done.stdout, done.stderr]), flush=True)
"""
RunHook = Callable[[str, dict[str, str]], subprocess.CompletedProcess[str]]


@pytest.fixture
def certbot_run(sandbox: Sandbox, tmp_path: Path) -> Iterator[RunHook]:
    """Run hooks from one certbot-like process (one certbot run)."""
    program = tmp_path / "certbot"
    program.write_text(FAKE_CERTBOT)
    with subprocess.Popen([sys.executable, str(program)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None

        def run(hook: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps([hook, _hook_env(sandbox, env, None)]) + "\n")
            proc.stdin.flush()
            code, out, err = json.loads(proc.stdout.readline())
            return subprocess.CompletedProcess([hook], code, out, err)

        yield run
        proc.stdin.close()


def _http_auth(sandbox: Sandbox, config: Path, token: str) -> subprocess.CompletedProcess[str]:
    """The auth hook for one HTTP-01 challenge of direct.test, as certbot would call it."""
    return _run_hook(AUTH_HOOK, sandbox, {
        "CERTBOT_DOMAIN": sandbox.zones.direct, "CERTBOT_TOKEN": token,
        "CERTBOT_VALIDATION": f"{token}.thumb", "CERTBOT_REMAINING_CHALLENGES": "0",
    }, config)


def _challenge_files(sandbox: Sandbox) -> list[str]:
    """Every path below the webroot's parent: a traversal write anywhere near shows up."""
    return sorted(str(p.relative_to(sandbox.webroot.parent))
                  for p in sandbox.webroot.parent.rglob("*"))


def test_dns01_apex_and_wildcard_through_the_cname(sandbox: Sandbox, tmp_path: Path) -> None:
    domain = sandbox.zones.customer
    certbot(sandbox, *_hook_args("dns"), *fresh_account(tmp_path), "--cert-name", "manual-dns",
            "-d", domain, "-d", f"*.{domain}")
    live = tmp_path / "config" / "live" / "manual-dns"
    assert verify_chain(sandbox, live / "fullchain.pem") == [f"*.{domain}", domain]
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."
    poll("DNS clean on both servers", lambda: True if txt_at(sandbox.ip.primary, name) ==
         txt_at(sandbox.ip.secondary, name) == {PLACEHOLDER} else None)


def test_the_last_dns01_call_publishes_every_value_in_one_update_and_waits_for_all(
    sandbox: Sandbox, certbot_run: RunHook
) -> None:
    domain = f"www.{sandbox.zones.customer}"
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."
    common = {"CERTBOT_DOMAIN": domain, "CERTBOT_ALL_DOMAINS": f"{domain},*.{domain}"}
    first = {**common, "CERTBOT_VALIDATION": "a" * 43, "CERTBOT_REMAINING_CHALLENGES": "1"}
    last = {**common, "CERTBOT_VALIDATION": "b" * 43, "CERTBOT_REMAINING_CHALLENGES": "0"}
    serial = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
    sandbox.hold_transfers(3)
    try:
        done = certbot_run(AUTH_HOOK, first)
        assert done.returncode == 0, done.stderr
        # Only recorded: nothing is published before the run's last call.
        assert "a" * 43 not in txt_at(sandbox.ip.primary, name)
        assert json.loads(done.stdout)["state"] == "pending"
        outputs = [done.stdout.strip()]
        done = certbot_run(AUTH_HOOK, last)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
        # The last call returned only once the secondary served both values...
        assert {"a" * 43, "b" * 43} <= txt_at(sandbox.ip.secondary, name)
    finally:
        sandbox.hold_transfers(0)
    # ... and sent them in one UPDATE.
    assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) == serial + 1
    assert json.loads(outputs[1])["record"] == name
    # The first cleanup call deletes every value of the run, the second finds none left.
    done = certbot_run(CLEANUP_HOOK, {**first, "CERTBOT_AUTH_OUTPUT": outputs[0]})
    assert done.returncode == 0, done.stderr
    assert txt_at(sandbox.ip.primary, name) == {PLACEHOLDER}
    serial = soa_serial(sandbox.ip.primary, sandbox.zones.challenge)
    done = certbot_run(CLEANUP_HOOK, {**last, "CERTBOT_AUTH_OUTPUT": outputs[1]})
    assert done.returncode == 0, done.stderr
    assert soa_serial(sandbox.ip.primary, sandbox.zones.challenge) == serial


def test_http01_through_a_challenge_host_reached_by_rsync_over_ssh(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = _http_config(
        sandbox, tmp_path / "epages.yaml",
        targets=[f"root@{sandbox.ip.challenge}:{sandbox.webroot}"],
        ssh_options=sandbox.ssh_options(),
    )
    before = _challenge_files(sandbox)
    domains = [sandbox.zones.direct, f"www.{sandbox.zones.direct}"]
    certbot(sandbox, *_hook_args("http"), *fresh_account(tmp_path / "certbot"),
            "--cert-name", "manual-http", *(a for d in domains for a in ("-d", d)),
            env={"CERTBOT_EPAGES_CONFIG": str(config)})
    live = tmp_path / "certbot" / "config" / "live" / "manual-http"
    assert verify_chain(sandbox, live / "fullchain.pem") == sorted(domains)
    assert _challenge_files(sandbox) == before
    # The self-check and pebble fetched through both load balancers.
    for lb in sandbox.lbs:
        log = (Path(lb.prefix) / "logs" / "access.log").read_text()
        assert "/.well-known/acme-challenge/" in log


@pytest.fixture
def broken_lb() -> Iterator[str]:
    """An HTTP server that answers 404 for everything: a load balancer without the proxy."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such page")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_self_check_names_the_load_balancer_that_does_not_proxy(
    sandbox: Sandbox, tmp_path: Path, broken_lb: str
) -> None:
    config = _http_config(sandbox, tmp_path / "epages.yaml", timeout=1,
                          self_check=[f"{sandbox.ip.lb1}:80", broken_lb])
    token = "T0ken_-" + "x" * 36
    before = _challenge_files(sandbox)
    done = _http_auth(sandbox, config, token)
    assert done.returncode == 1
    assert broken_lb in done.stderr and "HTTP 404" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _challenge_files(sandbox) == before


@pytest.fixture
def garbage_lb() -> Iterator[str]:
    """A server that answers with something that is not HTTP at all."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_non_http_lb_fails_the_self_check_cleanly_and_remote_targets_are_cleaned(
    sandbox: Sandbox, tmp_path: Path, garbage_lb: str
) -> None:
    config = _http_config(
        sandbox, tmp_path / "epages.yaml", timeout=1, self_check=[garbage_lb],
        targets=[str(sandbox.webroot),
                 f"root@{sandbox.ip.challenge}:{sandbox.webroot.parent}/remote"],
        ssh_options=sandbox.ssh_options(),
    )
    token = "G4rbage_" + "y" * 35
    before = _challenge_files(sandbox)
    done = _http_auth(sandbox, config, token)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert garbage_lb in done.stderr and "no valid HTTP" in done.stderr
    # Both targets were written (the remote one over rsync/ssh), and both are clean again.
    remote = sandbox.webroot.parent / "remote" / ".well-known" / "acme-challenge"
    assert remote.is_dir() and not any(remote.iterdir())
    assert not any(token in p for p in _challenge_files(sandbox))
    assert set(before) <= set(_challenge_files(sandbox))


def test_a_failed_manual_run_leaves_no_challenge_txt(sandbox: Sandbox, tmp_path: Path) -> None:
    domain = sandbox.zones.customer
    config = tmp_path / "epages.yaml"
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["dns"]["propagation_timeout"] = 1
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o600)
    sandbox.hold_transfers(4)
    try:
        done = certbot(sandbox, *_hook_args("dns"), *fresh_account(tmp_path / "certbot"),
                       "--cert-name", "manual-fail", "-d", domain, "-d", f"*.{domain}",
                       check=False, env={"CERTBOT_EPAGES_CONFIG": str(config)})
    finally:
        sandbox.hold_transfers(0)
    assert done.returncode != 0
    assert f"{sandbox.ip.secondary}:53" in done.stderr and "lacks" in done.stderr, done.stderr
    name = f"_acme-challenge.{domain}.{sandbox.zones.challenge}."
    assert txt_at(sandbox.ip.primary, name) == {PLACEHOLDER}
    poll("the secondary to settle clean", lambda: True if txt_at(sandbox.ip.secondary, name)
         == {PLACEHOLDER} else None, timeout=20)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CERTBOT_VALIDATION": "x" * 43}, "CERTBOT_DOMAIN"),
        ({"CERTBOT_DOMAIN": "direct.test"}, "CERTBOT_VALIDATION"),
        ({"CERTBOT_DOMAIN": "direct.test; rm -rf /", "CERTBOT_VALIDATION": "x" * 43},
         "CERTBOT_DOMAIN"),
        ({"CERTBOT_DOMAIN": "direct.test", "CERTBOT_VALIDATION": "x y"}, "CERTBOT_VALIDATION"),
        ({"CERTBOT_DOMAIN": "direct.test", "CERTBOT_TOKEN": "../../x",
          "CERTBOT_VALIDATION": "../../x.thumb"}, "CERTBOT_TOKEN"),
        ({"CERTBOT_DOMAIN": "direct.test", "CERTBOT_VALIDATION": "x" * 43,
          "CERTBOT_REMAINING_CHALLENGES": "-1"}, "CERTBOT_REMAINING_CHALLENGES"),
    ],
)
def test_bad_environment_is_refused_with_nothing_written(
    sandbox: Sandbox, env: dict[str, str], variable: str
) -> None:
    files = _challenge_files(sandbox)
    serials = [soa_serial(sandbox.ip.primary, z) for z in (sandbox.zones.direct,
                                                           sandbox.zones.challenge)]
    for hook in (AUTH_HOOK, CLEANUP_HOOK):
        done = _run_hook(hook, sandbox, env)
        assert done.returncode == 1
        assert variable in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert _challenge_files(sandbox) == files
    assert serials == [soa_serial(sandbox.ip.primary, z) for z in (sandbox.zones.direct,
                                                                   sandbox.zones.challenge)]


def test_stateless_mode_issues_with_no_challenge_service(tmp_path: Path) -> None:
    with fresh_sandbox() as sandbox:
        certbot(sandbox, "register")
        done = subprocess.run(
            [str(BIN / "certbot-epages"), "http01-snippet", "--config-dir",
             str(sandbox.certbot_config_dir), "--server", sandbox.acme_url],
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert "return 200" in done.stdout
        sandbox.set_http01_snippet(done.stdout)
        sandbox.stop_service("nginx-challenge")
        config = _http_config(sandbox, sandbox.directory / "stateless.yaml", mode="stateless",
                              targets=[])
        domain = sandbox.zones.direct
        certbot(sandbox, *_hook_args("http"), "--cert-name", "stateless", "-d", domain,
                env={"CERTBOT_EPAGES_CONFIG": str(config)})
        live = sandbox.certbot_config_dir / "live" / "stateless"
        assert verify_chain(sandbox, live / "fullchain.pem") == [domain]
        assert "nginx-challenge" not in sandbox.running()

        # Another account: the load balancers answer with the first one's thumbprint. The
        # self-check fails at once (not after http01.timeout: that failure would advise checking
        # the challenge-service proxy) and says how to fix it.
        other = certbot(sandbox, *_hook_args("http"), *fresh_account(tmp_path),
                        "--cert-name", "other-account", "-d", f"www.{domain}", check=False,
                        env={"CERTBOT_EPAGES_CONFIG": str(config)})
        assert other.returncode != 0
        thumbprint = done.stdout.split("return 200 \"$1.", 1)[1].split('"', 1)[0]
        assert f"account thumbprint {thumbprint}, but this certbot account's" in other.stderr, \
            other.stderr
        assert "certbot-epages http01-snippet" in other.stderr
