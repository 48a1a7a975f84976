# mypy: disable-error-code="no-untyped-call"
"""Restarts with a snapshot (spec §3.12) and name conflicts (spec §3.10), in virtual time."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from flyteserf.serf.serf import Serf, SerfState
from flyteserf.wire.serf_messages import MemberStatus
from tests.test_serf_cluster import SerfCluster, ip


def rejoined(node: Serf) -> Deferred[bool]:
    assert node.rejoined is not None, "no snapshot rejoin was started"
    return node.rejoined


class SnapshotRestartTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.path = os.path.abspath(self.mktemp())
        self.a, self.b = self.c.cluster("a", "b")
        self.d = self.c.add("d", snapshot_path=self.path)
        self.c.result(self.d.join([ip(0)]))
        self.c.until(lambda: self.c.converged())
        for i in range(3):
            self.a.user_event("before", str(i).encode(), coalesce=False)
        self.a.query("q-before", b"")
        self.c.until(lambda: len(self.c.user_events("d")) == 3 and self.c.queries("d"))
        self.c.run(2)

    def restart_d(self, **changes: Any) -> Serf:
        old_incarnation = self.d.memberlist.local_node.incarnation
        self.c.kill("d")
        self.c.until(lambda: self.c.status("a", "d") == MemberStatus.FAILED)
        self.c.run(5)
        self.c.net.revive(ip(2))
        del self.c.nodes["d"]
        new = self.c.add("d", ip_addr=ip(2), snapshot_path=self.path, **changes)
        self.assertGreater(new.memberlist.local_node.incarnation, old_incarnation)
        return new

    def test_snapshot_lines(self) -> None:
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertIn(f"alive: a {ip(0)}:7946", lines)
        self.assertIn(f"alive: d {ip(2)}:7946", lines)
        self.assertIn("event-clock: 3", lines)
        self.assertIn("query-clock: 1", lines)
        self.assertTrue(any(line.startswith("clock: ") for line in lines))

    def test_restart_rejoins_without_redelivering(self) -> None:
        d = self.restart_d()
        self.assertEqual(d.event_buffer.min_time, 4)
        self.assertEqual(d.query_buffer.min_time, 2)
        self.assertGreaterEqual(d.event_clock.time(), 3)
        self.assertTrue(self.c.result(rejoined(d)))
        self.c.until(lambda: all(self.c.status(n, "d") == MemberStatus.ALIVE for n in "abd"))
        self.c.run(40)  # periodic push/pulls replay the rings: still nothing old
        self.assertEqual(self.c.user_events("d"), [])
        self.assertEqual(self.c.queries("d"), [])
        # New events are delivered.
        self.a.user_event("after", b"", coalesce=False)
        self.c.until(lambda: self.c.user_events("d"))
        self.assertEqual([e.name for e in self.c.user_events("d")], ["after"])

    def test_no_rejoin_after_graceful_leave(self) -> None:
        self.c.result(self.d.leave())
        self.d.shutdown()
        with open(self.path) as f:
            self.assertIn("leave", f.read().splitlines())
        del self.c.nodes["d"]
        d = self.c.add("d", ip_addr=ip(2), snapshot_path=self.path)
        self.assertIsNone(d.rejoined)
        self.assertEqual(d.event_buffer.min_time, 1)

    def test_rejoin_after_leave_option(self) -> None:
        self.c.result(self.d.leave())
        self.d.shutdown()
        del self.c.nodes["d"]
        self.c.run(3)
        d = self.c.add("d", ip_addr=ip(2), snapshot_path=self.path, rejoin_after_leave=True)
        self.assertTrue(self.c.result(rejoined(d)))
        self.c.until(lambda: self.c.status("a", "d") == MemberStatus.ALIVE)


class NameConflictTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.c.cluster("a", "b", "x", "e")

    def impostor(self, **changes: Any) -> Serf:
        twin = Serf.create(
            self.c.nodes["a"].config.evolve(node_name="x", **changes),
            self.c.net.host("10.0.0.99"),
            bind=("10.0.0.99", 7946),
        )
        self.addCleanup(lambda: twin.shutdown() if twin.state != SerfState.SHUTDOWN else None)
        twin.start()
        twin.join([ip(1)])
        return twin

    def test_minority_shuts_down(self) -> None:
        twin = self.impostor()
        self.c.until(lambda: twin.state == SerfState.SHUTDOWN, limit=30)
        self.assertEqual(self.c.nodes["x"].state, SerfState.ALIVE)
        self.c.run(10)
        for name in "abxe":
            member = next(m for m in self.c.nodes[name].members() if m.name == "x")
            self.assertEqual((member.addr, member.status), (ip(2), MemberStatus.ALIVE))

    def test_resolution_disabled(self) -> None:
        twin = self.impostor(enable_name_conflict_resolution=False)
        self.c.run(20)
        self.assertEqual(twin.state, SerfState.ALIVE)
        self.assertEqual(self.c.nodes["x"].state, SerfState.ALIVE)

    def test_conflict_answers(self) -> None:
        """Others answer with what they know; the named node itself stays silent."""
        from flyteserf.serf.query import QueryParam
        from flyteserf.wire.serf_messages import decode_conflict_response

        r = self.c.nodes["a"].query("_serf_conflict", b"x", QueryParam(timeout=2))
        self.c.result(r.when_done())
        self.assertEqual(sorted(x.from_ for x in r.responses), ["a", "b", "e"])
        for response in r.responses:
            member = decode_conflict_response(response.payload)
            assert member is not None
            self.assertEqual((member.name, member.addr, member.port), ("x", bytes((10, 0, 0, 3)), 7946))
        r = self.c.nodes["a"].query("_serf_conflict", b"unknown", QueryParam(timeout=2))
        self.c.result(r.when_done())
        self.assertEqual({x.payload for x in r.responses}, {b"\x06\xc0"})
