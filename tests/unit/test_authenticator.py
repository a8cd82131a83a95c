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
