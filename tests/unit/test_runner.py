"""Every entry point ends the same way: one line, an exit status, details only on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbot_epages import runner
from certbot_epages.errors import ConfigError

pytestmark = pytest.mark.unit


def test_a_project_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise ConfigError("epages.yaml: deploy.spool: expected a path\nsecond line")

    assert runner.run("certbot-epages deploy", body) == 1
    err = capsys.readouterr().err
    assert err == "certbot-epages deploy: epages.yaml: deploy.spool: expected a path second line\n"


def test_an_unexpected_error_names_where_the_traceback_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def body() -> int:
        raise AssertionError("a bug")

    assert runner.run("certbot-epages-deploy-hook", body) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unexpected error: AssertionError: a bug" in err
    log = Path(err.split("traceback is in ")[1].split(";")[0])
    try:
        assert "Traceback" in log.read_text() and log.stat().st_mode & 0o077 == 0
    finally:
        log.unlink()


def test_verbose_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise KeyError("x")

    assert runner.run("certbot-epages", body, verbose=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    Path(err.split("traceback is in ")[1].split(";")[0]).unlink()


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise KeyboardInterrupt

    assert runner.run("certbot-epages sync", body) == 130
    assert capsys.readouterr().err == "certbot-epages sync: interrupted\n"


def test_the_body_status_passes_through() -> None:
    assert runner.run("x", lambda: 3) == 3
