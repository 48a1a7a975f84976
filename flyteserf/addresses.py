"""Parse and format the ``HOST[:PORT]`` addresses that Serf takes from users.

The accepted forms are the ones the ``serf`` agent accepts for ``-bind``,
``-advertise`` and ``join``, plus a bare IPv6 address without a port:

==========================  ===========================
text                        result
==========================  ===========================
``10.0.0.5``                ``("10.0.0.5", default)``
``10.0.0.5:7947``           ``("10.0.0.5", 7947)``
``node1.example.com:7947``  ``("node1.example.com", 7947)``
``[::1]:7947``              ``("::1", 7947)``
``[::1]``                   ``("::1", default)``
``fe80::1``                 ``("fe80::1", default)``
==========================  ===========================

A bare IPv6 address never carries a port (``::1:7947`` is the IPv6
address ``::1:7947``); put the address in brackets to give one.

Every malformed address raises :class:`AddressError`, whose message is one
line naming the bad value and saying what to write instead.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["AddressError", "format_host_port", "parse_host_port"]

_PORT_DIGITS = re.compile(r"[0-9]{1,5}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_EXAMPLE = "e.g. 10.0.0.5:7946, node1.example.com:7946 or [fd00::5]:7946"


class AddressError(ValueError):
    """A ``HOST[:PORT]`` address given by a user could not be parsed.

    The message is one line: the bad value and how to write a good one.
    """


def parse_host_port(
    text: str, default_port: int, *, allow_port_zero: bool = False
) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` into a host and a port number.

    :param text: The address as the user wrote it.  Surrounding white space
        is ignored.
    :param default_port: The port to use when ``text`` names none.
    :param allow_port_zero: Accept port 0 ("any free port"), which makes
        sense for an address to bind, not for one to connect to.
    :return: ``(host, port)``.  IP addresses come back in their canonical
        form (``[::0001]`` gives ``::1``), host names as written.
    :raises AddressError: If the host or the port is malformed.
    """
    text = text.strip()
    if not text:
        raise AddressError(f"the address is empty; give HOST or HOST:PORT, {_EXAMPLE}")
    if text.startswith("["):
        host_text, sep, rest = text[1:].partition("]")
        if not sep:
            raise AddressError(
                f"address {text!r} has no closing ']'; write IPv6 addresses as [ADDR]:PORT, "
                "e.g. [fd00::5]:7946"
            )
        if rest and not rest.startswith(":"):
            raise AddressError(
                f"address {text!r} has {rest!r} after ']'; only ':PORT' may follow, "
                "e.g. [fd00::5]:7946"
            )
        host = _ipv6(host_text, text)
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        host = _ipv6(text, text)
        port_text = None
    else:
        host_text, sep, port_text_or_empty = text.partition(":")
        host = _host(host_text, text)
        port_text = port_text_or_empty if sep else None
    if port_text is None:
        return host, default_port
    return host, _port(port_text, text, allow_port_zero)


def format_host_port(host: str, port: int) -> str:
    """Join a host and a port the way :func:`parse_host_port` reads them back.

    IPv6 addresses get brackets: ``format_host_port("::1", 7946)`` is
    ``"[::1]:7946"``.
    """
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _ipv6(host_text: str, text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(host_text))
    except ValueError:
        raise AddressError(
            f"{host_text!r} in address {text!r} is not an IPv6 address; "
            f"give an IP address or a host name, {_EXAMPLE}"
        ) from None


def _host(host_text: str, text: str) -> str:
    if not host_text:
        raise AddressError(
            f"address {text!r} has no host; give one before the port, "
            "e.g. 0.0.0.0:7946 for every interface"
        )
    try:
        return str(ipaddress.IPv4Address(host_text))
    except ValueError:
        pass
    name = host_text[:-1] if host_text.endswith(".") else host_text
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise AddressError(
            f"{host_text!r} in address {text!r} is not an IP address or a host name; {_EXAMPLE}"
        )
    return host_text


def _port(port_text: str, text: str, allow_zero: bool) -> int:
    lowest = 0 if allow_zero else 1
    if not _PORT_DIGITS.fullmatch(port_text):
        raise AddressError(
            f"port {port_text!r} in address {text!r} is not a number; "
            f"give a port from {lowest} to 65535, {_EXAMPLE}"
        )
    port = int(port_text)
    if not lowest <= port <= 65535:
        raise AddressError(
            f"port {port} in address {text!r} is out of range; give a port from {lowest} to 65535"
        )
    return port
