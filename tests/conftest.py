"""Shared fixtures: one sandbox platform for the whole integration session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from epages_testlib import fresh_sandbox

from certbot_epages.sandbox.platform import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox, stopped at the end of the session even when tests fail."""
    with fresh_sandbox() as platform:
        yield platform
