"""Reading certbot lineages works with every tested cryptography (Debian 12 ships 38)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbot_epages.deploy import lineages
from certbot_epages.sandbox.pki import SandboxCA

pytestmark = pytest.mark.unit


def test_a_lineage_reads_its_names_validity_and_fingerprint(tmp_path: Path) -> None:
    ca = SandboxCA(tmp_path / "ca")
    crt, key = ca.issue("leaf", ["shop.example", "*.shop.example"])
    live = tmp_path / "live" / "shop.example"
    live.mkdir(parents=True)
    pem = crt.read_bytes()
    (live / "cert.pem").write_bytes(pem)
    (live / "fullchain.pem").write_bytes(pem + ca.cert_path.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())

    lineage = lineages.load(live)

    leaf = x509.load_pem_x509_certificate(pem)
    assert lineage.names == ("*.shop.example", "shop.example")
    assert lineage.fingerprint == leaf.fingerprint(hashes.SHA256()).hex()
    before, after = lineage.not_before, lineage.not_after
    assert before is not None and before.tzinfo is not None and after.tzinfo is not None
    assert after - before == datetime.timedelta(days=30, minutes=5)
    assert before < datetime.datetime.now(datetime.timezone.utc) < after
