"""Shared fixtures: one sandbox platform for the whole integration session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from epages_testlib import sandbox_dir

from certbot_epages.sandbox.platform import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox, stopped at the end of the session even when tests fail."""
    with sandbox_dir() as directory:
        platform = Sandbox.up(directory)
        try:
            yield platform
        finally:
            platform.down()
