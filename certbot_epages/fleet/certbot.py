"""certbot as sync runs it: the command line of an order, and the one line its output comes to.

Every order is ``certbot certonly`` for one lineage, with the ``epages-dns`` authenticator or
(HTTP-01) the manual hooks installed beside this Python; the lock that lets one certbot run at
a time is :mod:`.locks`'.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from certbot_epages.fleet import plan as planning

TIMEOUT = 900.0  # seconds one certbot run may take
BUSY = "Another instance of Certbot is already running"


def certonly_args(step: planning.Step, challenge: str | None, config: Path) -> list[str]:
    """certbot's arguments to order ``step``'s certificate with ``challenge`` (None: DNS-01)."""
    argv = ["certonly", "--non-interactive", "--cert-name", step.unit.lineage]
    for name in step.unit.names:
        argv += ["-d", name]
    if step.action == planning.RENEW:
        argv.append("--force-renewal")
    if step.action == planning.REISSUE:
        argv.append("--renew-with-new-domains")
    if challenge == "http-01":
        bin_dir = Path(sys.executable).parent
        argv += ["--manual", "--preferred-challenges", "http",
                 "--manual-auth-hook", str(bin_dir / "manual-auth-hook"),
                 "--manual-cleanup-hook", str(bin_dir / "manual-cleanup-hook")]
    else:
        argv += ["--authenticator", "epages-dns", "--epages-dns-config", str(config)]
    return argv


def run(argv: Sequence[str], env: Mapping[str, str]) -> tuple[bool, str | None]:
    """Run certbot: (True, None), or (False, the most telling line of what went wrong)."""
    try:
        done = subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return False, f"certbot took longer than {TIMEOUT:g}s"
    except OSError as e:
        return False, f"cannot run {argv[0]}: {e.strerror}; set fleet.certbot"
    if done.returncode == 0:
        return True, None
    return False, error_line(done.stdout + "\n" + done.stderr)


def error_line(output: str) -> str:
    """The most telling line of certbot's output: the CA's detail, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Detail:"):
            return line[len("Detail:"):].strip()
    for line in reversed(lines):
        if not line.startswith(("Ask for help", "Saving debug log", "See the logfile")):
            return line
    return "certbot failed without output"
