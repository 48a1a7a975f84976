# mypy: disable-error-code="no-untyped-call"
"""Serf clusters in virtual time: membership, intents, member events, leave, reap (spec §3.5).

Also home of :class:`SerfCluster`, the in-memory cluster the other
``test_serf_*`` modules build on.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.memberlist.delegates import IConflictDelegate, IDelegate, IEventDelegate
from flyteserf.serf.config import SerfConfig
from flyteserf.serf.delegate import SerfConflictDelegate, SerfDelegate, SerfEventDelegate
from flyteserf.serf.interfaces import IInternalQueryHost, IKeyQueryHost, IQueryResponder
from flyteserf.serf.events import Event, EventType, MemberEvent, UserEvent
from flyteserf.serf.query import IncomingQuery
from flyteserf.serf.serf import Serf, SerfState
from flyteserf.testing.network import MemoryNetwork
from flyteserf.wire.serf_messages import Join, Leave, MemberStatus, PushPull

PORT = 7946


def ip(i: int) -> str:
    return f"10.0.0.{i + 1}"


def record_queued(node: Serf) -> list[bytes]:
    """Record every message *node* queues for gossip, on any of its three queues."""
    sent: list[bytes] = []
    queue = node.queues.queue

    def spy(target: Any, msg: bytes, notify: Deferred[None] | None = None) -> None:
        sent.append(msg)
        queue(target, msg, notify)

    setattr(node.queues, "queue", spy)
    return sent


def record_sent(node: Serf) -> list[bytes]:
    """Record every serf message *node* sends straight to an address (acks, responses, relays)."""
    sent: list[bytes] = []
    send = node.memberlist.send_user_packet

    def spy(addr: tuple[str, int], payload: bytes) -> None:
        sent.append(payload)
        send(addr, payload)

    setattr(node.memberlist, "send_user_packet", spy)
    return sent


class SerfCluster:
    """Serf nodes on one MemoryNetwork; every node records what it delivers.

    Coalescing is off unless a test asks for it, so events arrive as they
    happen.  Nodes are shut down when the test ends.
    """

    def __init__(self, testcase: unittest.TestCase, seed: int = 1, **defaults: Any) -> None:
        self.testcase = testcase
        self.net = MemoryNetwork(seed=seed)
        self.defaults: dict[str, Any] = {
            "coalesce_period": 0,
            "quiescent_period": 0,
            "user_coalesce_period": 0,
            "user_quiescent_period": 0,
            **defaults,
        }
        self.nodes: dict[str, Serf] = {}
        self.events: dict[str, list[Event]] = {}
        self.ips: dict[str, str] = {}
        self._seed = seed
        testcase.addCleanup(self.shutdown_all)

    def add(self, name: str, ip_addr: str | None = None, start: bool = True, **changes: Any) -> Serf:
        ip_addr = ip_addr or ip(len(self.ips))
        config = SerfConfig(node_name=name, **{**self.defaults, **changes})
        events: list[Event] = []
        node = Serf.create(
            config,
            self.net.host(ip_addr),
            bind=(ip_addr, PORT),
            on_event=events.append,
            rng=random.Random(f"{self._seed}-{name}-{ip_addr}"),
        )
        self.nodes[name] = node
        self.events[name] = events
        self.ips[name] = ip_addr
        if start:
            node.start()
        return node

    def cluster(self, *names: str, **changes: Any) -> list[Serf]:
        """Start nodes and join each to the first; run until all see all alive."""
        nodes = [self.add(n, **changes) for n in names]
        for node in nodes[1:]:
            self.result(node.join([f"{self.ips[names[0]]}:{PORT}"]))
        self.until(lambda: self.converged(*names))
        return nodes

    def converged(self, *names: str) -> bool:
        names = names or tuple(self.nodes)
        for name in names:
            alive = {m.name for m in self.nodes[name].members() if m.status == MemberStatus.ALIVE}
            if not set(names) <= alive:
                return False
        return True

    def run(self, seconds: float) -> None:
        self.net.run(seconds)

    def now(self) -> float:
        return self.net.clock.seconds()

    def until(self, condition: Callable[[], Any], limit: float = 60.0, step: float = 0.1) -> float:
        start = self.now()
        while not condition():
            if self.now() - start > limit:
                raise AssertionError(f"condition not reached within {limit} virtual seconds")
            self.run(step)
        return self.now() - start

    def result(self, d: Deferred[Any], limit: float = 60.0) -> Any:
        box: list[Any] = []
        d.addBoth(box.append)
        self.until(lambda: box, limit)
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def failure(self, d: Deferred[Any], limit: float = 60.0) -> Failure:
        box: list[Any] = []
        d.addBoth(box.append)
        self.until(lambda: box, limit)
        if not isinstance(box[0], Failure):
            raise AssertionError(f"expected a failure, got {box[0]!r}")
        return box[0]

    def status(self, observer: str, name: str) -> MemberStatus | None:
        for m in self.nodes[observer].members():
            if m.name == name:
                return m.status
        return None

    def member_events(self, name: str, etype: EventType | None = None) -> list[tuple[str, tuple[str, ...]]]:
        return [
            (e.type.value, tuple(m.name for m in e.members))
            for e in self.events[name]
            if isinstance(e, MemberEvent) and (etype is None or e.type is etype)
        ]

    def user_events(self, name: str) -> list[UserEvent]:
        return [e for e in self.events[name] if isinstance(e, UserEvent)]

    def queries(self, name: str) -> list[IncomingQuery]:
        return [e for e in self.events[name] if isinstance(e, IncomingQuery)]

    def kill(self, name: str) -> None:
        """Crash a node: off the network and stopped, without a leave."""
        self.net.kill(self.ips[name])
        self.nodes[name].shutdown()

    def shutdown_all(self) -> None:
        for node in self.nodes.values():
            if node.state != SerfState.SHUTDOWN:
                node.shutdown()


class InterfaceTests(unittest.TestCase):
    def test_delegates_provide_memberlist_interfaces(self) -> None:
        c = SerfCluster(self)
        node = c.add("a")
        self.assertTrue(verifyObject(IDelegate, SerfDelegate(node)))
        self.assertTrue(verifyObject(IEventDelegate, SerfEventDelegate(node)))
        self.assertTrue(verifyObject(IConflictDelegate, SerfConflictDelegate(node)))
        self.assertIsInstance(node.memberlist.delegate, SerfDelegate)
        self.assertIsInstance(node.memberlist.events, SerfEventDelegate)
        self.assertIsInstance(node.memberlist.conflicts, SerfConflictDelegate)

    def test_serf_provides_its_inner_seams(self) -> None:
        c = SerfCluster(self)
        node = c.add("a")
        self.assertTrue(verifyObject(IQueryResponder, node))
        self.assertTrue(verifyObject(IInternalQueryHost, node))
        self.assertTrue(verifyObject(IKeyQueryHost, node))

    def test_vsn_advertises_serf_protocol(self) -> None:
        c = SerfCluster(self)
        node = c.add("a", protocol=4)
        self.assertEqual(node.memberlist.local_node.vsn, bytes((1, 5, 2, 2, 5, 4)))
        member = node.local_member()
        self.assertEqual((member.delegate_min, member.delegate_max, member.delegate_cur), (2, 5, 4))
        self.assertEqual((member.protocol_min, member.protocol_max, member.protocol_cur), (1, 5, 2))


class ClockTests(unittest.TestCase):
    def test_clocks_start_at_one(self) -> None:
        c = SerfCluster(self)
        node = c.add("a")
        self.assertEqual((node.clock.time(), node.event_clock.time(), node.query_clock.time()), (1, 1, 1))

    def test_join_intent_uses_then_witnesses_clock(self) -> None:
        """The joiner's intent carries LTime 1 (observed) and leaves its clock at 2."""
        c = SerfCluster(self)
        c.add("a")
        b = c.add("b")
        sent = record_queued(b)
        c.result(b.join([ip(0)]))
        joins = [m for m in sent if m[0] == 1]
        self.assertEqual(len(joins), 1)
        self.assertEqual(Join.unpack(joins[0][1:]), Join(ltime=1, node="b"))
        self.assertEqual(b.clock.time(), 2)

    def test_clocks_converge_through_gossip_and_push_pull(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        for _ in range(5):
            a.user_event("tick", b"")
        c.until(lambda: len(c.user_events("d")) == 5)
        # Receivers witness each LTime, so their event clock passes the highest one (5).
        self.assertEqual(sorted(e.ltime for e in c.user_events("d")), [1, 2, 3, 4, 5])
        self.assertGreaterEqual(d.event_clock.time(), 6)
        # A latecomer learns the clocks from push/pull (witnessing value - 1).
        late = c.add("late")
        c.result(late.join([ip(0)]))
        self.assertGreaterEqual(late.event_clock.time(), a.event_clock.time() - 1)
        self.assertGreaterEqual(late.clock.time(), a.clock.time() - 1)

    def test_query_clock_witnessed_by_origin_and_receivers(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        r = a.query("q", b"")
        self.assertEqual(r.ltime, 1)
        self.assertEqual(a.query_clock.time(), 2)
        c.until(lambda: c.queries("b"))
        self.assertEqual(c.queries("b")[0].ltime, 1)
        self.assertEqual(b.query_clock.time(), 2)


class IntentTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.a, self.b = self.c.cluster("a", "b")

    def queued(self, node: Serf) -> list[bytes]:
        return [msg for _, msg in node.queues.intents.ordered_view()]

    def test_new_intent_rebroadcast_byte_for_byte(self) -> None:
        """The exact received bytes are queued: here a join intent whose map keys
        come in an unusual order and with an unknown extra key."""
        import msgpack

        body = msgpack.packb({b"Node": b"zed", b"Extra": 7, b"LTime": 40}, use_bin_type=False)
        raw = bytes((1,)) + body
        self.assertNotEqual(raw, Join(ltime=40, node="zed").encode())
        self.a.handle_message(raw)
        self.assertIn(raw, self.queued(self.a))
        self.assertGreaterEqual(self.a.clock.time(), 41)
        # The same intent again is not news: not queued a second time.
        before = self.a.queues.intents.num_queued()
        self.a.handle_message(raw)
        self.assertEqual(self.a.queues.intents.num_queued(), before)
        # And it spreads: b receives exactly those bytes and queues them too.
        self.c.until(lambda: raw in self.queued(self.b) or "zed" in self.b.members_table.intents)
        self.assertEqual(self.b.members_table.intents["zed"].ltime, 40)

    def test_old_intent_for_known_member_dropped(self) -> None:
        status = self.a.members_table.get("b")
        assert status is not None
        current = status.status_ltime
        raw = Join(ltime=current, node="b").encode()
        before = self.a.queues.intents.num_queued()
        self.a.handle_message(raw)
        self.assertEqual(self.a.queues.intents.num_queued(), before)
        newer = Join(ltime=current + 5, node="b").encode()
        self.a.handle_message(newer)
        self.assertEqual(self.a.members_table.get("b").status_ltime, current + 5)  # type: ignore[union-attr]
        self.assertIn(newer, self.queued(self.a))

    def test_user_events_and_queries_requeued_on_their_queues(self) -> None:
        from flyteserf.wire.serf_messages import Query, UserEvent as UserEventMessage

        ev = UserEventMessage(ltime=9, name="x", payload=b"p", cc=False).encode()
        self.a.handle_message(ev)
        self.assertIn(ev, [m for _, m in self.a.queues.events.ordered_view()])
        q = Query(ltime=9, id=5, addr=bytes((10, 0, 0, 2)), port=PORT, source_node="b", name="n", timeout=10**9).encode()
        self.a.handle_message(q)
        self.assertIn(q, [m for _, m in self.a.queues.queries.ordered_view()])
        # Types 6-8 arriving as gossip are unknown: ignored, not re-queued.
        total = sum(qq.num_queued() for _, qq in self.a.queues.named())
        self.a.handle_message(bytes((7, 0x80)))
        self.assertEqual(sum(qq.num_queued() for _, qq in self.a.queues.named()), total)

    def test_buffered_leave_intent_makes_new_member_leaving(self) -> None:
        self.a.handle_message(Leave(ltime=50, node="newbie").encode())
        self.assertEqual(self.a.members_table.intents["newbie"].ltime, 50)
        self.c.add("newbie")
        self.c.result(self.c.nodes["newbie"].join([ip(0)]))
        # Its own join intent (LTime >= 51 after witnessing) then makes it alive again.
        self.c.until(lambda: self.c.status("a", "newbie") == MemberStatus.ALIVE)

    def test_leave_intent_about_self_is_refuted(self) -> None:
        member = self.a.members_table.get("a")
        assert member is not None
        accused = member.status_ltime + 3
        raw = Leave(ltime=accused, node="a").encode()
        self.a.handle_message(raw)
        self.assertEqual(self.c.status("a", "a"), MemberStatus.ALIVE)
        queued = self.queued(self.a)
        self.assertNotIn(raw, queued)
        joins = [Join.unpack(m[1:]) for m in queued if m[0] == 1]
        self.assertTrue(any(j.node == "a" and j.ltime > accused for j in joins))
        self.assertGreater(member.status_ltime, accused)

    def test_intents_expire_after_recent_intent_timeout(self) -> None:
        self.a.handle_message(Join(ltime=70, node="ghost").encode())
        self.assertIn("ghost", self.a.members_table.intents)
        self.c.run(self.a.config.recent_intent_timeout + self.a.config.reap_interval + 1)
        self.assertNotIn("ghost", self.a.members_table.intents)


class MemberEventTests(unittest.TestCase):
    def test_join_events_everywhere(self) -> None:
        c = SerfCluster(self)
        c.cluster("a", "b", "d")
        for name in "abd":
            joined = {n for _, names in c.member_events(name, EventType.MEMBER_JOIN) for n in names}
            self.assertEqual(joined, {"a", "b", "d"})

    def test_graceful_leave_shows_left_on_peers(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        sent = record_queued(d)
        c.result(d.leave())
        self.assertEqual(d.state, SerfState.LEFT)
        # The leave intent went out first, LTime above the join's.
        leaves = [Leave.unpack(m[1:]) for m in sent if m[0] == 0]
        self.assertEqual([(x.node, x.prune) for x in leaves], [("d", False)])
        c.until(lambda: c.status("a", "d") == MemberStatus.LEFT and c.status("b", "d") == MemberStatus.LEFT)
        self.assertIn(("member-leave", ("d",)), c.member_events("a"))
        self.assertNotIn(("member-failed", ("d",)), c.member_events("a"))
        self.assertEqual(a.stats()["left"], "1")
        # Leaving twice is fine; leaving after shutdown is refused with Serf's text.
        c.result(d.leave())
        d.shutdown()
        self.assertEqual(str(c.failure(d.leave()).value), "Leave called after Shutdown")

    def test_crash_shows_failed(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        c.kill("d")
        c.until(lambda: c.status("a", "d") == MemberStatus.FAILED and c.status("b", "d") == MemberStatus.FAILED)
        self.assertIn(("member-failed", ("d",)), c.member_events("a"))
        self.assertEqual(a.stats()["failed"], "1")

    def test_tags_update(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b", tags={"role": "web"})
        c.result(b.set_tags({"role": "db", "dc": "x"}))
        c.until(lambda: c.member_events("a", EventType.MEMBER_UPDATE))
        updated = [e for e in c.events["a"] if isinstance(e, MemberEvent) and e.type is EventType.MEMBER_UPDATE]
        self.assertEqual(updated[-1].members[0].tags, {"role": "db", "dc": "x"})
        self.assertEqual(next(m for m in a.members() if m.name == "b").tags, {"role": "db", "dc": "x"})
        self.assertEqual(b.local_member().tags, {"role": "db", "dc": "x"})

    def test_tags_too_large(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        f = c.failure(a.set_tags({"k": "x" * 600}))
        self.assertEqual(str(f.value), "Encoded length of tags exceeds limit of 512 bytes")

    def test_empty_meta_is_role_tag(self) -> None:
        """A protocol-2 node sends a bare role; peers decode it as the role tag."""
        c = SerfCluster(self)
        c.add("old", protocol=2, tags={"role": "legacy", "other": "dropped"})
        c.add("new")
        c.result(c.nodes["new"].join([ip(0)]))
        c.until(lambda: c.converged("old", "new"))
        self.assertEqual(next(m for m in c.nodes["new"].members() if m.name == "old").tags, {"role": "legacy"})


class ReapTests(unittest.TestCase):
    def test_failed_member_reaped_after_reconnect_timeout(self) -> None:
        c = SerfCluster(self, reconnect_timeout=120.0, tombstone_timeout=60.0)
        a, b, d = c.cluster("a", "b", "d")
        c.kill("d")
        c.until(lambda: c.status("a", "d") == MemberStatus.FAILED)
        failed_at = c.now()
        c.until(lambda: c.status("a", "d") is None, limit=300)
        waited = c.now() - failed_at
        # Reaped at the first reap tick after the timeout (ticks every 15 s).
        self.assertGreater(waited, 120.0)
        self.assertLessEqual(waited, 120.0 + 15.0 + 0.2)
        self.assertIn(("member-reap", ("d",)), c.member_events("a"))

    def test_left_member_reaped_after_tombstone_timeout(self) -> None:
        c = SerfCluster(self, tombstone_timeout=60.0)
        a, b, d = c.cluster("a", "b", "d")
        c.result(d.leave())
        c.until(lambda: c.status("a", "d") == MemberStatus.LEFT)
        left_at = c.now()
        c.until(lambda: c.status("a", "d") is None, limit=300)
        self.assertGreater(c.now() - left_at, 60.0)
        self.assertLessEqual(c.now() - left_at, 60.0 + 15.0 + 0.2)

    def test_reconnect_attempts_failed_members(self) -> None:
        """A failed member that comes back is found again by the reconnect loop."""
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        c.net.partition([ip(0)], [ip(1)])
        c.until(lambda: c.status("a", "b") == MemberStatus.FAILED)
        c.net.heal()
        # Only the reconnect loop (every 30 s, probability failed/alive) brings it back.
        c.until(lambda: c.status("a", "b") == MemberStatus.ALIVE, limit=300)


class ForceLeaveTests(unittest.TestCase):
    def test_force_leave_failed_member(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        c.kill("d")
        c.until(lambda: c.status("a", "d") == MemberStatus.FAILED and c.status("b", "d") == MemberStatus.FAILED)
        c.result(a.force_leave("d"))
        c.until(lambda: c.status("b", "d") == MemberStatus.LEFT)
        self.assertEqual(c.status("a", "d"), MemberStatus.LEFT)
        self.assertIn(("member-leave", ("d",)), c.member_events("b"))

    def test_force_leave_prune_erases(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        c.kill("d")
        c.until(lambda: c.status("a", "d") == MemberStatus.FAILED and c.status("b", "d") == MemberStatus.FAILED)
        c.result(a.force_leave("d", prune=True))
        self.assertIsNone(c.status("a", "d"))
        c.until(lambda: c.status("b", "d") is None)
        self.assertEqual(c.member_events("b")[-2:], [("member-leave", ("d",)), ("member-reap", ("d",))])

    def test_force_leave_unknown_node_is_not_an_error(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        c.result(a.force_leave("nobody"))

    def test_prune_of_leaving_member_waits(self) -> None:
        """A member still leaving is erased only after BroadcastTimeout + LeavePropagateDelay."""
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        member = a.members_table.get("b")
        assert member is not None
        a.handle_message(Leave(ltime=member.status_ltime + 1, node="b", prune=True).encode())
        self.assertEqual(c.status("a", "b"), MemberStatus.LEAVING)
        c.run(5.9)
        self.assertIsNotNone(c.status("a", "b"))
        c.run(0.2)
        self.assertIsNone(c.status("a", "b"))


class PushPullStateTests(unittest.TestCase):
    def test_local_state_contents(self) -> None:
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        c.result(d.leave())
        c.until(lambda: c.status("a", "d") == MemberStatus.LEFT)
        a.user_event("e", b"1")
        pp = PushPull.unpack(a.local_state(False)[1:])
        self.assertEqual(pp.ltime, a.clock.time())
        self.assertEqual(set(pp.status_ltimes), {"a", "b", "d"})
        self.assertEqual(pp.left_members, ("d",))
        self.assertEqual(pp.event_ltime, a.event_clock.time())
        self.assertEqual(pp.query_ltime, a.query_clock.time())
        self.assertEqual(len(pp.events), 512)
        slots = [s for s in pp.events if s is not None]
        self.assertEqual([(s.ltime, [(e.name, e.payload) for e in s.events]) for s in slots], [(1, [("e", b"1")])])

    def test_merge_remote_state(self) -> None:
        from flyteserf.wire.serf_messages import EventEntry, UserEvents

        c = SerfCluster(self)
        (a,) = c.cluster("a")
        events: list[UserEvents | None] = [None] * 512
        events[7] = UserEvents(ltime=7, events=(EventEntry(name="old", payload=b"x"),))
        pp = PushPull(
            ltime=20,
            status_ltimes={"gone": 5, "other": 9},
            left_members=("gone",),
            event_ltime=30,
            events=tuple(events),
            query_ltime=40,
        )
        a.merge_remote_state(pp.encode(), False)
        self.assertEqual((a.clock.time(), a.event_clock.time(), a.query_clock.time()), (20, 30, 40))
        intents = a.members_table.intents
        self.assertEqual((intents["gone"].type.value, intents["gone"].ltime), ("leave", 6))
        self.assertEqual((intents["other"].type.value, intents["other"].ltime), ("join", 9))
        self.assertEqual([(e.name, e.ltime, e.coalesce) for e in c.user_events("a")], [("old", 7, False)])
        # Synthetic intents and events from a merge are not re-broadcast.
        self.assertEqual(a.queues.intents.num_queued(), 0)
        self.assertEqual(a.queues.events.num_queued(), 0)

    def test_merge_rejects_bad_state(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        a.merge_remote_state(b"", False)
        a.merge_remote_state(b"\x03\x80", False)
        a.merge_remote_state(b"\x02\xc1", False)
        self.flushLoggedErrors()
        self.assertEqual(a.clock.time(), 1)


class JoinTests(unittest.TestCase):
    def test_join_failure_text(self) -> None:
        c = SerfCluster(self)
        a = c.add("a")
        f = c.failure(a.join(["10.9.9.9:7946"]))
        self.assertIn("1 error occurred:\n\t* Failed to join 10.9.9.9:", str(f.value))

    def test_join_after_leave_refused(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        c.result(b.leave())
        f = c.failure(b.join([ip(0)]))
        self.assertEqual(str(f.value), "Serf can't Join after Leave or Shutdown")

    def test_address_forms(self) -> None:
        c = SerfCluster(self)
        c.add("a")
        b = c.add("b")
        d = c.add("d")
        e = c.add("e")
        self.assertEqual(c.result(b.join([ip(0)])), 1)
        self.assertEqual(c.result(d.join([f"a/{ip(0)}:{PORT}"])), 1)
        self.assertEqual(c.result(e.join([(ip(0), PORT), (ip(1), PORT)])), 2)


class QueueTests(unittest.TestCase):
    def test_broadcast_order_intents_queries_events(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        a.queues.queue(a.queues.events, b"\x03event")
        a.queues.queue(a.queues.queries, b"\x04query")
        a.queues.queue(a.queues.intents, b"\x01intent")
        self.assertEqual(a.queues.get_broadcasts(2, 1400), [b"\x01intent", b"\x04query", b"\x03event"])
        # Each message is charged the overhead: only the intent fits here.
        a.queues.queue(a.queues.intents, b"\x01intent")
        a.queues.queue(a.queues.queries, b"\x04query")
        self.assertEqual(a.queues.get_broadcasts(2, 10), [b"\x01intent"])

    def test_deep_queue_pruned_at_check(self) -> None:
        # No gossip loop, so nothing drains the queue but the depth check.
        quiet = MemberlistConfig.lan().evolve(gossip_interval=0)
        c = SerfCluster(self, max_queue_depth=10, queue_check_interval=5.0, memberlist=quiet)
        (a,) = c.cluster("a")
        for i in range(25):
            a.user_event("e", str(i).encode(), coalesce=False)
        self.assertEqual(a.queues.events.num_queued(), 25)
        c.run(5.1)
        self.assertEqual(a.queues.events.num_queued(), 10)
        self.assertEqual(a.stats()["event_queue"], "10")

    def test_stats_keys(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        stats = a.stats()
        self.assertEqual(
            set(stats),
            {"members", "failed", "left", "health_score", "member_time", "event_time", "query_time",
             "intent_queue", "event_queue", "query_queue", "encrypted"},
        )
        self.assertTrue(all(isinstance(v, str) for v in stats.values()))
        self.assertEqual((stats["members"], stats["encrypted"]), ("2", "false"))
