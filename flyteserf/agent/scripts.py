"""Event handler scripts: ``serf agent -event-handler=[filter=]script`` (spec §5.3).

Each handler is a shell command with an event filter.  For every event that
passes the filter the command runs as ``/bin/sh -c "<script>"`` with Serf's
``SERF_*`` environment variables and the event on stdin; stdout and stderr
share one pipe whose last 8 KiB are kept, and for a query that output, if
the script exits 0, is the node's response.

What matches Serf 0.9.4 byte for byte: the spec syntax and its error text
(``Invalid event script: Event 'x' invoking 'y'``), the environment, the
stdin formats, the shared stdout/stderr ring, the query response rule and
the warning after one second.  What is deliberately different: Serf runs
every script synchronously on its single event loop, so one slow script
delays every other handler and all later events.  Here each handler has its
own queue: a handler still sees its events one at a time and in order, but
handlers run independently of each other and of gossip, and a queue holds at
most ``queue_limit`` waiting events (the oldest are dropped, counted and
logged) so a stuck script cannot eat memory.  A handler whose filter lists
several matching clauses (``user,*``) runs once per event, where Serf runs it
once per matching clause.

Nothing here blocks: processes are started with the injected reactor's
``spawnProcess`` and their output is read as it comes.
"""

from __future__ import annotations

import collections
import os
import re
import signal as _signal
from typing import Callable, Iterable, Mapping, Protocol, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from flyteserf.agent.filters import EventFilter, parse_event_filters
from flyteserf.serf.events import EventType

__all__ = [
    "DEFAULT_QUEUE_LIMIT",
    "MAX_OUTPUT",
    "SHELL",
    "SLOW_SCRIPT_WARNING",
    "OutputRing",
    "ScriptEventSink",
    "ScriptHandler",
    "ScriptInvoker",
    "ScriptResult",
    "event_kind",
    "event_stdin",
    "parse_handler_spec",
    "script_environment",
    "tag_env_name",
]

#: How much script output is kept (Serf's ``maxBufSize``): the last 8 KiB.
MAX_OUTPUT = 8 * 1024
#: A script still running after this many seconds is logged (never killed).
SLOW_SCRIPT_WARNING = 1.0
#: Events waiting per handler before the oldest are dropped.
DEFAULT_QUEUE_LIMIT = 1024
#: The shell Serf uses on every system but Windows.
SHELL = "/bin/sh"

# The process started is ``SHELL -c _MERGE_STDERR SHELL <script>``: it points
# its stderr at its stdout and then execs ``SHELL -c <script>``, so the script
# runs exactly as Serf runs it (same PID, ``$0`` = SHELL) with stdout and
# stderr being one pipe, as Go's os/exec gives them when both are the same
# writer.  Two separate pipes would let the reactor reorder the two streams.
_MERGE_STDERR = 'exec 2>&1; exec "$0" -c "$1"'

_NOT_ENV_NAME = re.compile(r"[^A-Z0-9_]")

_log = Logger()


# -- the events, duck-typed ------------------------------------------------------------


class _MemberLike(Protocol):
    name: str
    addr: str
    tags: Mapping[str, str]


class _QueryLike(Protocol):
    name: str
    payload: bytes
    ltime: int

    def respond(self, payload: bytes) -> None: ...


def event_kind(event: object) -> EventType:
    """The event's :class:`EventType`, from its ``type`` (an EventType or its
    value); an object without one that can ``respond`` is a query.

    Raises :class:`ValueError` (Serf's ``Unknown event type``) otherwise.
    """
    etype = getattr(event, "type", None)
    if etype is None and callable(getattr(event, "respond", None)):
        return EventType.QUERY
    value = getattr(etype, "value", etype)
    try:
        return EventType(value)
    except ValueError:
        raise ValueError(f"Unknown event type: {etype!r} ({event!r})") from None


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _event_clean(text: str) -> str:
    """Serf's ``eventClean``: tabs and newlines become ``\\t`` and ``\\n``."""
    return text.replace("\t", "\\t").replace("\n", "\\n")


def event_stdin(event: object) -> bytes:
    """What the script reads on stdin.

    Member events: a line ``name\\taddress\\trole\\ttags\\n`` per member,
    ``tags`` being ``k=v`` pairs joined by ``,``; tabs and newlines inside
    the name, the role and the tags are escaped (not in the address).
    User events and queries: the payload, with ``\\n`` appended when it does
    not end with one; nothing for an empty payload.
    """
    kind = event_kind(event)
    if kind in (EventType.USER, EventType.QUERY):
        payload = bytes(getattr(event, "payload", b"") or b"")
        if payload and not payload.endswith(b"\n"):
            payload += b"\n"
        return payload
    lines = []
    for member in cast("Iterable[_MemberLike]", getattr(event, "members", ())):
        tags = member.tags or {}
        pairs = ",".join(f"{name}={value}" for name, value in tags.items())
        lines.append(
            f"{_event_clean(member.name)}\t{member.addr}\t"
            f"{_event_clean(tags.get('role', ''))}\t{_event_clean(pairs)}\n"
        )
    return _encode("".join(lines))


def _go_upper(char: str) -> str:
    # Go's strings.ToUpper maps rune by rune (simple case mapping); Python's
    # full mapping would turn "ß" into "SS" where Go keeps "ß" (then "_").
    upper = char.upper()
    return upper if len(upper) == 1 else char


def tag_env_name(tag: str) -> str:
    """The ``SERF_TAG_<NAME>`` suffix: upper-cased, every character outside
    ``[A-Z0-9_]`` replaced by ``_`` (``we-ird.tag`` → ``WE_IRD_TAG``)."""
    return _NOT_ENV_NAME.sub("_", "".join(_go_upper(c) for c in tag))


def script_environment(
    event: object,
    self_name: str,
    self_tags: Mapping[str, str],
    base: Mapping[str, str],
) -> dict[str, str]:
    """The script's environment: *base* (the agent's own environment) plus
    ``SERF_EVENT``, ``SERF_SELF_NAME``, ``SERF_SELF_ROLE``, one
    ``SERF_TAG_<NAME>`` per own tag, and ``SERF_USER_EVENT`` /
    ``SERF_USER_LTIME`` or ``SERF_QUERY_NAME`` / ``SERF_QUERY_LTIME``.

    Later entries win, as with Go's de-duplicated ``cmd.Env``.
    """
    kind = event_kind(event)
    env = dict(base)
    env["SERF_EVENT"] = kind.value
    env["SERF_SELF_NAME"] = self_name
    env["SERF_SELF_ROLE"] = self_tags.get("role", "")
    for name, value in self_tags.items():
        env["SERF_TAG_" + tag_env_name(name)] = value
    if kind is EventType.USER:
        env["SERF_USER_EVENT"] = str(getattr(event, "name"))
        env["SERF_USER_LTIME"] = str(int(getattr(event, "ltime")))
    elif kind is EventType.QUERY:
        env["SERF_QUERY_NAME"] = str(getattr(event, "name"))
        env["SERF_QUERY_LTIME"] = str(int(getattr(event, "ltime")))
    return env


# -- handler specs -------------------------------------------------------------------


@attrs.frozen
class ScriptHandler:
    """One ``-event-handler``: which events (:attr:`filter`) run which :attr:`script`."""

    #: The spec as given (``"user:deploy=/usr/local/bin/deploy"``).
    spec: str
    #: The filter text before the first ``=`` ("" when there was none: every event).
    filter_text: str
    script: str
    filter: EventFilter

    def matches(self, event: object) -> bool:
        return self.filter.matches(event)

    def describe(self) -> str:
        """Serf's wording: ``Event 'user:deploy' invoking '/usr/local/bin/deploy'``."""
        return f"Event '{self.filter}' invoking '{self.script}'"

    def __str__(self) -> str:
        return self.spec


def parse_handler_spec(spec: str) -> ScriptHandler:
    """Parse ``[filter=]script`` as Serf does.

    Like Serf, the spec is split at its first ``=`` whatever comes before
    it, so a script containing ``=`` needs a filter in front
    (``*=FOO=1 run.sh``, or ``=FOO=1 run.sh``, an empty filter meaning
    every event); ``FOO=1 run.sh`` alone is refused because ``FOO`` is not
    an event.  Raises :class:`ValueError` with Serf's text,
    ``Invalid event script: Event 'FOO' invoking '1 run.sh'``, naming the
    first invalid element of the filter.
    """
    filter_text, sep, script = spec.partition("=")
    if not sep:
        filter_text, script = "", spec
    try:
        event_filter = parse_event_filters(filter_text)
    except ValueError as e:
        bad = _first_invalid_clause(filter_text)
        raise ValueError(f"Invalid event script: Event '{bad}' invoking '{script}'") from e
    return ScriptHandler(spec=spec, filter_text=filter_text, script=script, filter=event_filter)


def _first_invalid_clause(filter_text: str) -> str:
    for clause in filter_text.split(","):
        if clause == "":  # "" alone means "*", but not inside a list ("user,")
            return clause
        try:
            parse_event_filters(clause)
        except ValueError:
            return clause
    return filter_text


def _handler(spec: str | ScriptHandler) -> ScriptHandler:
    return spec if isinstance(spec, ScriptHandler) else parse_handler_spec(spec)


# -- running one script ----------------------------------------------------------------


class OutputRing:
    """Keeps the last :attr:`size` bytes written (Serf's ``circbuf``) and the total."""

    def __init__(self, size: int = MAX_OUTPUT) -> None:
        if size <= 0:
            raise ValueError(f"an output ring needs a positive size, not {size}")
        self.size = size
        #: Every byte ever written, kept or not.
        self.total_written = 0
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.total_written += len(data)
        self._buf += data
        if len(self._buf) > self.size:
            del self._buf[: len(self._buf) - self.size]

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    @property
    def truncated(self) -> bool:
        return self.total_written > self.size


@attrs.frozen
class ScriptResult:
    """How one script run went; :meth:`ScriptInvoker.invoke` always fires with one."""

    script: str
    #: ``str(event)``, for logs: ``user-event: deploy``, ``query: uptime``.
    event: str
    #: The exit status, or None if the script was killed by a signal or never started.
    exit_code: int | None
    signal: int | None
    #: The last :data:`MAX_OUTPUT` bytes of stdout and stderr together.
    output: bytes
    #: How many bytes the script wrote in all.
    output_size: int
    duration: float
    #: Why the script could not run or failed (Serf's wording: ``exit status 1``).
    error: str | None = None
    #: Whether the output was sent as the query's response.
    responded: bool = False
    #: Why responding to the query failed.
    response_error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.error is None


class _ScriptProcess(ProcessProtocol):
    """Feeds stdin, collects stdout+stderr into the ring, reports the end."""

    def __init__(self, stdin: bytes, ring: OutputRing, ended: Deferred[BaseException | None]) -> None:
        self._stdin = stdin
        self._ring = ring
        self._ended = ended

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if self._stdin:
            transport.write(self._stdin)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._ring.write(data)

    def errReceived(self, data: bytes) -> None:
        self._ring.write(data)

    def processEnded(self, reason: Failure) -> None:
        self._ended.callback(reason.value)


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class ScriptInvoker:
    """Runs one event script for one event (Serf's ``invokeEventScript``).

    *reactor* provides :class:`IReactorProcess` and :class:`IReactorTime`.
    *environ* is the environment scripts inherit; by default the process's
    own, read at each run.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        *,
        environ: Mapping[str, str] | None = None,
        shell: str = SHELL,
        max_output: int = MAX_OUTPUT,
        slow_warning: float = SLOW_SCRIPT_WARNING,
    ) -> None:
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._environ = environ
        self.shell = shell
        self.max_output = max_output
        self.slow_warning = slow_warning

    def argv(self, script: str) -> list[str]:
        """The command line spawned for *script* (see the module's notes)."""
        return [self.shell, "-c", _MERGE_STDERR, self.shell, script]

    def invoke(
        self,
        script: str,
        event: object,
        self_name: str,
        self_tags: Mapping[str, str],
    ) -> Deferred[ScriptResult]:
        """Run *script* for *event*; fire with a :class:`ScriptResult` when it
        has ended and a query has been answered.  Never fails: problems are
        logged and reported in the result.
        """
        described = str(event)
        start = self._clock.seconds()
        ring = OutputRing(self.max_output)
        try:
            base = os.environ if self._environ is None else self._environ
            env = script_environment(event, self_name, self_tags, base)
            stdin = event_stdin(event)
        except Exception as e:
            return succeed(self._not_started(script, event, described, start, str(e)))

        ended: Deferred[BaseException | None] = Deferred()
        protocol = _ScriptProcess(stdin, ring, ended)
        slow = self._clock.callLater(self.slow_warning, self._warn_slow, script, described)
        try:
            self._reactor.spawnProcess(
                protocol,
                self.shell,
                self.argv(script),
                env=env,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as e:
            slow.cancel()
            return succeed(self._not_started(script, event, described, start, str(e)))

        def finished(reason: BaseException | None) -> ScriptResult:
            return self._finished(script, event, described, start, ring, reason, slow)

        return ended.addCallback(finished)

    def _warn_slow(self, script: str, described: str) -> None:
        self.log.warn(
            "Script '{script}' slow, execution exceeding {seconds:g}s (event {event})",
            script=script,
            seconds=self.slow_warning,
            event=described,
        )

    def _not_started(
        self, script: str, event: object, described: str, start: float, error: str
    ) -> ScriptResult:
        self.log.error(
            "Error invoking script '{script}' for event {event}: {error}",
            script=script,
            event=described,
            error=error,
        )
        return ScriptResult(
            script=script,
            event=described,
            exit_code=None,
            signal=None,
            output=b"",
            output_size=0,
            duration=self._clock.seconds() - start,
            error=error,
        )

    def _finished(
        self,
        script: str,
        event: object,
        described: str,
        start: float,
        ring: OutputRing,
        reason: BaseException | None,
        slow: IDelayedCall,
    ) -> ScriptResult:
        if slow.active():
            slow.cancel()
        duration = self._clock.seconds() - start
        exit_code: int | None = None
        signal: int | None = None
        if isinstance(reason, ProcessDone):
            exit_code = 0
        elif isinstance(reason, ProcessTerminated):
            exit_code, signal = reason.exitCode, reason.signal
        output = ring.getvalue()
        if ring.truncated:
            self.log.warn(
                "Script '{script}' generated {total} bytes of output, truncated to {size}",
                script=script,
                total=ring.total_written,
                size=ring.size,
            )
        kind = event_kind(event)
        self.log.debug(
            "Event '{kind}' script output: {output}",
            kind=kind.value,
            output=output.decode("utf-8", "replace"),
        )
        error: str | None = None
        if signal is not None:
            error = f"signal: {_signal_name(signal)}"
        elif exit_code != 0:
            error = f"exit status {exit_code}" if exit_code is not None else f"ended: {reason}"
        if error is not None:
            self.log.error(
                "Error invoking script '{script}' for event {event}: {error}",
                script=script,
                event=described,
                error=error,
            )
        responded = False
        response_error: str | None = None
        if error is None and kind is EventType.QUERY and ring.total_written > 0:
            query = cast(_QueryLike, event)
            try:
                query.respond(output)
            except Exception as e:
                response_error = str(e) or type(e).__name__
                self.log.warn(
                    "Failed to respond to query '{event}': {error}",
                    event=described,
                    error=response_error,
                )
            else:
                responded = True
        return ScriptResult(
            script=script,
            event=described,
            exit_code=exit_code,
            signal=signal,
            output=output,
            output_size=ring.total_written,
            duration=duration,
            error=error,
            responded=responded,
            response_error=response_error,
        )


# -- handlers, their queues, and the sink ----------------------------------------------


@attrs.frozen
class _Job:
    event: object
    self_name: str
    self_tags: Mapping[str, str]


class _HandlerQueue:
    """One handler's events, run one at a time, in order."""

    log = Logger()

    def __init__(
        self,
        handler: ScriptHandler,
        invoker: ScriptInvoker,
        limit: int,
        job_done: Callable[[], None],
    ) -> None:
        self.handler = handler
        self._invoker = invoker
        self._limit = limit
        self._job_done = job_done
        self._queue: collections.deque[_Job] = collections.deque()
        self._running = False
        self._pumping = False
        self.dropped = 0
        self.completed = 0

    @property
    def busy(self) -> bool:
        return self._running or bool(self._queue)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def push(self, job: _Job) -> None:
        if len(self._queue) >= self._limit:
            oldest = self._queue.popleft()
            self.dropped += 1
            self.log.warn(
                "Event handler {handler!r} is {limit} events behind: dropped the oldest "
                "({event}); {dropped} dropped so far",
                handler=self.handler.spec,
                limit=self._limit,
                event=str(oldest.event),
                dropped=self.dropped,
            )
            self._job_done()
        self._queue.append(job)
        self._pump()

    def _pump(self) -> None:
        # A loop, not recursion: a script that fails to start finishes at once.
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._running and self._queue:
                job = self._queue.popleft()
                self._running = True
                running = self._invoker.invoke(
                    self.handler.script, job.event, job.self_name, job.self_tags
                )
                running.addBoth(self._finished)
        finally:
            self._pumping = False

    def _finished(self, result: ScriptResult | Failure) -> None:
        if isinstance(result, Failure):
            self.log.failure("Event handler {handler!r} failed", result, handler=self.handler.spec)
        self._running = False
        self.completed += 1
        self._job_done()
        self._pump()


class ScriptEventSink:
    """The agent's event handler scripts: call :meth:`handle` (or the sink
    itself) with every event.

    *handlers* are specs (``"user:deploy=deploy.sh"``) or parsed
    :class:`ScriptHandler`; *tags* returns the node's current tags, read when
    an event arrives, as Serf reads its own member.  :meth:`update` replaces
    the handlers at run time (SIGHUP).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        handlers: Iterable[str | ScriptHandler],
        node_name: str,
        tags: Callable[[], Mapping[str, str]],
        *,
        invoker: ScriptInvoker | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, not {queue_limit}")
        self.node_name = node_name
        self._tags = tags
        self._invoker = invoker if invoker is not None else ScriptInvoker(reactor)
        self.queue_limit = queue_limit
        self._queues: list[_HandlerQueue] = []
        #: Replaced handlers still running the events they had before.
        self._retired: list[_HandlerQueue] = []
        self._dropped_retired = 0
        self._outstanding = 0
        self._idle_waiters: list[Deferred[None]] = []
        self.update(handlers)

    @property
    def handlers(self) -> tuple[ScriptHandler, ...]:
        return tuple(queue.handler for queue in self._queues)

    @property
    def dropped(self) -> int:
        """Events dropped because a handler's queue was full, since the start."""
        return self._dropped_retired + sum(queue.dropped for queue in self._queues)

    def update(self, handlers: Iterable[str | ScriptHandler]) -> None:
        """Replace the handlers; raises :class:`ValueError` (and changes
        nothing) if a spec is invalid.

        A handler whose spec is unchanged keeps its queue, so its events stay
        in order; a removed handler still runs the events it already had.
        """
        parsed = [_handler(spec) for spec in handlers]
        old = list(self._queues)
        queues: list[_HandlerQueue] = []
        for handler in parsed:
            for queue in old:
                if queue.handler.spec == handler.spec:
                    old.remove(queue)
                    queues.append(queue)
                    break
            else:
                queues.append(_HandlerQueue(handler, self._invoker, self.queue_limit, self._job_done))
        for queue in old:
            self._dropped_retired += queue.dropped
            if queue.busy:
                self._retired.append(queue)
        self._queues = queues

    def handle(self, event: object) -> None:
        """Queue *event* for every handler whose filter matches it.  Never raises."""
        try:
            matching = [queue for queue in self._queues if queue.handler.matches(event)]
            if not matching:
                return
            job = _Job(event, self.node_name, dict(self._tags()))
            for queue in matching:
                self._outstanding += 1
                queue.push(job)
        except Exception:
            self.log.failure("Event handler scripts could not take event {event}", event=str(event))

    __call__ = handle

    def when_idle(self) -> Deferred[None]:
        """Fire once no script runs and none waits (at once if so already)."""
        if self._outstanding == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _job_done(self) -> None:
        self._outstanding -= 1
        self._retired = [queue for queue in self._retired if queue.busy]
        if self._outstanding == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

