# mypy: disable-error-code="no-untyped-call"
"""User events: sending, size limits, the 512-slot ring, eventMinTime, coalescing (spec §3.6)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.serf.buffers import EventBuffer, QueryBuffer
from flyteserf.serf.clock import LamportClock
from flyteserf.serf.config import SerfConfig
from flyteserf.serf.errors import SerfError
from flyteserf.serf.events import EventType, MemberEvent, UserEvent
from flyteserf.wire.serf_messages import UserEvent as UserEventMessage
from tests.test_serf_cluster import SerfCluster, ip


class LamportClockTests(unittest.SynchronousTestCase):
    def test_rules(self) -> None:
        c = LamportClock()
        self.assertEqual(c.time(), 0)
        self.assertEqual(c.increment(), 1)
        c.witness(0)  # behind: nothing
        self.assertEqual(c.time(), 1)
        c.witness(1)  # equal: v + 1
        self.assertEqual(c.time(), 2)
        c.witness(10)
        self.assertEqual(c.time(), 11)
        c.witness(5)
        self.assertEqual(c.time(), 11)

    def test_uint64_wraps(self) -> None:
        c = LamportClock(2**64 - 1)
        self.assertEqual(c.increment(), 0)


class ConfigTests(unittest.SynchronousTestCase):
    def test_defaults_are_the_agents(self) -> None:
        cfg = SerfConfig(node_name="a")
        self.assertEqual(cfg.protocol, 5)
        self.assertEqual((cfg.coalesce_period, cfg.quiescent_period), (3.0, 1.0))
        self.assertEqual((cfg.user_coalesce_period, cfg.user_quiescent_period), (3.0, 1.0))
        self.assertEqual((cfg.user_event_size_limit, cfg.query_size_limit, cfg.query_response_size_limit), (512, 1024, 1024))
        self.assertEqual(cfg.vsn, bytes((1, 5, 2, 2, 5, 5)))

    def test_errors_use_serfs_texts(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"protocol": 1}, "Protocol version '1' too low. Must be in range: [2, 5]"),
            ({"protocol": 6}, "Protocol version '6' too high. Must be in range: [2, 5]"),
            ({"user_event_size_limit": 9217}, "user event size limit exceeds limit of 9216 bytes"),
            ({"tags": {"t": "x" * 600}}, "Encoded length of tags exceeds limit of 512 bytes"),
        ]
        for kwargs, text in cases:
            with self.assertRaises(SerfError) as e:
                SerfConfig(node_name="a", **kwargs)
            self.assertEqual(str(e.exception), text)
        SerfConfig(node_name="a", user_event_size_limit=9216)


class BufferTests(unittest.SynchronousTestCase):
    def test_duplicates_and_slot_reuse(self) -> None:
        b = EventBuffer(512)
        self.assertTrue(b.add(3, "a", b"x", 4))
        self.assertFalse(b.add(3, "a", b"x", 4))  # duplicate
        self.assertTrue(b.add(3, "a", b"y", 4))  # same LTime, other payload
        self.assertTrue(b.add(3, "b", b"x", 4))
        slot = b.slots()[3]
        assert slot is not None
        self.assertEqual([(e.name, e.payload) for e in slot.events], [("a", b"x"), ("a", b"y"), ("b", b"x")])
        # LTime 515 lands in the same slot and replaces it (the ring wrapped).
        self.assertTrue(b.add(515, "c", b"", 516))
        slot = b.slots()[3]
        assert slot is not None
        self.assertEqual((slot.ltime, [e.name for e in slot.events]), (515, ["c"]))
        # ... so LTime 3 is no longer known as a duplicate, but it is too old now.
        self.assertFalse(b.add(3, "a", b"x", 516))

    def test_too_old_and_min_time(self) -> None:
        b = EventBuffer(512)
        self.assertFalse(b.add(100, "a", b"", 1000))  # 1000 - 512 = 488 > 100
        self.assertTrue(b.add(488, "a", b"", 1000))
        b.min_time = 600
        self.assertFalse(b.add(599, "a", b"", 1000))
        self.assertTrue(b.add(600, "a", b"", 1000))

    def test_query_ids(self) -> None:
        q = QueryBuffer(512)
        self.assertTrue(q.add(5, 1, 6))
        self.assertFalse(q.add(5, 1, 6))
        self.assertTrue(q.add(5, 2, 6))
        self.assertTrue(q.add(517, 1, 518))
        self.assertFalse(q.add(5, 3, 518))


class UserEventTests(unittest.TestCase):
    def test_event_reaches_everyone_once(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        a.user_event("deploy", b"v1", coalesce=False)
        # Delivered locally at once.
        self.assertEqual([(e.name, e.payload, e.ltime, e.coalesce) for e in c.user_events("a")], [("deploy", b"v1", 1, False)])
        c.run(5)
        for name in "abd":
            self.assertEqual([(e.name, e.payload) for e in c.user_events(name)], [("deploy", b"v1")])
        self.assertEqual(a.event_clock.time(), 2)
        self.assertEqual(a.stats()["event_queue"], "0")

    def test_duplicates_from_gossip_dropped(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        raw = UserEventMessage(ltime=4, name="x", payload=b"1").encode()
        a.handle_message(raw)
        a.handle_message(raw)
        self.assertEqual(len(c.user_events("a")), 1)
        self.assertEqual(a.queues.events.num_queued(), 1)

    def test_ring_wrap_drops_old_events(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        a.handle_message(UserEventMessage(ltime=1000, name="new", payload=b"").encode())
        self.assertEqual(a.event_clock.time(), 1001)
        a.handle_message(UserEventMessage(ltime=400, name="old", payload=b"").encode())
        a.handle_message(UserEventMessage(ltime=489, name="edge", payload=b"").encode())
        self.assertEqual([e.name for e in c.user_events("a")], ["new", "edge"])
        self.assertEqual(a.queues.events.num_queued(), 2)

    def test_size_limits(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        with self.assertRaises(SerfError) as e:
            a.user_event("n", b"x" * 512)
        self.assertEqual(str(e.exception), "user event exceeds configured limit of 512 bytes before encoding")
        with self.assertRaises(SerfError) as e:
            a.user_event("n", b"x" * 500)
        self.assertEqual(str(e.exception), "encoded user event exceeds configured limit of 512 bytes after encoding")
        self.assertEqual(a.event_clock.time(), 1)  # nothing was sent
        a.user_event("n", b"x" * 400)

    def test_larger_configured_limit(self) -> None:
        c = SerfCluster(self, user_event_size_limit=2048)
        a, b = c.cluster("a", "b")
        a.user_event("big", b"x" * 1900)
        c.until(lambda: c.user_events("b"))
        self.assertEqual(len(c.user_events("b")[0].payload), 1900)


class JoinReplayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.a, self.b = self.c.cluster("a", "b")
        for i in range(3):
            self.a.user_event("old", str(i).encode(), coalesce=False)
        self.c.until(lambda: len(self.c.user_events("b")) == 3)
        self.c.run(5)

    def test_join_ignores_old_events(self) -> None:
        late = self.c.add("late")
        self.c.result(late.join([ip(0)]))
        self.assertGreaterEqual(late.event_buffer.min_time, 4)
        self.c.run(35)  # a periodic push/pull too
        self.assertEqual(self.c.user_events("late"), [])
        # New events still arrive.
        self.a.user_event("new", b"", coalesce=False)
        self.c.until(lambda: self.c.user_events("late"))
        self.assertEqual([e.name for e in self.c.user_events("late")], ["new"])

    def test_join_with_replay_delivers_old_events(self) -> None:
        late = self.c.add("late")
        self.c.result(late.join([ip(0)], ignore_old=False))
        self.assertEqual(sorted(e.payload for e in self.c.user_events("late")), [b"0", b"1", b"2"])
        # Replayed from push/pull: not coalescable.
        self.assertFalse(any(e.coalesce for e in self.c.user_events("late")))


class CoalescingTests(unittest.TestCase):
    """What on_event sees with the agent's 3 s / 1 s windows."""

    def test_user_events_coalesced_by_name(self) -> None:
        # No periodic push/pull: events merged from one are replayed with
        # CC=false (as in Go) and would bypass the window on "b".
        no_push_pull = MemberlistConfig.lan().evolve(push_pull_interval=0)
        c = SerfCluster(self, user_coalesce_period=3.0, user_quiescent_period=1.0, memberlist=no_push_pull)
        a, b = c.cluster("a", "b")
        c.run(5)
        for i in range(4):
            a.user_event("deploy", str(i).encode())
        a.user_event("other", b"x")
        a.user_event("now", b"!", coalesce=False)
        # CC=false goes straight through; the others wait for the window.
        self.assertEqual([e.name for e in c.user_events("a")], ["now"])
        c.run(0.9)
        self.assertEqual([e.name for e in c.user_events("a")], ["now"])
        c.run(0.2)
        self.assertEqual([(e.name, e.payload) for e in c.user_events("a")], [("now", b"!"), ("deploy", b"3"), ("other", b"x")])
        c.run(5)
        got = [(e.name, e.payload) for e in c.user_events("b")]
        self.assertEqual(sorted(got), [("deploy", b"3"), ("now", b"!"), ("other", b"x")])

    def test_steady_stream_flushed_by_coalesce_period(self) -> None:
        c = SerfCluster(self, user_coalesce_period=3.0, user_quiescent_period=1.0)
        (a,) = c.cluster("a")
        start = c.now()
        for i in range(10):
            a.user_event("tick", str(i).encode())
            c.run(0.5)
            if c.user_events("a"):
                break
        self.assertAlmostEqual(c.now() - start, 3.0, delta=0.51)
        self.assertEqual(len(c.user_events("a")), 1)

    def test_member_events_coalesced(self) -> None:
        c = SerfCluster(self, coalesce_period=3.0, quiescent_period=1.0)
        c.add("a")
        for name in "bde":
            c.add(name)
            c.result(c.nodes[name].join([ip(0)]))
        c.until(lambda: c.converged())
        c.run(5)
        joins = [e for e in c.events["a"] if isinstance(e, MemberEvent)]
        # Four members in at most two deliveries (a's own join may open its own window).
        self.assertLessEqual(len(joins), 2)
        self.assertEqual({m.name for e in joins for m in e.members}, set("abde"))
        self.assertTrue(all(e.type is EventType.MEMBER_JOIN for e in joins))

    def test_coalescing_off_delivers_at_once(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        a.user_event("x", b"", coalesce=True)
        self.assertEqual(len([e for e in c.events["a"] if isinstance(e, UserEvent)]), 1)
