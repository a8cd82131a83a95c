"""Stay within Let's Encrypt's limits: a persisted ledger of orders, certificates and failures.

The ledger remembers what earlier runs did (new orders, issued certificates, failed validations
and each lineage's consecutive failures) and :meth:`Ledger.admit` decides, before certbot runs
for a lineage, whether it may go now or must wait, and until when and why. All times are epoch
seconds and are passed in, so the logic never reads the clock itself.

Runs share the ledger file (a full sync and any number of ``sync --domain``): every change goes
through :func:`update`, which re-reads the file under a short lock, applies the change and
writes it back, so no run's record overwrites another's.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from certbot_epages.errors import EpagesError
from certbot_epages.fleet.locks import must_hold

__all__ = [
    "BACKOFF",
    "Decision",
    "Ledger",
    "LedgerError",
    "Limits",
    "registered_domain",
    "update",
]

T = TypeVar("T")
LOCK_TIMEOUT = 60.0
"""Seconds to wait for another run's ledger update (each holds the lock for milliseconds)."""

BACKOFF: tuple[float, ...] = (60.0, 600.0, 6000.0, 86400.0)
"""Seconds to wait after the 1st, 2nd, 3rd and 4th-or-later consecutive failure of a lineage."""

_FORMAT_VERSION = 1
_MAX_ERROR_IN_REASON = 200


class LedgerError(EpagesError):
    """The ledger file cannot be read, is corrupt, or cannot be written."""


@dataclass(frozen=True)
class Limits:
    """Let's Encrypt's published numbers as defaults."""

    orders_per_account: int = 300
    """New orders per account per ``orders_window``."""
    orders_window: float = 3 * 3600
    certs_per_registered_domain: int = 50
    """New certificates per registered domain per ``certs_window``."""
    certs_window: float = 7 * 86400
    failures_per_hostname: int = 5
    """Failed validations per hostname per ``failures_window``."""
    failures_window: float = 3600
    public_suffixes: tuple[str, ...] = ()
    """Extra multi-label public suffixes, e.g. ``("co.uk",)``; without them the last label is."""

    def __post_init__(self) -> None:
        for name in ("orders_per_account", "certs_per_registered_domain",
                     "failures_per_hostname"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, not {value!r}")
        for name in ("orders_window", "certs_window", "failures_window"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"Limits.{name} must be a positive number of seconds, "
                                 f"not {value!r}")


@dataclass(frozen=True)
class Decision:
    """Whether a lineage may run now; if not, why and from when."""

    allowed: bool
    reason: str | None = None
    """Why it waits, with the budget numbers and the UTC time of the next slot."""
    not_before: float | None = None
    """Epoch seconds from which it may go (it may still meet another limit then)."""


def _hostname(name: str) -> str:
    """The name as the limits count it: lowercase, no trailing dot, no wildcard prefix."""
    name = name.strip().lower().rstrip(".")
    while name.startswith("*."):
        name = name[2:]
    return name


def registered_domain(name: str, public_suffixes: Sequence[str] = ()) -> str:
    """The registered domain of ``name``: one label more than its public suffix.

    Without a matching entry in ``public_suffixes`` (multi-label suffixes such as ``co.uk``;
    the longest match wins) the suffix is the last label, so the result is the last two
    labels. A wildcard prefix and a trailing dot are ignored; the result is lowercase. A name
    that is itself a suffix, or has no more labels, is returned as it is.

    >>> registered_domain("*.shop.example.co.uk", ("co.uk",))
    'example.co.uk'
    """
    host = _hostname(name)
    labels = host.split(".")
    suffix_labels = 1
    for suffix in public_suffixes:
        suffix = suffix.strip().lower().strip(".")
        if not suffix:
            continue
        count = suffix.count(".") + 1
        if count > suffix_labels and (host == suffix or host.endswith("." + suffix)):
            suffix_labels = count
    if len(labels) <= suffix_labels:
        return host
    return ".".join(labels[-(suffix_labels + 1):])


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _span(seconds: float) -> str:
    """A window length for people: 3h, 7d, 90min, 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _short(error: str) -> str:
    line = error.strip().splitlines()[0] if error.strip() else ""
    if len(line) > _MAX_ERROR_IN_REASON:
        line = line[: _MAX_ERROR_IN_REASON - 3] + "..."
    return line


def _window_block(times: Iterable[float], limit: int, window: float,
                  now: float) -> tuple[int, float | None]:
    """Events counted at ``now`` and, when at or over ``limit``, when the count drops below it.

    An event at ``t`` counts while ``now - window < t``; the budget frees up once enough of the
    oldest counted events have left the window.
    """
    counted = sorted(t for t in times if t > now - window)
    if len(counted) < limit:
        return len(counted), None
    return len(counted), counted[len(counted) - limit] + window


def _latest_block(groups: Iterable[tuple[str, Iterable[float]]], limit: int, window: float,
                  now: float) -> tuple[float, str, int] | None:
    """Of the groups whose budget is used up, the one that frees last: (when, name, count)."""
    worst: tuple[float, str, int] | None = None
    for name, times in groups:
        count, free = _window_block(times, limit, window, now)
        if free is not None and (worst is None or free > worst[0]):
            worst = (free, name, count)
    return worst


@dataclass
class _Backoff:
    count: int
    error: str | None
    at: float


class Ledger:
    """Events of past runs, persisted as JSON (atomic write, file mode 0600)."""

    def __init__(self) -> None:
        self._orders: list[float] = []
        self._certificates: list[tuple[float, tuple[str, ...]]] = []
        self._host_failures: dict[str, list[float]] = {}
        self._backoff: dict[str, _Backoff] = {}
        # registered domain -> certificate times, per public suffix set; rebuilt after changes
        self._cert_index: dict[tuple[str, ...], dict[str, list[float]]] = {}

    # -- persistence -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger saved at ``path``; an empty one if there is no file yet.

        Raises :class:`LedgerError` (an ``EpagesError``) when the file cannot be read or is
        not a ledger; the message names the file and says how to start afresh.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except UnicodeDecodeError as e:
            raise _corrupt(path, f"not UTF-8 text: {e.reason}") from None
        except OSError as e:
            raise LedgerError(f"cannot read the fleet ledger {path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _corrupt(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
                           ) from None
        try:
            return cls._from_json(data)
        except _Invalid as e:
            raise _corrupt(path, str(e)) from None

    def save(self, path: Path) -> None:
        """Write the ledger to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
        text = json.dumps(self._to_json(), indent=1, sort_keys=True) + "\n"
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise LedgerError(f"cannot write the fleet ledger {path}: {e.strerror or e}"
                              ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise LedgerError(f"cannot write the fleet ledger {path}: {e.strerror or e}"
                                  ) from None
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def copy(self) -> Ledger:
        """An independent copy, e.g. to plan with ``reserve=True`` without touching this one."""
        return Ledger._from_json(self._to_json())

    def _to_json(self) -> dict[str, Any]:
        return {
            "version": _FORMAT_VERSION,
            "orders": list(self._orders),
            "certificates": [{"at": at, "names": list(names)}
                             for at, names in self._certificates],
            "hostname_failures": {host: list(times)
                                  for host, times in self._host_failures.items()},
            "backoff": {key: {"count": b.count, "error": b.error, "at": b.at}
                        for key, b in self._backoff.items()},
        }

    @classmethod
    def _from_json(cls, data: object) -> Ledger:
        if not isinstance(data, dict):
            raise _Invalid("the top level is not an object")
        version = data.get("version")
        if version != _FORMAT_VERSION:
            raise _Invalid(f"unknown format version {version!r} (this release reads "
                           f"{_FORMAT_VERSION})")
        ledger = cls()
        ledger._orders = [_number(t, "orders[]") for t in _list(data.get("orders", []), "orders")]
        for entry in _list(data.get("certificates", []), "certificates"):
            if not isinstance(entry, dict):
                raise _Invalid("certificates[] is not an object")
            names = tuple(_string(n, "certificates[].names[]")
                          for n in _list(entry.get("names"), "certificates[].names"))
            ledger._certificates.append((_number(entry.get("at"), "certificates[].at"), names))
        failures = data.get("hostname_failures", {})
        if not isinstance(failures, dict):
            raise _Invalid("hostname_failures is not an object")
        for host, times in failures.items():
            ledger._host_failures[host] = [_number(t, f"hostname_failures[{host!r}][]")
                                           for t in _list(times, f"hostname_failures[{host!r}]")]
        backoff = data.get("backoff", {})
        if not isinstance(backoff, dict):
            raise _Invalid("backoff is not an object")
        for key, entry in backoff.items():
            where = f"backoff[{key!r}]"
            if not isinstance(entry, dict):
                raise _Invalid(f"{where} is not an object")
            count = entry.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise _Invalid(f"{where}.count is not a positive integer")
            error = entry.get("error")
            if error is not None:
                error = _string(error, f"{where}.error")
            ledger._backoff[key] = _Backoff(count, error, _number(entry.get("at"), f"{where}.at"))
        return ledger

    # -- events ----------------------------------------------------------------------------

    def record_order(self, now: float) -> None:
        """Count one new order against the account's budget."""
        self._orders.append(now)

    def cancel_order(self, at: float) -> None:
        """Give back an order reserved at ``at`` that was not placed after all."""
        if at in self._orders:
            self._orders.remove(at)

    def record_certificate(self, names: Sequence[str], now: float) -> None:
        """Count one issued certificate, once per registered domain among ``names``.

        The names are kept as they are, so the registered domains follow ``Limits``'
        ``public_suffixes`` at the time of :meth:`admit`.
        """
        self._certificates.append((now, tuple(_hostname(n) for n in names)))
        self._cert_index.clear()

    def record_failure(self, key: str, names: Sequence[str], error: str, now: float) -> None:
        """A failed run of lineage ``key``: a failed validation for each of its ``names``.

        Also counts one more consecutive failure for ``key`` and remembers ``error``.
        """
        for host in dict.fromkeys(_hostname(n) for n in names):
            self._host_failures.setdefault(host, []).append(now)
        previous = self._backoff.get(key)
        count = previous.count + 1 if previous else 1
        self._backoff[key] = _Backoff(count, error, now)

    def record_success(self, key: str) -> None:
        """Lineage ``key`` succeeded: forget its consecutive failures and backoff."""
        self._backoff.pop(key, None)

    def failures(self, key: str) -> tuple[int, str | None, float | None]:
        """Consecutive failure count, last error and time of the last failure of ``key``."""
        entry = self._backoff.get(key)
        if entry is None:
            return 0, None, None
        return entry.count, entry.error, entry.at

    # -- decisions -------------------------------------------------------------------------

    def admit(self, key: str, names: Sequence[str], now: float, limits: Limits, *,
              reserve: bool = True) -> Decision:
        """Decide whether lineage ``key`` (for ``names``) may run certbot at ``now``.

        Checks, in this order, and reports the first that blocks: the backoff of ``key``
        after consecutive failures, failed validations per hostname, the account's new-order
        budget and certificates per registered domain. With ``reserve`` an allowed decision
        records the order at once, so a plan of many items consumes the budget as it goes;
        the caller records the certificate after success.
        """
        for check in (self._check_backoff, self._check_hostnames, self._check_orders,
                      self._check_certificates):
            decision = check(key, names, now, limits)
            if decision is not None:
                return decision
        if reserve:
            self.record_order(now)
        return Decision(True)

    def _check_backoff(self, key: str, names: Sequence[str], now: float,
                       limits: Limits) -> Decision | None:
        entry = self._backoff.get(key)
        if entry is None:
            return None
        delay = BACKOFF[min(entry.count - 1, len(BACKOFF) - 1)]
        not_before = entry.at + delay
        if now >= not_before:
            return None
        plural = "s" if entry.count != 1 else ""
        error = f" (last error: {_short(entry.error)})" if entry.error else ""
        return Decision(False, f"backoff after {entry.count} consecutive failure{plural}{error}: "
                               f"waits {_span(delay)}; next attempt at {_utc(not_before)}",
                        not_before)

    def _check_hostnames(self, key: str, names: Sequence[str], now: float,
                         limits: Limits) -> Decision | None:
        worst = _latest_block(
            ((host, self._host_failures.get(host, ())) for host in
             dict.fromkeys(_hostname(n) for n in names)),
            limits.failures_per_hostname, limits.failures_window, now,
        )
        if worst is None:
            return None
        free, host, count = worst
        return Decision(False, f"failed validation budget for {host}: {count}/"
                               f"{limits.failures_per_hostname} failures in the last "
                               f"{_span(limits.failures_window)}; next slot at {_utc(free)}",
                        free)

    def _check_orders(self, key: str, names: Sequence[str], now: float,
                      limits: Limits) -> Decision | None:
        count, free = _window_block(self._orders, limits.orders_per_account,
                                    limits.orders_window, now)
        if free is None:
            return None
        return Decision(False, f"account order budget: {count}/{limits.orders_per_account} "
                               f"orders in the last {_span(limits.orders_window)}; "
                               f"next slot at {_utc(free)}", free)

    def _check_certificates(self, key: str, names: Sequence[str], now: float,
                            limits: Limits) -> Decision | None:
        index = self._certificates_by_domain(limits.public_suffixes)
        worst = _latest_block(
            ((domain, index.get(domain, ())) for domain in
             dict.fromkeys(registered_domain(n, limits.public_suffixes) for n in names)),
            limits.certs_per_registered_domain, limits.certs_window, now,
        )
        if worst is None:
            return None
        free, domain, count = worst
        return Decision(False, f"certificate budget for {domain}: {count}/"
                               f"{limits.certs_per_registered_domain} certificates in the last "
                               f"{_span(limits.certs_window)}; next slot at {_utc(free)}", free)

    def _certificates_by_domain(self, suffixes: tuple[str, ...]) -> dict[str, list[float]]:
        index = self._cert_index.get(suffixes)
        if index is None:
            index = {}
            for at, names in self._certificates:
                for domain in dict.fromkeys(registered_domain(n, suffixes) for n in names):
                    index.setdefault(domain, []).append(at)
            self._cert_index[suffixes] = index
        return index

    def prune(self, now: float, limits: Limits) -> None:
        """Drop events that have left their window; lineages' backoff entries stay."""
        self._orders = [t for t in self._orders if t > now - limits.orders_window]
        self._certificates = [(at, names) for at, names in self._certificates
                              if at > now - limits.certs_window]
        self._cert_index.clear()
        kept: dict[str, list[float]] = {}
        for host, times in self._host_failures.items():
            recent = [t for t in times if t > now - limits.failures_window]
            if recent:
                kept[host] = recent
        self._host_failures = kept


def update(path: Path, change: Callable[[Ledger], T], *, prune: tuple[float, Limits] | None = None,
           timeout: float = LOCK_TIMEOUT) -> T:
    """Apply ``change`` to the ledger at ``path`` atomically and return what it returns.

    Under ``<path>.lock``: read the file as it is now (what other runs recorded meanwhile
    included), drop expired events (``prune`` = (now, limits)), apply ``change``, write it
    back. Keep ``change`` short and free of I/O: other runs wait for it.
    """
    lock = path.with_name(path.name + ".lock")
    try:
        with must_hold(lock, wait=timeout):
            ledger = Ledger.load(path)
            if prune is not None:
                ledger.prune(*prune)
            result = change(ledger)
            ledger.save(path)
    except OSError as e:
        raise LedgerError(f"cannot lock the fleet ledger {lock}: {e.strerror or e}") from None
    return result


class _Invalid(Exception):
    """The JSON parses but is not a ledger; the message says where."""


def _corrupt(path: Path, detail: str) -> LedgerError:
    return LedgerError(
        f"the fleet ledger {path} is corrupt ({detail}); move it away "
        f"(e.g. mv {path} {path}.corrupt) to start with an empty ledger, which forgets "
        f"past orders, failures and backoff"
    )


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise _Invalid(f"{where} is not a list")
    return value


def _number(value: object, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise _Invalid(f"{where} is not a finite number: {value!r}")
    return float(value)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{where} is not a string: {value!r}")
    return value
