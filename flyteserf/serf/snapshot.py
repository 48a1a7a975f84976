"""The snapshot file (``-snapshot=path``, spec §3.12), readable by Go serf and back.

Why it exists: a node that restarts should rejoin the nodes it last saw
alive, and must not replay user events and queries it already delivered.
So serf appends, one line each, what it learns, and replays the file at
start::

    alive: <name> <ip:port>     a member-join (address as Go's net.TCPAddr prints it)
    not-alive: <name>           a member-leave or member-failed
    clock: <n>                  the member clock - 1, when it advances
    event-clock: <n>            the highest user-event LTime seen
    query-clock: <n>            the highest query LTime seen
    leave                       this node left gracefully
    # ...                       a comment; "coordinate: ..." lines are ignored too

The file only grows, so once it exceeds ``max(min_compact_size,
2 x 128 x len(alive))`` bytes it is rewritten with just the live state.

Blocking: records are buffered in memory and written by a timer every
``flush_interval`` seconds; each write is one small append (a few hundred
bytes) to a local file, the only disk work done on the reactor thread, as
the replay at :meth:`Snapshotter.open` (startup, one small file) and the
final ``fsync`` at :meth:`Snapshotter.close` (shutdown).  The compaction
rewrite, which fsyncs, runs through ``defer_to_thread`` when one is given
(pass ``functools.partial(twisted.internet.threads.deferToThreadPool,
reactor, reactor.getThreadPool())``); without one it runs inline, which is
meant for tests.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from flyteserf.addresses import format_host_port
from flyteserf.serf.events import EventType, MemberEvent

__all__ = [
    "COMPACT_EXTENSION",
    "MIN_COMPACT_SIZE",
    "SnapshotError",
    "SnapshotState",
    "Snapshotter",
    "go_tcp_addr",
]

#: Go serf's agent passes 128 KiB as the minimum compaction size.
MIN_COMPACT_SIZE = 128 * 1024
#: The compaction is written next to the snapshot under this suffix, then
#: renamed over it, so a crash mid-way leaves the old file intact.
COMPACT_EXTENSION = ".compact"
#: Estimated bytes per alive node, and the factor over that estimate the
#: file may grow to before it is compacted (Go's snapshotBytesPerNode and
#: snapshotCompactionThreshold).
BYTES_PER_NODE = 128
COMPACTION_THRESHOLD = 2
#: After a failed write or compaction, wait this long before trying a
#: compaction again (Go's snapshotErrorRecoveryInterval).
ERROR_RECOVERY_INTERVAL = 30.0

#: Go's strconv.ParseUint(s, 10, 64): ASCII digits only, no sign or spaces.
_UINT = re.compile(r"[0-9]+")
_UINT64_MAX = 2**64 - 1

#: Runs a blocking function off the reactor thread and fires with its result.
DeferToThread = Callable[[Callable[[], None]], "Deferred[None]"]


class SnapshotError(Exception):
    """The snapshot file cannot be used; the message says which and why."""


def go_tcp_addr(addr: str, port: int) -> str:
    """``ip:port`` exactly as Go's ``net.TCPAddr.String()`` prints it.

    IPv6 in brackets (``[fd00::1]:7946``), in RFC 5952 short form, and an
    IPv4-mapped IPv6 address as plain IPv4, as Go's ``net.IP`` does.
    Anything that is not an IP address is joined as it is.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return format_host_port(addr, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return format_host_port(str(ip.ipv4_mapped), port)
    return format_host_port(str(ip), port)


@attrs.frozen
class SnapshotState:
    """What a replay of the snapshot file recovered.

    ``left`` is true when the file records a graceful leave (and
    ``rejoin_after_leave`` is off) with no member or event activity after
    it: the node left the cluster last time and should not rejoin.
    """

    alive: dict[str, str] = attrs.field(factory=dict)
    last_clock: int = 0
    last_event_clock: int = 0
    last_query_clock: int = 0
    left: bool = False


class Snapshotter:
    """Keeps the snapshot file: replays it, appends to it, compacts it.

    Use: :meth:`open` once (replay, then open for appending), feed it
    events with the ``record_*`` methods, and :meth:`close` it at shutdown.
    Serf witnesses the returned clocks and rejoins
    :meth:`previous_alive_nodes` (skipping itself).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        rejoin_after_leave: bool = False,
        min_compact_size: int = MIN_COMPACT_SIZE,
        flush_interval: float = 0.5,
        rng: random.Random | None = None,
        defer_to_thread: DeferToThread | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self.rejoin_after_leave = rejoin_after_leave
        self.min_compact_size = min_compact_size
        self.flush_interval = flush_interval
        self._rng = rng if rng is not None else random.Random()
        self._defer_to_thread = defer_to_thread

        self._alive: dict[str, str] = {}
        self._last_clock = 0
        self._last_event_clock = 0
        self._last_query_clock = 0
        self._leaving = False

        self._fd: int | None = None
        self._opened = False
        self._closed = False
        self._pending: list[bytes] = []
        # Bytes in the file plus bytes buffered: what decides compaction.
        self._offset = 0
        self._flush_call: IDelayedCall | None = None
        self._compacting = False
        self._compaction_waiters: list[Deferred[None]] = []
        self._no_compaction_before = float("-inf")

    # -- what was recovered ----------------------------------------------

    @property
    def last_clock(self) -> int:
        return self._last_clock

    @property
    def last_event_clock(self) -> int:
        return self._last_event_clock

    @property
    def last_query_clock(self) -> int:
        return self._last_query_clock

    @property
    def alive(self) -> dict[str, str]:
        """A copy of name -> ``ip:port`` of the members last known alive."""
        return dict(self._alive)

    @property
    def leaving(self) -> bool:
        """True once :meth:`record_leave` was called: events are no longer recorded."""
        return self._leaving

    def previous_alive_nodes(self) -> list[tuple[str, str]]:
        """``(name, "ip:port")`` of the members last known alive, shuffled so
        that restarting nodes do not all rejoin through the same peer."""
        nodes = list(self._alive.items())
        self._rng.shuffle(nodes)
        return nodes

    # -- opening and replay ----------------------------------------------

    def open(self) -> SnapshotState:
        """Replay the file (created if missing, mode 0644) and open it for appending.

        :raises SnapshotError: The file cannot be opened or read.
        """
        if self._opened:
            raise SnapshotError(f"snapshot {self.path} is already open")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise SnapshotError(
                f"cannot open snapshot file {self.path}: {e.strerror}; "
                "check the snapshot path, its directory and their permissions"
            ) from None
        try:
            data = _read_all(fd)
        except OSError as e:
            os.close(fd)
            raise SnapshotError(
                f"cannot read snapshot file {self.path}: {e.strerror}; "
                "check the file, or move it away to start without a snapshot"
            ) from None
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            # A torn last record (a crash mid-write).  Go skips it on replay
            # but then appends after it, which garbles the next record too;
            # cut it off instead, so the file is whole again.
            try:
                os.ftruncate(fd, len(complete))
            except OSError as e:
                os.close(fd)
                raise SnapshotError(
                    f"cannot truncate the incomplete last line of snapshot file "
                    f"{self.path}: {e.strerror}; check its permissions"
                ) from None
        self._fd = fd
        self._opened = True
        left = self._replay(data)
        self._offset = len(complete)
        return SnapshotState(
            alive=dict(self._alive),
            last_clock=self._last_clock,
            last_event_clock=self._last_event_clock,
            last_query_clock=self._last_query_clock,
            left=left,
        )

    def _replay(self, data: bytes) -> bool:
        """Rebuild the state from the file's lines; return the ``left`` flag."""
        *lines, torn = data.split(b"\n")
        if torn:
            self.log.warn(
                "snapshot {path}: dropping an incomplete last line {line!r}",
                path=self.path,
                line=torn,
            )
        left = False
        for number, raw in enumerate(lines, 1):
            line = raw.decode("utf-8", "surrogateescape")
            if line.startswith("alive: "):
                name, sep, addr = line[len("alive: ") :].rpartition(" ")
                if not sep:
                    self._skip(number, line, "no address after the node name")
                    continue
                self._alive[name] = addr
                left = False
            elif line.startswith("not-alive: "):
                self._alive.pop(line[len("not-alive: ") :], None)
                left = False
            elif line.startswith("clock: "):
                value = self._parse_clock(number, line, "clock: ")
                if value is not None:
                    self._last_clock = value
            elif line.startswith("event-clock: "):
                value = self._parse_clock(number, line, "event-clock: ")
                if value is not None:
                    self._last_event_clock = value
                    left = False
            elif line.startswith("query-clock: "):
                value = self._parse_clock(number, line, "query-clock: ")
                if value is not None:
                    self._last_query_clock = value
                    left = False
            elif line.startswith("coordinate: ") or line.startswith("#"):
                # Old serf versions persisted coordinates; they re-converge.
                continue
            elif line == "leave":
                if self.rejoin_after_leave:
                    self.log.info(
                        "snapshot {path}: ignoring a previous leave (rejoin after leave)",
                        path=self.path,
                    )
                    continue
                self._alive.clear()
                self._last_clock = self._last_event_clock = self._last_query_clock = 0
                left = True
            else:
                self._skip(number, line, "unrecognized record")
        return left

    def _parse_clock(self, number: int, line: str, prefix: str) -> int | None:
        text = line[len(prefix) :]
        if _UINT.fullmatch(text) and int(text) <= _UINT64_MAX:
            return int(text)
        self._skip(number, line, "not an unsigned 64-bit number")
        return None

    def _skip(self, number: int, line: str, why: str) -> None:
        self.log.warn(
            "snapshot {path} line {number}: {why}, skipped: {line!r}",
            path=self.path,
            number=number,
            why=why,
            line=line,
        )

    # -- recording -------------------------------------------------------

    def record_member_event(self, event: MemberEvent) -> None:
        """Record joins as ``alive:`` and leaves and failures as ``not-alive:``.

        member-update and member-reap change nothing that a rejoin needs, so,
        as in Go, they are not recorded.  (Go also checks the member clock
        after every member event: the caller calls :meth:`record_clock`.)
        """
        if not self._recording("member event"):
            return
        if event.type is EventType.MEMBER_JOIN:
            for member in event.members:
                if not self._name_ok(member.name):
                    continue
                addr = go_tcp_addr(member.addr, member.port)
                self._alive[member.name] = addr
                self._append(f"alive: {member.name} {addr}\n")
        elif event.type in (EventType.MEMBER_LEAVE, EventType.MEMBER_FAILED):
            for member in event.members:
                if not self._name_ok(member.name):
                    continue
                self._alive.pop(member.name, None)
                self._append(f"not-alive: {member.name}\n")

    def record_clock(self, ltime: int) -> None:
        """Record the member clock value to persist (serf's clock - 1).

        Written only when it advances past the last value written.  Go keeps
        doing this after a leave (observed: ``leave`` then ``clock: 7``).
        """
        if not self._opened or self._closed:
            return
        if ltime > self._last_clock:
            self._last_clock = ltime
            self._append(f"clock: {ltime}\n")

    def record_event_clock(self, ltime: int) -> None:
        """Record a delivered user event's LTime, if it is the highest yet."""
        if self._recording("user event") and ltime > self._last_event_clock:
            self._last_event_clock = ltime
            self._append(f"event-clock: {ltime}\n")

    def record_query_clock(self, ltime: int) -> None:
        """Record a delivered query's LTime, if it is the highest yet."""
        if self._recording("query") and ltime > self._last_query_clock:
            self._last_query_clock = ltime
            self._append(f"query-clock: {ltime}\n")

    def record_leave(self) -> None:
        """Record a graceful leave and stop recording events.

        Unless ``rejoin_after_leave``, the alive set is forgotten, so that a
        restart does not rejoin the cluster this node chose to leave.  The
        line is written at once (not fsynced: the operating system keeps it
        if the process dies; :meth:`close` fsyncs).
        """
        if not self._opened or self._closed or self._leaving:
            return
        self._leaving = True
        if not self.rejoin_after_leave:
            self._alive.clear()
        self._append("leave\n")
        self.flush()

    def _recording(self, what: str) -> bool:
        if not self._opened or self._closed:
            self.log.debug(
                "snapshot {path} not open, {what} not recorded", path=self.path, what=what
            )
            return False
        return not self._leaving

    def _name_ok(self, name: str) -> bool:
        if "\n" in name:
            # One line per record: such a name would corrupt the file.
            self.log.warn("snapshot: node name {name!r} has a newline, not recorded", name=name)
            return False
        return True

    # -- writing ---------------------------------------------------------

    def _append(self, line: str) -> None:
        data = line.encode("utf-8", "surrogateescape")
        self._pending.append(data)
        self._offset += len(data)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self.flush_interval, self._flush_timer)
        if self._offset > self.max_size():
            self._maybe_compact()

    def max_size(self) -> int:
        """The size past which the file is compacted."""
        return max(self.min_compact_size, COMPACTION_THRESHOLD * BYTES_PER_NODE * len(self._alive))

    def _flush_timer(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        """Write the buffered records now (a small append, see the module doc)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending or self._compacting:
            # While compacting, records wait for the new file.
            return
        if self._fd is None:
            self._fd = self._reopen()
            if self._fd is None:
                self._write_failed()
                return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            _write_all(self._fd, data)
        except OSError as e:
            self.log.error(
                "cannot write snapshot {path}: {error}", path=self.path, error=e.strerror
            )
            self._write_failed()

    def _write_failed(self) -> None:
        # What was buffered is dropped; a compaction writes the whole state
        # again, which is how Go recovers too.
        self._pending.clear()
        self._maybe_compact()

    def _reopen(self) -> int | None:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self.log.error(
                "cannot reopen snapshot {path}: {error}", path=self.path, error=e.strerror
            )
            return None

    # -- compaction ------------------------------------------------------

    def _maybe_compact(self) -> None:
        if self._compacting or self._closed or self._leaving:
            # After a leave only clock lines follow, and a rewrite would
            # drop the leave record: leave the file as it is.
            return
        if self._clock.seconds() < self._no_compaction_before:
            return
        self.compact()

    def compact(self) -> Deferred[None]:
        """Rewrite the file with only the live state; fires when done.

        The new content is taken now; records made meanwhile are buffered
        and appended to the new file.  On failure the old file stays in use
        and another compaction is not tried for 30 s.  Does nothing unless
        open, or after a leave (the rewrite would drop the ``leave`` record).
        """
        if not self._opened or self._closed or self._leaving:
            return succeed(None)
        if self._compacting:
            waiter: Deferred[None] = Deferred()
            self._compaction_waiters.append(waiter)
            return waiter
        # Everything so far into the old file, so nothing is lost if the
        # rewrite fails; it is all in the compacted state if it succeeds.
        self.flush()
        lines = [f"alive: {name} {addr}\n" for name, addr in self._alive.items()]
        lines.append(f"clock: {self._last_clock}\n")
        lines.append(f"event-clock: {self._last_event_clock}\n")
        lines.append(f"query-clock: {self._last_query_clock}\n")
        content = "".join(lines).encode("utf-8", "surrogateescape")
        self._compacting = True
        path = self.path

        def rewrite() -> None:
            _rewrite(path, content)

        if self._defer_to_thread is None:
            running: Deferred[None] = maybeDeferred(rewrite)
        else:
            running = self._defer_to_thread(rewrite)
        done: Deferred[None] = Deferred()
        self._compaction_waiters.append(done)
        running.addCallbacks(
            lambda _: self._compacted(len(content)), self._compaction_failed
        )
        return done

    def _compacted(self, size: int) -> None:
        self.log.debug("snapshot {path} compacted to {size} bytes", path=self.path, size=size)
        old, self._fd = self._fd, None
        if old is not None:
            try:
                os.close(old)  # Its file was just replaced.
            except OSError:
                pass
        self._fd = self._reopen()
        self._offset = size + sum(len(chunk) for chunk in self._pending)
        self._compaction_finished()

    def _compaction_failed(self, failure: Failure) -> None:
        self.log.failure(
            "snapshot {path}: compaction failed, will retry after {interval}s",
            failure,
            path=self.path,
            interval=ERROR_RECOVERY_INTERVAL,
        )
        self._no_compaction_before = self._clock.seconds() + ERROR_RECOVERY_INTERVAL
        self._compaction_finished()

    def _compaction_finished(self) -> None:
        self._compacting = False
        if self._closed:
            self._finish_close()
        elif self._pending:
            self.flush()
        waiters, self._compaction_waiters = self._compaction_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- closing ---------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Write what is buffered, fsync and close; fires when done.

        Waits for a compaction in progress.  Records after this are dropped.
        Go writes the member clock one last time at shutdown: call
        :meth:`record_clock` first.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        if not self._opened:
            return succeed(None)
        if self._compacting:
            waiter: Deferred[None] = Deferred()
            self._compaction_waiters.append(waiter)
            return waiter
        self._finish_close()
        return succeed(None)

    def _finish_close(self) -> None:
        self.flush()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            self.log.error(
                "cannot sync snapshot {path}: {error}", path=self.path, error=e.strerror
            )
        finally:
            os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _rewrite(path: str, content: bytes) -> None:
    """Write ``content`` to ``path.compact``, fsync it and rename it over ``path``.

    Touches no Snapshotter state, so it may run in a thread.
    """
    tmp = path + COMPACT_EXTENSION
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
