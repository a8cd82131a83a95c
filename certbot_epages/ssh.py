"""How every ssh command of the package starts: the operator's options, then ours.

ssh keeps the first value given for an option, so ``ssh_options`` from epages.yaml (a key,
a port, a known_hosts file) win over these defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

NON_INTERACTIVE = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
"""Never wait for a password or host-key prompt, nor for a host that does not answer."""


def command(options: Sequence[str], *extra: str) -> list[str]:
    """``ssh`` with the operator's ``options``, then :data:`NON_INTERACTIVE`, then ``extra``."""
    return ["ssh", *options, *NON_INTERACTIVE, *extra]
