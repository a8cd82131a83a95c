"""Reaching a load balancer: read what it serves, rsync a release, test, switch, reload.

One ssh connection per load balancer and run is shared by every call (ControlMaster), since a
new connection costs a key exchange each time. Remote steps are the small POSIX sh scripts of
:mod:`.scripts`, every value quoted. ``ssh: local`` runs them on this machine without ssh.

Two locks on the load balancer itself (``flock``, which every Linux has) keep deploys from
different hosts apart: a run holds ``<root>/.deploy.lock`` for its whole length through a
session whose end (the run finished, crashed or was killed) releases it, and every step script
holds ``<root>/.step.lock`` while it runs, so a step left running by a killed deploy (a test
that flipped ``current``) finishes before the next deploy looks at ``current``.
"""

from __future__ import annotations

import contextlib
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from certbot_epages import ssh
from certbot_epages.config import LoadBalancerConfig
from certbot_epages.deploy import scripts
from certbot_epages.deploy.release import is_release_id
from certbot_epages.errors import EpagesError


class PushError(EpagesError):
    """A load balancer could not be reached, or one of its commands failed."""


class LockBusy(PushError):
    """Another run holds the deploy lock (raised only when told not to wait for it)."""


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
        self.owner: str | None = None  # this run's token, once it holds the deploy lock
        # While the lock is held: its session's output lines, and until when to wait for them.
        self._session: tuple[queue.Queue[str | None], float] | None = None
        self._truth_group: str | None = None
        self._ssh = [
            *ssh.command(lb.ssh_options),
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control_dir}/%C",
            "-o", "ControlPersist=60",
            # A dead network ends the session (and frees the deploy lock) within a minute.
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
        ]

    @property
    def name(self) -> str:  # noqa: D102
        return self.lb.name

    def _argv(self, script: str) -> list[str]:
        if self.lb.is_local:
            return ["sh", "-c", script]
        # ssh joins its arguments into one string for the remote shell: hand it one, quoted.
        return [*self._ssh, "--", self.lb.ssh, shlex.join(["sh", "-c", script])]

    def step(self, body: str) -> Result:
        """Run a step of this run's deploy, under the step lock.

        It runs only while this run still holds the deploy lock: a step left waiting by a run
        that gave up never runs late.
        """
        if self.owner is None:
            raise PushError(f"{self.name}: a deploy step without the deploy lock")
        return self.run(scripts.step(self.lb.root, body, self.owner))

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

    @contextlib.contextmanager
    def locked(self, owner: str, timeout: float, say: Callable[[str], None] = print,
               group: str | None = None, *, wait: bool = True) -> Iterator[None]:
        """Hold the load balancer's deploy lock for the ``with`` block.

        The lock lives as long as a remote ``cat`` reading this process's pipe: whatever ends
        this process also ends the session and frees the lock. ``owner`` is shown to a deploy
        that has to wait. Once the lock is held, the same session reads what the load balancer
        serves (:meth:`truth`; certificate versions of ``group``, see
        :func:`parse_versions`) while the caller goes on. Without ``wait``, a lock that
        another run holds raises :class:`LockBusy` at once.
        """
        argv = self._argv(scripts.script_hold_lock(self.lb.root, owner, timeout, group,
                                                   wait=wait))
        self._truth_group = group
        try:
            # A session of its own: Ctrl-C must not free the lock while a rollback still runs.
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as e:
            raise PushError(f"cannot run {argv[0]}: {e.strerror}") from None
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout + 30
        said: list[str] = []
        try:
            while True:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    raise PushError(f"no deploy lock on {self.name} within {timeout:g}s") from None
                if line == "LOCKED":
                    self.owner = owner
                    self._session = (lines, time.monotonic() + scripts.STEP_LOCK_TIMEOUT + 30)
                    break
                if line is None:
                    proc.wait(timeout=10)
                    if proc.returncode == scripts.LOCK_BUSY and not wait:
                        raise LockBusy(f"{self.name}: another deploy holds the deploy lock")
                    if proc.returncode == scripts.LOCK_BUSY:
                        raise PushError(
                            f"another deploy has held {self.lb.root}/.deploy.lock on {self.name} "
                            f"for over {timeout:g}s ({' '.join(said[-1:]) or 'holder unknown'})")
                    raise PushError(f"cannot take the deploy lock on {self.name}: "
                                    f"{_last(chr(10).join(said))}")
                if line.startswith("BUSY"):
                    say(f"{self.name}: waiting for another deploy to finish (held by "
                        f"{line[5:].strip() or 'unknown'})")
                said.append(line)
            yield
        finally:
            self.owner = None
            self._session = None
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()

    def truth(self) -> Truth:
        """What the load balancer serves, as the lock session read it once the lock was held.

        Raises :class:`PushError` if the session could not read it.
        """
        if self._session is None:
            raise PushError(f"{self.name}: reading what it serves without the deploy lock")
        lines, deadline = self._session
        sections: dict[str, list[str]] = {}
        section: list[str] | None = None
        said: list[str] = []  # lines before any section: why the session could not go on
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise PushError(f"{self.name}: no answer about what it serves within "
                                f"{scripts.STEP_LOCK_TIMEOUT}s") from None
            if line is None:
                raise PushError(f"{self.name}: the session holding the deploy lock ended "
                                "while it read what the load balancer serves"
                                + (": " + _last("\n".join(said)) if said else ""))
            if line == scripts.TRUTH_END:
                break
            if line == scripts.TRUTH_STEP_BUSY:
                why = _last("\n".join(said)) if said else "a step of another deploy holds it"
                raise PushError(f"{self.name}: cannot take {self.lb.root}/.step.lock: {why}")
            if line in (scripts.TRUTH_LIVE, scripts.TRUTH_VERSIONS):
                section = sections.setdefault(line, [])
            elif section is not None:
                section.append(line)
            else:
                said.append(line)
        live = _section_result(sections.get(scripts.TRUTH_LIVE))
        versions = _section_result(sections.get(scripts.TRUTH_VERSIONS))
        return Truth(parse_live(self, live), parse_versions(self, versions, self._truth_group))

    def pull(self, release_id: str, dest: Path, link_dest: Path | None) -> None:
        """Copy the load balancer's release ``release_id`` to the local directory ``dest``.

        The copy lands in a temporary directory first and replaces ``dest`` only when complete:
        a pull cut short never leaves a release whose manifest says more than it holds.
        """
        source_dir = f"{self.lb.root}/releases/{release_id}/"
        source = source_dir if self.lb.is_local else f"{_rsync_host(self.lb.ssh)}:{source_dir}"
        tmp = dest.parent / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        argv = ["rsync", "-a", "-s", "--delete", "--mkpath"]
        for linked in (dest, link_dest):
            if linked is not None and linked.is_dir():
                argv.append(f"--link-dest={linked.resolve()}")  # unchanged files: hard links
        if not self.lb.is_local:
            argv += ["-e", shlex.join(self._ssh)]
        argv += ["--", source, f"{tmp}/"]
        try:
            self._rsync(argv, f"rsync from {source}")
            old = dest.parent / f".{dest.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if dest.exists():
                dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def push_certs(self, store: Path, versions: Sequence[str], group: str) -> int:
        """Copy certificate versions (``<lineage>/<fp16>``) to ``<root>/certs/``; bytes sent.

        Files arrive mode 0640 with group ``group``: nginx workers, not only the root
        master, read them at handshake time. A version's content never changes (its name is
        its fingerprint); sending it again only repairs its mode and group. That the group
        took is checked by the phase-1 test (:func:`scripts.script_test`'s ``group_of``,
        :func:`wrong_group`), which needs no round trip of its own.
        """
        dest_dir = f"{self.lb.root}/certs/"
        dest = dest_dir if self.lb.is_local else f"{_rsync_host(self.lb.ssh)}:{dest_dir}"
        listing = "".join(f"{v}/fullchain.pem\n{v}/privkey.pem\n" for v in versions)
        argv = ["rsync", "-rlt", "-p", "-s", "--mkpath", "--stats",
                "--chmod=D0755,F0640", f"--chown=:{group}", "--files-from=-"]
        if not self.lb.is_local:
            argv += ["-e", shlex.join(self._ssh)]
        argv += ["--", f"{store}/", dest]
        try:
            done = subprocess.run(argv, input=listing, capture_output=True, text=True,
                                  errors="replace", timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PushError(f"copying certificates to {dest} took longer than "
                            f"{self.timeout:g}s") from None
        except OSError as e:
            raise PushError(f"cannot run rsync: {e.strerror}") from None
        if done.returncode != 0:
            if "chgrp" in done.stderr or "chown" in done.stderr or "ownership" in done.stderr:
                raise PushError(
                    f"cannot give the certificates in {dest_dir} to group {group!r}: "
                    f"{_last(done.stderr)}; the deploy user must be root or a member of "
                    f"{group!r} (deploy.load_balancers[].worker_group, the group nginx "
                    "workers run as)")
            raise PushError(f"copying certificates to {dest} failed: {_last(done.stderr)}")
        match = re.search(r"Total bytes sent: ([\d,.]+)", done.stdout)
        return int(re.sub(r"[,.]", "", match[1])) if match else 0

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
        stats = self._rsync(argv, f"rsync to {dest}")
        match = re.search(r"Total bytes sent: ([\d,.]+)", stats)
        return int(re.sub(r"[,.]", "", match[1])) if match else 0

    def _rsync(self, argv: list[str], what: str) -> str:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PushError(f"{what} took longer than {self.timeout:g}s") from None
        except OSError as e:
            raise PushError(f"cannot run rsync: {e.strerror}") from None
        if done.returncode != 0:
            raise PushError(f"{what} failed: {_last(done.stderr)}")
        return done.stdout

    def close(self) -> None:
        """End the shared ssh connection."""
        if not self.lb.is_local:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([*self._ssh, "-O", "exit", self.lb.ssh], capture_output=True,
                               timeout=10, check=False, stdin=subprocess.DEVNULL)


def wrong_group(root: str, got: str, group: str) -> str:
    """The problem when certificates sent to ``<root>/certs`` did not get the workers' group."""
    return (f"the certificates in {root}/certs/ belong to group {got or '?'}, not {group!r} "
            "(no such group there, or the deploy user may not give files to it): nginx "
            "workers could not read the keys; make the deploy user root or a member of that "
            "group, or set deploy.load_balancers[].worker_group to the group nginx workers "
            "run as")


def _rsync_host(destination: str) -> str:
    """``user@host`` as rsync wants it: an IPv6 address in brackets."""
    user, at, host = destination.rpartition("@")
    return f"{user}{at}[{host}]" if ":" in host else destination


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


@dataclass(frozen=True)
class Live:
    """What ``current`` points to on a load balancer."""

    release: str | None  # None: nothing deployed yet
    exists: bool = False  # the release directory is there
    manifest_sha256: str | None = None  # of its manifest.json, if it has one


@dataclass(frozen=True)
class Truth:
    """What a load balancer serves, read by the session that holds its deploy lock."""

    live: Live
    versions: frozenset[str]  # certificate versions it holds (see parse_versions)


def _section_result(lines: list[str] | None) -> Result:
    """A section of the lock session's output, as if its script had run on its own."""
    if not lines or not lines[-1].startswith("STATUS="):
        return Result(1, "\n".join(lines or ["no output"]))
    status = lines[-1].removeprefix("STATUS=")
    return Result(int(status) if status.isdigit() else 1, "".join(f"{x}\n" for x in lines[:-1]))


def parse_live(target: Target, result: Result) -> Live:
    """What :func:`scripts.script_prepare` said, or :class:`PushError`."""
    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    if result.status != 0 or "CURRENT" not in values:
        raise PushError(f"{target.name}: cannot prepare {target.lb.root}: "
                        f"{result.output.strip() or 'no output'}")
    live = values["CURRENT"].strip()
    if not live:
        return Live(None)
    if not is_release_id(live):
        raise PushError(
            f"{target.name}: {target.lb.root}/current points at {live!r}, not at a release of "
            "certbot-epages; point it at one (or remove it) by hand"
        )
    sha = values.get("MANIFEST", "").strip() or None
    return Live(live, exists=values.get("EXISTS") == "1", manifest_sha256=sha)


def read_manifest(target: Target) -> tuple[str | None, bytes | None]:
    """The release a load balancer serves and its manifest's bytes (None: none there)."""
    result = target.run(scripts.script_read_manifest(target.lb.root))
    head, sep, body = result.output.partition("\n--\n")
    if not head.startswith("CURRENT=") or not sep:
        raise PushError(f"{target.name}: cannot read {target.lb.root}/current: "
                        f"{_last(result.output)}")
    release_id = head[len("CURRENT="):].strip() or None
    if release_id is not None and not is_release_id(release_id):
        raise PushError(f"{target.name}: {target.lb.root}/current points at {release_id!r}, "
                        "not at a release of certbot-epages")
    return release_id, body.encode() if body.strip() else None


def parse_versions(target: Target, result: Result, group: str | None) -> frozenset[str]:
    """The certificate versions a load balancer holds (with ``group``: readable by workers).

    What :func:`scripts.script_list_versions` said; :class:`PushError` when the group is
    missing there or the deploy user cannot give files to it.
    """
    if result.status == scripts.NO_GROUP:
        raise PushError(f"there is no group {group!r} (deploy.load_balancers[].worker_group, "
                        "the group nginx workers run as); set it to the group of nginx's "
                        "'user' directive there")
    if result.status == scripts.NOT_IN_GROUP:
        raise PushError(f"the deploy user {result.output.strip()} is neither root nor a member "
                        f"of {group!r}, so it cannot give the certificates to nginx's workers; "
                        f"add it to {group!r} or deploy as root")
    if result.status != 0:
        raise PushError(f"cannot list {target.lb.root}/certs: {_last(result.output)}")
    found = (line.strip().removeprefix("./") for line in result.output.splitlines())
    return frozenset(v for v in found if scripts.VERSION_LINE.fullmatch(v))
