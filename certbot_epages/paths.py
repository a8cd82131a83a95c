"""certbot's configuration directory and the config file in it: the defaults, written once.

Standard library only: the certbot plugin names the default config file without loading the
configuration code (which needs PyYAML).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CERTBOT_DIR = Path("/etc/letsencrypt")
"""certbot's --config-dir: ``live/<lineage>/``, ``renewal/``, ``accounts/``."""

DEFAULT_PATH = DEFAULT_CERTBOT_DIR / "epages.yaml"
"""epages.yaml, unless ``$CERTBOT_EPAGES_CONFIG`` or ``--config`` names another."""
