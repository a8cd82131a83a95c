"""A manual hook is a process per call: what it loads, how the calls of a run find each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certbot_epages.hook_spool import choose_run_process

pytestmark = pytest.mark.unit

# What only HTTP-01, deploys or inventory downloads need (and what they drag in).
NOT_ON_THE_DNS_PATH = ("certbot_epages.http01", "certbot_epages.resources", "jinja2",
                       "certbot_epages.inventory", "urllib.request", "http.client", "subprocess",
                       "certbot", "acme")
# What a call that only records its value in the spool does not need either.
NOT_IN_A_SPOOL_ONLY_CALL = (*NOT_ON_THE_DNS_PATH, "certbot_epages.config", "yaml", "dns",
                            "dns.name")


def _loaded_after(code: str, modules: tuple[str, ...] = NOT_ON_THE_DNS_PATH,
                  env: dict[str, str] | None = None,
                  parent: list[str] | None = None) -> list[str]:
    script = (f"import json, sys\n{code}\n"
              f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))")
    done = subprocess.run([*(parent or []), sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60, check=True, env=env)
    return list(json.loads(done.stdout.splitlines()[-1]))


def _fake_certbot(directory: Path) -> list[str]:
    """A program named certbot that runs its arguments: the hook's parent, as in a real run."""
    program = directory / "certbot"
    program.write_text("import subprocess, sys\nsys.exit(subprocess.call(sys.argv[1:]))\n")
    return [sys.executable, str(program)]


def _spool_only_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(directory),
            "CERTBOT_EPAGES_CONFIG": str(directory / "missing.yaml"),
            "CERTBOT_DOMAIN": "shop.example", "CERTBOT_VALIDATION": "x" * 43,
            "CERTBOT_ALL_DOMAINS": "shop.example,*.shop.example",
            "CERTBOT_REMAINING_CHALLENGES": "1"}


def test_the_dns01_hooks_import_no_http01_jinja2_or_http_client() -> None:
    assert _loaded_after("import certbot_epages.manual_hooks", NOT_IN_A_SPOOL_ONLY_CALL) == []


def test_an_auth_call_that_is_not_the_last_loads_neither_config_nor_dnspython(
    tmp_path: Path,
) -> None:
    """It only records its value (the config it would read does not even exist)."""
    code = ("from certbot_epages import manual_hooks\n"
            "assert manual_hooks.auth_main([]) == 0")
    assert _loaded_after(code, NOT_IN_A_SPOOL_ONLY_CALL, _spool_only_env(tmp_path),
                         _fake_certbot(tmp_path)) == []


def test_without_a_recognisable_certbot_every_call_publishes_at_once(tmp_path: Path) -> None:
    """The later calls might not find a recorded value: so it goes out at once, which needs
    the config."""
    hook = "import sys\nfrom certbot_epages.manual_hooks import auth_main\nsys.exit(auth_main([]))"
    done = subprocess.run([sys.executable, "-c", hook],
                          env=_spool_only_env(tmp_path), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "missing.yaml: config file not found" in done.stderr


def test_what_a_dns01_call_that_talks_to_dns_imports() -> None:
    # Not urllib.request and http.client here: dnspython before 2.4 loads requests for DoH.
    ours = tuple(m for m in NOT_ON_THE_DNS_PATH if m not in ("urllib.request", "http.client"))
    code = "from certbot_epages import config, manual_hooks\nfrom certbot_epages.dns import client"
    assert _loaded_after(code, ours) == []


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


@pytest.mark.parametrize(
    ("ancestors", "chosen"),
    [
        # certbot runs the hook through `sh -c`, which may or may not stay in between.
        ([(30, ["/bin/sh", "-c", "/venv/bin/manual-auth-hook"]),
          (20, ["/venv/bin/python", "/venv/bin/certbot", "certonly"]), (10, ["bash"])],
         (20, True)),
        ([(20, ["/usr/bin/certbot", "renew"])], (20, True)),
        ([(20, ["/venv/bin/python", "-m", "certbot", "renew"])], (20, True)),
        ([(20, ["/venv/bin/python", "-c", "from certbot.main import main; main()", "renew"])],
         (20, True)),
        # A wrapper script per call between an unrecognisable certbot and the hook: the
        # wrapper is a shell, so the run is probably its parent (not certain: the hooks then
        # publish at once instead of leaving it to the last call).
        ([(40, ["/bin/sh", "/etc/hooks/auth.sh"]), (30, ["/opt/acme/run", "--all"]),
          (10, ["/sbin/init"])], (30, False)),
        ([(40, ["/bin/sh", "/etc/hooks/auth.sh"])], None),
    ],
)
def test_the_certbot_process_that_keys_the_spool(
    ancestors: list[tuple[int, list[str]]], chosen: tuple[int, bool] | None
) -> None:
    assert choose_run_process(ancestors) == chosen
