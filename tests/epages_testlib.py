"""Helpers for integration tests: polling with deadlines, certbot runs, DNS queries."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages.deploy.probe import served_fingerprint
from certbot_epages.errors import SandboxError
from certbot_epages.netaddr import HostPort
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox, running
from certbot_epages.sandbox.primary import Kind
from certbot_epages.sandbox.processes import wait_until

T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``check`` every 20 ms until it returns a value; fail the test at the deadline."""
    try:
        return wait_until(what, check, timeout, interval=0.02, tolerate=())
    except SandboxError as e:
        raise AssertionError(str(e)) from None


def txt_at(server: str, name: str, port: int = 53) -> set[str]:
    """TXT strings at ``name`` as ``server`` answers them, asked without recursion."""
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, server, port=port, timeout=2)
    return {
        b"".join(rdata.strings).decode()
        for rrset in reply.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    }


def certbot(
    sandbox: Sandbox,
    *args: str,
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
    check: bool = True,
    program: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run certbot against the sandbox; on failure with ``check``, fail showing its output.

    ``program`` is the certbot command to use (default: the one beside this Python).
    """
    environment = {**os.environ, **sandbox.env(), **(env or {})}
    for name in unset:
        environment.pop(name, None)
    argv = sandbox.certbot_argv(*args)
    if program is not None:
        argv = [*program, *argv[1:]]
    done = subprocess.run(
        argv,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"certbot {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def fresh_account(directory: Path) -> list[str]:
    """certbot options for directories of its own under ``directory``: a new ACME account.

    pebble reuses an account's valid authorizations (1 % of orders even with
    PEBBLE_AUTHZREUSE=0), and then certbot skips the authenticator: a test that needs a real
    validation runs with a new account.
    """
    return ["--config-dir", str(directory / "config"), "--work-dir", str(directory / "work"),
            "--logs-dir", str(directory / "logs")]


@contextlib.contextmanager
def new_account_beside(sandbox: Sandbox, directory: Path) -> Iterator[str]:
    """A new account (registered in ``directory``) in the sandbox's certbot directory.

    Yields its id: ``--account ID`` makes a renewal validate for real. It is removed again
    afterwards (with two accounts, certbot asks which to use).
    """
    certbot(sandbox, "register", *fresh_account(directory))
    key = next((directory / "config" / "accounts").rglob("private_key.json"))
    target = sandbox.certbot_config_dir / key.parent.relative_to(directory / "config")
    shutil.copytree(key.parent, target)
    try:
        yield key.parent.name
    finally:
        shutil.rmtree(target)


@contextlib.contextmanager
def sandbox_dir() -> Iterator[Path]:
    """A fresh directory for a sandbox, removed afterwards (pytest's tmp_path is mode 0700,
    which nginx workers running as nobody cannot enter)."""
    directory = Path(tempfile.mkdtemp(prefix="certbot-epages-test-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_config(sandbox: Sandbox, path: Path, **dns_changes: object) -> Path:
    """A copy of the sandbox's epages.yaml with ``dns`` keys replaced (zone keys via ``zones``)."""
    return write_section(sandbox, path, "dns", dns_changes)


def write_section(sandbox: Sandbox, path: Path, section: str,
                  changes: Mapping[str, object]) -> Path:
    """A copy of the sandbox's epages.yaml (mode 0600) with keys of ``section`` replaced."""
    data = yaml.safe_load(sandbox.config_path.read_text())
    data[section].update(changes)
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def soa_serial(server: str, zone: str) -> int:
    """The zone's SOA serial as ``server`` has it."""
    reply = dns.query.udp(dns.message.make_query(zone, dns.rdatatype.SOA), server, timeout=2)
    return int(reply.answer[0][0].serial)


def leaf_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM chain file."""
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def verify_chain(sandbox: Sandbox, fullchain: Path) -> list[str]:
    """Check every link up to pebble's root; return the leaf's DNS names."""
    chain = x509.load_pem_x509_certificates(fullchain.read_bytes())
    root = x509.load_pem_x509_certificate(sandbox.pebble_roots().encode())
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def make_lineage(certbot_dir: Path, name: str, names: list[str], ca: SandboxCA) -> str:
    """A certbot-like lineage ``live/<name>/`` signed by ``ca``; returns its sha256 fingerprint."""
    live = certbot_dir / "live" / name
    live.mkdir(parents=True, exist_ok=True)
    crt, key = ca.issue(f"lineage-{name.replace('*', '_')}"[:64], names)
    data = crt.read_bytes()
    (live / "cert.pem").write_bytes(data)
    (live / "fullchain.pem").write_bytes(data + ca.cert_path.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    (live / "privkey.pem").chmod(0o600)
    return x509.load_pem_x509_certificate(data).fingerprint(hashes.SHA256()).hex()


def deploy_config(sandbox: Sandbox, path: Path, *, inventory: Path | None = None,
                  **deploy: object) -> Path:
    """A copy of the sandbox's epages.yaml with ``deploy`` keys (and the inventory) replaced."""
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["deploy"].update(deploy)
    if inventory is not None:
        data["inventory"] = str(inventory)
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def write_inventory(path: Path, shops: list[dict[str, object]]) -> Path:
    """Write an inventory file as the shop software would export it."""
    path.write_text(yaml.safe_dump(shops))
    return path


def served(sandbox: Sandbox, name: str) -> dict[str, str]:
    """The sha256 fingerprint each load balancer serves for ``name`` (or the error)."""
    out = {}
    for lb in sandbox.lbs:
        try:
            out[lb.name] = served_fingerprint(HostPort(lb.address, 443), name)
        except OSError as e:
            out[lb.name] = f"error: {e}"
    return out


def shop_sites(lb_root: str | Path) -> list[str]:
    """The shop site files a load balancer serves (``current/sites``, without the marker)."""
    sites = Path(lb_root) / "current" / "sites"
    if not sites.is_dir():
        return []
    return sorted(p.name for p in sites.iterdir() if p.name != "_epages-release.conf")


@contextlib.contextmanager
def fresh_sandbox(dns: Kind = "bind", authz_reuse: int = 0) -> Iterator[Sandbox]:
    """A sandbox of its own in a fresh directory, stopped and removed even when a test fails."""
    with sandbox_dir() as directory, \
            running(directory, dns=dns, authz_reuse=authz_reuse) as sandbox:
        yield sandbox


def epages(sandbox: Sandbox, *args: str, config: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``certbot-epages ARGS`` with the sandbox's (or the given) config."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "certbot_epages.cli", "--config",
         str(config or sandbox.config_path), *args],
        env={**os.environ, **sandbox.env()}, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


class LocalHttp(http.server.ThreadingHTTPServer):
    """A test's HTTP server; handlers that take their time wait on ``stop``."""

    daemon_threads = True

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.stop = threading.Event()

    @property
    def port(self) -> int:  # noqa: D102
        return int(self.server_address[1])


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[LocalHttp]:
    """An HTTP server on 127.0.0.1 (a free port) in a thread, for the ``with`` block.

    On the way out ``stop`` is set first, so a handler that drips data lets go at once.
    """
    server = LocalHttp(handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
