"""``certbot-epages sandbox up|down|env|demo``."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

from certbot_epages.sandbox import primary
from certbot_epages.sandbox.platform import Sandbox

DEFAULT_DIR = Path("/tmp/certbot-epages-sandbox")


def default_dir() -> Path:
    """``$CERTBOT_EPAGES_SANDBOX`` or /tmp/certbot-epages-sandbox."""
    return Path(os.environ.get("CERTBOT_EPAGES_SANDBOX") or DEFAULT_DIR)


def register(sub: Any) -> None:
    """Add the ``sandbox`` command to the top-level subparsers."""
    parser = sub.add_parser(
        "sandbox",
        help="run a local platform (BIND, pebble, nginx load balancers, sshd) on loopback",
        description="A real local platform for trying things and for tests: a primary name "
        "server (BIND, Knot DNS or PowerDNS), BIND secondary and resolver, pebble, two nginx "
        "load balancers behind sshd, and the HTTP-01 challenge service, each on its own "
        "loopback address. Needs root.",
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    for name, func, help_text in (
        ("up", _up, "start a sandbox and print how to use it"),
        ("down", _down, "stop every process of a sandbox and remove its addresses"),
        ("env", _env, "print shell exports for running certbot against a sandbox"),
        ("lag", _lag, "hold the secondary's zone transfers back by SECONDS (0 lifts it)"),
        ("demo", _demo, "start a sandbox, issue certificates with certbot, show what ran where"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--dir", type=Path, default=None,
            help=f"the sandbox directory (default: $CERTBOT_EPAGES_SANDBOX or {DEFAULT_DIR})",
        )
        if name == "lag":
            action.add_argument("seconds", type=float,
                                help="how long each transfer request waits (0: no lag)")
        if name == "demo":
            action.add_argument("--keep", action="store_true",
                                help="leave the sandbox running afterwards")
        if name in ("up", "demo"):
            action.add_argument("--dns", choices=primary.KINDS, default="bind",
                                help="the primary name server's software: BIND (default), "
                                "Knot DNS or PowerDNS")
        action.set_defaults(func=func)


def _up(args: argparse.Namespace) -> int:
    sandbox = Sandbox.up(args.dir or default_dir(), dns=args.dns)
    print(sandbox.usage())
    return 0


def _down(args: argparse.Namespace) -> int:
    sandbox = Sandbox.open(args.dir or default_dir())
    killed = sandbox.down()
    note = f" ({', '.join(killed)} did not stop on SIGTERM and were killed)" if killed else ""
    print(f"sandbox in {sandbox.directory} stopped{note}")
    return 0


def _env(args: argparse.Namespace) -> int:
    sandbox = Sandbox.open(args.dir or default_dir())
    for key, value in sandbox.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _lag(args: argparse.Namespace) -> int:
    sandbox = Sandbox.open(args.dir or default_dir())
    sandbox.hold_transfers(args.seconds)
    print(f"secondary transfers now wait {args.seconds:g} s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from certbot_epages.sandbox import demo

    return demo.run(args.dir or default_dir(), keep=args.keep, dns=args.dns)
