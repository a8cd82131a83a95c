"""certbot's own checks for DNS authenticators, and the plugin's certbot-facing behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from unittest import mock

import pytest
from certbot import errors
from certbot.plugins import dns_test_common
from certbot.tests import util as test_util

from certbot_epages import compat
from certbot_epages import config as epages_config
from certbot_epages.authenticator import DEFAULT_CONFIG, Authenticator, domain_of

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


class CompatibilityTest(unittest.TestCase):
    """Loading the plugin never breaks certbot; what is missing is this plugin's error."""

    def test_module_loads_without_dnspython_and_pyyaml_and_prepare_says_what_is_missing(
        self,
    ) -> None:
        script = (
            "import sys\n"
            "sys.modules.update(dict.fromkeys(['dns', 'dns.version', 'yaml'], None))\n"
            "from unittest import mock\n"
            "from certbot import errors\n"
            "from certbot_epages.authenticator import Authenticator\n"
            "auth = Authenticator(mock.MagicMock(epages_dns_config=None), 'epages-dns')\n"
            "try:\n"
            "    auth.prepare()\n"
            "except errors.PluginError as e:\n"
            "    print(e)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("epages-dns needs dnspython >= 2.3, found none", done.stdout)
        self.assertIn("epages-dns needs pyyaml >= 6.0, found none", done.stdout)

    def test_too_old_dnspython_is_a_plugin_error_naming_both_versions(self) -> None:
        auth = Authenticator(mock.MagicMock(epages_dns_config=None), "epages-dns")
        real = compat._installed
        with mock.patch.object(compat, "_installed", lambda module, attribute: "2.2.1"
                               if module == "dns.version" else real(module, attribute)):
            with self.assertRaises(errors.PluginError) as caught:
                auth.prepare()
        self.assertEqual(
            str(caught.exception),
            "epages-dns needs dnspython >= 2.3, found 2.2.1; install a newer dnspython "
            "(pip install 'dnspython>=2.3', or your distribution's package) beside this certbot",
        )

    def test_prepare_records_the_absolute_config_path_for_renewal(self) -> None:
        config = mock.MagicMock(epages_dns_config=None, authenticator="epages-dns")
        with mock.patch.dict(os.environ, {"CERTBOT_EPAGES_CONFIG": "rel/epages.yaml"}):
            Authenticator(config, "epages-dns").prepare()
        self.assertEqual(config.epages_dns_config, os.path.abspath("rel/epages.yaml"))
        with mock.patch.dict(os.environ):
            os.environ.pop("CERTBOT_EPAGES_CONFIG", None)
            config.epages_dns_config = None
            Authenticator(config, "epages-dns").prepare()
        self.assertEqual(config.epages_dns_config, epages_config.DEFAULT_PATH.as_posix())
        self.assertEqual(DEFAULT_CONFIG, epages_config.DEFAULT_PATH.as_posix())

    def test_prepare_leaves_the_config_alone_when_another_plugin_was_chosen(self) -> None:
        """certbot prepares every plugin to offer a choice; webroot's renewal needs no path."""
        config = mock.MagicMock(epages_dns_config=None, authenticator="webroot")
        Authenticator(config, "epages-dns").prepare()
        self.assertIsNone(config.epages_dns_config)

    def test_the_domain_of_this_certbots_own_annotated_challenge(self) -> None:
        """certbot 2 builds it with ``domain``, certbot 3 and later with ``identifier``."""
        achall = dns_test_common.BaseAuthenticatorTest.achall
        self.assertEqual(domain_of(achall), dns_test_common.DOMAIN)
        auth = Authenticator(mock.MagicMock(epages_dns_propagation_seconds=0), "epages-dns")
        client = mock.MagicMock()
        with mock.patch.object(Authenticator, "_setup_credentials",
                               lambda self: setattr(self, "_client", client)):
            responses = auth.perform([achall])
        client.locate.assert_called_once_with(dns_test_common.DOMAIN)
        self.assertEqual(len(responses), 1)
