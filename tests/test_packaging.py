"""The tests run against the installed wheel: everything users need must be in it."""

from __future__ import annotations

import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

import certbot_epages
from certbot_epages import compat
from certbot_epages.resources import templates_dir

pytestmark = pytest.mark.unit


def test_package_is_imported_from_the_installed_wheel() -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(certbot_epages.__file__).resolve().is_relative_to(site), (
        "tests must run against the installed wheel (make test), not the checkout"
    )


def test_templates_are_installed() -> None:
    base = templates_dir()
    for name in ("nginx/acme-challenge-proxy.conf.j2", "nginx/challenge-service.conf.j2",
                 "sandbox/named-primary.conf.j2", "sandbox/epages.yaml.j2",
                 "systemd/certbot-epages-sync.timer", "systemd/certbot-epages-sync.path"):
        assert (base / name).is_file(), name


def test_metadata_and_console_script() -> None:
    dist = metadata.distribution("certbot-epages")
    assert dist.version == certbot_epages.__version__
    runtime = [r for r in dist.requires or [] if "extra ==" not in r]
    assert sorted(runtime) == sorted(
        f"{name}>={compat.version_text(floor)}" for name, floor in compat.FLOORS.items()
    ), "pyproject.toml's floors and certbot_epages/compat.py FLOORS must agree"
    scripts = {ep.name for ep in metadata.entry_points(group="console_scripts")}
    assert "certbot-epages" in scripts
    assert (Path(sys.executable).parent / "certbot-epages").exists()
    assert (Path(certbot_epages.__file__).parent / "py.typed").exists()
