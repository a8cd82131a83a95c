"""A fleet directory for sync tests without servers: a config, an inventory, a fake certbot."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

T0 = dt.datetime(2026, 3, 4, 12, 0, tzinfo=dt.timezone.utc).timestamp()
SECRET = "iAE13TkKusXgZj6Lji8TQp2RjrhXi/f/UknW6EDzZOYRWcDQJeK7vBDnHzkJsnjOyebAY7+uN7BDMMK9nmjScg=="


def fake_fleet(tmp_path: Path) -> Path:
    """A config whose certbot is a script: ``certbot.out`` says what it prints and exits."""
    certbot = tmp_path / "fake-certbot"
    certbot.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        f"base = pathlib.Path({str(tmp_path)!r})\n"
        "with open(base / 'certbot.calls', 'a') as f:\n"
        "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "out = base / 'certbot.out'\n"
        "text = out.read_text() if out.exists() else ''\n"
        "print(text)\n"
        "sys.exit(1 if text else 0)\n"
    )
    certbot.chmod(0o755)
    (tmp_path / "inventory.yaml").write_text("[]\n")
    (tmp_path / "epages.yaml").write_text(f"""\
dns:
  tsig_keys: {{k: {{algorithm: hmac-sha512, secret: "{SECRET}"}}}}
  zones: [{{name: dyn.example, primaries: ["127.0.0.1:5399"], key: k}}]
inventory: inventory.yaml
fleet:
  state_dir: {tmp_path / "state"}
  certbot: ["{certbot}"]
""")
    (tmp_path / "epages.yaml").chmod(0o600)
    return tmp_path


def write_lineage(certbot_dir: Path, name: str, names: list[str]) -> None:
    """A certbot-like lineage, self-signed, valid for 90 days from T0."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    start = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    live = certbot_dir / "live" / name
    live.mkdir(parents=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (live / "cert.pem").write_bytes(pem)
    (live / "fullchain.pem").write_bytes(pem)
    (live / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
