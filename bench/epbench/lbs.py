"""The sandbox's load balancers from outside: nginx processes, RSS, reloads, handshakes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from epages_testlib import served

from certbot_epages.sandbox.platform import LoadBalancer, Sandbox
from epbench.common import log, poll, run


def master_pid(lb: LoadBalancer) -> int:
    """The LB's nginx master."""
    return int((Path(lb.prefix) / "nginx.pid").read_text().strip())


def children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (the nginx workers of a master)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def workers(sb: Sandbox) -> dict[str, set[int]]:
    """Worker pids per load balancer."""
    return {lb.name: children(master_pid(lb)) for lb in sb.lbs}


def settle(sb: Sandbox, before: dict[str, set[int]], timeout: float = 300.0) -> float:
    """Wait until every LB runs new workers only (a reload took effect); seconds taken."""
    started = time.monotonic()

    def done() -> bool | None:
        now = workers(sb)
        ok = all(now[n] and not (now[n] & before[n]) for n in before)
        return True if ok else None

    poll("the load balancers' reload to take effect", done, timeout)
    return time.monotonic() - started


def reset_lbs(sb: Sandbox) -> None:
    """Remove every release from the LBs and reload: the state before any deploy."""
    before = workers(sb)
    for lb in sb.lbs:
        root = Path(lb.root)
        for link in (root / "current", root / ".current.new"):
            if link.is_symlink():
                link.unlink()
        releases = root / "releases"
        if releases.is_dir():
            for rel in releases.iterdir():
                shutil.rmtree(rel, ignore_errors=True)
        done = run(sb.nginx_argv(lb, "-s", "reload"), timeout=60)
        if not done.ok:
            raise RuntimeError(f"reload of {lb.name} failed: {done.stderr}")
    settle(sb, before)


DEPLOY_LINE = re.compile(r"(\w+): release (\S+) (live|NOT live.*?) \((\d+) file\(s\) changed, "
                         r"(\d+) bytes sent, (\d+) name\(s\) probed\)")


def deploy_summary(stdout: str) -> dict[str, Any]:
    """Per LB: files changed, bytes sent, names probed (from the summary lines)."""
    lbs = {m[1]: {"live": m[3] == "live", "changed": int(m[4]), "bytes_sent": int(m[5]),
                  "probed": int(m[6])} for m in DEPLOY_LINE.finditer(stdout)}
    return {
        "lbs": lbs,
        "bytes_sent": sum(v["bytes_sent"] for v in lbs.values()),
        "files_changed_per_lb": max((v["changed"] for v in lbs.values()), default=0),
        "names_probed_per_lb": max((v["probed"] for v in lbs.values()), default=0),
        "unchanged": "live releases are up to date" in stdout,
    }



def lb_nginx_rss(sb: Sandbox) -> dict[str, dict[str, int]]:
    """RSS of each LB's nginx master and its largest worker, in KiB."""
    out = {}
    for lb in sb.lbs:
        master = master_pid(lb)
        kids = children(master)
        out[lb.name] = {"master_kb": rss_kb(master),
                        "worker_kb": max((rss_kb(p) for p in kids), default=0),
                        "workers": len(kids)}
    return out


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def handshake_loop(lb: LoadBalancer, name: str, seconds: float, resume: bool) -> dict[str, Any]:
    """TLS 1.2 handshakes with SNI ``name`` for ``seconds``, one at a time, from this process.

    ``resume``: every handshake offers the session (ticket) of the first one. Each connection
    ends with close_notify (a session of a connection closed without it is not resumable).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the ticket arrives inside the handshake
    pids = children(master_pid(lb))
    cpu_before = cpu_seconds(pids)
    session = None
    count = reused = failures = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((lb.address, 443), timeout=3) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle wait
                tls = context.wrap_socket(raw, server_hostname=name, session=session)
                reused += 1 if tls.session_reused else 0
                if resume and session is None:
                    session = tls.session
                with contextlib.suppress(OSError, ssl.SSLError):
                    tls.unwrap()
                tls.close()
        except (OSError, ssl.SSLError):
            failures += 1
            continue
        count += 1
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pids) - cpu_before
    return {"name": name, "resume": resume, "handshakes": count, "reused": reused,
            "failures": failures, "seconds": round(elapsed, 3),
            "per_second": round(count / elapsed, 1),
            "worker_cpu_ms_per_handshake": round(1000 * cpu / count, 3) if count else None}


def handshakes(sb: Sandbox, names: dict[str, str], seconds: float) -> dict[str, Any]:
    """Full and resumed handshakes per second on lb1, per kind of name."""
    out: dict[str, Any] = {}
    for label, name in names.items():
        for resume in (False, True):
            result = handshake_loop(sb.lbs[0], name, seconds, resume)
            out[f"{label}_{'resumed' if resume else 'full'}"] = result
            log(f"  handshakes {label} {'resumed' if resume else 'full'}: "
                f"{result['per_second']}/s, worker {result['worker_cpu_ms_per_handshake']} ms "
                f"CPU each ({result['reused']} of {result['handshakes']} resumed)")
    return out



def bare_test_and_reload(sb: Sandbox, lb: LoadBalancer, settings: dict[str, Any]) -> dict[str, Any]:
    """nginx -t and a reload of the live config on one LB, run directly (no ssh, no render)."""
    test = run(list(settings["test"]), timeout=600)
    before = {lb.name: children(master_pid(lb))}
    reload_started = time.monotonic()
    reload = run(list(settings["reload"]), timeout=300)

    def effective() -> bool | None:
        now = children(master_pid(lb))
        return True if now and not (now & before[lb.name]) else None

    poll(f"{lb.name}'s reload to take effect", effective, 600)
    after = time.monotonic() - reload_started
    log(f"  bare nginx -t {test.seconds:.2f}s, reload until new workers only {after:.2f}s")
    return {"ok": test.ok and reload.ok, "test_seconds": round(test.seconds, 3),
            "test_peak_rss_kb": test.maxrss_kb, "reload_command_seconds": round(reload.seconds, 3),
            "new_workers_after_seconds": round(after, 3)}


# ------------------------------------------------------------------------------ machine facts


class ServedWatch:
    """Watches from outside while a command runs: when every name serves its certificate.

    ``expect`` gives the fingerprint each name must be served with on every load balancer (or
    None while that is not known yet: a new shop's certificate appears only once certbot has
    it). ``after`` is then the seconds from entering the watch until all were served, or None.
    """

    def __init__(self, sb: Sandbox, expect: Callable[[], dict[str, str] | None],
                 interval: float = 0.05) -> None:
        self.sb = sb
        self.expect = expect
        self.interval = interval
        self.after: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = 0.0

    def __enter__(self) -> ServedWatch:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            expected = self.expect()
            if expected and all(set(served(self.sb, name).values()) == {fingerprint}
                                for name, fingerprint in expected.items()):
                self.after = time.monotonic() - self._started
                return
            self._stop.wait(self.interval)
