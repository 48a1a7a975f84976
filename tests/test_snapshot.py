# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""The snapshot file (spec §3.12): replay, recording, compaction, and the real agent's file."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from flyteserf.serf.events import EventType, Member, MemberEvent
from flyteserf.serf.snapshot import (
    COMPACT_EXTENSION,
    SnapshotError,
    Snapshotter,
    SnapshotState,
    go_tcp_addr,
)
from flyteserf.testing.serf_binary import start_serf_agent

reactor = cast(IReactorProcess, _reactor)

#: The lines observed in a real agent's snapshot (spec §3.12), in order.
OBSERVED = (
    "alive: d 127.0.0.1:7949\n"
    "alive: a 127.0.0.1:7946\n"
    "clock: 6\n"
    "alive: c 127.0.0.1:7948\n"
    "event-clock: 6\n"
    "query-clock: 21\n"
)
OBSERVED_ALIVE = {"d": "127.0.0.1:7949", "a": "127.0.0.1:7946", "c": "127.0.0.1:7948"}


def join(*members: tuple[str, str, int]) -> MemberEvent:
    return MemberEvent(
        EventType.MEMBER_JOIN, tuple(Member(name, addr, port) for name, addr, port in members)
    )


def mev(etype: EventType, *names: str) -> MemberEvent:
    return MemberEvent(etype, tuple(Member(name, "10.0.0.1", 7946) for name in names))


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "snapshot")
        self.clock = Clock()
        self.logged = EventLoggingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def write(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        with open(self.path, "wb") as f:
            f.write(data)

    def read(self) -> str:
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def snapshotter(self, **kwargs: Any) -> Snapshotter:
        snap = Snapshotter(self.path, self.clock, **kwargs)
        self.addCleanup(snap.close)
        return snap

    def replay(self, text: str | bytes | None = None, **kwargs: Any) -> SnapshotState:
        if text is not None:
            self.write(text)
        snap = Snapshotter(self.path, self.clock, **kwargs)
        state = snap.open()
        snap.close()
        return state

    def warnings(self) -> list[str]:
        return [
            e["log_format"]
            for e in self.logged
            if e.get("log_level") is not None and e["log_level"].name == "warn"
        ]


class ReplayTests(_Base):
    def test_missing_file_created_empty(self) -> None:
        self.assertEqual(self.replay(), SnapshotState())
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(self.read(), "")

    def test_observed_lines(self) -> None:
        state = self.replay(OBSERVED)
        self.assertEqual(
            state,
            SnapshotState(
                alive=OBSERVED_ALIVE,
                last_clock=6,
                last_event_clock=6,
                last_query_clock=21,
                left=False,
            ),
        )
        self.assertEqual(self.warnings(), [])

    def test_leave_clears_alive_and_clocks(self) -> None:
        """The observed tail: ``leave`` then the shutdown's ``clock: 7``."""
        state = self.replay(OBSERVED + "leave\nclock: 7\n")
        self.assertEqual(state, SnapshotState(alive={}, last_clock=7, left=True))

    def test_leave_ignored_with_rejoin_after_leave(self) -> None:
        state = self.replay(OBSERVED + "leave\nclock: 7\n", rejoin_after_leave=True)
        self.assertEqual(
            state,
            SnapshotState(
                alive=OBSERVED_ALIVE, last_clock=7, last_event_clock=6, last_query_clock=21
            ),
        )

    def test_activity_after_leave_means_not_left(self) -> None:
        """A restarted node that joined again has not left any more."""
        state = self.replay(OBSERVED + "leave\nclock: 7\nalive: e 10.0.0.5:7946\nclock: 8\n")
        self.assertEqual(
            state, SnapshotState(alive={"e": "10.0.0.5:7946"}, last_clock=8, left=False)
        )
        self.assertFalse(self.replay("leave\nevent-clock: 3\n").left)
        self.assertFalse(self.replay("leave\nquery-clock: 3\n").left)
        self.assertFalse(self.replay("alive: a 1.2.3.4:5\nleave\nnot-alive: a\n").left)
        self.assertTrue(self.replay("leave\nclock: 9\n").left)

    def test_not_alive(self) -> None:
        state = self.replay(OBSERVED + "not-alive: d\nnot-alive: unknown\n")
        self.assertEqual(state.alive, {"a": "127.0.0.1:7946", "c": "127.0.0.1:7948"})

    def test_later_alive_line_wins(self) -> None:
        state = self.replay("alive: a 10.0.0.1:7946\nalive: a 10.0.0.2:8000\n")
        self.assertEqual(state.alive, {"a": "10.0.0.2:8000"})

    def test_comments_and_coordinates_ignored_silently(self) -> None:
        state = self.replay(
            "# written by hand\n"
            'coordinate: {"Vec":[0.1,0.2],"Error":1.5,"Adjustment":0,"Height":1e-05}\n'
            "alive: a 127.0.0.1:7946\n"
        )
        self.assertEqual(state.alive, {"a": "127.0.0.1:7946"})
        self.assertEqual(self.warnings(), [])

    def test_ipv6(self) -> None:
        state = self.replay("alive: v6 [fd00::5]:7946\nalive: lo [::1]:8000\n")
        self.assertEqual(state.alive, {"v6": "[fd00::5]:7946", "lo": "[::1]:8000"})

    def test_name_with_spaces_split_at_last_space(self) -> None:
        state = self.replay("alive: my node 10.0.0.1:7946\nnot-alive: other node\n")
        self.assertEqual(state.alive, {"my node": "10.0.0.1:7946"})

    def test_malformed_lines_skipped_and_logged(self) -> None:
        bad = [
            "alive: nospace",
            "clock: abc",
            "clock: -1",
            "clock: +5",
            "clock:  5",
            "clock: 5 ",
            "clock: 18446744073709551616",
            "event-clock: 0x10",
            "query-clock: ",
            "clock:5",
            "Leave",
            "leave ",
            "bogus",
            "",
            "alive: crlf 10.0.0.1:7946\r",
        ]
        text = "clock: 3\n" + "\n".join(bad) + "\nevent-clock: 18446744073709551615\n"
        state = self.replay(text)
        self.assertEqual(state.last_clock, 3)
        self.assertEqual(state.last_event_clock, 2**64 - 1)
        # The CR stays part of the address, as in Go: not our business.
        self.assertEqual(state.alive, {"crlf": "10.0.0.1:7946\r"})
        self.assertEqual(len(self.warnings()), len(bad) - 1)

    def test_binary_garbage(self) -> None:
        state = self.replay(b"\xff\xfe\x00garbage\nalive: \xc3\xa9t\xe9 10.0.0.1:1\nclock: 2\n")
        self.assertEqual(state.last_clock, 2)
        (name,) = state.alive
        # Undecodable bytes survive a round trip through the file.
        self.assertEqual(name.encode("utf-8", "surrogateescape"), b"\xc3\xa9t\xe9")

    def test_torn_last_line_dropped_and_cut_off(self) -> None:
        self.write("alive: a 10.0.0.1:7946\nclock: 4\nalive: b 10.0.0.2:79")
        snap = self.snapshotter()
        state = snap.open()
        self.assertEqual(state.alive, {"a": "10.0.0.1:7946"})
        self.assertEqual(state.last_clock, 4)
        self.assertEqual(len(self.warnings()), 1)
        # The torn record is gone, so ours start on a line of their own.
        self.assertEqual(self.read(), "alive: a 10.0.0.1:7946\nclock: 4\n")
        snap.record_clock(5)
        snap.flush()
        self.assertEqual(self.read(), "alive: a 10.0.0.1:7946\nclock: 4\nclock: 5\n")

    def test_open_errors_are_one_line(self) -> None:
        snap = Snapshotter(os.path.join(self.dir, "no", "such", "dir"), self.clock)
        e = self.assertRaises(SnapshotError, snap.open)
        self.assertIn("cannot open snapshot file", str(e))
        self.assertIn("No such file or directory", str(e))
        self.assertNotIn("\n", str(e))

    def test_open_twice(self) -> None:
        snap = self.snapshotter()
        snap.open()
        self.assertRaises(SnapshotError, snap.open)

    def test_mode_0644(self) -> None:
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.replay()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)

    def test_previous_alive_nodes_shuffled_with_injected_rng(self) -> None:
        names = [f"n{i}" for i in range(20)]
        self.write("".join(f"alive: {n} 10.0.0.{i}:7946\n" for i, n in enumerate(names)))
        orders = []
        for seed in (1, 1, 2):
            snap = self.snapshotter(rng=random.Random(seed))
            snap.open()
            nodes = snap.previous_alive_nodes()
            self.assertCountEqual(nodes, [(n, f"10.0.0.{i}:7946") for i, n in enumerate(names)])
            orders.append([name for name, _ in nodes])
            snap.close()
        self.assertEqual(orders[0], orders[1])
        self.assertNotEqual(orders[0], orders[2])
        self.assertNotEqual(orders[0], names)


class RecordTests(_Base):
    def opened(self, **kwargs: Any) -> Snapshotter:
        snap = self.snapshotter(**kwargs)
        snap.open()
        return snap

    def test_member_events(self) -> None:
        snap = self.opened()
        snap.record_member_event(join(("a", "10.0.0.1", 7946), ("b", "10.0.0.2", 7947)))
        snap.record_member_event(mev(EventType.MEMBER_UPDATE, "a"))
        snap.record_member_event(mev(EventType.MEMBER_FAILED, "a"))
        snap.record_member_event(mev(EventType.MEMBER_REAP, "a"))
        snap.record_member_event(mev(EventType.MEMBER_LEAVE, "b"))
        snap.record_member_event(join(("c", "10.0.0.3", 7946)))
        snap.flush()
        self.assertEqual(
            self.read(),
            "alive: a 10.0.0.1:7946\n"
            "alive: b 10.0.0.2:7947\n"
            "not-alive: a\n"
            "not-alive: b\n"
            "alive: c 10.0.0.3:7946\n",
        )
        self.assertEqual(snap.alive, {"c": "10.0.0.3:7946"})

    def test_ipv6_addresses_as_go_prints_them(self) -> None:
        self.assertEqual(go_tcp_addr("::1", 7946), "[::1]:7946")
        self.assertEqual(go_tcp_addr("FD00:0:0:0:0:0:0:5", 7946), "[fd00::5]:7946")
        self.assertEqual(go_tcp_addr("2001:db8:0:1:1:1:1:1", 1), "[2001:db8:0:1:1:1:1:1]:1")
        self.assertEqual(go_tcp_addr("::ffff:10.0.0.1", 7946), "10.0.0.1:7946")
        self.assertEqual(go_tcp_addr("10.0.0.1", 7946), "10.0.0.1:7946")
        snap = self.opened()
        snap.record_member_event(join(("v6", "fd00::5", 7946)))
        snap.flush()
        self.assertEqual(self.read(), "alive: v6 [fd00::5]:7946\n")
        snap.close()
        self.assertEqual(self.replay().alive, {"v6": "[fd00::5]:7946"})

    def test_newline_in_name_not_recorded(self) -> None:
        snap = self.opened()
        snap.record_member_event(join(("bad\nname", "10.0.0.1", 1), ("ok", "10.0.0.2", 2)))
        snap.flush()
        self.assertEqual(self.read(), "alive: ok 10.0.0.2:2\n")

    def test_clock_written_only_when_it_advances(self) -> None:
        snap = self.opened()
        for value in (0, 1, 1, 3, 2, 3, 4):
            snap.record_clock(value)
        snap.flush()
        self.assertEqual(self.read(), "clock: 1\nclock: 3\nclock: 4\n")

    def test_event_and_query_clocks_highest_only(self) -> None:
        snap = self.opened()
        for value in (2, 1, 2, 5):
            snap.record_event_clock(value)
        for value in (21, 20, 22):
            snap.record_query_clock(value)
        snap.flush()
        self.assertEqual(
            self.read(), "event-clock: 2\nevent-clock: 5\nquery-clock: 21\nquery-clock: 22\n"
        )

    def test_clocks_continue_from_replayed_values(self) -> None:
        self.write(OBSERVED)
        snap = self.opened()
        snap.record_clock(6)
        snap.record_event_clock(6)
        snap.record_query_clock(20)
        snap.record_clock(7)
        snap.flush()
        self.assertEqual(self.read(), OBSERVED + "clock: 7\n")

    def test_flush_timing(self) -> None:
        snap = self.opened(flush_interval=0.5)
        snap.record_event_clock(1)
        self.clock.advance(0.25)
        snap.record_event_clock(2)
        self.assertEqual(self.read(), "")
        self.clock.advance(0.249)
        self.assertEqual(self.read(), "")
        self.clock.advance(0.001)
        self.assertEqual(self.read(), "event-clock: 1\nevent-clock: 2\n")
        # Idle: no timer runs.
        self.assertEqual(self.clock.getDelayedCalls(), [])
        snap.record_event_clock(3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.read(), "event-clock: 1\nevent-clock: 2\nevent-clock: 3\n")

    def test_close_flushes_and_stops_recording(self) -> None:
        snap = self.opened()
        snap.record_member_event(join(("a", "10.0.0.1", 7946)))
        d = snap.close()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.read(), "alive: a 10.0.0.1:7946\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        snap.record_member_event(join(("b", "10.0.0.2", 7946)))
        snap.record_clock(9)
        snap.record_leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.read(), "alive: a 10.0.0.1:7946\n")
        self.successResultOf(snap.close())

    def test_records_before_open_are_ignored(self) -> None:
        snap = self.snapshotter()
        snap.record_event_clock(3)
        snap.record_clock(3)
        snap.record_leave()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(snap.close())

    def test_leave(self) -> None:
        snap = self.opened()
        snap.record_member_event(join(("a", "10.0.0.1", 7946), ("b", "10.0.0.2", 7946)))
        snap.record_clock(2)
        snap.record_leave()
        # Written at once, not at the next flush tick.
        self.assertEqual(
            self.read(), "alive: a 10.0.0.1:7946\nalive: b 10.0.0.2:7946\nclock: 2\nleave\n"
        )
        self.assertTrue(snap.leaving)
        self.assertEqual(snap.previous_alive_nodes(), [])
        # After a leave: events are no longer recorded, the clock still is.
        snap.record_member_event(mev(EventType.MEMBER_FAILED, "a"))
        snap.record_event_clock(5)
        snap.record_query_clock(5)
        snap.record_leave()
        snap.record_clock(3)
        snap.close()
        text = self.read()
        self.assertTrue(text.endswith("clock: 2\nleave\nclock: 3\n"), text)
        self.assertEqual(self.replay(), SnapshotState(last_clock=3, left=True))

    def test_leave_with_rejoin_after_leave_keeps_alive(self) -> None:
        snap = self.opened(rejoin_after_leave=True)
        snap.record_member_event(join(("a", "10.0.0.1", 7946)))
        snap.record_event_clock(4)
        snap.record_leave()
        self.assertEqual(snap.previous_alive_nodes(), [("a", "10.0.0.1:7946")])
        snap.close()
        state = self.replay(rejoin_after_leave=True)
        self.assertEqual(
            state, SnapshotState(alive={"a": "10.0.0.1:7946"}, last_event_clock=4, left=False)
        )

    def test_written_file_reads_back_identically(self) -> None:
        snap = self.opened()
        snap.record_member_event(
            join(("a", "10.0.0.1", 7946), ("b", "fd00::2", 7946), ("c d", "10.0.0.3", 1))
        )
        snap.record_clock(4)
        snap.record_member_event(mev(EventType.MEMBER_LEAVE, "a"))
        snap.record_event_clock(8)
        snap.record_query_clock(12)
        snap.record_clock(5)
        expected = SnapshotState(
            alive=snap.alive, last_clock=5, last_event_clock=8, last_query_clock=12
        )
        snap.close()
        self.assertEqual(self.replay(), expected)
        self.assertEqual(expected.alive, {"b": "[fd00::2]:7946", "c d": "10.0.0.3:1"})
        self.assertEqual(self.warnings(), [])


class CompactionTests(_Base):
    def opened(self, **kwargs: Any) -> Snapshotter:
        snap = self.snapshotter(**kwargs)
        snap.open()
        return snap

    def test_threshold(self) -> None:
        snap = self.opened(min_compact_size=1000)
        self.assertEqual(snap.max_size(), 1000)
        snap.record_member_event(
            join(*((f"n{i}", "10.0.0.1", 7000 + i) for i in range(10)))
        )
        # 2 x 128 bytes x 10 alive nodes = 2560 > 1000.
        self.assertEqual(snap.max_size(), 2560)
        self.assertEqual(Snapshotter(self.path, self.clock).max_size(), 128 * 1024)

    def test_compacts_when_exceeding(self) -> None:
        snap = self.opened(min_compact_size=300)
        snap.record_member_event(join(("a", "10.0.0.1", 7946), ("b", "10.0.0.2", 7946)))
        snap.record_member_event(mev(EventType.MEMBER_FAILED, "b"))
        snap.record_query_clock(3)
        # Nothing is flushed before the timer fires, so the file stays empty
        # until the compaction writes it.
        ltime = 0
        while not self.read() and ltime < 100:
            ltime += 1
            snap.record_event_clock(ltime)
        self.assertLess(ltime, 100, "never compacted")
        self.assertEqual(
            self.read(),
            f"alive: a 10.0.0.1:7946\nclock: 0\nevent-clock: {ltime}\nquery-clock: 3\n",
        )
        self.assertFalse(os.path.exists(self.path + COMPACT_EXTENSION))
        # Appends go on into the new file.
        snap.record_clock(7)
        snap.record_member_event(join(("z", "10.0.0.26", 1)))
        snap.close()
        self.assertEqual(
            self.replay(),
            SnapshotState(
                alive={"a": "10.0.0.1:7946", "z": "10.0.0.26:1"},
                last_clock=7,
                last_event_clock=ltime,
                last_query_clock=3,
            ),
        )

    def test_size_counts_buffered_bytes(self) -> None:
        """The check runs on append, before the flush timer writes anything."""
        snap = self.opened(min_compact_size=100)
        for ltime in range(1, 10):
            snap.record_event_clock(ltime)  # 15 bytes each
        # 105 bytes recorded: compacted at the 7th append, then 2 more.
        self.assertEqual(self.read(), "clock: 0\nevent-clock: 7\nquery-clock: 0\n")
        self.clock.advance(0.5)
        self.assertEqual(
            self.read(),
            "clock: 0\nevent-clock: 7\nquery-clock: 0\nevent-clock: 8\nevent-clock: 9\n",
        )

    def test_explicit_compact_and_mode(self) -> None:
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        self.write(OBSERVED + "not-alive: d\n# note\n")
        snap = self.opened()
        self.successResultOf(snap.compact())
        self.assertEqual(
            self.read(),
            "alive: a 127.0.0.1:7946\nalive: c 127.0.0.1:7948\n"
            "clock: 6\nevent-clock: 6\nquery-clock: 21\n",
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)

    def test_reopen_after_compaction(self) -> None:
        """A new Snapshotter on a compacted file sees the same state and appends."""
        self.write(OBSERVED)
        snap = self.opened()
        self.successResultOf(snap.compact())
        snap.close()
        snap2 = self.opened()
        self.assertEqual(snap2.alive, OBSERVED_ALIVE)
        snap2.record_clock(8)
        snap2.close()
        self.assertEqual(self.replay().last_clock, 8)

    def test_in_a_thread_records_meanwhile_kept(self) -> None:
        calls: list[tuple[Callable[[], None], Deferred[None]]] = []

        def defer_to_thread(f: Callable[[], None]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            calls.append((f, d))
            return d

        self.write(OBSERVED)
        snap = self.opened(defer_to_thread=defer_to_thread)
        done = snap.compact()
        self.assertNoResult(done)
        snap.record_member_event(join(("e", "10.0.0.5", 7946)))
        snap.record_clock(9)
        self.clock.advance(1.0)
        # Not written to the old file while its replacement is prepared.
        self.assertEqual(self.read(), OBSERVED)
        closed = snap.close()
        self.assertNoResult(closed)
        (f, d), = calls
        f()  # "in the thread"
        d.callback(None)
        self.successResultOf(done)
        self.successResultOf(closed)
        self.assertEqual(
            self.read(),
            "alive: d 127.0.0.1:7949\nalive: a 127.0.0.1:7946\nalive: c 127.0.0.1:7948\n"
            "clock: 6\nevent-clock: 6\nquery-clock: 21\n"
            "alive: e 10.0.0.5:7946\nclock: 9\n",
        )

    def test_failure_keeps_old_file_and_backs_off(self) -> None:
        attempts: list[Callable[[], None]] = []

        def broken(f: Callable[[], None]) -> Deferred[None]:
            attempts.append(f)
            return fail(OSError(28, "No space left on device"))

        snap = self.opened(min_compact_size=100, defer_to_thread=broken)
        for ltime in range(1, 10):
            snap.record_event_clock(ltime)
        self.assertEqual(len(attempts), 1)
        self.flushLoggedErrors(OSError)
        # Still appending to the old file.
        snap.flush()
        self.assertEqual(self.read(), "".join(f"event-clock: {i}\n" for i in range(1, 10)))
        self.clock.advance(30)
        snap.record_event_clock(10)
        self.assertEqual(len(attempts), 2)
        self.flushLoggedErrors(OSError)

    def test_rewrite_error_cleans_up(self) -> None:
        """A failing rename leaves the old file and no ``.compact`` behind."""
        self.write(OBSERVED)
        snap = self.opened()

        def rename_fails(src: str, dst: str) -> None:
            raise OSError(18, "Invalid cross-device link")

        self.patch(os, "replace", rename_fails)
        self.successResultOf(snap.compact())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(os.path.exists(self.path + COMPACT_EXTENSION))
        self.assertEqual(self.read(), OBSERVED)
        snap.record_clock(7)
        snap.flush()
        self.assertEqual(self.read(), OBSERVED + "clock: 7\n")

    def test_no_compaction_after_leave(self) -> None:
        snap = self.opened(min_compact_size=50)
        snap.record_leave()
        for ltime in range(1, 10):
            snap.record_clock(ltime)
        snap.close()
        self.assertTrue(self.read().startswith("leave\nclock: 1\n"))
        self.assertTrue(self.replay().left)


class RealSerfSnapshotTests(TestCase):
    """Replays a snapshot file written by the real ``serf agent``."""

    timeout = 120

    async def wait_for_lines(
        self,
        path: str,
        *prefixes: str,
        deadline: float = 60.0,
        nudge: Callable[[], Deferred[Any]] | None = None,
    ) -> str:
        """Poll ``path`` until it has a line starting with each prefix.

        Go flushes its buffer only on an append that comes 500 ms or more
        after the last flush, so a record can sit in memory for a long
        time; ``nudge``, called every 3 s, makes another append.
        """
        clock = cast(IReactorTime, reactor)
        start = clock.seconds()
        nudged = start
        text = ""
        while clock.seconds() < start + deadline:
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                lines = text.splitlines()
                if all(any(line.startswith(p) for line in lines) for p in prefixes):
                    return text
            if nudge is not None and clock.seconds() - nudged >= 3.0:
                nudged = clock.seconds()
                await nudge()
            await deferLater(clock, 0.1)
        self.fail(f"snapshot {path} never got lines starting with {prefixes}; it has:\n{text}")

    async def test_replay_real_snapshot(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        path = os.path.join(tmp, "snap")
        a = await start_serf_agent(
            self, reactor, node="snap-a", extra_args=[f"-snapshot={path}"]
        )
        b = await start_serf_agent(self, reactor, node="snap-b")
        code, out, err = await b.join(a)
        self.assertEqual((code, err), (0, ""), out)
        events_sent = 0

        async def send_event() -> None:
            nonlocal events_sent
            code, out, err = await a.serf_cli("event", "deploy", f"v{events_sent}")
            self.assertEqual((code, err), (0, ""), out)
            events_sent += 1

        # Half a second after the join's records, so the event's append
        # flushes them (see wait_for_lines).
        await deferLater(cast(IReactorTime, reactor), 1.0)
        await send_event()
        text = await self.wait_for_lines(
            path,
            "alive: snap-b ",
            "event-clock: ",
            "clock: ",
            nudge=lambda: Deferred.fromCoroutine(send_event()),
        )
        # a first: stopped first, b would soon be recorded as failed.
        await a.stop()
        await b.stop()
        with open(path, encoding="utf-8") as f:
            text = f.read()

        snap = Snapshotter(path, cast(IReactorTime, reactor))
        state = snap.open()
        await snap.close()
        self.assertEqual(
            state.alive,
            {"snap-a": a.bind_address, "snap-b": b.bind_address},
            text,
        )
        # User events from a have LTimes 1, 2, ...; b's join intent (LTime 1)
        # moved a's member clock to 2 at least, written as clock - 1.
        self.assertEqual(state.last_event_clock, events_sent, text)
        self.assertGreaterEqual(state.last_clock, 1, text)
        self.assertEqual(state.last_query_clock, 0, text)
        self.assertFalse(state.left)

    async def test_replay_real_snapshot_after_leave(self) -> None:
        tmp = self.mktemp()
        os.makedirs(tmp)
        path = os.path.join(tmp, "snap")
        a = await start_serf_agent(
            self, reactor, node="leave-a", extra_args=[f"-snapshot={path}"]
        )
        await a.wait_for_log("agent: Serf agent starting")
        code, out, err = await a.serf_cli("leave")
        self.assertEqual(code, 0, out + err)
        text = await self.wait_for_lines(path, "leave")
        await a.stop()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        snap = Snapshotter(path, cast(IReactorTime, reactor))
        state = snap.open()
        await snap.close()
        self.assertTrue(state.left, text)
        self.assertEqual(state.alive, {}, text)
        snap = Snapshotter(path, cast(IReactorTime, reactor), rejoin_after_leave=True)
        state = snap.open()
        await snap.close()
        self.assertEqual(state.alive, {"leave-a": a.bind_address}, text)
        self.assertFalse(state.left)
