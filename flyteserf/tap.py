"""``twist flyteserf``: the command-line options and the service they build.

Every option has an environment-variable twin, named after the one the Go
``flyte-serf`` pack read where it had one.  A value on the command line
beats the environment; an empty environment variable counts as unset.

:class:`Options` parses and checks everything up front, so a bad value
stops the program before it binds a socket, with one line that names the
value and says what to do.  The checked result is :attr:`Options.config`,
a :class:`NodeConfig`.

:func:`makeService` turns it into a running :class:`~flyteserf.agent.agent.Agent`
(gossip, the RPC server for the ``serf`` CLI, event scripts), the health
endpoint, and the signal handling: SIGINT or SIGTERM leaves the cluster
gracefully and stops; the same signal again stops at once.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import signal
import socket
import sys
from types import FrameType
from typing import Any, TypeVar
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from flyteserf import __version__
from flyteserf.addresses import AddressError, format_host_port, parse_host_port
from flyteserf.agent.agent import Agent, AgentConfig
from flyteserf.agent.health import health_service
from flyteserf.agent.scripts import parse_handler_spec
from flyteserf.rpc.service import RPCService
from flyteserf.serf.config import USER_EVENT_SIZE_LIMIT
from flyteserf.wire.keyring import Keyring, KeyringError, load_keyring_file

__all__ = [
    "DEFAULT_BIND_PORT",
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_NODE_NAME",
    "DEFAULT_RPC_ADDR",
    "DEFAULT_TAGS",
    "LOG_LEVELS",
    "PROFILES",
    "GracefulShutdown",
    "NodeConfig",
    "NodeConfigService",
    "Options",
    "agent_config",
    "makeService",
    "parse_go_duration",
]

DEFAULT_NODE_NAME = "flyte-serf"
DEFAULT_BIND_HOST = "0.0.0.0"
DEFAULT_BIND_PORT = 7946
DEFAULT_TAGS: Mapping[str, str] = {"role": "flyte-serf"}
DEFAULT_PROFILE = "lan"
DEFAULT_LOG_LEVEL = "INFO"
#: The RPC listener for the ``serf`` CLI, as ``serf agent -rpc-addr``.
DEFAULT_RPC_PORT = 7373
DEFAULT_RPC_ADDR = ("127.0.0.1", DEFAULT_RPC_PORT)
#: The Go pack's fixed health port.
DEFAULT_HEALTH_PORT = 8090
DEFAULT_RETRY_INTERVAL = 30.0
#: ``serf agent`` will not retry more often than once a second.
MIN_RETRY_INTERVAL = 1.0
DEFAULT_USER_EVENT_SIZE_LIMIT = 512
#: The longest a graceful leave may take when stopping (the agent's default).
LEAVE_TIMEOUT = AgentConfig().leave_timeout
#: After the leave's bound, this much longer for the rest of the shutdown
#: before the program stops at once anyway.
SHUTDOWN_MARGIN = 5.0

#: Memberlist timing profiles, as ``serf agent -profile`` names them.
PROFILES = ("lan", "wan", "local")
#: Serf's log levels, lowest first, as ``serf agent -log-level`` names them.
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERR")
_LOG_LEVEL_ALIASES = {"WARNING": "WARN", "ERROR": "ERR"}
#: Serf's levels as Twisted's (Twisted has no TRACE).
_TWISTED_LEVELS = {
    "TRACE": LogLevel.debug,
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARN": LogLevel.warn,
    "ERR": LogLevel.error,
}
_SERF_LEVELS = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERR",
    LogLevel.critical: "ERR",
}
#: AES-128, AES-192 and AES-256: the key sizes memberlist accepts.
ENCRYPTION_KEY_SIZES = (16, 24, 32)
#: What ``--rpc-addr`` takes, besides an empty value, to turn RPC off.
RPC_OFF = "off"

#: Exit status for a bad command line (BSD ``EX_USAGE``, as ``twist`` uses).
EX_USAGE = 64

#: Each option's environment-variable twin.
ENVIRONMENT = {
    "node": "SERF_NODE_NAME",
    "bind": "SERF_BIND",
    "advertise": "SERF_ADVERTISE",
    "join": "SERF_JOIN_HOSTS",
    "retry-join": "SERF_RETRY_JOIN",
    "retry-interval": "SERF_RETRY_INTERVAL",
    "retry-max": "SERF_RETRY_MAX",
    "encrypt": "SERF_ENCRYPT_KEY",
    "keyring-file": "SERF_KEYRING_FILE",
    "tag": "SERF_TAGS",
    "profile": "SERF_PROFILE",
    "rpc-addr": "SERF_RPC_ADDR",
    "rpc-auth": "SERF_RPC_AUTH",
    "event-handler": "SERF_EVENT_HANDLERS",
    "snapshot": "SERF_SNAPSHOT",
    "rejoin": "SERF_REJOIN",
    "replay": "SERF_REPLAY",
    "user-event-size-limit": "SERF_USER_EVENT_SIZE_LIMIT",
    "health-port": "SERF_HEALTH_PORT",
    "log-level": "LOGLEVEL",
}

_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off")
_EVENT_FILTERS = (
    "member-join, member-leave, member-failed, member-update, member-reap, "
    "user, user:NAME, query, query:NAME or *"
)


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
    #: Members to join at start-up, as ``(host, port)``; the start fails if
    #: none answers.
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
    #: The RPC listener for the ``serf`` CLI, or ``None`` for no RPC.
    rpc_addr: tuple[str, int] | None = DEFAULT_RPC_ADDR
    #: The token RPC clients must give (``""``: none).
    rpc_auth: str = attrs.field(default="", repr=False)
    #: ``[filter=]script`` event handler specs, checked.
    event_handlers: tuple[str, ...] = ()
    #: Snapshot file path, or ``None``.
    snapshot: str | None = None
    #: Rejoin after a previous leave recorded in the snapshot.
    rejoin: bool = False
    #: Replay the user events the cluster had before we joined.
    replay: bool = False
    #: Members to join in the background until one answers, as ``(host, port)``.
    retry_join: tuple[tuple[str, int], ...] = ()
    #: Seconds between ``retry_join`` attempts.
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    #: ``retry_join`` attempts before giving up; 0 = for ever.
    retry_max: int = 0
    #: The largest user event (name + payload) this node sends, in bytes.
    user_event_size_limit: int = DEFAULT_USER_EVENT_SIZE_LIMIT
    #: Port of the health endpoint; 0 = none.
    health_port: int = DEFAULT_HEALTH_PORT
    #: The keyring loaded from :attr:`keyring_file` when the options were checked.
    keyring: Keyring | None = attrs.field(default=None, repr=False, eq=False)

    def describe(self) -> str:
        """One human-readable line with everything but the secrets."""
        advertise = format_host_port(*self.advertise) if self.advertise else "same as bind"
        join = ", ".join(format_host_port(*address) for address in self.join) or "none"
        if self.keyring_file is not None:
            encryption = f"keyring {self.keyring_file}"
        elif self.encrypt_key is not None:
            encryption = f"AES-{len(self.encrypt_key) * 8} key"
        else:
            encryption = "off"
        rpc = format_host_port(*self.rpc_addr) if self.rpc_addr else "off"
        if self.rpc_addr and self.rpc_auth:
            rpc += " (auth token set)"
        parts = [
            f"bind {format_host_port(*self.bind)}",
            f"advertise {advertise}",
            f"tags {format_tags(self.tags) or 'none'}",
            f"join {join}",
        ]
        if self.retry_join:
            retry = ", ".join(format_host_port(*address) for address in self.retry_join)
            limit = f"{self.retry_max} attempts" if self.retry_max else "no limit"
            parts.append(
                f"retry join {retry} every {format_go_duration(self.retry_interval)} ({limit})"
            )
        parts += [
            f"encryption {encryption}",
            f"profile {self.profile}",
            f"rpc {rpc}",
            f"health port {self.health_port or 'off'}",
        ]
        if self.snapshot is not None:
            parts.append(f"snapshot {self.snapshot}" + (" (rejoin)" if self.rejoin else ""))
        if self.replay:
            parts.append("replay on join")
        if self.event_handlers:
            parts.append(f"event handlers {len(self.event_handlers)}")
        if self.user_event_size_limit != DEFAULT_USER_EVENT_SIZE_LIMIT:
            parts.append(f"user event size limit {self.user_event_size_limit}")
        parts.append(f"log level {self.log_level}")
        return ", ".join(parts)


def format_tags(tags: Mapping[str, str]) -> str:
    """``k=v,k2=v2``, keys sorted: the ``SERF_TAGS`` syntax."""
    return ",".join(f"{key}={value}" for key, value in sorted(tags.items()))


# -- Go durations ---------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``300ms``, ``30s``, ``1m30s``, ``1.5h``).

    Raises :class:`ValueError` with Go's own text (``time: missing unit in
    duration "30"``) for anything ``time.ParseDuration`` refuses.
    """
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    rest = text
    sign = 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every group may be empty
        whole, fraction, unit = match.groups()
        if not whole and not fraction:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            unit_quoted = '"' + unit.replace('"', '\\"') + '"'
            raise ValueError(f"time: unknown unit {unit_quoted} in duration {quoted}")
        number = float(f"{whole or '0'}.{fraction or '0'}")
        total += number * _DURATION_UNITS[unit]
        rest = rest[match.end() :]
    return sign * total


def format_go_duration(seconds: float) -> str:
    """A short Go-style rendering: ``30s``, ``1m``, ``1m30s``, ``500ms``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    if minutes and not secs:
        return f"{minutes:g}m"
    if minutes:
        return f"{minutes:g}m{secs:g}s"
    return f"{secs:g}s"


# -- options --------------------------------------------------------------------------


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

    optFlags = [
        [
            "rejoin",
            None,
            _help(
                "Rejoin the cluster even if the snapshot records that this node left "
                "(needs --snapshot). Environment: true or false.",
                "rejoin",
            ),
        ],
        [
            "replay",
            None,
            _help(
                "Deliver the user events the cluster sent before this node joined "
                "(otherwise they are ignored). Environment: true or false.",
                "replay",
            ),
        ],
    ]

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
            "retry-interval",
            None,
            None,
            _help(
                "Time between --retry-join attempts, as a Go duration (30s, 1m, 1m30s); "
                "at least 1s.",
                "retry-interval",
                "30s",
            ),
        ],
        [
            "retry-max",
            None,
            None,
            _help(
                "Give up --retry-join after this many attempts; 0 retries for ever.",
                "retry-max",
                "0",
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
                "Serf keyring file: a JSON list of base64 keys, the first one primary. "
                "Rewritten when keys change ('serf keys').",
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
            "rpc-addr",
            None,
            None,
            _help(
                "HOST:PORT of the RPC listener the serf CLI talks to; an empty value or "
                "'off' turns RPC off.",
                "rpc-addr",
                f"{DEFAULT_RPC_ADDR[0]}:{DEFAULT_RPC_PORT}",
            ),
        ],
        [
            "rpc-auth",
            None,
            None,
            _help(
                "Token RPC clients must present (serf CLI: -rpc-auth).",
                "rpc-auth",
                "none",
            ),
        ],
        [
            "snapshot",
            None,
            None,
            _help(
                "Snapshot file: remembers members and event clocks across restarts, "
                "so the node rejoins and does not replay old events.",
                "snapshot",
            ),
        ],
        [
            "user-event-size-limit",
            None,
            None,
            _help(
                f"Largest user event (name + payload) this node sends, in bytes: "
                f"1 to {USER_EVENT_SIZE_LIMIT}.",
                "user-event-size-limit",
                str(DEFAULT_USER_EVENT_SIZE_LIMIT),
            ),
        ],
        [
            "health-port",
            None,
            None,
            _help(
                "TCP port (on the --bind host) answering health checks with the Go "
                "pack's JSON on any path; 0 turns it off.",
                "health-port",
                str(DEFAULT_HEALTH_PORT),
            ),
        ],
        [
            "log-level",
            None,
            None,
            _help(
                "Serf log level: TRACE, DEBUG, INFO, WARN or ERR (any case). Also "
                "what twist prints.",
                "log-level",
                DEFAULT_LOG_LEVEL,
            ),
        ],
    ]

    #: Set by :meth:`postOptions`: the checked configuration.
    config: NodeConfig
    #: Set by :meth:`postOptions`: whether ``--log-level`` or its twin was given
    #: (otherwise ``twist --log-level`` decides what is printed).
    log_level_given: bool = False

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
        self["retry-join"] = []
        self["tag"] = []
        self["event-handler"] = []

    @_help_text(
        "HOST[:PORT] of a member to join at start-up (default port 7946); repeat "
        "for more. The program stops if none answers. [env SERF_JOIN_HOSTS, "
        "comma-separated]"
    )
    def opt_join(self, address: str) -> None:
        self["join"].append(address)

    @_help_text(
        "HOST[:PORT] of a member to join in the background, again every "
        "--retry-interval until one answers; repeat for more. [env "
        "SERF_RETRY_JOIN, comma-separated]"
    )
    def opt_retry_join(self, address: str) -> None:
        self["retry-join"].append(address)

    @_help_text(
        "KEY=VALUE tag for this node; repeat for more. Each one adds to or "
        "replaces a default tag. [env SERF_TAGS, comma-separated; default "
        "role=flyte-serf]"
    )
    def opt_tag(self, tag: str) -> None:
        self["tag"].append(tag)

    @_help_text(
        "[FILTER=]SCRIPT run through /bin/sh for each matching event, as serf "
        "agent -event-handler; FILTER is e.g. member-join,user:deploy (default "
        "every event). Repeat for more. [env SERF_EVENT_HANDLERS, one per line]"
    )
    def opt_event_handler(self, spec: str) -> None:
        self["event-handler"].append(spec)

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
        retry_texts, retry_source = self._list("retry-join")
        retry_join = tuple(
            self._parse(retry_source, parse_host_port, text, 7946) for text in retry_texts
        )
        retry_interval = self._retry_interval()
        retry_max = self._integer("retry-max", 0, 0, None, "a number of attempts (0: no limit)")

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
        keyring: Keyring | None = None
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
            try:
                keyring = load_keyring_file(keyring_file)
            except KeyringError as e:
                raise usage.UsageError(
                    f"{self._source('keyring-file')}: {_one_line(str(e))}"
                ) from None

        profile = (self._value("profile") or DEFAULT_PROFILE).lower()
        if profile not in PROFILES:
            raise usage.UsageError(
                f"{self._source('profile')}: unknown profile {self._value('profile')!r}; "
                "use lan, wan or local"
            )

        rpc_addr = self._rpc_address()
        rpc_auth = self._value("rpc-auth") or ""
        event_handlers = self._event_handlers()

        snapshot = self._snapshot()
        rejoin = self._flag("rejoin")
        if rejoin and snapshot is None:
            raise usage.UsageError(
                f"{self._flag_source('rejoin')} only works with a snapshot: give "
                "--snapshot PATH too, or drop it"
            )
        replay = self._flag("replay")

        size_limit = self._user_event_size_limit()
        health_port = self._integer(
            "health-port", DEFAULT_HEALTH_PORT, 0, 65535, "a port from 0 (off) to 65535"
        )

        level_text = self._value("log-level")
        self.log_level_given = level_text is not None
        level = (level_text or DEFAULT_LOG_LEVEL).upper()
        level = _LOG_LEVEL_ALIASES.get(level, level)
        if level not in LOG_LEVELS:
            raise usage.UsageError(
                f"{self._source('log-level')}: unknown log level "
                f"{level_text!r}; use TRACE, DEBUG, INFO, WARN or ERR"
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
            rpc_addr=rpc_addr,
            rpc_auth=rpc_auth,
            event_handlers=event_handlers,
            snapshot=snapshot,
            rejoin=rejoin,
            replay=replay,
            retry_join=retry_join,
            retry_interval=retry_interval,
            retry_max=retry_max,
            user_event_size_limit=size_limit,
            health_port=health_port,
            keyring=keyring,
        )

    # -- reading values ----------------------------------------------------------------

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

    def _flag(self, option: str) -> bool:
        """A flag: given on the command line, else its twin's true or false."""
        if self[option]:
            return True
        name = ENVIRONMENT[option]
        text = self._environ.get(name, "").strip()
        if not text:
            return False
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise usage.UsageError(f"{name}: {text!r} is not true or false; write true or false")

    def _flag_source(self, option: str) -> str:
        return f"--{option}" if self[option] else ENVIRONMENT[option]

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

    def _integer(
        self, option: str, default: int, low: int, high: int | None, wanted: str
    ) -> int:
        text = self._value(option)
        if text is None:
            return default
        source = self._source(option)
        stripped = text.strip()
        if not re.fullmatch(r"[+-]?\d+", stripped):
            raise usage.UsageError(f"{source}: {text!r} is not a whole number; give {wanted}")
        number = int(stripped)
        if number < low or (high is not None and number > high):
            raise usage.UsageError(f"{source}: {number} is out of range; give {wanted}")
        return number

    def _retry_interval(self) -> float:
        text = self._value("retry-interval")
        if text is None:
            return DEFAULT_RETRY_INTERVAL
        source = self._source("retry-interval")
        try:
            seconds = parse_go_duration(text.strip())
        except ValueError as e:
            raise usage.UsageError(
                f"{source}: {e}; write a Go duration such as 30s, 1m or 1m30s"
            ) from None
        if seconds < MIN_RETRY_INTERVAL:
            raise usage.UsageError(
                f"{source}: {text.strip()} is shorter than the minimum of 1s; "
                "give 1s or more, e.g. 30s"
            )
        return seconds

    def _user_event_size_limit(self) -> int:
        text = self._value("user-event-size-limit")
        if text is None:
            return DEFAULT_USER_EVENT_SIZE_LIMIT
        source = self._source("user-event-size-limit")
        wanted = f"a size in bytes from 1 to {USER_EVENT_SIZE_LIMIT} (default {DEFAULT_USER_EVENT_SIZE_LIMIT})"
        stripped = text.strip()
        if not re.fullmatch(r"[+-]?\d+", stripped):
            raise usage.UsageError(f"{source}: {text!r} is not a whole number; give {wanted}")
        limit = int(stripped)
        if limit > USER_EVENT_SIZE_LIMIT:
            # Serf's own words (serf.Create) for this one.
            raise usage.UsageError(
                f"{source}: user event size limit exceeds limit of {USER_EVENT_SIZE_LIMIT} "
                f"bytes; give {wanted}"
            )
        if limit < 1:
            raise usage.UsageError(f"{source}: {limit} is too small; give {wanted}")
        return limit

    def _rpc_address(self) -> tuple[str, int] | None:
        text = self._value("rpc-addr")
        if text is None:
            return DEFAULT_RPC_ADDR
        if text.strip().lower() in ("", RPC_OFF):
            return None
        source = self._source("rpc-addr")
        host, port = self._parse(source, parse_host_port, text, DEFAULT_RPC_PORT)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = _resolve(source, host, text)
        return host, port

    def _event_handlers(self) -> tuple[str, ...]:
        given: list[str] = self["event-handler"]
        if given:
            specs, source = given, "--event-handler"
        else:
            source = ENVIRONMENT["event-handler"]
            lines = self._environ.get(source, "").splitlines()
            specs = [line.strip() for line in lines if line.strip()]
        for spec in specs:
            try:
                handler = parse_handler_spec(spec)
            except ValueError as e:
                raise usage.UsageError(
                    f"{source}: {e}; FILTER (before the first '=') is a comma-separated "
                    f"list of {_EVENT_FILTERS}"
                ) from None
            if not handler.script.strip():
                raise usage.UsageError(
                    f"{source}: {spec!r} names no script; write [FILTER=]SCRIPT, e.g. "
                    "user:deploy=/usr/local/bin/deploy.sh"
                )
        return tuple(specs)

    def _snapshot(self) -> str | None:
        path = self._value("snapshot")
        if path is None:
            return None
        source = self._source("snapshot")
        if os.path.isdir(path):
            raise usage.UsageError(
                f"{source}: {path!r} is a directory; give the path of a file in it, "
                f"e.g. {os.path.join(path, 'serf.snapshot')}"
            )
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise usage.UsageError(
                f"{source}: the directory {directory!r} of snapshot {path!r} does not "
                "exist; create it or fix the path"
            )
        return path

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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _resolve(source: str, host: str, text: str) -> str:
    """The first address of host name *host*, for a listener."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise usage.UsageError(
            f"{source}: cannot resolve {host!r} in {text!r} ({_one_line(str(e))}); "
            "give an IP address, e.g. 127.0.0.1:7373"
        ) from None
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return str(sockaddr[0])
    raise usage.UsageError(
        f"{source}: {host!r} in {text!r} has no IP address; give one, e.g. 127.0.0.1:7373"
    )


# -- services -------------------------------------------------------------------------


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
        if config.keyring is not None:
            return config.keyring
        try:
            return load_keyring_file(config.keyring_file)
        except KeyringError as e:
            raise usage.UsageError(f"--keyring-file: {e}") from None
    if config.encrypt_key is not None:
        return Keyring([config.encrypt_key])
    return None


def agent_config(
    config: NodeConfig, advertise_host: Callable[[], str] = default_advertise_host
) -> AgentConfig:
    """The :class:`AgentConfig` ``twist flyteserf`` runs for *config*.

    A wildcard bind with no advertise address advertises
    :func:`default_advertise_host` (the first private IP), as Serf does.
    """
    advertise = config.advertise
    if advertise is None and config.bind[0] in ("0.0.0.0", "::", ""):
        advertise = (advertise_host(), config.bind[1])
    return AgentConfig(
        node_name=config.node_name,
        bind=config.bind,
        advertise=advertise,
        tags=dict(config.tags),
        keyring=keyring_for(config),
        keyring_file=config.keyring_file,
        profile=config.profile,
        snapshot_path=config.snapshot,
        rejoin_after_leave=config.rejoin,
        replay_on_join=config.replay,
        start_join=tuple(format_host_port(*address) for address in config.join),
        retry_join=tuple(format_host_port(*address) for address in config.retry_join),
        retry_interval=config.retry_interval,
        retry_max=config.retry_max,
        user_event_size_limit=config.user_event_size_limit,
        event_handlers=config.event_handlers,
        leave_on_stop=True,
        leave_timeout=LEAVE_TIMEOUT,
    )


class _StopOnFailure(service.Service):
    """Starts the node, then the services that need it running; stops the
    program with one line and status 1 when any of them cannot start (e.g. no
    join answered, a port is taken)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        node: service.IService,
        *after: service.IService,
        explain: Callable[[Failure], str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.node = node
        self.after = after
        self.explain = explain
        self.setName("node")

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(self.node.startService)
        d.addCallback(self._start_after)
        d.addErrback(self._failed)

    def _start_after(self, _: object) -> None:
        for child in self.after:
            if not self.running:
                return
            child.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stopping = [
            maybeDeferred(child.stopService) for child in reversed(self.after) if child.running
        ]
        if self.node.running:
            stopping.append(maybeDeferred(self.node.stopService))
        done: Deferred[Any] = DeferredList(stopping, consumeErrors=True)
        return done.addCallback(self._stopped)

    def _stopped(self, results: list[tuple[bool, Any]]) -> None:
        for ok, result in results:
            if not ok:
                self.log.failure("Stopping flyteserf failed", result)

    def _failed(self, failure: Failure) -> None:
        reason = _one_line(self.explain(failure) if self.explain else failure.getErrorMessage())
        if not self.running:
            # Stopping anyway (a signal, an RPC leave): not a start failure.
            self.log.info("flyteserf start abandoned: {reason}", reason=reason)
            return
        self.log.error("flyteserf cannot start: {reason}", reason=reason)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        # The start may fail before the reactor runs (a port taken).
        self.reactor.callWhenRunning(_stop_reactor, self.reactor)


def _start_failure(config: NodeConfig) -> Callable[[Failure], str]:
    """Names the option behind a port that could not be bound."""

    def explain(failure: Failure) -> str:
        reason = _one_line(failure.getErrorMessage())
        error = failure.value
        if isinstance(error, CannotListenError):
            port = int(error.port)
            if config.rpc_addr is not None and port == config.rpc_addr[1]:
                return f"RPC listener (--rpc-addr): {reason}"
            if config.health_port and port == config.health_port:
                return f"health endpoint (--health-port): {reason}"
            if port == config.bind[1]:
                return f"gossip (--bind): {reason}"
        return reason

    return explain


def _stop_reactor(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def exit_with_signal(number: int) -> None:
    """End this process at once, killed by signal *number* (no clean-up)."""
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


class GracefulShutdown(service.Service):
    """SIGINT and SIGTERM leave the cluster gracefully, then stop; a second one stops at once.

    Once the reactor runs, this installs its own handler for each signal,
    chaining to the one it replaces (Twisted's, which stops the reactor and
    makes ``twist`` end with that signal).  Stopping the reactor stops the
    service tree, and the agent's stop is the graceful leave, bounded by
    *grace* seconds.  A signal that arrives while the program is already
    stopping (a second Ctrl-C, a ``docker stop`` during a slow leave, or
    any stop that began otherwise) ends the process at once, killed by that
    signal; so does a shutdown still running *margin* seconds after the
    leave's bound.  Either signal counts as the second one.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        grace: float = LEAVE_TIMEOUT,
        *,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
        margin: float = SHUTDOWN_MARGIN,
        exit_now: Callable[[int], object] = exit_with_signal,
    ) -> None:
        self.reactor = reactor
        self.grace = grace
        self.margin = margin
        self.signals = tuple(signals)
        self.exit_now = exit_now
        self.setName("signals")
        self._previous: dict[int, Any] = {}
        self._shutdown_trigger: Any = None
        #: The first signal received, if any.
        self.signalled: int | None = None
        #: The program is stopping (a signal, or a shutdown begun otherwise).
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        self._shutdown_trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self._shutdown_started
        )
        # The reactor installs its own handlers as it starts: ours go on top.
        self.reactor.callWhenRunning(self._install)

    def stopService(self) -> None:
        super().stopService()
        if self.stopping:
            # The program is ending: keep catching the second signal.
            return
        self._uninstall()
        if self._shutdown_trigger is not None:
            self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None

    def _install(self) -> None:
        if not self.running or self._previous:
            return
        for number in self.signals:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._received)

    def _uninstall(self) -> None:
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._received:
                signal.signal(number, previous)
        self._previous = {}

    def _shutdown_started(self) -> None:
        self._shutdown_trigger = None
        self.stopping = True

    def _received(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.stopping or self.signalled is not None:
            self.log.warn(
                "Received {signal} while stopping: stopping at once, without finishing "
                "the graceful leave",
                signal=name,
            )
            self.exit_now(number)
            return
        self.signalled = number
        self.stopping = True
        self.log.info(
            "Received {signal}: leaving the cluster gracefully (at most {grace:g}s), then "
            "stopping; send it again to stop at once",
            signal=name,
            grace=self.grace,
        )
        # Signal handlers may interrupt the reactor anywhere: only
        # callFromThread is safe here.
        self.reactor.callFromThread(self._arm_deadline, number)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, frame)
        else:
            self.reactor.callFromThread(_stop_reactor, self.reactor)

    def _arm_deadline(self, number: int) -> None:
        self.reactor.callLater(self.grace + self.margin, self._too_slow, number)

    def _too_slow(self, number: int) -> None:
        self.log.warn(
            "Still stopping {seconds:g}s after {signal}: stopping at once",
            seconds=self.grace + self.margin,
            signal=signal.Signals(number).name,
        )
        self.exit_now(number)


def serf_log_level(options: Options) -> str:
    """Apply the log level to what ``twist`` prints; return the agent's Serf level.

    ``--log-level`` (or ``LOGLEVEL``) given: it sets twist's own filter
    (TRACE prints as DEBUG, Twisted having no trace level).  Not given:
    ``twist --log-level`` decides, and the agent follows it.
    """
    config: NodeConfig = options.config
    parent = options.parent
    if parent is None or "logLevel" not in parent:
        return config.log_level
    if options.log_level_given:
        parent["logLevel"] = _TWISTED_LEVELS[config.log_level]
        return config.log_level
    return _SERF_LEVELS.get(parent["logLevel"], config.log_level)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the ``twist flyteserf`` service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: NodeConfig = options.config
    level = serf_log_level(options)
    top = service.MultiService()
    top.setName("flyteserf")
    NodeConfigService(config).setServiceParent(top)
    agent = Agent(agent_config(config), reactor)
    # An RPC "serf leave" ends the program, as it ends a serf agent.
    agent.exit_on_leave = True
    agent.log_ring.min_level = level
    if config.rpc_addr is not None:
        agent.attach(RPCService(reactor, agent, config.rpc_addr, config.rpc_auth))
    after: list[service.IService] = []
    if config.health_port:
        after.append(health_service(reactor, config.health_port, config.bind[0]))
    _StopOnFailure(reactor, agent, *after, explain=_start_failure(config)).setServiceParent(top)
    GracefulShutdown(reactor, LEAVE_TIMEOUT).setServiceParent(top)
    return top
