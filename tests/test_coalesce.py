# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""Coalescing of member and user events (spec §3.6, §5.2), under a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.serf.coalesce import (
    COALESCE_PERIOD,
    QUIESCENT_PERIOD,
    Coalescer,
    MemberEventCoalescer,
    UserEventCoalescer,
)
from flyteserf.serf.events import EventType, Member, MemberEvent, UserEvent

JOIN = EventType.MEMBER_JOIN
LEAVE = EventType.MEMBER_LEAVE
FAILED = EventType.MEMBER_FAILED
UPDATE = EventType.MEMBER_UPDATE
REAP = EventType.MEMBER_REAP


def member(name: str, **tags: str) -> Member:
    return Member(name=name, addr="127.0.0.1", port=7946, tags=tags)


def mev(etype: EventType, *names: str) -> MemberEvent:
    return MemberEvent(etype, tuple(member(n) for n in names))


def uev(name: str, ltime: int, payload: bytes = b"", coalesce: bool = True) -> UserEvent:
    return UserEvent(ltime=ltime, name=name, payload=payload, coalesce=coalesce)


def summary(events: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(type, member names) per member event, in delivery order."""
    return [(e.type.value, tuple(m.name for m in e.members)) for e in events]


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.out: list[Any] = []

    def tearDown(self) -> None:
        # A coalescer must never leave a timer behind once flushed.
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WindowTests(_Base):
    """The window: min(first + coalesce period, last + quiescent period)."""

    def setUp(self) -> None:
        super().setUp()
        self.c = MemberEventCoalescer(self.clock, 3.0, 1.0, self.out.append)

    def test_agent_periods(self) -> None:
        self.assertEqual((COALESCE_PERIOD, QUIESCENT_PERIOD), (3.0, 1.0))

    def test_quiescent_flush(self) -> None:
        """One event: delivered 1 s later, not before."""
        self.c.push(mev(JOIN, "a"))
        self.assertTrue(self.c.pending)
        self.clock.advance(0.999)
        self.assertEqual(self.out, [])
        self.clock.advance(0.001)
        self.assertEqual(summary(self.out), [("member-join", ("a",))])
        self.assertFalse(self.c.pending)

    def test_quiet_restarts_with_each_event(self) -> None:
        self.c.push(mev(JOIN, "a"))
        self.clock.advance(0.9)
        self.c.push(mev(JOIN, "b"))
        self.clock.advance(0.9)
        self.assertEqual(self.out, [])
        self.clock.advance(0.1)
        self.assertEqual(summary(self.out), [("member-join", ("a", "b"))])

    def test_hard_flush_under_steady_stream(self) -> None:
        """Events every 0.5 s never leave 1 s of quiet: flushed at 3 s anyway."""
        names = iter("abcdefghij")
        self.c.push(mev(JOIN, next(names)))
        for _ in range(5):
            self.clock.advance(0.5)
            self.c.push(mev(JOIN, next(names)))
        # t = 2.5 s; the window opened at 0.
        self.assertEqual(self.out, [])
        self.clock.advance(0.499)
        self.assertEqual(self.out, [])
        self.clock.advance(0.001)
        self.assertEqual(summary(self.out), [("member-join", tuple("abcdef"))])
        # The next event opens a fresh window.
        self.c.push(mev(JOIN, "g"))
        self.clock.advance(1.0)
        self.assertEqual(summary(self.out)[1:], [("member-join", ("g",))])

    def test_late_event_gets_only_the_rest_of_the_window(self) -> None:
        """An event 0.25 s before the hard deadline waits 0.25 s, not 1 s."""
        self.c.push(mev(JOIN, "a"))
        for name in "bcd":
            self.clock.advance(0.75)
            self.c.push(mev(JOIN, name))
        self.clock.advance(0.5)
        self.c.push(mev(JOIN, "e"))
        self.assertEqual(self.clock.seconds(), 2.75)
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [3.0])
        self.clock.advance(0.25)
        self.assertEqual(summary(self.out), [("member-join", tuple("abcde"))])

    def test_flush_now(self) -> None:
        self.c.push(mev(JOIN, "a"))
        self.c.flush()
        self.assertEqual(summary(self.out), [("member-join", ("a",))])
        self.assertFalse(self.c.pending)
        self.clock.advance(10)
        self.assertEqual(len(self.out), 1)

    def test_stop_flushes_then_passes_through(self) -> None:
        self.c.push(mev(JOIN, "a"))
        self.c.stop()
        self.assertEqual(summary(self.out), [("member-join", ("a",))])
        # After stop nothing is held back, and no timer is started.
        self.c.push(mev(FAILED, "a"))
        self.assertEqual(summary(self.out)[1:], [("member-failed", ("a",))])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_idle(self) -> None:
        self.c.stop()
        self.assertEqual(self.out, [])

    def test_zero_period_disables(self) -> None:
        """Go installs no coalescer unless both periods are positive."""
        c = MemberEventCoalescer(self.clock, 0, 1.0, self.out.append)
        c.push(mev(JOIN, "a"))
        c.push(mev(JOIN, "a"))
        self.assertEqual(summary(self.out), [("member-join", ("a",))] * 2)
        c = MemberEventCoalescer(self.clock, 3.0, 0, self.out.append)
        c.push(mev(JOIN, "b"))
        self.assertEqual(len(self.out), 3)

    def test_sink_that_pushes_opens_new_window(self) -> None:
        seen: list[Any] = []

        def sink(event: Any) -> None:
            seen.append(event)
            if len(seen) == 1:
                c.push(mev(LEAVE, "a"))

        c = MemberEventCoalescer(self.clock, 3.0, 1.0, sink)
        c.push(mev(JOIN, "a"))
        self.clock.advance(1.0)
        self.assertEqual(summary(seen), [("member-join", ("a",))])
        self.assertTrue(c.pending)
        self.clock.advance(1.0)
        self.assertEqual(summary(seen), [("member-join", ("a",)), ("member-leave", ("a",))])

    def test_failing_sink_logged_flush_continues(self) -> None:
        logged = EventLoggingObserver()
        globalLogPublisher.addObserver(logged)
        self.addCleanup(globalLogPublisher.removeObserver, logged)
        seen: list[Any] = []

        def sink(event: Any) -> None:
            seen.append(event)
            if event.type is JOIN:
                raise RuntimeError("handler broke")

        c = MemberEventCoalescer(self.clock, 3.0, 1.0, sink)
        c.push(mev(JOIN, "a"))
        c.push(mev(LEAVE, "b"))
        self.clock.advance(1.0)
        self.assertEqual(summary(seen), [("member-join", ("a",)), ("member-leave", ("b",))])
        failures = [e for e in logged if isinstance(e.get("log_failure"), Failure)]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, RuntimeError)
        self.flushLoggedErrors(RuntimeError)

    def test_base_is_abstract(self) -> None:
        c = Coalescer(self.clock, 3.0, 1.0, self.out.append)
        self.assertRaises(NotImplementedError, c.push, object())


class MemberEventTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.c = MemberEventCoalescer(self.clock, 3.0, 1.0, self.out.append)

    def window(self, *events: MemberEvent) -> list[tuple[str, tuple[str, ...]]]:
        """Push the events in one window, let it close, return what came out."""
        start = len(self.out)
        for event in events:
            self.c.push(event)
        self.clock.advance(3.0)
        return summary(self.out[start:])

    def test_all_member_types_coalesced(self) -> None:
        """0.9.4 coalesces update and reap too, not only join/leave/failed."""
        for etype in (JOIN, LEAVE, FAILED, UPDATE, REAP):
            self.assertTrue(self.c.handles(mev(etype, "x")))
        self.assertFalse(self.c.handles(uev("deploy", 1)))

    def test_one_event_per_type(self) -> None:
        got = self.window(mev(JOIN, "a", "b"), mev(FAILED, "c"), mev(JOIN, "d"))
        self.assertEqual(got, [("member-join", ("a", "b", "d")), ("member-failed", ("c",))])

    def test_latest_type_per_member_wins(self) -> None:
        got = self.window(mev(JOIN, "a"), mev(JOIN, "b"), mev(FAILED, "a"))
        # a's newest event is later than b's, so member-failed comes second.
        self.assertEqual(got, [("member-join", ("b",)), ("member-failed", ("a",))])

    def test_join_then_leave_then_join_is_one_join(self) -> None:
        got = self.window(mev(JOIN, "a"), mev(LEAVE, "a"), mev(JOIN, "a"))
        self.assertEqual(got, [("member-join", ("a",))])

    def test_carries_newest_member_value(self) -> None:
        self.c.push(MemberEvent(JOIN, (Member("a", "10.0.0.1", 7946),)))
        self.c.push(MemberEvent(JOIN, (Member("a", "10.0.0.2", 7946),)))
        self.clock.advance(1.0)
        self.assertEqual(self.out[0].members[0].addr, "10.0.0.2")

    def test_same_state_not_resent(self) -> None:
        """A type equal to the one last delivered for that member is dropped."""
        self.assertEqual(self.window(mev(JOIN, "a")), [("member-join", ("a",))])
        self.assertEqual(self.window(mev(JOIN, "a")), [])
        self.assertEqual(self.window(mev(FAILED, "a")), [("member-failed", ("a",))])
        self.assertEqual(self.window(mev(FAILED, "a")), [])
        self.assertEqual(self.window(mev(JOIN, "a")), [("member-join", ("a",))])

    def test_dropped_intermediate_does_not_count_as_sent(self) -> None:
        """Only *delivered* types are remembered: join, (fail+join in one window)."""
        self.window(mev(JOIN, "a"))
        self.assertEqual(self.window(mev(FAILED, "a"), mev(JOIN, "a")), [])

    def test_update_resent_only_when_member_changed(self) -> None:
        first = MemberEvent(UPDATE, (member("a", role="web"),))
        second = MemberEvent(UPDATE, (member("a", role="db"),))
        self.assertEqual(self.window(first), [("member-update", ("a",))])
        self.assertEqual(self.window(first), [])
        self.assertEqual(self.window(second), [("member-update", ("a",))])
        self.assertEqual(self.out[-1].members[0].tags, {"role": "db"})

    def test_old_update_not_repeated_by_later_windows(self) -> None:
        """Go 0.9.4 re-sends a member's last update with every later flush; we do not."""
        self.window(MemberEvent(UPDATE, (member("a", role="web"),)))
        self.assertEqual(self.window(mev(JOIN, "b")), [("member-join", ("b",))])

    def test_reap_then_rejoin(self) -> None:
        self.window(mev(JOIN, "a"))
        self.window(mev(LEAVE, "a"))
        self.assertEqual(self.window(mev(REAP, "a")), [("member-reap", ("a",))])
        self.assertEqual(self.window(mev(JOIN, "a")), [("member-join", ("a",))])

    def test_reaped_names_forgotten(self) -> None:
        self.window(mev(JOIN, "a"), mev(JOIN, "b"))
        self.window(mev(REAP, "a"))
        self.assertEqual(set(self.c._last), {"b"})

    def test_other_events_pass_straight_through(self) -> None:
        self.c.push(mev(JOIN, "a"))
        event = uev("deploy", 1)
        self.c.push(event)
        self.assertEqual(self.out, [event])
        self.clock.advance(1.0)
        self.assertEqual(summary(self.out[1:]), [("member-join", ("a",))])


class UserEventTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.c = UserEventCoalescer(self.clock, 3.0, 1.0, self.out.append)

    def test_highest_ltime_per_name(self) -> None:
        for event in (uev("deploy", 1), uev("deploy", 3), uev("deploy", 2)):
            self.c.push(event)
        self.assertEqual(self.out, [])
        self.clock.advance(1.0)
        self.assertEqual(self.out, [uev("deploy", 3)])

    def test_all_events_of_the_max_ltime_in_order(self) -> None:
        events = [uev("deploy", 5, b"x"), uev("deploy", 4), uev("deploy", 5, b"y")]
        for event in events:
            self.c.push(event)
        self.clock.advance(1.0)
        self.assertEqual(self.out, [events[0], events[2]])

    def test_per_name_and_lamport_order(self) -> None:
        for event in (uev("b", 7), uev("a", 2), uev("a", 9), uev("c", 1), uev("b", 8)):
            self.c.push(event)
        self.clock.advance(1.0)
        self.assertEqual(self.out, [uev("c", 1), uev("b", 8), uev("a", 9)])

    def test_tie_broken_by_arrival(self) -> None:
        for event in (uev("b", 4), uev("a", 4)):
            self.c.push(event)
        self.clock.advance(1.0)
        self.assertEqual(self.out, [uev("b", 4), uev("a", 4)])

    def test_no_memory_across_windows(self) -> None:
        """Each window stands alone: an older LTime later on is still delivered."""
        self.c.push(uev("deploy", 9))
        self.clock.advance(1.0)
        self.c.push(uev("deploy", 3))
        self.clock.advance(1.0)
        self.assertEqual(self.out, [uev("deploy", 9), uev("deploy", 3)])

    def test_coalesce_false_passes_straight_through(self) -> None:
        self.c.push(uev("deploy", 1))
        raw = uev("deploy", 2, coalesce=False)
        self.c.push(raw)
        self.assertEqual(self.out, [raw])
        self.assertFalse(self.c.handles(raw))
        self.clock.advance(1.0)
        self.assertEqual(self.out, [raw, uev("deploy", 1)])

    def test_coalesce_false_does_not_extend_window(self) -> None:
        self.c.push(uev("deploy", 1))
        self.clock.advance(0.9)
        self.c.push(uev("other", 2, coalesce=False))
        self.clock.advance(0.1)
        self.assertEqual(self.out, [uev("other", 2, coalesce=False), uev("deploy", 1)])

    def test_member_events_pass_through(self) -> None:
        event = mev(JOIN, "a")
        self.c.push(event)
        self.assertEqual(self.out, [event])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_steady_stream_hard_flush(self) -> None:
        for ltime in range(1, 7):
            self.c.push(uev("tick", ltime))
            self.clock.advance(0.5)
        # Pushes at 0, 0.5 .. 2.5; now t = 3.0 and the hard deadline fired.
        self.assertEqual(self.out, [uev("tick", 6)])

    def test_stop_flushes(self) -> None:
        self.c.push(uev("deploy", 1))
        self.c.push(uev("deploy", 2))
        self.c.stop()
        self.assertEqual(self.out, [uev("deploy", 2)])
        self.c.push(uev("deploy", 3))
        self.assertEqual(self.out, [uev("deploy", 2), uev("deploy", 3)])


class ChainTests(_Base):
    """Serf chains them: user coalescer -> member coalescer -> handlers."""

    def test_chain(self) -> None:
        members = MemberEventCoalescer(self.clock, 3.0, 1.0, self.out.append)
        users = UserEventCoalescer(self.clock, 3.0, 1.0, members.push)
        users.push(mev(JOIN, "a"))
        users.push(uev("deploy", 1))
        users.push(uev("deploy", 2))
        users.push(uev("raw", 3, coalesce=False))
        self.assertEqual(self.out, [uev("raw", 3, coalesce=False)])
        self.clock.advance(1.0)
        self.assertCountEqual(self.out[1:], [uev("deploy", 2), mev(JOIN, "a")])
        users.stop()
        members.stop()
