"""The deploy's probe: when a load balancer counts as serving the new release."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from certbot_epages.deploy import probe
from certbot_epages.deploy.marker import NAME as MARKER
from certbot_epages.netaddr import HostPort

pytestmark = pytest.mark.unit

ADDRESS = HostPort("127.0.0.1", 443)


def _serving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Iterator[str]]) -> list[str]:
    """Make each handshake for a name get the next of its answers; the names asked, in order."""
    asked: list[str] = []
    lock = threading.Lock()

    def served(address: HostPort, name: str, timeout: float = 3.0) -> str:
        with lock:
            asked.append(name)
            return next(answers[name])

    monkeypatch.setattr(probe, "served_fingerprint", served)
    return asked


def test_an_old_worker_answering_after_the_new_ones_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a.test: new, then once more from an old worker still accepting, then new for good.
    asked = _serving(monkeypatch, {"a.test": iter(["new", "old", "new", "new", "new"]),
                                   MARKER: iter(["m2", "m2", "m2", "m2"])})
    wrong = probe.wait_served(ADDRESS, {"a.test": "new", MARKER: "m2"}, timeout=10)
    assert wrong == {}
    assert asked.count("a.test") == 4  # new, old (confirmation), new, new (confirmation)


def test_a_load_balancer_that_goes_back_to_the_old_certificate_fails_the_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def old_after_first() -> Iterator[str]:
        yield "new"
        while True:
            yield "old"

    _serving(monkeypatch, {"a.test": old_after_first()})
    wrong = probe.wait_served(ADDRESS, {"a.test": "new"}, timeout=0.5)
    assert list(wrong) == ["a.test"] and "expected new" in wrong["a.test"]


def test_the_confirmation_asks_the_marker_and_a_few_names_not_all() -> None:
    expected = {f"s{i:03d}.test": "x" for i in range(100)} | {MARKER: "m"}
    names = probe._confirmation(expected)
    assert names[0] == MARKER and len(names) == probe.CONFIRM_NAMES
