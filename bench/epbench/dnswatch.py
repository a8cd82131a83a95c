"""Watching the challenge zone: serials, the secondary's lag, TXT values (tests' helpers)."""

from __future__ import annotations

import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
from epages_testlib import soa_serial as _soa_serial
from epages_testlib import txt_at

from certbot_epages.dns.keys import load_key_file
from certbot_epages.sandbox.platform import KEY_NAME, Sandbox
from epbench.common import CHALLENGE_ZONE, poll


def soa_serial(server: str, zone: str) -> int | None:
    """The zone's serial as ``server`` has it (None while it does not answer)."""
    try:
        return _soa_serial(server, zone)
    except (OSError, IndexError, dns.exception.DNSException):
        return None


def secondary_caught_up(sb: Sandbox, timeout: float = 60.0) -> float:
    """Wait until the secondary has the primary's serial of the challenge zone; seconds taken."""
    started = time.monotonic()

    def same() -> bool | None:
        p = soa_serial(sb.ip.primary, CHALLENGE_ZONE)
        s = soa_serial(sb.ip.secondary, CHALLENGE_ZONE)
        return True if p is not None and p == s else None

    poll("the secondary to catch up with the primary", same, timeout)
    return time.monotonic() - started


def measure_lag(sb: Sandbox) -> float:
    """Seconds from a signed update at the primary until the secondary serves it."""
    key = load_key_file(sb.key_file, KEY_NAME, allow_weak=False).as_dnspython()
    name = f"lagprobe-{time.time_ns()}.{CHALLENGE_ZONE}."

    def change(add: bool) -> None:
        update = dns.update.UpdateMessage(CHALLENGE_ZONE)
        update.use_tsig(key)
        if add:
            update.add(name, 60, "TXT", '"lag"')
        else:
            update.delete(name)
        reply = dns.query.tcp(update, sb.ip.primary, timeout=5)
        if reply.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"update of {name} refused: {dns.rcode.to_text(reply.rcode())}")

    def served() -> bool | None:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        query.flags &= ~dns.flags.RD
        try:
            reply = dns.query.udp(query, sb.ip.secondary, timeout=1)
        except (OSError, dns.exception.DNSException):
            return None
        return True if reply.answer else None

    started = time.monotonic()
    change(add=True)
    poll("the secondary to serve the probe record", served, 60)
    lag = time.monotonic() - started
    change(add=False)
    return lag


# ------------------------------------------------------------------------------ part 1 + 2



def txt_values(server: str, name: str) -> set[str]:
    """TXT strings at ``name`` on ``server`` (no recursion), without the placeholder."""
    try:
        return txt_at(server, name) - {".empty"}
    except (OSError, dns.exception.DNSException):
        return set()
