"""``twist flyteserf``: the command-line options and the service they build.

Every option has an environment-variable twin, named after the one the Go
``flyte-serf`` pack read where it had one.  A value on the command line
beats the environment; an empty environment variable counts as unset.

:class:`Options` parses and checks everything up front, so a bad value
stops the program before it binds a socket, with one line that names the
value and says what to do.  The checked result is :attr:`Options.config`,
a :class:`NodeConfig`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import sys
from typing import Any, TypeVar
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from flyteserf import __version__
from flyteserf.addresses import AddressError, format_host_port, parse_host_port
from flyteserf.memberlist.config import PROFILES as TIMING_PROFILES
from flyteserf.memberlist.service import MemberlistService
from flyteserf.wire.keyring import Keyring, KeyringError, load_keyring_file

__all__ = [
    "DEFAULT_BIND_PORT",
    "DEFAULT_NODE_NAME",
    "DEFAULT_TAGS",
    "LOG_LEVELS",
    "PROFILES",
    "NodeConfig",
    "NodeConfigService",
    "Options",
    "makeService",
]

DEFAULT_NODE_NAME = "flyte-serf"
DEFAULT_BIND_HOST = "0.0.0.0"
DEFAULT_BIND_PORT = 7946
DEFAULT_TAGS: Mapping[str, str] = {"role": "flyte-serf"}
DEFAULT_PROFILE = "lan"
DEFAULT_LOG_LEVEL = "INFO"

#: Memberlist timing profiles, as ``serf agent -profile`` names them.
PROFILES = ("lan", "wan", "local")
#: Serf's log levels, lowest first, as ``serf agent -log-level`` names them.
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERR")
_LOG_LEVEL_ALIASES = {"WARNING": "WARN", "ERROR": "ERR"}
#: AES-128, AES-192 and AES-256: the key sizes memberlist accepts.
ENCRYPTION_KEY_SIZES = (16, 24, 32)

#: Exit status for a bad command line (BSD ``EX_USAGE``, as ``twist`` uses).
EX_USAGE = 64

#: Each option's environment-variable twin.
ENVIRONMENT = {
    "node": "SERF_NODE_NAME",
    "bind": "SERF_BIND",
    "advertise": "SERF_ADVERTISE",
    "join": "SERF_JOIN_HOSTS",
    "encrypt": "SERF_ENCRYPT_KEY",
    "keyring-file": "SERF_KEYRING_FILE",
    "tag": "SERF_TAGS",
    "profile": "SERF_PROFILE",
    "log-level": "LOGLEVEL",
}


@attrs.frozen
class NodeConfig:
    """What ``twist flyteserf`` was told to run, checked and normalised."""

    #: The node's name, unique in the cluster.
    node_name: str = DEFAULT_NODE_NAME
    #: Host and port to listen on for gossip, UDP and TCP alike.
    bind: tuple[str, int] = (DEFAULT_BIND_HOST, DEFAULT_BIND_PORT)
    #: Host and port to tell other members, or ``None`` to derive it from
    #: ``bind``.
    advertise: tuple[str, int] | None = None
    #: Members to join at start-up, as ``(host, port)``.
    join: tuple[tuple[str, int], ...] = ()
    #: The gossip encryption key (16, 24 or 32 bytes), or ``None``.
    encrypt_key: bytes | None = attrs.field(default=None, repr=False)
    #: Path of a Serf keyring file (a JSON list of base64 keys), or ``None``.
    keyring_file: str | None = None
    #: The node's tags.
    tags: Mapping[str, str] = attrs.field(factory=lambda: dict(DEFAULT_TAGS))
    #: Memberlist timing profile: one of :data:`PROFILES`.
    profile: str = DEFAULT_PROFILE
    #: Serf log level: one of :data:`LOG_LEVELS`.
    log_level: str = DEFAULT_LOG_LEVEL

    def describe(self) -> str:
        """One human-readable line with everything but the key itself."""
        advertise = format_host_port(*self.advertise) if self.advertise else "same as bind"
        join = ", ".join(format_host_port(*address) for address in self.join) or "none"
        if self.keyring_file is not None:
            encryption = f"keyring {self.keyring_file}"
        elif self.encrypt_key is not None:
            encryption = f"AES-{len(self.encrypt_key) * 8} key"
        else:
            encryption = "off"
        return (
            f"bind {format_host_port(*self.bind)}, advertise {advertise}, "
            f"tags {format_tags(self.tags) or 'none'}, join {join}, "
            f"encryption {encryption}, profile {self.profile}, log level {self.log_level}"
        )


def format_tags(tags: Mapping[str, str]) -> str:
    """``k=v,k2=v2``, keys sorted: the ``SERF_TAGS`` syntax."""
    return ",".join(f"{key}={value}" for key, value in sorted(tags.items()))


def _help(text: str, option: str, default: str | None = None) -> str:
    suffix = f"[env {ENVIRONMENT[option]}"
    if default is not None:
        suffix += f"; default {default}"
    return f"{text} {suffix}]"


_Method = TypeVar("_Method", bound=Callable[..., None])


def _help_text(text: str) -> Callable[[_Method], _Method]:
    """Give an ``opt_`` method its ``--help`` text (usage.Options reads the
    docstring verbatim, so a wrapped docstring would show its indentation)."""

    def decorate(method: _Method) -> _Method:
        method.__doc__ = text
        return method

    return decorate


class Options(usage.Options):
    """Options for ``twist flyteserf``."""

    synopsis = "[options]"
    longdesc = (
        "Run a member of a Serf cluster, wire-compatible with the serf agent. "
        "Each option can also be set through the environment variable named in "
        "its help; the command line wins."
    )

    optParameters = [
        [
            "node",
            None,
            None,
            _help("Node name, unique in the cluster.", "node", DEFAULT_NODE_NAME),
        ],
        [
            "bind",
            None,
            None,
            _help(
                "HOST[:PORT] to listen on for gossip, UDP and TCP; IPv6 in brackets, "
                "e.g. [::1]:7946.",
                "bind",
                f"{DEFAULT_BIND_HOST}:{DEFAULT_BIND_PORT}",
            ),
        ],
        [
            "advertise",
            None,
            None,
            _help(
                "HOST[:PORT] other members should use to reach this node "
                "(port defaults to the bind port).",
                "advertise",
                "derived from --bind",
            ),
        ],
        [
            "encrypt",
            None,
            None,
            _help(
                "Base64 gossip encryption key of 16, 24 or 32 bytes (make one with "
                "'serf keygen'). Not together with --keyring-file.",
                "encrypt",
            ),
        ],
        [
            "keyring-file",
            None,
            None,
            _help(
                "Serf keyring file: a JSON list of base64 keys, the first one primary.",
                "keyring-file",
            ),
        ],
        [
            "profile",
            None,
            None,
            _help("Gossip timing profile: lan, wan or local.", "profile", DEFAULT_PROFILE),
        ],
        [
            "log-level",
            None,
            None,
            _help(
                "Serf log level: TRACE, DEBUG, INFO, WARN or ERR (any case).",
                "log-level",
                DEFAULT_LOG_LEVEL,
            ),
        ],
    ]

    #: Set by :meth:`postOptions`: the checked configuration.
    config: NodeConfig

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, exit_on_error: bool = True
    ) -> None:
        """
        :param environ: Where the environment-variable twins are read;
            ``os.environ`` by default.
        :param exit_on_error: On a bad option, print one line to stderr and
            exit with status 64, as ``twist`` should (the default), rather
            than raise :class:`twisted.python.usage.UsageError`.
        """
        super().__init__()
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._exit_on_error = exit_on_error
        self["join"] = []
        self["tag"] = []

    @_help_text(
        "HOST[:PORT] of a member to join at start-up (default port 7946); repeat "
        "for more. [env SERF_JOIN_HOSTS, comma-separated]"
    )
    def opt_join(self, address: str) -> None:
        self["join"].append(address)

    @_help_text(
        "KEY=VALUE tag for this node; repeat for more. Each one adds to or "
        "replaces a default tag. [env SERF_TAGS, comma-separated; default "
        "role=flyte-serf]"
    )
    def opt_tag(self, tag: str) -> None:
        self["tag"].append(tag)

    def opt_version(self) -> None:
        """Print the flyteserf version and exit."""
        print(f"flyteserf {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if not self._exit_on_error:
                raise
            sys.stderr.write(f"twist flyteserf: error: {error}\n")
            sys.exit(EX_USAGE)

    def postOptions(self) -> None:
        node_name = self._value("node")
        if node_name is None:
            node_name = DEFAULT_NODE_NAME
        elif not node_name.strip():
            raise usage.UsageError(
                f"{self._source('node')}: the node name is blank; give a name unique in the cluster"
            )

        bind = self._address("bind", DEFAULT_BIND_PORT, allow_port_zero=True)
        if bind is None:
            bind = (DEFAULT_BIND_HOST, DEFAULT_BIND_PORT)
        advertise = self._address("advertise", bind[1])

        joins, join_source = self._list("join")
        join = tuple(self._parse(join_source, parse_host_port, text, 7946) for text in joins)

        tag_texts, tag_source = self._list("tag")
        tags = dict(DEFAULT_TAGS)
        for text in tag_texts:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                example = "--tag dc=eu-west" if tag_source == "--tag" else "dc=eu-west,rack=r1"
                raise usage.UsageError(
                    f"{tag_source}: {text!r} is not KEY=VALUE; write e.g. {example}"
                )
            tags[key.strip()] = value.strip()

        encrypt_key = self._encrypt_key()
        keyring_file = self._value("keyring-file")
        if keyring_file is not None:
            if encrypt_key is not None:
                # The serf agent's own words for this conflict.
                raise usage.UsageError(
                    "Encryption key not allowed while using a keyring: give "
                    f"{self._source('encrypt')} or {self._source('keyring-file')}, not both"
                )
            if not os.path.isfile(keyring_file):
                raise usage.UsageError(
                    f"{self._source('keyring-file')}: no file at {keyring_file!r}; fix the "
                    "path or create it as a JSON list of base64 keys"
                )

        profile = (self._value("profile") or DEFAULT_PROFILE).lower()
        if profile not in PROFILES:
            raise usage.UsageError(
                f"{self._source('profile')}: unknown profile {self._value('profile')!r}; "
                "use lan, wan or local"
            )

        level = (self._value("log-level") or DEFAULT_LOG_LEVEL).upper()
        level = _LOG_LEVEL_ALIASES.get(level, level)
        if level not in LOG_LEVELS:
            raise usage.UsageError(
                f"{self._source('log-level')}: unknown log level "
                f"{self._value('log-level')!r}; use TRACE, DEBUG, INFO, WARN or ERR"
            )

        self.config = NodeConfig(
            node_name=node_name,
            bind=bind,
            advertise=advertise,
            join=join,
            encrypt_key=encrypt_key,
            keyring_file=keyring_file,
            tags=tags,
            profile=profile,
            log_level=level,
        )

    def _value(self, option: str) -> str | None:
        """The command-line value, else the non-empty environment value."""
        value: str | None = self[option]
        if value is None:
            value = self._environ.get(ENVIRONMENT[option]) or None
        return value

    def _source(self, option: str) -> str:
        """Where the value of ``option`` came from, to name it in errors."""
        if self[option] is None and self._environ.get(ENVIRONMENT[option]):
            return ENVIRONMENT[option]
        return f"--{option}"

    def _list(self, option: str) -> tuple[list[str], str]:
        """A repeatable option's values, or its comma-separated twin's."""
        given: list[str] = self[option]
        if given:
            return given, f"--{option}"
        name = ENVIRONMENT[option]
        items = [item.strip() for item in self._environ.get(name, "").split(",")]
        return [item for item in items if item], name

    def _address(
        self, option: str, default_port: int, *, allow_port_zero: bool = False
    ) -> tuple[str, int] | None:
        text = self._value(option)
        if text is None:
            return None
        return self._parse(
            self._source(option),
            lambda t, p: parse_host_port(t, p, allow_port_zero=allow_port_zero),
            text,
            default_port,
        )

    @staticmethod
    def _parse(
        source: str,
        parse: Callable[[str, int], tuple[str, int]],
        text: str,
        default_port: int,
    ) -> tuple[str, int]:
        try:
            return parse(text, default_port)
        except AddressError as error:
            raise usage.UsageError(f"{source}: {error}") from None

    def _encrypt_key(self) -> bytes | None:
        text = self._value("encrypt")
        if text is None:
            return None
        source = self._source("encrypt")
        # The key is a secret: errors describe it without echoing it.
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise usage.UsageError(
                f"{source}: the encryption key is not valid base64; "
                "generate one with 'serf keygen'"
            ) from None
        if len(key) not in ENCRYPTION_KEY_SIZES:
            raise usage.UsageError(
                f"{source}: the encryption key decodes to {len(key)} bytes, but it must be "
                "16, 24 or 32; generate one with 'serf keygen'"
            )
        return key


class NodeConfigService(service.Service):
    """Logs the node's configuration when the application starts and stops."""

    log = Logger()

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.setName("node-config")

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "flyteserf {version} node {node_name}: {description}",
            version=__version__,
            node_name=self.config.node_name,
            description=self.config.describe(),
            bind=format_host_port(*self.config.bind),
            tags=dict(self.config.tags),
        )

    def stopService(self) -> Deferred[None] | None:
        self.log.info(
            "flyteserf node {node_name} stopping", node_name=self.config.node_name
        )
        result: Deferred[None] | None = super().stopService()
        return result


def default_advertise_host() -> str:
    """The address to advertise when bound to a wildcard: Go picks a private IP.

    Looked up once at start-up (before the reactor runs), from this host's
    own name; loopback when nothing better is known.
    """
    try:
        _, _, addresses = socket.gethostbyname_ex(socket.gethostname())
    except OSError:
        addresses = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_private and not ip.is_loopback:
            return address
    return "127.0.0.1"


def keyring_for(config: NodeConfig) -> Keyring | None:
    """The gossip keyring from ``--encrypt`` or ``--keyring-file``."""
    if config.keyring_file is not None:
        try:
            return load_keyring_file(config.keyring_file)
        except KeyringError as e:
            raise usage.UsageError(f"--keyring-file: {e}") from None
    if config.encrypt_key is not None:
        return Keyring([config.encrypt_key])
    return None


class _StopOnFailure(service.Service):
    """Stops the program with status 1 when the node cannot start (e.g. no join answered)."""

    log = Logger()

    def __init__(self, reactor: Any, node: MemberlistService) -> None:
        self.reactor = reactor
        self.node = node

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(self.node.startService)
        d.addErrback(self._failed)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.node.running:
            return maybeDeferred(self.node.stopService)
        return None

    def _failed(self, failure: Any) -> None:
        self.log.error("flyteserf cannot start: {reason}", reason=" ".join(failure.getErrorMessage().split()))
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the ``twist flyteserf`` service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: NodeConfig = options.config
    top = service.MultiService()
    top.setName("flyteserf")
    NodeConfigService(config).setServiceParent(top)
    advertise = config.advertise
    if advertise is None and config.bind[0] in ("0.0.0.0", "::", ""):
        advertise = (default_advertise_host(), config.bind[1])
    node = MemberlistService(
        reactor,
        config.node_name,
        config.bind,
        advertise=advertise,
        join=config.join,
        tags=config.tags,
        config=TIMING_PROFILES[config.profile],
        keyring=keyring_for(config),
    )
    _StopOnFailure(reactor, node).setServiceParent(top)
    return top
