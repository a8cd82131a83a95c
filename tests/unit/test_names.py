"""Domain-name rules that name files."""

from __future__ import annotations

import pytest

from certbot_epages.names import site_file

pytestmark = pytest.mark.unit


def test_a_site_file_name_fits_a_file_system_however_long_the_domain() -> None:
    long_name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "test"])[:253]
    other = long_name[:-1] + "x"
    assert len(site_file(long_name)) <= 255 and site_file(long_name).endswith(".conf")
    assert site_file(long_name) != site_file(other)
    assert "~" in site_file(long_name) and site_file("shop.test") == "shop.test.conf"
