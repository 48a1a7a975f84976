# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""The broadcast queue (spec §2.9): order, fitting, invalidation, limits."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from flyteserf.memberlist.interfaces import IBroadcast, IUniqueBroadcast
from flyteserf.memberlist.queue import NamedBroadcast, TransmitLimitedQueue, UniqueBroadcast
from flyteserf.memberlist.timing import retransmit_limit


@implementer(IBroadcast)
@attrs.define(eq=False)
class PlainBroadcast:
    """Neither named nor unique: invalidation goes through ``invalidates``."""

    msg: bytes
    key: str
    log: list[bytes] = attrs.field(factory=list)
    name: None = None

    def message(self) -> bytes:
        return self.msg

    def invalidates(self, other: IBroadcast) -> bool:
        return isinstance(other, PlainBroadcast) and other.key == self.key

    def finished(self) -> None:
        self.log.append(self.msg)


def recorder(log: list[bytes], msg: bytes) -> Deferred[None]:
    """A notify Deferred that appends ``msg`` to ``log`` when it fires."""
    d: Deferred[None] = Deferred()

    def record(_: None) -> None:
        log.append(msg)

    d.addCallback(record)
    return d


def finished_log(queue: TransmitLimitedQueue, *msgs: bytes) -> list[bytes]:
    """Queue unique broadcasts recording their ``finished()`` calls."""
    log: list[bytes] = []
    for m in msgs:
        queue.queue_broadcast(UniqueBroadcast(m, recorder(log, m)))
    return log


def nodes(n: int) -> Any:
    return lambda: n


class InterfaceTests(SynchronousTestCase):
    def test_verify(self) -> None:
        self.assertTrue(verifyObject(IBroadcast, NamedBroadcast("a", b"x")))
        self.assertTrue(verifyObject(IUniqueBroadcast, UniqueBroadcast(b"x")))
        self.assertTrue(verifyObject(IBroadcast, PlainBroadcast(b"x", "k")))
        self.assertIsNone(UniqueBroadcast(b"x").name)
        self.assertEqual(NamedBroadcast("a", b"x").name, "a")

    def test_named_invalidates_same_name_only(self) -> None:
        a = NamedBroadcast("a", b"1")
        self.assertTrue(a.invalidates(NamedBroadcast("a", b"2")))
        self.assertFalse(a.invalidates(NamedBroadcast("b", b"2")))
        self.assertFalse(a.invalidates(UniqueBroadcast(b"1")))
        self.assertFalse(UniqueBroadcast(b"1").invalidates(UniqueBroadcast(b"1")))

    def test_finished_fires_notify_once(self) -> None:
        d: Deferred[None] = Deferred()
        b = NamedBroadcast("a", b"x", d)
        b.finished()
        b.finished()
        self.assertIsNone(self.successResultOf(d))
        UniqueBroadcast(b"x").finished()  # no notify: nothing to do


class OrderTests(SynchronousTestCase):
    def test_empty(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        self.assertEqual(q.get_broadcasts(2, 1400), [])
        self.assertEqual(q.num_queued(), 0)

    def test_longest_then_newest_first(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        for m in (b"aa", b"bbbb", b"c", b"dddd", b"ee"):
            q.queue_broadcast(UniqueBroadcast(m))
        expected = [b"dddd", b"bbbb", b"ee", b"aa", b"c"]
        self.assertEqual([m for _, m in q.ordered_view()], expected)
        self.assertEqual(q.get_broadcasts(0, 1000), expected)

    def test_fewest_transmits_first(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(UniqueBroadcast(b"old-and-long"))
        self.assertEqual(q.get_broadcasts(0, 100), [b"old-and-long"])
        q.queue_broadcast(UniqueBroadcast(b"new"))
        self.assertEqual(q.ordered_view(), [(0, b"new"), (1, b"old-and-long")])
        self.assertEqual(q.get_broadcasts(0, 100), [b"new", b"old-and-long"])
        self.assertEqual(q.ordered_view(), [(1, b"new"), (2, b"old-and-long")])

    def test_bumped_message_not_taken_twice_in_one_call(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(UniqueBroadcast(b"a"))
        q.queue_broadcast(UniqueBroadcast(b"b"), initial_transmits=1)
        self.assertEqual(q.get_broadcasts(0, 100), [b"a", b"b"])
        self.assertEqual(q.ordered_view(), [(1, b"a"), (2, b"b")])


class FitTests(SynchronousTestCase):
    def test_largest_that_fits(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        for m in (b"x" * 10, b"y" * 6, b"z" * 4, b"w" * 3):
            q.queue_broadcast(UniqueBroadcast(m))
        # Budget 12 with 2 bytes overhead each: 10 free -> the 10-byte one
        # leaves 12 - 12 = 0 free.
        self.assertEqual(q.get_broadcasts(2, 12), [b"x" * 10])
        # Now 9 free: 6 fits (8 used), then 12 - 8 - 2 = 2 free: nothing else.
        self.assertEqual(q.get_broadcasts(2, 12), [b"y" * 6])
        # Transmitted-once 10 byte msg can't fit with 4-byte and 3-byte ones.
        self.assertEqual(q.get_broadcasts(2, 12), [b"z" * 4, b"w" * 3])

    def test_skips_too_large_but_takes_smaller(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(UniqueBroadcast(b"big" * 100))
        q.queue_broadcast(UniqueBroadcast(b"small"))
        self.assertEqual(q.get_broadcasts(3, 20), [b"small"])
        self.assertEqual(q.num_queued(), 2)

    def test_exact_fit(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(UniqueBroadcast(b"12345"))
        self.assertEqual(q.get_broadcasts(3, 8), [b"12345"])

    def test_no_room(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(UniqueBroadcast(b""))
        self.assertEqual(q.get_broadcasts(5, 5), [])
        self.assertEqual(q.get_broadcasts(0, 0), [])
        self.assertEqual(q.get_broadcasts(2, 3), [b""])


class InvalidationTests(SynchronousTestCase):
    def test_named_replaces_same_name(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        d1: Deferred[None] = Deferred()
        q.queue_broadcast(NamedBroadcast("node-a", b"alive-1", d1))
        q.queue_broadcast(NamedBroadcast("node-b", b"alive-b"))
        self.assertNoResult(d1)
        q.queue_broadcast(NamedBroadcast("node-a", b"suspect-1"))
        self.successResultOf(d1)
        self.assertEqual(q.num_queued(), 2)
        self.assertEqual(sorted(q.get_broadcasts(0, 100)), [b"alive-b", b"suspect-1"])

    def test_named_replaces_after_transmits(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(NamedBroadcast("n", b"first"))
        q.get_broadcasts(0, 100)
        q.queue_broadcast(NamedBroadcast("n", b"second"))
        self.assertEqual(q.ordered_view(), [(0, b"second")])

    def test_unique_never_invalidates(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        log = finished_log(q, b"same", b"same", b"same")
        self.assertEqual(q.num_queued(), 3)
        self.assertEqual(log, [])

    def test_unique_does_not_touch_named(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(NamedBroadcast("a", b"x"))
        q.queue_broadcast(UniqueBroadcast(b"x"))
        self.assertEqual(q.num_queued(), 2)

    def test_plain_invalidates_plain_only(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        log: list[bytes] = []
        q.queue_broadcast(PlainBroadcast(b"k1-old", "k1", log))
        q.queue_broadcast(PlainBroadcast(b"k2", "k2", log))
        q.queue_broadcast(NamedBroadcast("k1", b"named"))
        q.queue_broadcast(UniqueBroadcast(b"unique"))
        q.queue_broadcast(PlainBroadcast(b"k1-new", "k1", log))
        self.assertEqual(log, [b"k1-old"])
        self.assertEqual(
            sorted(m for _, m in q.ordered_view()), [b"k1-new", b"k2", b"named", b"unique"]
        )


class RetransmitLimitTests(SynchronousTestCase):
    def drain(self, q: TransmitLimitedQueue) -> list[list[bytes]]:
        rounds = []
        while q.num_queued():
            rounds.append(q.get_broadcasts(0, 1400))
        return rounds

    def test_four_sends_for_small_cluster(self) -> None:
        q = TransmitLimitedQueue(nodes(9), 4)
        d: Deferred[None] = Deferred()
        q.queue_broadcast(NamedBroadcast("leave", b"dead", d))
        for _ in range(3):
            self.assertEqual(q.get_broadcasts(0, 1400), [b"dead"])
            self.assertNoResult(d)
        self.assertEqual(q.get_broadcasts(0, 1400), [b"dead"])
        self.successResultOf(d)
        self.assertEqual(q.num_queued(), 0)
        self.assertEqual(q.get_broadcasts(0, 1400), [])

    def test_limit_scales_with_cluster(self) -> None:
        for n, expected in ((9, 4), (10, 8), (99, 8), (100, 12)):
            q = TransmitLimitedQueue(nodes(n), 4)
            q.queue_broadcast(UniqueBroadcast(b"m"))
            self.assertEqual(len(self.drain(q)), expected, n)

    def test_limit_computed_at_call_time(self) -> None:
        size = [50]
        q = TransmitLimitedQueue(lambda: size[0], 4)
        log = finished_log(q, b"m")
        for _ in range(5):
            q.get_broadcasts(0, 100)
        size[0] = 5  # limit drops from 8 to 4: already past it
        self.assertEqual(q.get_broadcasts(0, 100), [b"m"])
        self.assertEqual(log, [b"m"])
        self.assertEqual(q.num_queued(), 0)

    def test_empty_cluster_sends_once(self) -> None:
        q = TransmitLimitedQueue(nodes(0), 4)
        log = finished_log(q, b"m")
        self.assertEqual(q.get_broadcasts(0, 100), [b"m"])
        self.assertEqual(log, [b"m"])

    def test_finished_callback_may_requeue(self) -> None:
        q = TransmitLimitedQueue(nodes(1), 1)
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: q.queue_broadcast(UniqueBroadcast(b"next")))
        q.queue_broadcast(UniqueBroadcast(b"first", d))
        self.assertEqual(q.get_broadcasts(0, 100), [b"first"])
        self.assertEqual(q.ordered_view(), [(0, b"next")])


class PruneResetTests(SynchronousTestCase):
    def test_prune_drops_most_transmitted_then_oldest(self) -> None:
        q = TransmitLimitedQueue(nodes(50), 4)
        old = finished_log(q, b"a1", b"a2")
        q.get_broadcasts(0, 100)  # a1, a2 now at 1 transmit
        new = finished_log(q, b"b1", b"b2", b"b3")
        q.prune(3)
        self.assertEqual(old, [b"a1", b"a2"])  # same length: oldest first
        self.assertEqual(new, [])
        q.prune(1)
        self.assertEqual(new, [b"b1", b"b2"])
        self.assertEqual(q.ordered_view(), [(0, b"b3")])
        q.prune(5)
        self.assertEqual(q.num_queued(), 1)

    def test_prune_keeps_named_index_consistent(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        q.queue_broadcast(NamedBroadcast("a", b"1"))
        q.prune(0)
        q.queue_broadcast(NamedBroadcast("a", b"2"))
        self.assertEqual(q.ordered_view(), [(0, b"2")])

    def test_reset(self) -> None:
        q = TransmitLimitedQueue(nodes(3), 4)
        log = finished_log(q, b"x", b"yy")
        q.queue_broadcast(NamedBroadcast("n", b"z"))
        q.reset()
        self.assertEqual(log, [b"yy", b"x"])
        self.assertEqual(q.num_queued(), 0)
        self.assertEqual(len(q), 0)
        q.queue_broadcast(NamedBroadcast("n", b"again"))
        self.assertEqual(q.num_queued(), 1)


class ScaleTests(SynchronousTestCase):
    def test_full_serf_queue(self) -> None:
        """4096 queued (serf's max depth), drained 1400 bytes at a time."""
        q = TransmitLimitedQueue(nodes(4096), 4)
        for i in range(4096):
            q.queue_broadcast(UniqueBroadcast(b"%d:" % i + b"x" * (i % 200)))
        q.prune(4096)
        calls = 0
        while q.num_queued():
            out = q.get_broadcasts(2, 1400)
            self.assertTrue(out)
            self.assertLessEqual(sum(len(m) + 2 for m in out), 1400)
            calls += 1
        self.assertGreater(calls, 100)


# -- model-based property test ---------------------------------------------


class ModelQueue:
    """The Go algorithm, written naively (sort everything, every time)."""

    def __init__(self, num_nodes: int, mult: int) -> None:
        self.n = num_nodes
        self.mult = mult
        self.items: list[dict[str, Any]] = []
        self.next_id = 0
        self.finished: list[bytes] = []

    def queue(self, name: str | None, msg: bytes) -> None:
        self.next_id += 1
        if name is not None:
            for old in [i for i in self.items if i["name"] == name]:
                self.items.remove(old)
                self.finished.append(old["msg"])
        self.items.append({"name": name, "msg": msg, "id": self.next_id, "tx": 0})

    def get(self, overhead: int, limit: int) -> list[bytes]:
        tl = retransmit_limit(self.mult, self.n)
        used = 0
        out: list[bytes] = []
        bumped: list[dict[str, Any]] = []
        tiers = sorted({i["tx"] for i in self.items})
        for tier in tiers:
            while True:
                free = limit - used - overhead
                if free <= 0:
                    break
                cands = [i for i in self.items if i["tx"] == tier and len(i["msg"]) <= free]
                if not cands:
                    break
                keep = max(cands, key=lambda i: (len(i["msg"]), i["id"]))
                self.items.remove(keep)
                used += overhead + len(keep["msg"])
                out.append(keep["msg"])
                if keep["tx"] + 1 >= tl:
                    self.finished.append(keep["msg"])
                else:
                    keep["tx"] += 1
                    bumped.append(keep)
        self.items.extend(bumped)
        return out


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("queue"),
            st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
            st.integers(min_value=0, max_value=60),
        ),
        st.tuples(
            st.just("get"),
            st.integers(min_value=0, max_value=8),
            st.integers(min_value=0, max_value=150),
        ),
    ),
    max_size=80,
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(n=st.integers(min_value=0, max_value=120), mult=st.integers(1, 4), program=ops)
    def test_matches_model_and_respects_limits(
        self, n: int, mult: int, program: list[tuple[str, Any, int]]
    ) -> None:
        q = TransmitLimitedQueue(nodes(n), mult)
        model = ModelQueue(n, mult)
        finished: list[bytes] = []
        sends: dict[bytes, int] = {}
        serial = 0
        for op, a, b in program:
            if op == "queue":
                serial += 1
                # Distinct payloads, so each message can be tracked.
                msg = (b"%d." % serial).ljust(b, b"x")
                d = recorder(finished, msg)
                bc = NamedBroadcast(a, msg, d) if a is not None else UniqueBroadcast(msg, d)
                q.queue_broadcast(bc)
                model.queue(a, msg)
            else:
                overhead, limit = a, b
                out = q.get_broadcasts(overhead, limit)
                self.assertEqual(out, model.get(overhead, limit))
                self.assertLessEqual(sum(len(m) + overhead for m in out), max(limit, 0))
                for m in out:
                    sends[m] = sends.get(m, 0) + 1
            self.assertEqual(finished, model.finished)
            self.assertEqual(q.num_queued(), len(model.items))
        cap = max(retransmit_limit(mult, n), 1)
        for m, count in sends.items():
            self.assertLessEqual(count, cap, m)
            if count == cap:
                self.assertIn(m, finished)
        self.assertEqual(len(finished), len(set(finished)), "finished() fired twice")
