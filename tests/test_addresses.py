"""Tests for :mod:`flyteserf.addresses`."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.addresses import AddressError, format_host_port, parse_host_port


class ParseHostPortTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Every documented form gives the documented host and port."""
        cases = {
            "10.0.0.5": ("10.0.0.5", 7946),
            "10.0.0.5:7947": ("10.0.0.5", 7947),
            " 10.0.0.5:7947 ": ("10.0.0.5", 7947),
            "0.0.0.0:1": ("0.0.0.0", 1),
            "localhost": ("localhost", 7946),
            "node1.example.com:65535": ("node1.example.com", 65535),
            "serf_1.internal.": ("serf_1.internal.", 7946),
            "[::1]:7947": ("::1", 7947),
            "[::1]": ("::1", 7946),
            "[::0001]:80": ("::1", 80),
            "::1": ("::1", 7946),
            "fe80::1%eth0": ("fe80::1%eth0", 7946),
            "[FD00::5]:7000": ("fd00::5", 7000),
            "::1:7947": ("::1:7947", 7946),
        }
        for text, expected in cases.items():
            self.assertEqual(parse_host_port(text, 7946), expected, text)

    def test_port_zero(self) -> None:
        """Port 0 is refused unless the caller allows it (for binding)."""
        self.assertRaises(AddressError, parse_host_port, "127.0.0.1:0", 7946)
        self.assertEqual(
            parse_host_port("127.0.0.1:0", 7946, allow_port_zero=True), ("127.0.0.1", 0)
        )

    def test_errors(self) -> None:
        """Malformed addresses raise AddressError with one line naming the value."""
        cases = {
            "": "empty",
            "   ": "empty",
            ":7946": "no host",
            "10.0.0.5:": "'' in address",
            "10.0.0.5:http": "'http'",
            "10.0.0.5:-1": "'-1'",
            "10.0.0.5:65536": "65536",
            "10.0.0.5:123456": "'123456'",
            "10.0.0.5: 80": "' 80'",
            "10.0.0.256": "'10.0.0.256'",
            "01.2.3.4": "'01.2.3.4'",
            "bad host:80": "'bad host'",
            "-leading.example": "'-leading.example'",
            "a..b": "'a..b'",
            "[::1": "no closing ']'",
            "[::1]7946": "after ']'",
            "[10.0.0.5]:80": "not an IPv6 address",
            "[::1]:99999": "out of range",
            "fe80::zz": "not an IPv6 address",
            "x" * 64 + ".example": "not an IP address or a host name",
        }
        for text, fragment in cases.items():
            with self.assertRaises(AddressError, msg=text) as caught:
                parse_host_port(text, 7946)
            message = str(caught.exception)
            self.assertIn(fragment, message, text)
            self.assertNotIn("\n", message)

    def test_address_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(AddressError, ValueError))


class FormatHostPortTests(SynchronousTestCase):
    def test_ipv4_and_names(self) -> None:
        self.assertEqual(format_host_port("10.0.0.5", 7946), "10.0.0.5:7946")
        self.assertEqual(format_host_port("node1.example.com", 1), "node1.example.com:1")

    def test_ipv6_brackets(self) -> None:
        self.assertEqual(format_host_port("::1", 7946), "[::1]:7946")

    @given(
        address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
        port=st.integers(min_value=1, max_value=65535),
    )
    def test_round_trip(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> None:
        """Formatting then parsing gives back the canonical address and port."""
        self.assertEqual(
            parse_host_port(format_host_port(str(address), port), 1), (str(address), port)
        )
