"""certbot's ``--deploy-hook`` (``certbot-epages-deploy-hook``) and ``certbot-epages deploy``.

After issuance or renewal certbot runs the hook once per lineage with ``RENEWED_LINEAGE``
(``<config-dir>/live/<name>``) and ``RENEWED_DOMAINS``. Without ``--defer`` the hook deploys
that lineage's shops at once. With ``--defer`` it only records the lineage in the spool, and
``certbot-epages deploy --pending`` (meant for ``--post-hook``) ships everything recorded in
one release: one reload per load balancer, however many certificates renewed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from certbot_epages import config as epages_config
from certbot_epages import runner
from certbot_epages.deploy import lineages
from certbot_epages.deploy.deployer import Deployer, DeployError, Report
from certbot_epages.deploy.spool import Spool
from certbot_epages.errors import ConfigError, EpagesError
from certbot_epages.inventory import validate_domain


def _pending_dir(settings: epages_config.Config) -> Path:
    directory = Spool(settings.need_deploy().spool).pending
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot create the --defer spool: {e.strerror}; check "
                          "deploy.spool") from None
    return directory


def defer(settings: epages_config.Config, lineage: lineages.Lineage) -> Path:
    """Record a renewed lineage for the next ``deploy --pending``."""
    path = _pending_dir(settings) / f"{lineage.name}.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"lineage": str(lineage.live), "time": time.time()}))
        tmp.replace(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot record the lineage: {e.strerror}; check "
                          "deploy.spool") from None
    return path


def take_pending(settings: epages_config.Config) -> tuple[list[lineages.Lineage], list[Path]]:
    """The recorded lineages (and their spool files, to delete once deployed)."""
    deploy = settings.need_deploy()
    found, files = [], []
    for path in sorted(_pending_dir(settings).glob("*.json")):
        try:
            recorded = json.loads(path.read_text())["lineage"]
            found.append(lineages.from_renewed(str(recorded), deploy.certbot_dir))
        except (OSError, ValueError, KeyError, TypeError, lineages.LineageError) as e:
            print(f"certbot-epages deploy: skipping {path}: {e}", file=sys.stderr)
        files.append(path)
    return found, files


def renewed_lineage(settings: epages_config.Config) -> lineages.Lineage:
    """The lineage certbot names in the environment, checked."""
    deploy = settings.need_deploy()
    path = os.environ.get("RENEWED_LINEAGE")
    if not path:
        raise ConfigError("RENEWED_LINEAGE is not set; run this as certbot's --deploy-hook")
    lineage = lineages.from_renewed(path, deploy.certbot_dir)
    for name in os.environ.get("RENEWED_DOMAINS", "").split():
        try:
            validate_domain(name)
        except ValueError as e:
            raise ConfigError(f"RENEWED_DOMAINS: {e}") from None
    return lineage


def hook_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the deploy hook."""
    parser = argparse.ArgumentParser(
        prog="certbot-epages-deploy-hook",
        description="certbot --deploy-hook: render nginx configs for the renewed lineage's "
        "shops and push them, with the certificate, to every load balancer. A deploy that "
        "fails records the lineage for 'certbot-epages deploy --pending'.",
    )
    parser.add_argument("--defer", action="store_true",
                        help="only record the lineage; 'certbot-epages deploy --pending' ships it")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the details of unexpected errors")
    args = parser.parse_args(argv)
    return runner.run(parser.prog, lambda: _hook(args.defer), verbose=args.verbose)


def _hook(deferred: bool) -> int:
    settings = epages_config.load()
    lineage = renewed_lineage(settings)
    if deferred:
        defer(settings, lineage)
        print(f"recorded {lineage.name} for 'certbot-epages deploy --pending'")
        return 0
    try:
        print(Deployer(settings).lineages([lineage]).summary())
    except EpagesError as e:
        # certbot ignores a failing deploy hook: keep the lineage for the next
        # 'certbot-epages deploy --pending' (or sync) instead of losing it.
        defer(settings, lineage)
        raise DeployError(f"{e} (recorded for 'certbot-epages deploy --pending')") from None
    return 0


def deploy_command(settings: epages_config.Config, *, pending: bool, everything: bool,
                   names: Sequence[str], force: bool = False) -> Report | None:
    """``certbot-epages deploy``: the pending lineages, everything, or named lineages."""
    deploy = settings.need_deploy()
    deployer = Deployer(settings)
    if everything:
        return deployer.everything(force=force)
    if pending:
        found, files = take_pending(settings)
        if not found:
            for path in files:
                path.unlink(missing_ok=True)
            return None
        report = deployer.lineages(found)
        for path in files:
            path.unlink(missing_ok=True)
        return report
    live = deploy.certbot_dir / "live"
    return deployer.lineages([lineages.load(live / name) for name in names])
