"""Run real ``serf agent`` processes for interop tests and benchmarks.

A :class:`SerfAgentProcess` is one ``serf agent`` child process bound to
free loopback ports, driven from Twisted::

    agent = SerfAgentProcess(reactor, node="a")
    testcase.addCleanup(agent.stop)
    await agent.start()                        # RPC port accepts connections
    await agent.wait_for_log("agent: Serf agent starting")
    rc, out, err = await agent.serf_cli("join", other.bind_address)
    members = await agent.members()            # serf members -format json
    await agent.stop()                         # SIGTERM, then SIGKILL

:func:`start_serf_agent` does the first three steps for a trial test, and
:func:`skip_unless_serf` skips a test when the ``serf`` binary is missing,
except under CI (``CI`` set in the environment), where the test command
installs ``serf`` and a missing binary is a failure, not a skip.

The reactor is always passed in; nothing here imports the global one.
Nothing blocks either: readiness is polled with timers and TCP connection
attempts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Sequence
from typing import Any, Union

import attrs
from twisted.internet import error, protocol, utils
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

__all__ = [
    "DEFAULT_SERF_BINARY",
    "SerfAgentError",
    "SerfAgentProcess",
    "find_free_port",
    "find_serf_binary",
    "skip_unless_serf",
    "start_serf_agent",
]

#: Where Debian's ``serf`` package installs the binary.
DEFAULT_SERF_BINARY = "/usr/bin/serf"

#: Serf's default gossip and RPC ports: never handed out, so a test cannot
#: collide with a system agent (Debian's package may run one).
SERF_DEFAULT_PORTS = frozenset({7946, 7373})

#: ``serf`` sub-commands that talk to an agent over RPC and take -rpc-addr.
RPC_COMMANDS = frozenset(
    {
        "event",
        "force-leave",
        "info",
        "join",
        "keys",
        "leave",
        "members",
        "monitor",
        "query",
        "reachability",
        "rtt",
        "tags",
    }
)

#: What :meth:`SerfAgentProcess.wait_for_log` matches: a substring, or a
#: compiled regular expression searched anywhere in the line.
LogPattern = Union[str, "re.Pattern[str]"]

_log = Logger()
_handed_out: set[int] = set()


class SerfAgentError(Exception):
    """A ``serf`` process did not do what the harness waited for."""


def find_serf_binary() -> str | None:
    """The ``serf`` executable on ``PATH``, else Debian's, else ``None``."""
    found = shutil.which("serf")
    if found is not None:
        return found
    if os.access(DEFAULT_SERF_BINARY, os.X_OK):
        return DEFAULT_SERF_BINARY
    return None


def skip_unless_serf() -> str:
    """Return the ``serf`` binary's path, or end the current test.

    Without a binary the test is skipped, unless the ``CI`` environment
    variable is set: CI installs ``serf`` (``scripts/test.sh`` does), so
    there a missing binary fails the test rather than silently skipping it.

    :raises twisted.trial.unittest.SkipTest: No binary, not under CI.
    :raises twisted.trial.unittest.FailTest: No binary, under CI.
    """
    binary = find_serf_binary()
    if binary is not None:
        return binary
    if os.environ.get("CI"):
        raise FailTest(
            "the serf binary is missing but CI is set; install it "
            "(apt-get install serf, as scripts/test.sh does) instead of skipping"
        )
    raise SkipTest(f"no serf binary on PATH or at {DEFAULT_SERF_BINARY}; apt-get install serf")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free for both TCP and UDP right now.

    Never Serf's defaults (7946, 7373), and never a port this process
    already handed out, so agents started one after the other in a test do
    not race each other for the same port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            if port in SERF_DEFAULT_PORTS or port in _handed_out:
                continue
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        _handed_out.add(port)
        return port
    raise SerfAgentError(f"found no port on {host} free for both TCP and UDP")


def _serf_env() -> dict[str, str]:
    """A small, fixed environment: no ``SERF_RPC_*`` leaking in from outside."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


class _AgentProtocol(protocol.ProcessProtocol):
    """Splits the agent's stdout and stderr into lines for its owner."""

    def __init__(self, on_line: Callable[[str], None], on_ended: Callable[[Failure], None]):
        self._on_line = on_line
        self._on_ended = on_ended
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if rest:
            self._partial[childFD] = rest
        for line in lines:
            self._on_line(line.rstrip(b"\r").decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            self._on_line(rest.decode("utf-8", "replace"))
        self._partial.clear()
        self._on_ended(reason)


@attrs.define(eq=False)
class SerfAgentProcess:
    """One ``serf agent`` child process on loopback, started on demand.

    The command line is ``serf agent -node=NODE -bind=127.0.0.1:BIND_PORT
    -rpc-addr=127.0.0.1:RPC_PORT *extra_args``; the ports default to free
    ones.  Every line the agent prints is kept in :attr:`log_lines` (and
    logged at debug level through :mod:`twisted.logger`).
    """

    #: Must also provide ``IReactorTime`` and ``IReactorTCP``, as every real
    #: reactor does.
    reactor: IReactorProcess
    bind_port: int = attrs.field(factory=find_free_port, kw_only=True)
    rpc_port: int = attrs.field(factory=find_free_port, kw_only=True)
    node: str = attrs.field(
        default=attrs.Factory(lambda self: f"serf-{self.bind_port}", takes_self=True),
        kw_only=True,
    )
    extra_args: Sequence[str] = attrs.field(default=(), kw_only=True)
    serf_binary: str = attrs.field(
        factory=lambda: find_serf_binary() or DEFAULT_SERF_BINARY, kw_only=True
    )
    host: str = attrs.field(default="127.0.0.1", kw_only=True)

    #: Every line the agent printed so far, stdout and stderr interleaved.
    log_lines: list[str] = attrs.field(init=False, factory=list)
    #: The exit status once the process ended normally, else ``None``.
    exit_code: int | None = attrs.field(init=False, default=None)
    #: The signal number that ended the process, else ``None``.
    exit_signal: int | None = attrs.field(init=False, default=None)
    _transport: IProcessTransport | None = attrs.field(init=False, default=None)
    _ended: bool = attrs.field(init=False, default=False)
    _ended_waiters: list[Deferred[None]] = attrs.field(init=False, factory=list)
    _log_waiters: list[tuple[Callable[[str], bool], Deferred[str]]] = attrs.field(
        init=False, factory=list
    )

    @property
    def bind_address(self) -> str:
        """``host:port`` for gossip: what other agents ``join``."""
        return f"{self.host}:{self.bind_port}"

    @property
    def rpc_address(self) -> str:
        """``host:port`` of the agent's RPC server, for ``serf -rpc-addr``."""
        return f"{self.host}:{self.rpc_port}"

    @property
    def pid(self) -> int | None:
        """The process id while the process runs, else ``None``."""
        if self._transport is None or self._ended:
            return None
        pid: int | None = self._transport.pid
        return pid

    @property
    def running(self) -> bool:
        return self._transport is not None and not self._ended

    @property
    def command(self) -> list[str]:
        """The agent's full command line."""
        return [
            self.serf_binary,
            "agent",
            f"-node={self.node}",
            f"-bind={self.bind_address}",
            f"-rpc-addr={self.rpc_address}",
            *self.extra_args,
        ]

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Deferred[SerfAgentProcess]:
        """Spawn the agent; fire with ``self`` once its RPC port accepts TCP.

        Fails with :class:`SerfAgentError`, carrying the agent's last log
        lines, if the agent exits first or ``timeout`` seconds pass (the
        process is then stopped).
        """
        return Deferred.fromCoroutine(self._start(timeout))

    async def _start(self, timeout: float) -> SerfAgentProcess:
        if self._transport is not None:
            raise SerfAgentError(f"serf agent {self.node} was already started")
        clock = IReactorTime(self.reactor)
        argv = self.command
        self._transport = self.reactor.spawnProcess(
            _AgentProtocol(self._line_received, self._process_ended),
            argv[0],
            argv,
            env=_serf_env(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self._transport.closeStdin()
        deadline = clock.seconds() + timeout
        while not self._ended:
            if await self._rpc_accepts():
                return self
            if clock.seconds() >= deadline:
                await self.stop()
                raise SerfAgentError(
                    f"serf agent {self.node}: RPC port {self.rpc_address} did not accept "
                    f"connections within {timeout:g}s{self._tail()}"
                )
            await deferLater(clock, 0.05)
        raise SerfAgentError(f"serf agent {self.node} {self._how_it_ended()}{self._tail()}")

    async def _rpc_accepts(self) -> bool:
        endpoint = TCP4ClientEndpoint(IReactorTCP(self.reactor), self.host, self.rpc_port, 5)
        try:
            connected = await connectProtocol(endpoint, protocol.Protocol())
        except error.ConnectError:
            return False
        transport = connected.transport
        if transport is not None:
            transport.loseConnection()
        return True

    def stop(self, grace: float = 10.0, signal: str = "TERM") -> Deferred[None]:
        """Send ``signal`` (TERM by default, INT for a graceful leave), then
        KILL after ``grace`` seconds; fire once the process has ended.

        Safe to call at any time, any number of times, including before
        :meth:`start` and after the process ended.
        """
        if self._transport is None or self._ended:
            return succeed(None)
        ended = self._when_ended()
        kill_later: IDelayedCall = IReactorTime(self.reactor).callLater(
            grace, self._signal, "KILL"
        )

        def cancel_kill(result: None) -> None:
            if kill_later.active():
                kill_later.cancel()
            return result

        ended.addBoth(cancel_kill)
        self._signal(signal)
        return ended

    def kill9(self) -> Deferred[None]:
        """SIGKILL the agent (no leave, no goodbye); fire once it ended."""
        if self._transport is None or self._ended:
            return succeed(None)
        ended = self._when_ended()
        self._signal("KILL")
        return ended

    def _signal(self, name: str) -> None:
        if self._transport is None:
            return
        try:
            self._transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _when_ended(self) -> Deferred[None]:
        if self._ended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ended_waiters.append(waiter)
        return waiter

    def _process_ended(self, reason: Failure) -> None:
        self._ended = True
        value = reason.value
        if isinstance(value, (error.ProcessDone, error.ProcessTerminated)):
            self.exit_code = value.exitCode
            self.exit_signal = value.signal
        _log.debug("serf agent {node} {how}", node=self.node, how=self._how_it_ended())
        waiters, self._log_waiters = self._log_waiters, []
        for _, log_waiter in waiters:
            log_waiter.errback(
                SerfAgentError(
                    f"serf agent {self.node} {self._how_it_ended()} before logging "
                    f"the line waited for{self._tail()}"
                )
            )
        ended, self._ended_waiters = self._ended_waiters, []
        for waiter in ended:
            waiter.callback(None)

    def _how_it_ended(self) -> str:
        if self.exit_signal is not None:
            return f"was killed by signal {self.exit_signal}"
        return f"exited with status {self.exit_code}"

    # -- log lines ---------------------------------------------------------

    def _line_received(self, line: str) -> None:
        self.log_lines.append(line)
        _log.debug("serf {node}: {line}", node=self.node, line=line)
        for entry in list(self._log_waiters):
            matches, waiter = entry
            if matches(line):
                self._log_waiters.remove(entry)
                waiter.callback(line)

    def wait_for_log(
        self, pattern: LogPattern, timeout: float = 30.0, *, from_line: int = 0
    ) -> Deferred[str]:
        """Fire with the first log line, from index ``from_line`` of
        :attr:`log_lines` on, that contains ``pattern`` (a string) or
        matches it (a compiled regex, searched).

        Lines already printed count, so there is no race with the agent;
        pass ``from_line=len(agent.log_lines)`` to wait for a new line.
        Fails with :class:`SerfAgentError` after ``timeout`` seconds or if
        the agent exits first.
        """
        if isinstance(pattern, str):
            text = pattern

            def matches(line: str) -> bool:
                return text in line

        else:
            regex = pattern

            def matches(line: str) -> bool:
                return regex.search(line) is not None

        for line in self.log_lines[from_line:]:
            if matches(line):
                return succeed(line)
        if self._ended:
            return Deferred.fromCoroutine(self._raise_ended(pattern))

        entry: tuple[Callable[[str], bool], Deferred[str]]

        def cancel(waiter: Deferred[str]) -> None:
            if entry in self._log_waiters:
                self._log_waiters.remove(entry)

        waiter: Deferred[str] = Deferred(cancel)
        entry = (matches, waiter)
        self._log_waiters.append(entry)
        too_late = IReactorTime(self.reactor).callLater(
            timeout, self._log_timeout, entry, pattern, timeout
        )

        def done(result: str | Failure) -> str | Failure:
            if too_late.active():
                too_late.cancel()
            return result

        waiter.addBoth(done)
        return waiter

    def _log_timeout(
        self,
        entry: tuple[Callable[[str], bool], Deferred[str]],
        pattern: LogPattern,
        timeout: float,
    ) -> None:
        if entry in self._log_waiters:
            self._log_waiters.remove(entry)
            shown = pattern if isinstance(pattern, str) else pattern.pattern
            entry[1].errback(
                SerfAgentError(
                    f"serf agent {self.node} logged no line matching {shown!r} "
                    f"within {timeout:g}s{self._tail()}"
                )
            )

    async def _raise_ended(self, pattern: LogPattern) -> str:
        shown = pattern if isinstance(pattern, str) else pattern.pattern
        raise SerfAgentError(
            f"serf agent {self.node} {self._how_it_ended()} without logging a line "
            f"matching {shown!r}{self._tail()}"
        )

    def _tail(self, count: int = 20) -> str:
        if not self.log_lines:
            return "; it printed nothing"
        lines = "\n    ".join(self.log_lines[-count:])
        return f"; its last log lines:\n    {lines}"

    # -- the serf CLI ------------------------------------------------------

    def serf_cli(self, *args: str) -> Deferred[tuple[int, str, str]]:
        """Run the stock ``serf`` CLI against this agent.

        ``-rpc-addr`` is inserted right after RPC sub-commands (Go's flag
        parser stops at the first positional argument), so
        ``serf_cli("join", other.bind_address)`` runs ``serf join
        -rpc-addr=... 127.0.0.1:PORT``.  Fires with ``(exit status, stdout,
        stderr)``; a CLI killed by a signal gives a negative status.  Do not
        use it for commands that never end, like ``monitor``.
        """
        argv = list(args)
        if argv and argv[0] in RPC_COMMANDS:
            argv.insert(1, f"-rpc-addr={self.rpc_address}")
        running = utils.getProcessOutputAndValue(
            self.serf_binary, argv, env=_serf_env(), reactor=self.reactor
        )

        def done(result: tuple[bytes, bytes, int]) -> tuple[int, str, str]:
            out, err, code = result
            return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

        def signalled(failure: Failure) -> tuple[int, str, str]:
            # getProcessOutputAndValue errbacks with (out, err, signal).
            value: Any = failure.value
            if isinstance(value, tuple) and len(value) == 3:
                out, err, signal_number = value
                return -signal_number, out.decode("utf-8", "replace"), err.decode(
                    "utf-8", "replace"
                )
            failure.raiseException()
            raise AssertionError("unreachable")  # pragma: no cover

        running.addCallbacks(done, signalled)
        result: Deferred[tuple[int, str, str]] = running
        return result

    def members(self) -> Deferred[list[dict[str, Any]]]:
        """``serf members -format json``: a dict per member, as the CLI gives
        them (``name``, ``addr``, ``port``, ``tags``, ``status``,
        ``protocol``)."""

        def parse(result: tuple[int, str, str]) -> list[dict[str, Any]]:
            code, out, err = result
            if code != 0:
                raise SerfAgentError(
                    f"serf members against {self.node} ({self.rpc_address}) exited with "
                    f"status {code}: {err.strip() or out.strip()}"
                )
            members: list[dict[str, Any]] = json.loads(out)["members"]
            return members

        return self.serf_cli("members", "-format", "json").addCallback(parse)

    def join(self, *others: SerfAgentProcess) -> Deferred[tuple[int, str, str]]:
        """``serf join`` this agent to the given agents' gossip addresses."""
        return self.serf_cli("join", *(other.bind_address for other in others))


def start_serf_agent(
    testcase: SynchronousTestCase,
    reactor: IReactorProcess,
    node: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Deferred[SerfAgentProcess]:
    """Start a ``serf agent`` for a trial test, stopped when the test ends.

    Skips the test when there is no ``serf`` binary (fails it under CI, see
    :func:`skip_unless_serf`).  The cleanup is registered before the process
    starts, so it runs even when the start or the test fails.
    """
    binary = skip_unless_serf()
    if node is None:
        agent = SerfAgentProcess(reactor, extra_args=extra_args, serf_binary=binary)
    else:
        agent = SerfAgentProcess(reactor, node=node, extra_args=extra_args, serf_binary=binary)
    testcase.addCleanup(agent.stop)
    return agent.start(timeout)
