"""The project's exception hierarchy: one base, so entry points can turn any of it into one line."""


class EpagesError(Exception):
    """Base of every error this package raises on purpose; the message tells the fix."""


class ConfigError(EpagesError):
    """epages.yaml is missing, unreadable or invalid; the message names file and key path."""


class DNSError(EpagesError):
    """A DNS lookup, update or propagation check failed."""


class DelegationError(DNSError):
    """A validation name does not lead into a managed zone (loop, dangling or foreign CNAME)."""


class UpdateError(DNSError):
    """An RFC 2136 update was refused or could not be delivered to any primary."""


class PropagationError(DNSError):
    """Not every authoritative server returned every value before the deadline."""


class SandboxError(EpagesError):
    """The local sandbox platform could not be started or stopped."""


class SyncError(EpagesError):
    """Another sync is running, or the sync could not start."""
