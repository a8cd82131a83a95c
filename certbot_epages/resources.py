"""Packaged resources: the templates shipped from the top-level ``templates/`` directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2


def templates_dir() -> Path:
    """The packaged templates directory (``templates/`` of the source tree)."""
    installed = Path(str(resources.files("certbot_epages"))) / "templates"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "templates"  # a source checkout


def jinja_env(directory: Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment for config files: undefined variables are errors, no HTML escaping."""
    import jinja2  # here, not at the top: the DNS-01 hooks never render and should not load it

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(directory or templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
