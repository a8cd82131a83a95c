"""``certbot-epages``: the operator's command line.

Subcommands: check, deploy, sync, status, http01-snippet, sandbox.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from certbot_epages import __version__, config, runner
from certbot_epages.errors import EpagesError
from certbot_epages.names import validate_domain
from certbot_epages.sandbox import commands as sandbox_commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="certbot-epages",
        description="Certificate automation around certbot for multi-tenant shop platforms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done, to stderr")
    parser.add_argument(
        "--config", metavar="PATH", default=None,
        help=f"epages.yaml (default: ${config.ENV_VAR}, else {config.DEFAULT_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check", help="check that domains are ready for DNS-01 through the managed zones",
        description="Per domain: the CNAME chain, the managed zone, which primary accepts a "
        "signed probe update (added, awaited on every authoritative server, deleted again) and "
        "what each authoritative server answers. Exits 1 if any domain is not ready.",
    )
    check.add_argument("domains", nargs="*", metavar="DOMAIN")
    check.add_argument("--json", action="store_true", help="print JSON for machines")
    check.add_argument("--clean", action="store_true",
                       help="first delete what ended runs left in DNS (values older than "
                       "dns.stale_after, deletes that were not confirmed)")
    check.set_defaults(func=_check)
    deploy = sub.add_parser(
        "deploy", help="render nginx configs and push them with certificates to the LBs",
        description="Build one release for every load balancer, test it there, and switch "
        "all of them to it, or none (see the README's deploy section).",
    )
    what = deploy.add_mutually_exclusive_group(required=True)
    what.add_argument("--pending", action="store_true",
                      help="ship the lineages recorded by 'deploy-hook --defer' (for --post-hook)")
    what.add_argument("--all", action="store_true", dest="everything",
                      help="render the whole inventory (first deploy, template changes)")
    what.add_argument("--lineage", action="append", default=[], metavar="NAME",
                      help="ship the shops of this certbot lineage (repeatable)")
    deploy.add_argument("--force", action="store_true",
                        help="with --all: allow removing more than half of the sites")
    deploy.set_defaults(func=_deploy)
    sync = sub.add_parser(
        "sync", help="issue, renew, re-issue and drop certificates as the shop list says, "
        "then deploy",
        description="Plan from the inventory and certbot's lineages, preflight every "
        "certificate to be ordered, stay within the rate-limit budgets, run certbot for each, "
        "deploy once, and record every domain's status. Two full syncs never run at once. "
        "With --domain, only the shops whose entry lists one of the names: their "
        "certificates are ordered and deployed at once, beside a full sync that is running "
        "(it waits only for the certbot run and the deploy in progress); it exits 1 unless "
        "every one of them is certified and deployed (the output and 'status' say why). "
        "Arguments after '--' go to every certbot run.",
    )
    sync.add_argument("--domain", action="extend", nargs="+", default=[], metavar="DOMAIN",
                      help="only the shops whose domain or alias this is (repeatable, or "
                      "several names); the shop software calls this when a tenant adds a "
                      "domain; a name no inventory entry lists is an error")
    sync.add_argument("--dry-run", action="store_true",
                      help="print the plan and change nothing")
    sync.add_argument("certbot_args", nargs="*", metavar="-- CERTBOT_ARGS",
                      help="passed to every certbot run")
    sync.set_defaults(func=_sync)
    status = sub.add_parser(
        "status", help="every domain: certificate, expiry, challenge, error and fix, next action",
        description="Per domain: certificate present, names, expiry, challenge used, last error "
        "and its fix, next action, and which release is live on which load balancer.",
    )
    status.add_argument("--json", action="store_true", help="JSON for the shop software")
    status.add_argument("--prometheus", metavar="FILE", type=Path,
                        help="also write a node_exporter textfile")
    status.set_defaults(func=_status)
    snippet = sub.add_parser(
        "http01-snippet",
        help="print the certbot account's thumbprint and the stateless HTTP-01 nginx snippet",
        description="For http01.mode: stateless. The load balancers answer every HTTP-01 token "
        "with <token>.<thumbprint> from this snippet alone, so no challenge files or challenge "
        "service are needed. It is valid for one ACME account: re-render it if the account "
        "changes.",
    )
    snippet.add_argument("--config-dir", type=Path, default=Path("/etc/letsencrypt"),
                         help="certbot's configuration directory (default: /etc/letsencrypt)")
    snippet.add_argument("--server", default=None,
                         help="the ACME directory URL certbot uses (default: Let's Encrypt)")
    snippet.add_argument("--account", default=None,
                         help="the certbot account id, if there are several")
    snippet.set_defaults(func=_http01_snippet)
    sandbox_commands.register(sub)
    return parser


def _sync(args: argparse.Namespace) -> int:
    from certbot_epages.fleet.sync import Sync

    settings = config.load(args.config)
    report = Sync(settings, domains=args.domain, certbot_args=args.certbot_args,
                  dry_run=args.dry_run).run()
    if args.dry_run:
        return 0
    if args.domain:
        return 0 if report.all_served() else 1
    return 1 if report.count("failed") or report.deploy_error else 0


def _status(args: argparse.Namespace) -> int:
    import time

    from certbot_epages.fleet import status

    settings = config.load(args.config)
    document = status.collect(settings, now=time.time())
    if args.prometheus is not None:
        status.write_prometheus(args.prometheus, document)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(status.render_table(document))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from certbot_epages.deploy import hook

    settings = config.load(args.config)
    report = hook.deploy_command(settings, pending=args.pending, everything=args.everything,
                                 names=args.lineage, force=args.force)
    print(report.summary() if report else "nothing pending")
    return 0


def _http01_snippet(args: argparse.Namespace) -> int:
    from certbot_epages import http01

    server = args.server or http01.default_server()
    accounts = http01.account_thumbprints(args.config_dir, server)
    if args.account is not None:
        accounts = {k: v for k, v in accounts.items() if k == args.account}
    if len(accounts) != 1:
        known = ", ".join(sorted(http01.account_thumbprints(args.config_dir, server))) or "none"
        raise EpagesError(
            f"expected exactly one certbot account for {server} in {args.config_dir}, found: "
            f"{known}; choose one with --account"
        )
    (account, thumbprint), = accounts.items()
    print(f"# certbot account {account} at {server}")
    print(f"# thumbprint {thumbprint}")
    print(http01.stateless_snippet(thumbprint), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from certbot_epages.dns import check, client

    settings = config.load(args.config)
    dns_settings = settings.need_dns("check")
    if not args.domains and not args.clean:
        raise EpagesError("name at least one DOMAIN to check, or use --clean")
    domains = []
    for domain in args.domains:
        try:
            domains.append(validate_domain(domain))
        except ValueError as e:
            raise EpagesError(f"{domain!r} is not a domain name: {e}") from None
    dns_client = client.from_config(dns_settings)
    cleaned = check.clean(dns_client) if args.clean else None
    reports = [check.check_domain(dns_client, domain) for domain in domains]
    if cleaned is not None:
        print(check.render_clean(cleaned), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
    elif reports:
        print("\n".join(check.render(r) for r in reports))
    failed = cleaned is not None and bool(cleaned.failures)
    return 0 if all(r.ready for r in reports) and not failed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors become one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return runner.run(f"certbot-epages {args.command}", lambda: int(args.func(args)),
                      verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
