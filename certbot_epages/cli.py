"""``certbot-epages``: the operator's command line (sandbox; later check, deploy, sync, status)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from certbot_epages import __version__
from certbot_epages.errors import EpagesError
from certbot_epages.sandbox import commands as sandbox_commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="certbot-epages",
        description="Certificate automation around certbot for multi-tenant shop platforms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done, to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sandbox_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors become one line on stderr and exit status 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.func(args)
    except EpagesError as e:
        print(f"certbot-epages {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
