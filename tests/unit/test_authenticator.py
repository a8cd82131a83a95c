"""certbot's own checks for DNS authenticators, and the plugin's certbot-facing behaviour."""

from __future__ import annotations

import unittest
from unittest import mock

import pytest
from certbot import errors
from certbot.plugins import dns_test_common
from certbot.tests import util as test_util

from certbot_epages.authenticator import Authenticator

pytestmark = pytest.mark.unit


class AuthenticatorTest(test_util.TempDirTestCase, dns_test_common.BaseAuthenticatorTest):
    def setUp(self) -> None:
        super().setUp()
        self.config = mock.MagicMock(
            epages_dns_config=None, epages_dns_propagation_seconds=0
        )
        self.auth = Authenticator(self.config, "epages-dns")

    def test_missing_config_is_a_plugin_error_naming_the_file(self) -> None:
        self.config.epages_dns_config = f"{self.tempdir}/missing.yaml"
        with self.assertRaises(errors.PluginError) as caught:
            self.auth.perform([])
        self.assertIn("missing.yaml", str(caught.exception))
        self.assertIn("not found", str(caught.exception))

    def test_propagation_seconds_defaults_to_zero(self) -> None:
        added = {}

        def add(name: str, **kwargs: object) -> None:
            added[name] = kwargs.get("default")

        Authenticator.add_parser_arguments(add)
        self.assertEqual(added["propagation-seconds"], 0)
        self.assertIsNone(added["config"])


if __name__ == "__main__":
    unittest.main()


class BatchingTest(unittest.TestCase):
    """All challenges of a run go to the client in one add and one wait, then one remove."""

    def test_apex_and_wildcard_are_one_add_one_wait_one_remove(self) -> None:
        config = mock.MagicMock(epages_dns_config=None, epages_dns_propagation_seconds=0)
        auth = Authenticator(config, "epages-dns")
        client = mock.MagicMock()
        client.locate.side_effect = lambda domain: f"location-of-{domain}"
        achalls = []
        for domain, value in (("shop.example", "v1"), ("*.shop.example", "v2")):
            achall = mock.MagicMock()
            achall.identifier.value = domain
            achall.validation.return_value = value
            achalls.append(achall)
        with mock.patch.object(Authenticator, "_setup_credentials",
                               lambda self: setattr(self, "_client", client)):
            auth.perform(achalls)
        expected = [("location-of-shop.example", "v1"), ("location-of-*.shop.example", "v2")]
        client.add.assert_called_once_with(expected)
        client.wait.assert_called_once_with(expected)
        auth.cleanup(achalls)
        client.remove.assert_called_once_with(expected)

    def test_a_failing_cleanup_is_logged_not_raised(self) -> None:
        from certbot_epages.errors import UpdateError

        auth = Authenticator(mock.MagicMock(), "epages-dns")
        client = mock.MagicMock()
        client.remove.side_effect = UpdateError("primary unreachable")
        auth._client = client
        auth._records = [("somewhere", "v")]  # type: ignore[list-item]
        auth._attempt_cleanup = True
        with self.assertLogs("certbot_epages.authenticator", "WARNING") as logs:
            auth.cleanup([])
        self.assertIn("primary unreachable", logs.output[0])
