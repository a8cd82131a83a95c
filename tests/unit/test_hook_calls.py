"""The manual hooks without servers: certbot's variables checked, and a run's calls in the spool.

The DNS client is a fake that records what it was asked to add, await and remove, so these tests
pin which call of a run publishes, which one deletes, and what each prints.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.name
import pytest

from certbot_epages import hook_spool, manual_hooks
from certbot_epages.dns.chain import Location
from certbot_epages.hook_spool import runs_certbot
from certbot_epages.manual_hooks import Challenge, HookInputError, read_environment

pytestmark = pytest.mark.unit

VALUE_A = "a" * 43
VALUE_B = "B-_b" * 10
TOKEN = "tok-EN_1"


def env(**extra: str) -> dict[str, str]:
    return {"CERTBOT_DOMAIN": "Shop.Example", "CERTBOT_VALIDATION": VALUE_A, **extra}


# --- certbot's variables -----------------------------------------------------------------------


def test_a_dns01_environment() -> None:
    got = read_environment(env(CERTBOT_REMAINING_CHALLENGES="1",
                               CERTBOT_ALL_DOMAINS="shop.example,*.Shop.example",
                               CERTBOT_AUTH_OUTPUT="out"))
    assert got == Challenge("shop.example", VALUE_A, None, 1,
                            ("shop.example", "*.shop.example"), "out")


def test_defaults_one_domain_and_no_challenges_left() -> None:
    got = read_environment(env())
    assert (got.remaining, got.all_domains, got.auth_output) == (0, ("shop.example",), "")


def test_an_http01_environment() -> None:
    got = read_environment(env(CERTBOT_TOKEN=TOKEN, CERTBOT_VALIDATION=f"{TOKEN}.thumb-PRINT"))
    assert (got.token, got.validation) == (TOKEN, f"{TOKEN}.thumb-PRINT")


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        ({"CERTBOT_DOMAIN": ""}, "CERTBOT_DOMAIN is not set"),
        ({"CERTBOT_VALIDATION": ""}, "CERTBOT_VALIDATION is not set"),
        ({"CERTBOT_VALIDATION": "a b"}, "CERTBOT_VALIDATION: a DNS-01 value is base64url"),
        ({"CERTBOT_VALIDATION": "x" * 256}, "CERTBOT_VALIDATION: a DNS-01 value"),
        ({"CERTBOT_DOMAIN": "shop..example"}, "CERTBOT_DOMAIN: 'shop..example' is not a valid"),
        ({"CERTBOT_ALL_DOMAINS": "shop.example,bad_name!"}, "CERTBOT_ALL_DOMAINS: 'bad_name!'"),
        ({"CERTBOT_REMAINING_CHALLENGES": "-1"}, "CERTBOT_REMAINING_CHALLENGES: expected"),
        ({"CERTBOT_REMAINING_CHALLENGES": "1e3"}, "CERTBOT_REMAINING_CHALLENGES: expected"),
        ({"CERTBOT_TOKEN": "../etc"}, "CERTBOT_TOKEN: not a base64url token"),
        ({"CERTBOT_TOKEN": TOKEN, "CERTBOT_VALIDATION": "other.thumb"},
         "an HTTP-01 value is '<CERTBOT_TOKEN>.<account thumbprint>'"),
        ({"CERTBOT_TOKEN": TOKEN, "CERTBOT_VALIDATION": f"{TOKEN}.thumb;rm"},
         "an HTTP-01 value"),
    ],
)
def test_a_bad_variable_is_named(variables: dict[str, str], names: str) -> None:
    with pytest.raises(HookInputError) as caught:
        read_environment(env(**variables))
    assert names in str(caught.value)


@pytest.mark.parametrize(
    ("domain", "label"),
    [("shop.example", "shop.example: "), ("", ""), ("bad\nname", ""), ("x" * 300, "")],
)
def test_error_lines_name_a_printable_domain(monkeypatch: pytest.MonkeyPatch, domain: str,
                                             label: str) -> None:
    monkeypatch.setenv("CERTBOT_DOMAIN", domain)
    assert manual_hooks.challenge_label() == label


@pytest.mark.parametrize(
    ("argv", "certbot"),
    [
        (["/usr/bin/certbot", "renew"], True),
        (["/venv/bin/python3", "/venv/bin/certbot", "certonly"], True),
        (["python3", "-m", "certbot"], True),
        (["python3", "-c", "from certbot.main import main; main()"], True),
        (["python3", "-m", "certbot_epages"], False),
        (["/bin/sh", "-c", "manual-auth-hook"], False),
        (["python3"], False),
        ([], False),
    ],
)
def test_which_command_lines_run_certbot(argv: list[str], certbot: bool) -> None:
    assert runs_certbot(argv) is certbot


def test_the_arguments_a_hook_takes() -> None:
    assert manual_hooks.auth_main(["--force"]) == 2
    assert manual_hooks.cleanup_main(["x"]) == 2


# --- the calls of one run --------------------------------------------------------------------

ZONE = dns.name.from_text("acme.platform.example")


def record_of(domain: str) -> dns.name.Name:
    return dns.name.from_text(f"{domain.removeprefix('*.').replace('.', '-')}", ZONE)


@dataclass
class FakeClient:
    """Records what the hooks asked of DNS."""

    added: list[list[tuple[str, str]]] = field(default_factory=list)
    awaited: list[list[tuple[str, str]]] = field(default_factory=list)
    removed: list[list[tuple[str, str]]] = field(default_factory=list)
    located: list[str] = field(default_factory=list)

    def locate(self, domain: str) -> Location:
        self.located.append(domain)
        record = record_of(domain)
        return Location(domain, (record,), ZONE, record)

    def manages(self, zone: dns.name.Name) -> bool:
        return bool(zone == ZONE)

    def may_write(self, domain: str, record: dns.name.Name, zone: dns.name.Name) -> bool:
        return bool(record == record_of(domain))

    def add(self, records: list[tuple[Location, str]]) -> None:
        self.added.append(_seen(records))

    def wait(self, records: list[tuple[Location, str]]) -> None:
        self.awaited.append(_seen(records))

    def remove(self, records: list[tuple[Location, str]]) -> None:
        self.removed.append(_seen(records))


def _seen(records: list[tuple[Location, str]]) -> list[tuple[str, str]]:
    return sorted((str(location.record), value) for location, value in records)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    """A run of certbot (pid 4242) whose hooks talk to a fake DNS client."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    fake = FakeClient()
    monkeypatch.setattr(manual_hooks, "run_process", lambda: (4242, True))
    monkeypatch.setattr(hook_spool, "run_process", lambda: (4242, True))
    monkeypatch.setattr(manual_hooks, "_settings", lambda: object())
    monkeypatch.setattr(manual_hooks, "_dns_client", lambda settings: fake)
    yield fake


def call(action: str, domain: str, value: str, remaining: int,
         all_domains: str = "shop.example,*.shop.example", auth_output: str = "") -> None:
    challenge = Challenge(domain, value, None, remaining, tuple(all_domains.split(",")),
                          auth_output)
    if action == "auth":
        manual_hooks._dns_auth(challenge)
    else:
        manual_hooks._dns_cleanup(challenge)


def test_the_last_auth_call_publishes_and_awaits_every_value_and_cleanup_deletes_once(
        client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    call("auth", "shop.example", VALUE_A, remaining=1)
    first = json.loads(capsys.readouterr().out)
    assert first == {"challenge": "dns-01", "domain": "shop.example", "value": VALUE_A,
                     "state": "pending"}
    assert client.added == [] and client.located == []  # only recorded in the spool

    call("auth", "*.shop.example", VALUE_B, remaining=0)
    both = sorted([(str(record_of("shop.example")), VALUE_A),
                   (str(record_of("*.shop.example")), VALUE_B)])
    assert client.added == [both]
    assert client.awaited == [both]
    last = json.loads(capsys.readouterr().out)
    assert (last["domain"], last["value"], last["record"]) == (
        "*.shop.example", VALUE_B, str(record_of("*.shop.example")))

    call("cleanup", "shop.example", VALUE_A, remaining=1)
    assert client.removed == [both]  # the first cleanup call deletes the run's values
    call("cleanup", "*.shop.example", VALUE_B, remaining=0)
    assert client.removed == [both]  # the later ones find nothing left


def test_a_value_never_published_is_only_forgotten(client: FakeClient) -> None:
    call("auth", "shop.example", VALUE_A, remaining=1)
    call("cleanup", "shop.example", VALUE_A, remaining=1)  # the run failed before its last call
    assert client.removed == [] and client.added == []
    call("auth", "*.shop.example", VALUE_B, remaining=0, all_domains="shop.example,*.shop.example")
    assert client.added == [[(str(record_of("*.shop.example")), VALUE_B)]]


def test_without_a_recognisable_certbot_every_call_publishes(
        client: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manual_hooks, "run_process", lambda: (4242, False))
    call("auth", "shop.example", VALUE_A, remaining=1)
    assert client.added == [[(str(record_of("shop.example")), VALUE_A)]]
    assert client.awaited == []  # only the last call waits
    call("auth", "*.shop.example", VALUE_B, remaining=0)
    assert client.added[-1] == [(str(record_of("*.shop.example")), VALUE_B)]
    assert len(client.awaited) == 1 and len(client.awaited[0]) == 2


def test_cleanup_without_the_spool_deletes_what_the_auth_output_describes(
        client: FakeClient) -> None:
    record = str(record_of("shop.example"))
    described = json.dumps({"challenge": "dns-01", "domain": "shop.example",
                            "zone": str(ZONE), "record": record, "value": VALUE_A})
    call("cleanup", "shop.example", VALUE_A, remaining=0, all_domains="shop.example",
         auth_output=described)
    assert client.removed == [[(record, VALUE_A)]] and client.located == []


@pytest.mark.parametrize(
    "described",
    [
        "not json",
        json.dumps({"zone": str(ZONE), "record": str(ZONE), "value": VALUE_A,
                    "domain": "shop.example"}),  # the zone's apex: never
        json.dumps({"zone": "other.example", "record": "x.other.example", "value": VALUE_A,
                    "domain": "shop.example"}),  # not a managed zone
        json.dumps({"zone": str(ZONE), "record": str(record_of("shop.example")),
                    "value": VALUE_B, "domain": "shop.example"}),  # another value
    ],
)
def test_cleanup_follows_the_chain_again_when_the_auth_output_is_not_this_challenge(
        client: FakeClient, described: str) -> None:
    call("cleanup", "shop.example", VALUE_A, remaining=0, all_domains="shop.example",
         auth_output=described)
    assert client.located == ["shop.example"]
    assert client.removed == [[(str(record_of("shop.example")), VALUE_A)]]


def test_spool_files_are_private_and_old_ones_are_swept(client: FakeClient) -> None:
    call("auth", "shop.example", VALUE_A, remaining=1)
    spool = hook_spool.spool_dir()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    (current,) = spool.glob("dns01-*.json")
    assert stat.S_IMODE(current.stat().st_mode) == 0o600
    old = spool / "dns01-0123456789abcdef0123.json"
    old.write_text("[]")
    then = time.time() - hook_spool.PENDING_MAX_AGE - 10
    os.utime(old, (then, then))
    call("auth", "*.shop.example", VALUE_B, remaining=1)
    assert sorted(spool.glob("dns01-*.json")) == [current]


def test_a_spool_directory_others_may_enter_is_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    spool = tmp_path / f"certbot-epages-{os.getuid()}"
    spool.mkdir(mode=0o755)
    spool.chmod(0o755)
    with pytest.raises(Exception, match="mode 0700; remove it"):
        hook_spool.spool_dir()
