"""certbot runs against the sandbox: the authenticators compared in the issuance parts."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from certbot_epages.sandbox.platform import KEY_NAME, Sandbox
from epbench.common import BIN, CHALLENGE_ZONE, WORK, ZONES, first_line, log, run
from epbench.dnswatch import secondary_caught_up


class Issuer:
    """certbot runs against the sandbox, each with a fresh --cert-name."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.count = 0
        self.lock = threading.Lock()
        self.inis = {0: sb.certbot_ini}
        self.scripts: dict[tuple[str, int], tuple[Path, Path]] = {}
        self.rfc_ini = WORK / "rfc2136.ini"
        secret = re.search(r'secret\s+"([^"]+)"', sb.key_file.read_text())
        assert secret is not None
        fd = os.open(self.rfc_ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# certbot-dns-rfc2136 credentials for the bench sandbox\n"
                    f"dns_rfc2136_server = {sb.ip.primary}\n"
                    f"dns_rfc2136_port = 53\n"
                    f"dns_rfc2136_name = {KEY_NAME}\n"
                    f"dns_rfc2136_secret = {secret[1]}\n"
                    f"dns_rfc2136_algorithm = HMAC-SHA512\n")
        os.chmod(self.rfc_ini, 0o600)

    def ini(self, slot: int) -> Path:
        """certbot's cli.ini of directory ``slot`` (0: the sandbox's); made and registered once.

        certbot locks its directories, so runs at the same time need one each.
        """
        with self.lock:
            if slot in self.inis:
                return self.inis[slot]
        base = self.sb.directory / f"certbot-{slot}"
        ini = base / "cli.ini"
        base.mkdir()
        ini.write_text(
            f"server = {self.sb.acme_url}\n"
            f"config-dir = {base / 'config'}\n"
            f"work-dir = {base / 'work'}\n"
            f"logs-dir = {base / 'logs'}\n"
            "agree-tos = true\nregister-unsafely-without-email = true\nnon-interactive = true\n"
        )
        env = {**os.environ, **self.sb.env()}
        done = run([str(BIN / "certbot"), "-c", str(ini), "register"], env=env, timeout=120)
        if not done.ok:
            raise RuntimeError(f"certbot register failed: {done.stderr}")
        with self.lock:
            self.inis[slot] = ini
        return ini

    def nsupdate_hooks(self, zone: str, sleep: int) -> tuple[Path, Path]:
        """Auth and cleanup scripts: nsupdate the TXT (at the CNAME target), then sleep."""
        if (zone, sleep) in self.scripts:
            return self.scripts[(zone, sleep)]
        if zone == "direct":
            dns_zone, suffix = "direct.test", ""
        else:
            dns_zone, suffix = CHALLENGE_ZONE, f".{CHALLENGE_ZONE}"
        paths = []
        for kind, op in (("auth", "add"), ("cleanup", "delete")):
            ttl = " 60" if op == "add" else ""
            wait = ""
            if kind == "auth" and sleep:
                wait = (f'# One fixed wait per certbot run, after the last challenge\n'
                        f'if [ "${{CERTBOT_REMAINING_CHALLENGES:-0}}" = 0 ]; then '
                        f'sleep {sleep}; fi\n')
            script = WORK / f"nsupdate-{kind}-{zone}-sleep{sleep}.sh"
            script.write_text(
                "#!/bin/sh\n"
                f"# certbot --manual-{kind}-hook written by bench/run.py: {op} the TXT record\n"
                f"# at the CNAME target in {dns_zone} with nsupdate (no propagation check).\n"
                "set -eu\n"
                f'name="_acme-challenge.${{CERTBOT_DOMAIN}}{suffix}."\n'
                f"nsupdate -k {self.sb.key_file} <<EOF\n"
                f"server {self.sb.ip.primary} 53\n"
                f"zone {dns_zone}\n"
                f'update {op} $name{ttl} TXT "$CERTBOT_VALIDATION"\n'
                "send\n"
                "EOF\n"
                f"{wait}"
            )
            script.chmod(0o755)
            paths.append(script)
        self.scripts[(zone, sleep)] = (paths[0], paths[1])
        return paths[0], paths[1]

    def authenticator(self, variant: str, zone: str, seconds: int | None = None) -> list[str]:
        """certbot arguments choosing the authenticator of ``variant``."""
        if variant == "epages-dns":
            return ["--authenticator", "epages-dns"]
        if variant == "manual-hooks":
            return ["--manual", "--preferred-challenges", "dns",
                    "--manual-auth-hook", str(BIN / "manual-auth-hook"),
                    "--manual-cleanup-hook", str(BIN / "manual-cleanup-hook")]
        if variant == "rfc2136":
            args = ["--authenticator", "dns-rfc2136", "--dns-rfc2136-credentials",
                    str(self.rfc_ini)]
            if seconds is not None:
                args += ["--dns-rfc2136-propagation-seconds", str(seconds)]
            return args
        if variant == "nsupdate":
            auth, cleanup = self.nsupdate_hooks(zone, seconds or 0)
            return ["--manual", "--preferred-challenges", "dns", "--manual-auth-hook", str(auth),
                    "--manual-cleanup-hook", str(cleanup)]
        raise ValueError(variant)

    def issue(self, variant: str, zone: str, seconds: int | None = None, *,
              settle: bool = True, slot: int = 0) -> dict[str, Any]:
        """One timed issuance of apex + wildcard in ``zone``; the raw result.

        ``slot`` picks the certbot directory (another one for a run beside another run).
        """
        if settle:
            secondary_caught_up(self.sb)  # every run starts from a settled challenge zone
        with self.lock:
            self.count += 1
            name = f"bench-{self.count:03d}-{variant}"
            authenticator = self.authenticator(variant, zone, seconds)
        domains = ZONES[zone]
        ini = self.ini(slot)
        config_dir = ini.parent / "config"
        argv = [str(BIN / "certbot"), "-c", str(ini), "certonly", "--cert-name", name,
                *authenticator, *(a for d in domains for a in ("-d", d))]
        env = {**os.environ, **self.sb.env()}
        done = run(argv, env=env, timeout=300)
        live = config_dir / "live" / name / "fullchain.pem"
        ok = done.ok and live.exists()
        result: dict[str, Any] = {"cert_name": name, "domains": list(domains), "ok": ok,
                  "seconds": round(done.seconds, 3), "returncode": done.returncode}
        if not ok:
            result["error"] = first_line(done.stdout + "\n" + done.stderr, "Detail:",
                                         "Error", "REFUSED", "rror")
        state = "ok" if ok else f"FAILED ({result.get('error', '')[:100]})"
        log(f"  {variant} {zone} {seconds if seconds is not None else ''}: "
            f"{done.seconds:.2f}s {state}")
        return result


