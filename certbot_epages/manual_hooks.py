"""``--manual-auth-hook`` and ``--manual-cleanup-hook`` for ``certbot --manual``.

certbot runs the auth hook once per challenge with ``CERTBOT_DOMAIN``, ``CERTBOT_VALIDATION``,
``CERTBOT_REMAINING_CHALLENGES`` and ``CERTBOT_ALL_DOMAINS`` (plus ``CERTBOT_TOKEN`` for HTTP-01),
and the cleanup hook with the same variables plus ``CERTBOT_AUTH_OUTPUT`` (what the auth hook
printed). All of it is untrusted and checked before it reaches DNS, a path or a command.

DNS-01 uses the same client as the ``epages-dns`` plugin, and like the plugin handles a run's
challenges together: every auth call but the last only records its value in a small spool file;
the run's last call follows the CNAME chains, publishes every value in one UPDATE per zone and
waits until every authoritative server serves them. The first cleanup call deletes every value
of the run; the later ones find nothing left. certbot starts a process per call (four for apex +
wildcard), so the calls that only touch the spool load neither the config nor dnspython.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from certbot_epages import runner
from certbot_epages.errors import ConfigError, EpagesError
from certbot_epages.hook_spool import PENDING, PUBLISHED, REMOVED, pending, run_process
from certbot_epages.names import validate_domain

# Imported where needed, not here: the HTTP-01 code (Jinja2, HTTP, subprocess) only by HTTP-01
# calls, the config and dnspython only by the calls that talk to DNS.
if TYPE_CHECKING:
    from certbot_epages import config as epages_config
    from certbot_epages.dns import client as dns_client
    from certbot_epages.dns.chain import Location

VALIDATION_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")


class HookInputError(EpagesError):
    """A certbot environment variable is missing or malformed."""


class Challenge(NamedTuple):
    """One challenge as certbot describes it to a manual hook, validated."""

    domain: str
    validation: str
    token: str | None  # set for HTTP-01
    remaining: int
    all_domains: tuple[str, ...]
    auth_output: str


def read_environment(env: Mapping[str, str]) -> Challenge:
    """Check certbot's variables; the error names the variable at fault."""

    def required(name: str) -> str:
        value = env.get(name)
        if not value:
            raise HookInputError(f"{name} is not set; run this as certbot's manual hook")
        return value

    def domain(name: str, value: str) -> str:
        try:
            return validate_domain(value)
        except ValueError as e:
            raise HookInputError(f"{name}: {value!r} is not a valid domain name: {e}") from None

    token = env.get("CERTBOT_TOKEN") or None
    if token is not None:
        from certbot_epages import http01

        try:
            http01.check_token(token)
        except ValueError as e:
            raise HookInputError(f"CERTBOT_TOKEN: {e}") from None
    validation = required("CERTBOT_VALIDATION")
    if token is None and not VALIDATION_RE.fullmatch(validation):
        raise HookInputError("CERTBOT_VALIDATION: a DNS-01 value is base64url (A-Z a-z 0-9 - _)")
    if token is not None and not (
        http01.KEY_AUTHORIZATION_RE.fullmatch(validation) and validation.startswith(f"{token}.")
    ):
        raise HookInputError(
            "CERTBOT_VALIDATION: an HTTP-01 value is '<CERTBOT_TOKEN>.<account thumbprint>'"
        )
    remaining_text = env.get("CERTBOT_REMAINING_CHALLENGES", "0")
    if not re.fullmatch(r"[0-9]{1,6}", remaining_text):
        raise HookInputError("CERTBOT_REMAINING_CHALLENGES: expected a whole number")
    base = domain("CERTBOT_DOMAIN", required("CERTBOT_DOMAIN"))
    all_text = env.get("CERTBOT_ALL_DOMAINS") or base
    all_domains = tuple(domain("CERTBOT_ALL_DOMAINS", d) for d in all_text.split(","))
    return Challenge(
        domain=base,
        validation=validation,
        token=token,
        remaining=int(remaining_text),
        all_domains=all_domains,
        auth_output=env.get("CERTBOT_AUTH_OUTPUT", ""),
    )


def _entry(location: Location, value: str) -> dict[str, str | float]:
    return {
        "domain": location.domain,
        "zone": str(location.zone),
        "record": str(location.record),
        "value": value,
        "time": time.time(),
    }


def _location(client: dns_client.DnsClient, entry: Mapping[str, object]) -> tuple[Location, str]:
    """Rebuild a record from spool or auth output: only a challenge name of a managed zone.

    The description may come from ``CERTBOT_AUTH_OUTPUT``, which certbot takes from the auth
    hook's output but anyone running the cleanup hook can set: it gets the same check as a
    CNAME chain's end, so it can never aim a delete (or the placeholder) at a zone's apex,
    ``_dmarc`` or any other name.
    """
    import dns.exception
    import dns.name

    from certbot_epages.dns.chain import Location

    try:
        zone = dns.name.from_text(str(entry["zone"]))
        record = dns.name.from_text(str(entry["record"]))
        value = str(entry["value"])
        domain = str(entry.get("domain", ""))
    except (KeyError, dns.exception.DNSException) as e:
        raise HookInputError(f"malformed record description: {e}") from None
    if not client.manages(zone) or not record.is_subdomain(zone):
        raise HookInputError(f"{record} is not in a managed zone")
    if not client.may_write(domain, record, zone):
        raise HookInputError(f"{record} is not a challenge name of {domain or 'the domain'}")
    if not VALIDATION_RE.fullmatch(value):
        raise HookInputError("malformed TXT value")
    return Location(domain, (record,), zone, record), value


# ------------------------------------------------------------------------------ DNS-01


def _settings() -> epages_config.Config:
    from certbot_epages import config as epages_config

    return epages_config.load()


def _dns_client(settings: epages_config.Config) -> dns_client.DnsClient:
    from certbot_epages.dns import client as dns_client
    from certbot_epages.dns.journal import Run

    if settings.dns is None:
        raise ConfigError(f"{settings.source}: no 'dns' section; DNS-01 needs dns.zones")
    # The certbot run owns what its hooks write: its claims span all of the run's hook calls.
    return dns_client.from_config(settings.dns, run=Run.of(run_process()[0]))


def _dns_auth(challenge: Challenge) -> None:
    """Record this call's value; the run's last call publishes and awaits every value."""
    with pending(challenge.all_domains) as entries:
        entries[:] = [e for e in entries if e.get("value") != challenge.validation]
        entries.append({"domain": challenge.domain, "value": challenge.validation,
                        "state": PENDING, "time": time.time()})
    if challenge.remaining > 0 and run_process()[1]:
        # What the cleanup hook gets back as CERTBOT_AUTH_OUTPUT.
        print(json.dumps({"challenge": "dns-01", "domain": challenge.domain,
                          "value": challenge.validation, "state": PENDING}), flush=True)
        return
    # The last call; or certbot's process was not recognisable, so the run's later calls might
    # not find this value in the spool: then it goes out now, as the old hooks did.
    client, records, published = _publishpending(_settings(), challenge)
    mine = [(location, value) for location, value in records if value == challenge.validation]
    if mine:
        # Print before anything can fail: the cleanup hook deletes exactly what is described.
        print(json.dumps({"challenge": "dns-01", **_entry(*mine[0])}), flush=True)
    client.add(records)
    if challenge.remaining == 0:
        client.wait(published)


def _publishpending(
    settings: epages_config.Config, challenge: Challenge
) -> tuple[dns_client.DnsClient, list[tuple[Location, str]], list[tuple[Location, str]]]:
    """Locate every pending value of the run and mark it published (the caller adds them).

    Returns the client, the values to add and every published value of the run (to await).
    Every CNAME chain is followed first: if one is broken, nothing is published. They are
    marked before the UPDATE goes out, so cleanup deletes them even if this process dies.
    """
    with pending(challenge.all_domains) as entries:
        todo = [(str(e.get("domain")), str(e.get("value"))) for e in entries
                if e.get("state") == PENDING]
    client = _dns_client(settings)
    located: dict[str, Location] = {}
    records = []
    for domain, value in todo:
        if domain not in located:
            try:
                located[domain] = client.locate(validate_domain(domain))
            except ValueError as e:
                raise HookInputError(f"spool entry for {domain!r}: {e}") from None
        if not VALIDATION_RE.fullmatch(value):
            raise HookInputError(f"spool entry for {domain!r}: malformed TXT value")
        records.append((located[domain], value))
    by_value = {value: location for location, value in records}
    with pending(challenge.all_domains) as entries:
        for entry in entries:
            location = by_value.get(str(entry.get("value")))
            if entry.get("state") == PENDING and location is not None:
                entry.update(_entry(location, str(entry["value"])), state=PUBLISHED)
        published = [dict(e) for e in entries if e.get("state", PUBLISHED) == PUBLISHED]
    return client, records, [_location(client, e) for e in published]


def _dns_cleanup(challenge: Challenge) -> None:
    """Delete every published value of the run at the first call; later calls find none."""
    with pending(challenge.all_domains) as entries:
        mine = next((e for e in entries if e.get("value") == challenge.validation), None)
        if mine is not None and mine.get("state") == PENDING:
            entries.remove(mine)  # never published: the run failed before its last auth call
            return
        if mine is not None and mine.get("state") == REMOVED:
            return
        published = [dict(e) for e in entries if e.get("state", PUBLISHED) == PUBLISHED]
    client = _dns_client(_settings())
    if mine is None:
        # The spool does not know this value (it was swept or lost): the auth output says
        # where it went, else the chain is followed again.
        try:
            described = json.loads(challenge.auth_output)
            record = _location(client, described)
            if record[1] != challenge.validation or described.get("domain") != challenge.domain:
                raise HookInputError("CERTBOT_AUTH_OUTPUT does not describe this challenge")
        except (json.JSONDecodeError, HookInputError, TypeError, AttributeError):
            record = (client.locate(challenge.domain), challenge.validation)
        client.remove([record])
        return
    records = [_location(client, e) for e in published]
    client.remove(records)
    removed = {value for _, value in records}
    with pending(challenge.all_domains) as entries:
        for entry in entries:
            if entry.get("value") in removed:
                entry["state"] = REMOVED


# ------------------------------------------------------------------------------ HTTP-01


def _http_settings(settings: epages_config.Config) -> epages_config.Http01Config:
    if settings.http01 is None:
        raise ConfigError(f"{settings.source}: no 'http01' section; HTTP-01 needs http01.targets")
    return settings.http01


def _http_auth(settings: epages_config.Config, challenge: Challenge) -> str:
    from certbot_epages import http01

    http = _http_settings(settings)
    token = str(challenge.token)
    written: list[str] = []
    if http.mode == "files":
        written = http01.publish(http, token, challenge.validation)
        try:
            http01.self_check(http, challenge.domain, token, challenge.validation)
        except BaseException as e:
            failures = http01.unpublish(http, token, written)  # nothing half-applied
            if failures and isinstance(e, EpagesError):
                raise http01.Http01Error(
                    f"{e}; removing the challenge file failed: {'; '.join(failures)}"
                ) from e
            raise
    else:
        http01.self_check(http, challenge.domain, token, challenge.validation)
    if challenge.remaining == 0:
        _flush_dns_waits(settings, challenge)
    return json.dumps({"challenge": "http-01", "token": token, "targets": written})


def _flush_dns_waits(settings: epages_config.Config, challenge: Challenge) -> None:
    """With mixed challenge types the last call may be HTTP-01: it publishes the DNS-01 values."""
    if settings.dns is None:
        return
    with pending(challenge.all_domains) as entries:
        if not any(e.get("state", PUBLISHED) in (PENDING, PUBLISHED) for e in entries):
            return
    client, records, published = _publishpending(settings, challenge)
    client.add(records)
    client.wait(published)


def _http_cleanup(settings: epages_config.Config, challenge: Challenge) -> None:
    from certbot_epages import http01

    http = _http_settings(settings)
    if http.mode != "files":
        return
    failures = http01.unpublish(http, str(challenge.token))
    if failures:
        raise http01.Http01Error("could not remove the challenge file from " + "; ".join(failures))


# ------------------------------------------------------------------------------ entry points


def _run(name: str, action: str, argv: Sequence[str] | None) -> int:
    verbose = list(argv or ()) in (["-v"], ["--verbose"])
    if argv and not verbose:
        print(f"{name}: takes no arguments but -v; certbot passes everything in CERTBOT_* "
              "variables", file=sys.stderr)
        return 2

    def body() -> int:
        challenge = read_environment(os.environ)
        if action == "auth":
            if challenge.token is None:
                _dns_auth(challenge)
            else:
                print(_http_auth(_settings(), challenge), flush=True)
        elif challenge.token is None:
            _dns_cleanup(challenge)
        else:
            _http_cleanup(_settings(), challenge)
        return 0

    return runner.run(f"{name}: {challenge_label()}".rstrip(": "), body, verbose=verbose)


def challenge_label() -> str:
    """``domain: `` prefix for error lines, when the domain variable is at least printable."""
    domain = os.environ.get("CERTBOT_DOMAIN", "")
    return f"{domain}: " if domain.isprintable() and 0 < len(domain) < 256 else ""


def auth_main(argv: Sequence[str] | None = None) -> int:
    """``certbot-epages-auth-hook``: publish one challenge (DNS-01 or HTTP-01)."""
    return _run("certbot-epages-auth-hook", "auth", sys.argv[1:] if argv is None else argv)


def cleanup_main(argv: Sequence[str] | None = None) -> int:
    """``certbot-epages-cleanup-hook``: remove exactly what the auth hook published."""
    return _run("certbot-epages-cleanup-hook", "cleanup", sys.argv[1:] if argv is None else argv)
