"""The sandbox's primary name server: BIND (the default), Knot DNS or PowerDNS.

Whichever it is, it serves every sandbox zone at ``127.A.B.1:53``, takes TSIG-signed RFC 2136
updates of TXT records for the challenge and direct zones with key ``acme-update``, and
notifies the BIND secondary, which transfers through the relay. Each is set up the way its
operators would:

- BIND: ``update-policy { grant acme-update zonesub TXT; };``, the key as ``tsig-keygen``
  writes it.
- Knot DNS: an ``acl`` with ``action: update, update-type: TXT``, the key as ``keymgr -t``
  writes it (and epages.yaml reads that file). The direct zone's acl also limits the names the
  key may write (``_acme-challenge`` and ``_acme-challenge.www``), as a per-customer key would.
- PowerDNS: gsqlite3, ``dnsupdate=yes``, per zone ``ALLOW-DNSUPDATE-FROM``,
  ``TSIG-ALLOW-DNSUPDATE`` and ``NOTIFY-DNSUPDATE 1``. It cannot limit a key to TXT without a
  ``lua-dnsupdate-policy-script``, which replaces every other check; :func:`start_pdns` starts
  extra PowerDNS servers with one (or with the bind backend, which cannot take updates).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from certbot_epages.errors import SandboxError
from certbot_epages.resources import jinja_env
from certbot_epages.sandbox import processes
from certbot_epages.sandbox.processes import run

Kind = Literal["bind", "knot", "pdns"]
KINDS: tuple[Kind, ...] = ("bind", "knot", "pdns")
NAMES: dict[str, str] = {"bind": "BIND", "knot": "Knot DNS", "pdns": "PowerDNS"}
PROGRAMS: dict[str, tuple[str, ...]] = {
    "bind": ("named",), "knot": ("knotd", "keymgr"), "pdns": ("pdns_server", "pdnsutil"),
}
PACKAGES = "bind9 knot pdns-server pdns-backend-sqlite3 pdns-backend-bind"
# Where Debian's pdns-backend-sqlite3 puts its schema (the doc copy may be excluded by dpkg).
SQLITE_SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)
KNOT_NARROW_NAMES = ("_acme-challenge", "_acme-challenge.www")


def program(name: str) -> str:
    """The path of a server program (sbin may be missing from PATH)."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def missing_programs(kind: Kind) -> list[str]:
    """The programs ``kind`` needs that are not installed."""
    return [p for p in PROGRAMS[kind] if not (shutil.which(p) or Path(f"/usr/sbin/{p}").exists())]


def write_key(kind: Kind, path: Path, name: str) -> None:
    """A fresh hmac-sha512 key in the format the server's operators use (mode 0600)."""
    if kind == "knot":
        text = run([program("keymgr"), "-t", name, "hmac-sha512"])
    else:
        secret = base64.b64encode(secrets.token_bytes(64)).decode()
        text = f'key "{name}" {{\n\talgorithm hmac-sha512;\n\tsecret "{secret}";\n}};\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_config(kind: Kind, directory: Path, context: Mapping[str, object]) -> None:
    """The primary's configuration in ``directory`` (which holds its zone files)."""
    env = jinja_env()
    if kind == "bind":
        text = env.get_template("sandbox/named-primary.conf.j2").render(
            {**context, "dir": str(directory)})
        (directory / "named.conf").write_text(text)
    elif kind == "knot":
        (directory / "db").mkdir(exist_ok=True)
        text = env.get_template("sandbox/knot-primary.conf.j2").render(
            {**context, "dir": str(directory), "narrow_names": KNOT_NARROW_NAMES})
        (directory / "knot.conf").write_text(text)
    else:
        ip = context["ip"]
        zones = context["zones"]
        assert isinstance(ip, Mapping) and isinstance(zones, Mapping)
        write_pdns(
            directory, address=str(ip["primary"]), port=53,
            zones={z: directory / f"{z}.zone" for z in zones_of(context)},
            key_file=Path(str(context["key_file"])), key_name=str(context["key_name"]),
            updatable=(str(zones["challenge"]), str(zones["direct"])),
            replicated=(str(zones["challenge"]),), notify=str(ip["secondary"]),
            transfers=(str(ip["secondary"]), str(ip["relay"])),
        )


def zones_of(context: Mapping[str, object]) -> list[str]:
    """Every zone the primary serves (the sandbox's zones and the ``test`` TLD)."""
    zones = context["zones"]
    assert isinstance(zones, Mapping)
    return ["test", *(str(z) for z in zones.values())]


def command(kind: Kind, directory: Path) -> list[str]:
    """The foreground command line of the primary."""
    if kind == "bind":
        return [program("named"), "-g", "-n", "1", "-c", str(directory / "named.conf")]
    if kind == "knot":
        return [program("knotd"), "-c", str(directory / "knot.conf")]
    return [program("pdns_server"), f"--config-dir={directory}"]


def write_pdns(
    directory: Path,
    *,
    address: str,
    port: int,
    zones: Mapping[str, Path],
    key_file: Path,
    key_name: str,
    updatable: Sequence[str],
    replicated: Sequence[str] = (),
    notify: str | None = None,
    transfers: Sequence[str] = (),
    backend: Literal["gsqlite3", "bind"] = "gsqlite3",
    lua_policy: str | None = None,
) -> None:
    """A PowerDNS in ``directory``: pdns.conf, its database with ``zones``, the key, metadata.

    ``updatable`` zones take updates signed with the key from loopback; ``replicated`` zones
    are primary zones (load-zone makes native ones, which PowerDNS never notifies for) whose
    updates are notified to the secondary ``notify`` at once. ``lua_policy`` is the body of a
    ``lua-dnsupdate-policy-script``'s ``updatepolicy(request)`` function.
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = jinja_env().get_template("sandbox/pdns.conf.j2").render(
        dir=str(directory), address=address, port=port, backend=backend, notify=notify,
        transfers=list(transfers), lua_policy=lua_policy is not None, zones=dict(zones),
    )
    (directory / "pdns.conf").write_text(text)
    if lua_policy is not None:
        (directory / "dnsupdate-policy.lua").write_text(
            "-- lua-dnsupdate-policy-script of a sandbox PowerDNS: true lets an update through\n"
            f"function updatepolicy(request)\n{lua_policy}\nend\n"
        )
    pdnsutil = [program("pdnsutil"), f"--config-dir={directory}"]
    if backend == "gsqlite3":
        database = directory / "pdns.sqlite3"
        _sqlite(database, _schema())
        for zone, path in zones.items():
            run([*pdnsutil, "load-zone", zone, str(path)])
    else:
        (directory / "named.conf").write_text("".join(
            f'zone "{zone}" {{ type master; file "{path}"; }};\n' for zone, path in zones.items()
        ))
        database = directory / "bind-dnssec.sqlite3"
        run([*pdnsutil, "create-bind-db", str(database)])
    # Straight into the database: pdnsutil import-tsig-key would take the secret on its command
    # line, where any process (and any error message quoting it) could see it.
    algorithm, secret = _bind_key(key_file, key_name)
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO tsigkeys (name, algorithm, secret) VALUES (?, ?, ?)",
                   (key_name, algorithm, secret))
    for zone in updatable:
        run([*pdnsutil, "set-meta", zone, "TSIG-ALLOW-DNSUPDATE", key_name])
        run([*pdnsutil, "set-meta", zone, "ALLOW-DNSUPDATE-FROM", "127.0.0.0/8"])
    for zone in replicated:
        run([*pdnsutil, "set-kind", zone, "primary"])
        run([*pdnsutil, "set-meta", zone, "NOTIFY-DNSUPDATE", "1"])


def start_pdns(name: str, directory: Path) -> processes.Recorded:
    """Start the PowerDNS written by :func:`write_pdns`; its log is ``directory/pdns.log``."""
    return processes.start(name, command("pdns", directory), directory / "pdns.log")


def _schema() -> str:
    for path in SQLITE_SCHEMAS:
        if path.exists():
            return path.read_text()
    raise SandboxError(
        f"the gsqlite3 schema of PowerDNS is missing ({SQLITE_SCHEMAS[0]}); install it with: "
        "apt-get install pdns-backend-sqlite3"
    )


def _sqlite(path: Path, script: str) -> None:
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(script)


def _bind_key(path: Path, name: str) -> tuple[str, str]:
    from certbot_epages.dns.keys import load_key_file

    key = load_key_file(path, name, allow_weak=False)
    return key.algorithm, base64.b64encode(key.secret).decode()
