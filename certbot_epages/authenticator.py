"""The ``epages-dns`` certbot authenticator: thin over :mod:`certbot_epages.dns.client`.

All challenges of one certbot run are handled together: their CNAME chains are followed first
(nothing is written if any domain is not delegated), then one signed UPDATE per zone carries
every value, then the plugin waits until every authoritative server answers with every value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# Only what every supported certbot has, and nothing else that is not standard library: certbot
# imports this module for every command (`certbot plugins` too), so a missing library must not
# fail the import. The rest is imported when the plugin is used (prepare, perform).
from certbot import errors
from certbot.plugins import dns_common

from certbot_epages import compat
from certbot_epages.errors import EpagesError
from certbot_epages.paths import DEFAULT_PATH

if TYPE_CHECKING:
    from acme import challenges
    from certbot import achallenges

    from certbot_epages.dns import client as dns_client
    from certbot_epages.dns.chain import Location

DEFAULT_CONFIG = str(DEFAULT_PATH)

logger = logging.getLogger(__name__)


class Authenticator(dns_common.DNSAuthenticator):
    """DNS-01 through RFC 2136 updates to the platform's BIND, following CNAME delegations."""

    description = (
        "Obtain certificates using DNS TXT records written by RFC 2136 dynamic updates "
        "(TSIG-signed) into a platform-controlled zone, following _acme-challenge CNAMEs."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: dns_client.DnsClient | None = None
        self._records: list[tuple[Location, str]] = []

    @classmethod
    def add_parser_arguments(
        cls, add: Callable[..., None], default_propagation_seconds: int = 0
    ) -> None:
        """Add ``--epages-dns-config``; propagation is measured, so the extra wait defaults to 0."""
        super().add_parser_arguments(add, default_propagation_seconds=default_propagation_seconds)
        add(
            "config",
            default=None,
            help="Path to epages.yaml (default: $CERTBOT_EPAGES_CONFIG, else "
            f"{DEFAULT_CONFIG}). Stored in the renewal configuration.",
        )

    def more_info(self) -> str:
        """One paragraph for ``certbot plugins``."""
        return (
            "This plugin follows each _acme-challenge CNAME into a zone listed in epages.yaml, "
            "writes the TXT values with one TSIG-signed RFC 2136 UPDATE per zone, and returns "
            "once every authoritative server of that zone serves them. "
            "--epages-dns-propagation-seconds only adds an extra wait on top."
        )

    def prepare(self) -> None:
        """Check the libraries; record the config path in the renewal configuration.

        certbot calls this on every run that uses the plugin, also when the CA reuses valid
        authorizations and perform() is never called: the path recorded here is what
        `certbot renew` from a timer (without CERTBOT_EPAGES_CONFIG) finds later.
        """
        problems = compat.plugin_problems()
        if problems:
            raise errors.PluginError("; ".join(problems))
        # certbot prepares every plugin when it asks the user to choose one: only the chosen
        # authenticator records its path (a chosen one records it in perform() too).
        if getattr(self.config, "authenticator", None) == self.name:
            self._record_config_path()

    def _record_config_path(self) -> None:
        from certbot_epages import config as epages_config

        path = epages_config.config_path(self.conf("config")).absolute()
        setattr(self.config, self.dest("config"), str(path))

    def _setup_credentials(self) -> None:
        from certbot_epages import config as epages_config
        from certbot_epages.dns import client as dns_client

        self._record_config_path()
        try:
            settings = epages_config.load(self.conf("config"))
        except EpagesError as e:
            raise errors.PluginError(str(e)) from e
        if settings.dns is None:
            raise errors.PluginError(
                f"{settings.source}: no 'dns' section; the epages-dns plugin needs dns.zones "
                "and dns.tsig_keys (see the README)"
            )
        self._client = dns_client.from_config(settings.dns)

    def perform(
        self, achalls: list[achallenges.AnnotatedChallenge]
    ) -> list[challenges.ChallengeResponse]:
        """Publish every challenge of this run at once, then wait until all servers serve it."""
        self._setup_credentials()
        self._attempt_cleanup = True
        self._publish([(domain_of(a), a.validation(a.account_key)) for a in achalls])
        extra = int(self.conf("propagation-seconds") or 0)
        if extra > 0:
            logger.info("Waiting %d more seconds, as --%s-propagation-seconds asks", extra,
                        self.name)
            time.sleep(extra)
        return [achall.response(achall.account_key) for achall in achalls]

    def cleanup(self, achalls: list[achallenges.AnnotatedChallenge]) -> None:
        """Delete exactly this run's values; errors are logged, never raised."""
        if self._attempt_cleanup:
            self._unpublish()

    def _perform(self, domain: str, validation_name: str, validation: str) -> None:
        self._publish([(domain, validation)])

    def _cleanup(self, domain: str, validation_name: str, validation: str) -> None:
        self._unpublish()

    def _publish(self, challenges_: list[tuple[str, str]]) -> None:
        """Locate every name first (nothing is written if one fails), add all, await all."""
        if self._client is None:
            raise errors.PluginError("epages-dns: the configuration was not loaded")
        try:
            records = [(self._client.locate(domain), value) for domain, value in challenges_]
            self._records.extend(records)
            self._client.add(records)
            self._client.wait(records)
        except EpagesError as e:
            raise errors.PluginError(str(e)) from e

    def _unpublish(self) -> None:
        records, self._records = self._records, []
        if not records or self._client is None:
            return
        try:
            self._client.remove(records)
        except EpagesError as e:
            logger.warning("Cleanup of DNS-01 TXT records failed: %s", e)


def domain_of(achall: achallenges.AnnotatedChallenge) -> str:
    """The domain a challenge is for: ``identifier.value`` from certbot 3 on, else ``domain``.

    certbot 2 has no ``identifier``; certbot 3 and later deprecate ``domain``.
    """
    identifier = getattr(achall, "identifier", None)
    if identifier is not None:
        return str(identifier.value)
    return str(achall.domain)
