"""A shared-mode fleet on the sandbox's load balancers, for the tests of deploy.mode: shared.

Custom domains with lineages of their own, a platform wildcard and its riders, written as an
inventory and an epages.yaml of their own; helpers to deploy and to look at what is served.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from epages_testlib import deploy_config, make_lineage, served, write_inventory

from certbot_epages.sandbox.pki import SandboxCA
from certbot_epages.sandbox.platform import Sandbox

BIN = Path(sys.executable).parent
CUSTOM = ("one.test", "two.test", "three.test")
RIDERS = ("a.platform.test", "b.platform.test", "c.platform.test")



def deploy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "certbot-epages"), "--config", str(config), "deploy", *args],
                          capture_output=True, text=True, timeout=300, check=False)


class Fleet:
    """Custom domains, a platform wildcard and its riders."""

    def __init__(self, sandbox: Sandbox, mode: str = "shared") -> None:
        self.sandbox = sandbox
        self.base = sandbox.directory / "t"
        self.base.mkdir()
        self.certbot_dir = self.base / "le"
        self.ca = SandboxCA(self.base)
        self.fingerprints = {d: make_lineage(self.certbot_dir, d, [d, f"www.{d}"], self.ca)
                             for d in CUSTOM}
        self.wildcard = make_lineage(self.certbot_dir, "wildcard_.platform.test",
                                     ["*.platform.test"], self.ca)
        up = {"upstream": sandbox.backend}
        self.shops: list[dict[str, Any]] = [
            {"domain": "*.platform.test", "shop": "platform", "template": "platform-wildcard",
             "vars": dict(up)},
            *({"domain": d, "shop": f"id-{d}", "aliases": [f"www.{d}"],
               "template": "custom-domain", "vars": dict(up)} for d in CUSTOM),
            *({"domain": r, "shop": f"id-{r}", "template": "custom-domain", "vars": dict(up)}
              for r in RIDERS),
        ]
        self.inventory = write_inventory(self.base / "inventory.yaml", self.shops)
        self.config = deploy_config(sandbox, self.base / "epages.yaml", inventory=self.inventory,
                                    certbot_dir=str(self.certbot_dir), mode=mode)

    def shop(self, domain: str) -> dict[str, Any]:
        return next(s for s in self.shops if s["domain"] == domain)

    def write(self) -> None:
        write_inventory(self.inventory, self.shops)

    def set_deploy(self, **changes: Any) -> None:
        data = yaml.safe_load(self.config.read_text())
        data["deploy"].update(changes)
        self.config.write_text(yaml.safe_dump(data))

    def renew(self, domain: str, tag: str) -> str:
        self.fingerprints[domain] = make_lineage(
            self.certbot_dir, domain, [domain, f"www.{domain}"], SandboxCA(self.base / tag))
        return self.fingerprints[domain]

    def assert_serves(self) -> None:
        for domain, fingerprint in self.fingerprints.items():
            for name in (domain, f"www.{domain}"):
                assert set(served(self.sandbox, name).values()) == {fingerprint}, name
        for rider in RIDERS:
            assert set(served(self.sandbox, rider).values()) == {self.wildcard}, rider


def https_head(address: str, name: str) -> list[str]:
    """The status line and headers a load balancer answers for https://name/."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.decode("utf-8", errors="replace").split("\r\n\r\n")[0].split("\r\n")


def https_status(address: str, name: str) -> str:
    """The status line and Location header a load balancer answers for https://name/."""
    lines = https_head(address, name)
    location = [line for line in lines if line.lower().startswith("location:")]
    return " | ".join([lines[0], *location])
