"""A manual hook is a process per challenge: the DNS-01 path loads only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# What only HTTP-01, deploys or inventory downloads need (and what they drag in).
NOT_ON_THE_DNS_PATH = ("certbot_epages.http01", "certbot_epages.resources", "jinja2",
                       "urllib.request", "http.client", "subprocess", "certbot", "acme")


def _loaded_after(code: str) -> list[str]:
    script = (f"import json, sys\n{code}\n"
              f"print(json.dumps([m for m in {NOT_ON_THE_DNS_PATH!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    return list(json.loads(done.stdout))


def test_the_dns01_hooks_import_no_http01_jinja2_or_http_client() -> None:
    assert _loaded_after("import certbot_epages.manual_hooks") == []


def test_reading_a_dns01_environment_imports_nothing_more() -> None:
    code = ("from certbot_epages import manual_hooks\n"
            "manual_hooks.read_environment({'CERTBOT_DOMAIN': 'shop.example',"
            " 'CERTBOT_VALIDATION': 'x' * 43})")
    assert _loaded_after(code) == []


def test_an_http01_environment_loads_the_http01_code() -> None:
    code = ("from certbot_epages import manual_hooks\n"
            "manual_hooks.read_environment({'CERTBOT_DOMAIN': 'shop.example',"
            " 'CERTBOT_TOKEN': 'tok', 'CERTBOT_VALIDATION': 'tok.thumb'})")
    assert "certbot_epages.http01" in _loaded_after(code)
