"""The sandbox's files on disk: server configs, zones, keys, epages.yaml, certbot's cli.ini."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from certbot_epages.resources import jinja_env
from certbot_epages.sandbox import primary
from certbot_epages.sandbox.addresses import (
    ACME_PORT,
    MANAGEMENT_PORT,
    Addresses,
    LoadBalancer,
    Zones,
)
from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.processes import run


class Sandbox(Protocol):
    """What the files are made from (a :class:`~certbot_epages.sandbox.platform.Sandbox`)."""

    directory: Path
    ip: Addresses
    zones: Zones
    dns: primary.Kind
    lbs: tuple[LoadBalancer, ...]
    aaaa: bool
    key_file: Path
    webroot: Path
    ssh_key: Path
    known_hosts: Path
    backend: str
    inventory_path: Path
    config_path: Path
    certbot_ini: Path
    certbot_config_dir: Path

    @property
    def acme_url(self) -> str: ...  # noqa: D102

KEY_NAME = "acme-update"


def certbot_program() -> str:
    """The certbot beside this Python (the same venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "certbot"
    return str(beside) if beside.exists() else (shutil.which("certbot") or "certbot")



def context(sb: Sandbox) -> dict[str, object]:
    """What every sandbox template renders with."""
    return {
        "dir": str(sb.directory),
        "ip": sb.ip.as_dict(),
        "zones": asdict(sb.zones),
        "ports": {"acme": ACME_PORT, "pebble_management": MANAGEMENT_PORT},
        "key_name": KEY_NAME,
        "key_file": str(sb.key_file),
        "webroot": str(sb.webroot),
        "lbs": [asdict(lb) for lb in sb.lbs],
        "dns": sb.dns,
        "ssh_key": str(sb.ssh_key),
        "known_hosts": str(sb.known_hosts),
        "backend": sb.backend,
        "certbot": certbot_program(),
    }

def render(sb: Sandbox, template: str, target: Path, **extra: object) -> None:
    """Render ``templates/sandbox/<template>`` into ``target``."""
    text = jinja_env().get_template(f"sandbox/{template}").render({**context(sb), **extra})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)

def write_files(sb: Sandbox) -> None:
    """Every file a sandbox needs before its servers start."""
    d = sb.directory
    for sub in ("dns", "pki", "ssh", "certbot", "log", "spool"):
        (d / sub).mkdir(exist_ok=True)
    os.chmod(d / "dns", 0o700)
    os.chmod(d / "ssh", 0o700)
    primary.write_key(sb.dns, sb.key_file, KEY_NAME)
    write_zones(sb)
    for server in ("secondary", "resolver"):
        (d / "dns" / server).mkdir(exist_ok=True)
        render(sb, f"named-{server}.conf.j2", d / "dns" / server / "named.conf",
                     dir=str(d / "dns" / server))
    primary.write_config(sb.dns, d / "dns" / "primary", context(sb))
    render(sb, "root.hint.j2", d / "dns" / "resolver" / "root.hint")

    ca = SandboxCA(d / "pki")
    ca.issue("pebble", ["localhost", sb.ip.pebble])
    render(sb, "pebble.json.j2", d / "pki" / "pebble.json", dir=str(d / "pki"))

    nginx = jinja_env()
    proxy = nginx.get_template("nginx/acme-challenge-proxy.conf.j2").render(
        challenge_service=f"{sb.ip.challenge}:80"
    )
    for lb in sb.lbs:
        prefix = Path(lb.prefix)
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (Path(lb.root) / "releases").mkdir(parents=True, exist_ok=True)
        crt, key = ca.issue(f"{lb.name}-default", [f"default.{lb.name}.sandbox", lb.address])
        shutil.move(crt, prefix / "default.crt")
        shutil.move(key, prefix / "default.key")
        render_lb(sb, lb, proxy)
    service = nginx.get_template("nginx/challenge-service.conf.j2").render(
        listen=f"{sb.ip.challenge}:80", webroot=str(sb.webroot)
    )
    challenge = d / "challenge"
    (challenge / "logs").mkdir(parents=True, exist_ok=True)
    (sb.webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    render(sb, "challenge-nginx.conf.j2", challenge / "nginx.conf",
                 prefix=str(challenge), challenge_service=service, backend=sb.backend)
    render(sb, "inventory.yaml.j2", sb.inventory_path)

    write_ssh(sb)
    render(sb, "epages.yaml.j2", sb.config_path)
    os.chmod(sb.config_path, 0o600)
    sb.certbot_ini.write_text(
        "# certbot against the sandbox's pebble; use: certbot -c this-file ...\n"
        f"server = {sb.acme_url}\n"
        f"config-dir = {sb.certbot_config_dir}\n"
        f"work-dir = {d / 'certbot' / 'work'}\n"
        f"logs-dir = {d / 'certbot' / 'logs'}\n"
        "agree-tos = true\n"
        "register-unsafely-without-email = true\n"
        "non-interactive = true\n"
    )

def render_lb(sb: Sandbox, lb: LoadBalancer, http01_snippet: str) -> None:
    """A load balancer's nginx.conf with the given HTTP-01 snippet."""
    render(sb, "lb-nginx.conf.j2", Path(lb.prefix) / "nginx.conf", name=lb.name,
                 prefix=lb.prefix, root=lb.root, address=lb.address,
                 challenge_proxy=http01_snippet)

ZONE_TEMPLATES = ("test", "platform", "challenge", "customer", "direct", "custom")


def write_zones(sb: Sandbox) -> None:
    """Every zone file from its template (``templates/sandbox/zones/``)."""
    z = sb.zones
    origins = {"test": "test", "platform": z.platform, "challenge": z.challenge,
               "customer": z.customer, "direct": z.direct, "custom": z.custom}
    env = jinja_env()
    for key in ZONE_TEMPLATES:
        origin = origins[key]
        text = env.get_template(f"sandbox/zones/{key}.zone.j2").render(
            origin=origin, zones=asdict(z), ip={**sb.ip.as_dict(),
                                                "unreachable_v6": sb.ip.unreachable_v6},
            lbs=(sb.ip.lb1, sb.ip.lb2), aaaa=sb.aaaa)
        for server in ("primary", "secondary") if origin == z.challenge else ("primary",):
            target = sb.directory / "dns" / server / f"{origin}.zone"
            target.parent.mkdir(parents=True, exist_ok=True)
            # The secondary starts from the same data; its transfers keep it current.
            target.write_text(text)


def write_ssh(sb: Sandbox) -> None:
    """sshd's host key, the deploy key, authorized_keys, known_hosts and sshd_config."""
    ssh = sb.directory / "ssh"
    for key in (ssh / "host_ed25519", sb.ssh_key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "certbot-epages-sandbox",
              "-f", str(key)])
    shutil.copy(f"{sb.ssh_key}.pub", ssh / "authorized_keys")
    host_pub = (ssh / "host_ed25519.pub").read_text().split()
    addresses = [sb.ip.lb1, sb.ip.lb2, sb.ip.challenge]
    sb.known_hosts.write_text(
        "".join(f"{a} {host_pub[0]} {host_pub[1]}\n" for a in addresses)
    )
    (ssh / "home").mkdir(exist_ok=True)
    render(sb, "sshd_config.j2", ssh / "sshd_config", dir=str(ssh), addresses=addresses)
