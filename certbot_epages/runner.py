"""How every entry point ends: ``certbot-epages``, the manual hooks and the deploy hook.

A project error (:class:`~certbot_epages.errors.EpagesError`) is one line on stderr (line
breaks in it, such as nginx's own output, become spaces) and exit status 1: its message
already says what is wrong and how to fix it. Anything unexpected is one
line saying so and where the traceback was written (also shown on stderr with ``-v``), exit 1.
Ctrl-C exits 130, as shells expect.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable

from certbot_epages.errors import EpagesError

INTERRUPTED = 130


def run(prog: str, body: Callable[[], int], *, verbose: bool = False) -> int:
    """Call ``body`` and turn whatever it raises into one line and an exit status."""
    try:
        return body()
    except EpagesError as e:
        print(f"{prog}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the last line of defence: say it, keep the details
        import traceback  # here: every manual-hook call runs through this module

        details = traceback.format_exc()
        where = _write_details(prog, details)
        if verbose:
            sys.stderr.write(details)
        print(f"{prog}: unexpected error: {type(e).__name__}: {e} (a bug: the traceback is "
              f"in {where}; -v shows it here)", file=sys.stderr)
        return 1


def _write_details(prog: str, details: str) -> str:
    """Write a traceback to a private file; its path, or a note why there is none."""
    import tempfile

    try:
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", prog)[:40]  # prog may hold a domain
        fd, path = tempfile.mkstemp(prefix=f"{safe}-{time.strftime('%Y%m%dT%H%M%S')}-",
                                    suffix=".log")
        with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
            f.write(details)
        return path
    except OSError as e:
        return f"no file ({e.strerror})"
