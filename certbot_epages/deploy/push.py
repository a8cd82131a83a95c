"""Reaching a load balancer: rsync a release, run its test and reload commands, switch.

One ssh connection per load balancer and run is shared by every call (ControlMaster), since a
new connection costs a key exchange each time. Remote steps are small POSIX sh scripts built
with every value quoted (:func:`shlex.quote`); values were validated before they got here.
``ssh: local`` runs the same scripts on this machine without ssh.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certbot_epages.config import LoadBalancerConfig
from certbot_epages.deploy.release import is_release_id
from certbot_epages.errors import EpagesError


class PushError(EpagesError):
    """A load balancer could not be reached, or one of its commands failed."""


@dataclass(frozen=True)
class Result:
    """What a remote step printed, and its exit status."""

    status: int
    output: str


class Target:
    """One load balancer, reached over ssh (or locally), for one deploy run."""

    def __init__(self, lb: LoadBalancerConfig, control_dir: Path, timeout: float = 120) -> None:
        self.lb = lb
        self.timeout = timeout
        self._ssh = [
            "ssh", *lb.ssh_options,
            # After the operator's options: ssh keeps the first value given for an option.
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control_dir}/%C",
            "-o", "ControlPersist=60",
        ]

    @property
    def name(self) -> str:  # noqa: D102
        return self.lb.name

    def _argv(self, script: str) -> list[str]:
        if self.lb.is_local:
            return ["sh", "-c", script]
        # ssh joins its arguments into one string for the remote shell: hand it one, quoted.
        return [*self._ssh, "--", self.lb.ssh, shlex.join(["sh", "-c", script])]

    def run(self, script: str) -> Result:
        """Run ``script`` with sh on the load balancer; output is stdout and stderr together."""
        argv = self._argv(script)
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace",
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PushError(
                f"no answer within {self.timeout:g}s from {self.lb.ssh}; check that it is "
                "reachable and that the command does not wait for input"
            ) from None
        except OSError as e:
            raise PushError(f"cannot run {argv[0]}: {e.strerror}") from None
        if done.returncode == 255 and not self.lb.is_local:
            raise PushError(f"ssh to {self.lb.ssh} failed: {_last(done.stdout)}; check "
                            "ssh_options (key, port, known_hosts)")
        return Result(done.returncode, done.stdout)

    def rsync(self, source: Path, release_id: str, link_dest: str | None) -> int:
        """Copy a local release to ``<root>/releases/<id>/``; returns the bytes sent."""
        dest_dir = f"{self.lb.root}/releases/{release_id}/"
        dest = dest_dir if self.lb.is_local else f"{_rsync_host(self.lb.ssh)}:{dest_dir}"
        argv = ["rsync", "-a", "-s", "--delete", "--mkpath", "--stats"]
        if link_dest:
            argv.append(f"--link-dest=../{link_dest}")  # relative to the destination
        if not self.lb.is_local:
            argv += ["-e", shlex.join(self._ssh)]
        argv += ["--", f"{source}/", dest]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PushError(f"rsync took longer than {self.timeout:g}s") from None
        except OSError as e:
            raise PushError(f"cannot run rsync: {e.strerror}") from None
        if done.returncode != 0:
            raise PushError(f"rsync to {dest} failed: {_last(done.stderr)}")
        match = re.search(r"Total bytes sent: ([\d,.]+)", done.stdout)
        return int(re.sub(r"[,.]", "", match[1])) if match else 0

    def close(self) -> None:
        """End the shared ssh connection."""
        if not self.lb.is_local:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([*self._ssh, "-O", "exit", self.lb.ssh], capture_output=True,
                               timeout=10, check=False, stdin=subprocess.DEVNULL)


def _rsync_host(destination: str) -> str:
    """``user@host`` as rsync wants it: an IPv6 address in brackets."""
    user, at, host = destination.rpartition("@")
    return f"{user}{at}[{host}]" if ":" in host else destination


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- the scripts run on a load balancer ------------------------------------------------------


def _switch(root: str, target: str | None) -> str:
    """Point ``<root>/current`` at ``releases/<target>`` atomically (rename of a new symlink)."""
    r = shlex.quote(root)
    if target is None:
        return f"rm -f {r}/current"
    link = shlex.quote(f"releases/{target}")
    return f"ln -sfn {link} {r}/.current.new && mv -Tf {r}/.current.new {r}/current"


SWITCH_FAILED = 97  # exit status of a script whose switch of `current` failed
RESTORE_FAILED = 98  # ... whose switch back failed


def script_prepare(root: str) -> str:
    """Create the tree if needed and print ``CURRENT=<live release id>`` (empty if none)."""
    r = shlex.quote(root)
    return (f"mkdir -p {r}/releases || exit 1\n"
            f"target=$(readlink {r}/current 2>/dev/null) || target=\n"
            f'printf "CURRENT=%s\\n" "${{target##*/}}"')


def live_release(target: Target) -> str | None:
    """The id of the release a load balancer serves now (None for a first deploy)."""
    result = target.run(script_prepare(target.lb.root))
    found = [line[len("CURRENT="):] for line in result.output.splitlines()
             if line.startswith("CURRENT=")]
    if result.status != 0 or not found:
        raise PushError(f"{target.name}: cannot prepare {target.lb.root}: "
                        f"{result.output.strip() or 'no output'}")
    live = found[-1].strip()
    if not live:
        return None
    if not is_release_id(live):
        raise PushError(
            f"{target.name}: {target.lb.root}/current points at {live!r}, not at a release of "
            "certbot-epages; point it at one (or remove it) by hand"
        )
    return live


def script_test(root: str, candidate: str, live: str | None, test: Sequence[str]) -> str:
    """Point ``current`` at the candidate, run the test, point it back.

    Nothing reloads meanwhile, so the running nginx never loads the candidate unless it passes
    on every load balancer. The switch back also runs if the script is interrupted.
    """
    restore = _switch(root, live)
    return "\n".join([
        f"trap '{restore.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}' "
        "HUP INT TERM",
        _switch(root, candidate) + f" || exit {SWITCH_FAILED}",
        f"{shlex.join(test)} 2>&1",
        "status=$?",
        "trap - HUP INT TERM",
        restore + f" || exit {RESTORE_FAILED}",
        "exit $status",
    ])


def script_go_live(root: str, candidate: str, reload: Sequence[str]) -> str:
    """Switch ``current`` to the candidate and reload."""
    return f"{_switch(root, candidate)} || exit {SWITCH_FAILED}\n{shlex.join(reload)} 2>&1"


def script_roll_back(root: str, live: str | None, reload: Sequence[str]) -> str:
    """Switch ``current`` back to the release that served before, and reload."""
    return f"{_switch(root, live)} || exit {RESTORE_FAILED}\n{shlex.join(reload)} 2>&1"


def script_discard(root: str, release: str, live: str | None) -> str:
    """Remove a candidate that never went live; first put `current` back if it points there."""
    r = shlex.quote(root)
    return "\n".join([
        f'if [ "$(readlink {r}/current 2>/dev/null)" = {shlex.quote(f"releases/{release}")} ]; '
        f"then {_switch(root, live)}; fi",
        f"rm -rf {shlex.quote(f'{root}/releases/{release}')}",
    ])


def script_prune(root: str, keep: int, protect: Sequence[str]) -> str:
    """Delete the oldest releases beyond ``keep``, sparing the ``protect`` ids."""
    r = shlex.quote(root)
    spared = " ".join(shlex.quote(p) for p in protect) or "''"
    return "\n".join([
        f"cd {r}/releases || exit 0",
        f"ls -1 | grep -E '^[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{4}}$' | sort | head -n -{int(keep)} |",
        "while read -r id; do",
        f"  case \" {spared} \" in *\" $id \"*) continue ;; esac",
        '  rm -rf -- "$id"',
        "done",
    ])
