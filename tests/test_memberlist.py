"""memberlist in virtual time: the §2.8 rules one by one, and whole clusters."""

from __future__ import annotations

import random
from typing import Any

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.memberlist.delegates import (
    CallbackEvents,
    IConflictDelegate,
    IDelegate,
    IEventDelegate,
    IMemberlistTransport,
    IPingDelegate,
    NullConflicts,
    NullDelegate,
    NullPings,
)
from flyteserf.memberlist.memberlist import JoinError, Memberlist
from flyteserf.memberlist.build import TagsDelegate, build_memberlist
from flyteserf.memberlist.state import Node
from flyteserf.testing.transport import RecordingTransport
from flyteserf.testing.network import MemoryNetwork
from flyteserf.wire.messages import (
    DEFAULT_VSN,
    AckResp,
    Alive,
    Dead,
    IndirectPingReq,
    NackResp,
    NodeState,
    Ping,
    Suspect,
    decode_message,
    ip_to_wire,
)

from flyteserf.wire.serf_messages import UserEvent


def ip(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


class Cluster:
    """N memberlist nodes on one MemoryNetwork, n0 the seed."""

    def __init__(self, n: int, seed: int = 1, config: MemberlistConfig | None = None) -> None:
        self.net = MemoryNetwork(seed=seed)
        self.nodes: list[Memberlist] = []
        self.events: list[tuple[str, str, str]] = []
        for i in range(n):
            self.add(i, config)

    def add(self, i: int, config: MemberlistConfig | None = None) -> Memberlist:
        name = f"n{i}"
        events = CallbackEvents(
            lambda node, me=name: self.events.append((me, "join", node.name)),
            lambda node, me=name: self.events.append((me, "leave", node.name)),
            lambda node, me=name: self.events.append((me, "update", node.name)),
        )
        node = build_memberlist(
            self.net.host(ip(i)),
            name,
            (ip(i), 7946),
            config=config,
            delegate=TagsDelegate({"role": "test"}),
            events=events,
            rng=random.Random(i),
        )
        node.start()
        self.nodes.append(node)
        return node

    def join_all(self) -> None:
        for node in self.nodes[1:]:
            node.join([(ip(0), 7946)])

    def converged(self, alive: int | None = None) -> bool:
        alive = len(self.nodes) if alive is None else alive
        return all(len(n.members()) == alive for n in self.nodes if n._running)

    def run_until(self, condition: Any, limit: float, step: float = 0.25) -> float:
        start = self.net.clock.seconds()
        while not condition():
            if self.net.clock.seconds() - start > limit:
                raise AssertionError(f"not reached within {limit} virtual seconds")
            self.net.run(step)
        return self.net.clock.seconds() - start

    def state_of(self, observer: int, name: str) -> NodeState | None:
        node = self.nodes[observer].nodes.get(name)
        return None if node is None else node.state


class InterfaceTests(unittest.TestCase):
    def test_defaults_provide_interfaces(self) -> None:
        verifyObject(IDelegate, NullDelegate())
        verifyObject(IDelegate, TagsDelegate({}))
        verifyObject(IEventDelegate, CallbackEvents())
        verifyObject(IConflictDelegate, NullConflicts())
        verifyObject(IPingDelegate, NullPings())
        cluster = Cluster(1)
        verifyObject(IMemberlistTransport, cluster.nodes[0].transport)


class ClusterTests(unittest.TestCase):
    def test_hundred_nodes_converge(self) -> None:
        cluster = Cluster(100)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=60)
        for node in cluster.nodes:
            self.assertTrue(all(n.state == NodeState.ALIVE for n in node.nodes.values()))

    def test_killed_node_declared_dead_within_lifeguard_bounds(self) -> None:
        cluster = Cluster(10)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        cluster.net.kill(ip(3))
        config = MemberlistConfig.lan()
        lo, hi = config.suspicion_bounds(10)
        took = cluster.run_until(
            lambda: all(cluster.state_of(i, "n3") == NodeState.DEAD for i in range(10) if i != 3),
            limit=hi + 10,
        )
        # Detection needs a probe, its timeout and the suspicion minimum at least,
        # and never more than the Lifeguard maximum plus a probe round and gossip.
        self.assertGreaterEqual(took, lo)
        self.assertLessEqual(took, hi + 2 * config.probe_interval + 1)
        failed = {(me, name) for me, kind, name in cluster.events if kind == "leave"}
        self.assertEqual(failed, {(f"n{i}", "n3") for i in range(10) if i != 3})

    def test_false_suspicion_is_refuted(self) -> None:
        cluster = Cluster(5)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        victim = cluster.nodes[2]
        before = victim.local_node.incarnation
        accuser = cluster.nodes[0]
        accuser.suspect_node(Suspect(incarnation=before, node="n2", from_="n0"))
        self.assertEqual(cluster.state_of(0, "n2"), NodeState.SUSPECT)
        cluster.run_until(lambda: all(cluster.state_of(i, "n2") == NodeState.ALIVE for i in range(5)), limit=10)
        self.assertGreater(victim.local_node.incarnation, before)
        self.assertEqual(victim.awareness.score, 1)
        cluster.net.run(60)
        self.assertTrue(cluster.converged())

    def test_partition_heals(self) -> None:
        cluster = Cluster(6)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        left, right = [ip(i) for i in range(3)], [ip(i) for i in range(3, 6)]
        cluster.net.partition(left, right)
        cluster.run_until(lambda: cluster.converged(alive=3), limit=90)
        cluster.net.heal()
        # Dead nodes are not probed; a push/pull or a join brings the halves back.
        cluster.nodes[0].join([(ip(3), 7946)])
        cluster.run_until(cluster.converged, limit=120)

    def test_loss_gives_no_false_deaths(self) -> None:
        cluster = Cluster(8, seed=7)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        cluster.events.clear()
        cluster.net.set_default_link(loss=0.2)
        cluster.net.run(300)
        deaths = [e for e in cluster.events if e[1] == "leave"]
        self.assertEqual(deaths, [])
        self.assertTrue(cluster.converged())

    def test_join_failure_lists_every_address(self) -> None:
        cluster = Cluster(1)
        d = cluster.nodes[0].join([(ip(50), 7946), (ip(51), 7946)])
        failures: list[Any] = []
        d.addErrback(failures.append)
        cluster.net.run(20)
        [failure] = failures
        failure.trap(JoinError)
        self.assertIn("2 errors occurred", str(failure.value))
        self.assertIn(f"Failed to join {ip(50)}", str(failure.value))

    def test_leave_is_seen_as_left(self) -> None:
        cluster = Cluster(4)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        done: list[Any] = []
        cluster.nodes[1].leave(5).addBoth(done.append)
        cluster.run_until(lambda: bool(done), limit=10)
        cluster.run_until(lambda: all(cluster.state_of(i, "n1") == NodeState.LEFT for i in (0, 2, 3)), limit=10)




class RuleTests(unittest.TestCase):
    """The aliveNode/suspectNode/deadNode rules of serf-wire §2.8."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.transport = RecordingTransport()
        self.events: list[tuple[str, str]] = []
        self.conflicts: list[tuple[Node, Node]] = []
        conflicts = NullConflicts()
        conflicts.notify_conflict = lambda a, b: self.conflicts.append((a, b))  # type: ignore[method-assign]
        self.m = Memberlist(
            "me",
            reactor=self.clock,
            transport=self.transport,  # type: ignore[arg-type]
            advertise=("10.0.0.1", 7946),
            config=MemberlistConfig.lan().evolve(enable_compression=False),
            events=CallbackEvents(
                lambda n: self.events.append(("join", n.name)),
                lambda n: self.events.append(("leave", n.name)),
                lambda n: self.events.append(("update", n.name)),
            ),
            conflicts=conflicts,
            rng=random.Random(0),
        )
        self.m.start()
        self.m.broadcasts.reset()  # our own bootstrap alive
        self.events.clear()

    def tearDown(self) -> None:
        self.m.shutdown()

    def alive(self, name: str = "x", inc: int = 1, addr: str = "10.0.0.2", meta: bytes = b"", **kw: Any) -> Alive:
        return Alive(incarnation=inc, node=name, addr=ip_to_wire(addr), port=kw.get("port", 7946), meta=meta, vsn=kw.get("vsn", DEFAULT_VSN))

    def test_unknown_node_joins(self) -> None:
        self.m.alive_node(self.alive())
        self.assertEqual(self.events, [("join", "x")])
        self.assertEqual(self.m.nodes["x"].state, NodeState.ALIVE)

    def test_old_incarnation_ignored_and_meta_change_updates(self) -> None:
        self.m.alive_node(self.alive(inc=2))
        self.m.alive_node(self.alive(inc=2, meta=b"\xff\x80"))
        self.assertEqual(self.m.nodes["x"].meta, b"")
        self.m.alive_node(self.alive(inc=3, meta=b"\xff\x80"))
        self.assertEqual(self.events, [("join", "x"), ("update", "x")])

    def test_invalid_vsn_ignored(self) -> None:
        self.m.alive_node(self.alive(vsn=bytes((0, 5, 2, 2, 5, 5))))
        self.m.alive_node(self.alive(vsn=bytes((3, 2, 2, 2, 5, 5))))
        self.m.alive_node(self.alive(vsn=b"\x01\x05"))
        self.assertNotIn("x", self.m.nodes)

    def test_address_conflict_goes_to_delegate(self) -> None:
        self.m.alive_node(self.alive())
        self.m.alive_node(self.alive(inc=5, addr="10.0.0.9"))
        self.assertEqual(self.m.nodes["x"].addr, "10.0.0.2")
        [(existing, other)] = self.conflicts
        self.assertEqual((existing.addr, other.addr), ("10.0.0.2", "10.0.0.9"))

    def test_left_node_address_reclaimed(self) -> None:
        self.m.alive_node(self.alive())
        self.m.dead_node(Dead(incarnation=1, node="x", from_="x"))
        self.assertEqual(self.m.nodes["x"].state, NodeState.LEFT)
        self.m.alive_node(self.alive(inc=1, addr="10.0.0.9"))
        self.assertEqual(self.m.nodes["x"].addr, "10.0.0.9")
        self.assertEqual(self.m.nodes["x"].state, NodeState.ALIVE)

    def test_suspect_then_dead_after_timeout(self) -> None:
        self.m.alive_node(self.alive())
        self.m.suspect_node(Suspect(incarnation=1, node="x", from_="y"))
        self.assertEqual(self.m.nodes["x"].state, NodeState.SUSPECT)
        lo, hi = self.m.config.suspicion_bounds(2)
        self.clock.advance(lo - 0.01)
        self.assertEqual(self.m.nodes["x"].state, NodeState.SUSPECT)
        self.clock.advance(0.02)
        self.assertEqual(self.m.nodes["x"].state, NodeState.DEAD)
        self.assertEqual(self.events[-1], ("leave", "x"))

    def test_alive_cancels_suspicion(self) -> None:
        self.m.alive_node(self.alive())
        self.m.suspect_node(Suspect(incarnation=1, node="x", from_="y"))
        self.m.alive_node(self.alive(inc=2))
        self.clock.advance(60)
        self.assertEqual(self.m.nodes["x"].state, NodeState.ALIVE)

    def test_refute_suspect_dead_and_alive_about_self(self) -> None:
        inc = self.m.local_node.incarnation
        self.m.suspect_node(Suspect(incarnation=inc, node="me", from_="y"))
        self.assertEqual(self.m.local_node.incarnation, inc + 1)
        self.m.dead_node(Dead(incarnation=inc + 5, node="me", from_="y"))
        self.assertEqual(self.m.local_node.incarnation, inc + 6)
        self.m.alive_node(self.alive(name="me", inc=inc + 9, addr="10.0.0.1"))
        self.assertEqual(self.m.local_node.incarnation, inc + 10)
        self.assertEqual(self.m.local_node.state, NodeState.ALIVE)
        self.assertEqual(self.m.awareness.score, 3)
        queued = [decode_message(m) for m in self.m.broadcasts.get_broadcasts(2, 1400)]
        self.assertEqual([(type(q), q.incarnation) for q in queued], [(Alive, inc + 10)])

    def test_dead_from_self_means_left(self) -> None:
        self.m.alive_node(self.alive())
        self.m.dead_node(Dead(incarnation=1, node="x", from_="x"))
        self.assertEqual(self.m.nodes["x"].state, NodeState.LEFT)
        self.m.dead_node(Dead(incarnation=1, node="x", from_="z"))
        self.assertEqual(self.m.nodes["x"].state, NodeState.LEFT)

    def test_ping_is_acked_to_source_and_wrong_node_dropped(self) -> None:
        ping = Ping(seq_no=7, node="me", source_addr=ip_to_wire("10.0.0.5"), source_port=9000, source_node="p")
        self.m.ingest_packet(ping.encode(), ("10.0.0.6", 1))
        self.m.ingest_packet(Ping(seq_no=8, node="other").encode(), ("10.0.0.6", 1))
        [(data, addr)] = self.transport.packets
        self.assertEqual(addr, ("10.0.0.5", 9000))
        self.assertEqual(self.transport.messages(), [AckResp(seq_no=7)])
        self.assertEqual(self.m.counters["dropped_pings_wrong_node"], 1)

    def test_indirect_ping_acks_or_nacks(self) -> None:
        req = IndirectPingReq(seq_no=40, target=ip_to_wire("10.0.0.3"), port=7946, node="t", nack=True,
                              source_addr=ip_to_wire("10.0.0.5"), source_port=9000, source_node="p")
        self.m.ingest_packet(req.encode(), ("10.0.0.5", 9000))
        [ping] = self.transport.messages()
        self.assertIsInstance(ping, Ping)
        self.assertEqual(self.transport.packets[0][1], ("10.0.0.3", 7946))
        self.m.ingest_packet(AckResp(seq_no=ping.seq_no).encode(), ("10.0.0.3", 7946))
        self.assertEqual(self.transport.messages()[-1], AckResp(seq_no=40))
        self.assertEqual(self.transport.packets[-1][1], ("10.0.0.5", 9000))
        self.transport.packets.clear()
        self.m.ingest_packet(req.encode(), ("10.0.0.5", 9000))
        self.clock.advance(self.m.config.probe_timeout + 0.01)
        self.assertEqual(self.transport.messages()[-1], NackResp(seq_no=40))

    def test_broadcasts_piggyback_on_acks(self) -> None:
        self.m.alive_node(self.alive())
        self.transport.packets.clear()
        self.m.ingest_packet(Ping(seq_no=1, node="me").encode(), ("10.0.0.2", 7946))
        kinds = [type(m) for m in self.transport.messages()]
        self.assertEqual(kinds[0], AckResp)
        self.assertIn(Alive, kinds)

    def test_gossip_carries_crc_towards_pmax5(self) -> None:
        self.m.alive_node(self.alive())
        self.transport.packets.clear()
        self.clock.advance(self.m.config.gossip_interval)
        self.assertTrue(self.transport.packets)
        self.assertTrue(all(data[0] == 12 for data, _ in self.transport.packets))

    def test_user_messages_reach_the_delegate(self) -> None:
        got: list[bytes] = []
        self.m.delegate = NullDelegate()
        self.m.delegate.notify_msg = got.append  # type: ignore[method-assign]
        body = UserEvent(ltime=1, name="e", payload=b"p").encode()
        self.m.ingest_packet(b"\x08" + body, ("10.0.0.2", 7946))
        self.assertEqual(got, [body])

    def test_garbage_is_counted_not_raised(self) -> None:
        for junk in (b"", b"\x07\xff", b"\x09\x80", b"\x0c\x00\x00\x00\x00\x00", b"\x04\x93\x01\x02\x03", b"\xee"):
            self.m.ingest_packet(junk, ("10.0.0.2", 7946))
        self.assertGreaterEqual(sum(v for k, v in self.m.counters.items() if k.startswith("dropped")), 5)


class ProbeFallbackTests(unittest.TestCase):
    """Indirect probes, nacks and the TCP fallback ping (serf-wire §2.8 steps 4–5)."""

    def test_tcp_fallback_keeps_udp_blind_node_alive(self) -> None:
        cluster = Cluster(3)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        for other in (0, 2):  # every datagram to and from n1 is lost; TCP still works
            cluster.net.set_link(ip(other), ip(1), loss=1.0)
            cluster.net.set_link(ip(1), ip(other), loss=1.0)
        cluster.events.clear()
        cluster.net.run(60)
        self.assertEqual([e for e in cluster.events if e[1] == "leave"], [])
        self.assertEqual(cluster.state_of(0, "n1"), NodeState.ALIVE)
        self.assertGreater(cluster.nodes[0].counters["streams_out"], 3)

    def test_missing_nacks_raise_our_awareness(self) -> None:
        """A node that cannot hear anyone blames itself (Lifeguard local health)."""
        config = MemberlistConfig.lan().evolve(disable_tcp_pings=True)
        cluster = Cluster(4, config=config)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        me = cluster.nodes[0]
        for other in range(1, 4):
            cluster.net.set_link(ip(other), ip(0), loss=1.0)  # n0 hears nothing
        cluster.net.run(3)
        # Healthy peers may refute n0's false suspicions (+1 each time), but the
        # node with the missing nacks ends up the least healthy.
        others = max(n.awareness.score for n in cluster.nodes[1:])
        self.assertGreater(me.awareness.score, others)

    def test_probe_interval_scales_with_awareness(self) -> None:
        cluster = Cluster(2)
        cluster.join_all()
        cluster.run_until(cluster.converged, limit=30)
        me = cluster.nodes[0]
        me.awareness.apply_delta(7)
        before = me.counters["packets_out"]
        cluster.net.set_link(ip(1), ip(0), loss=1.0)  # acks never come back
        cluster.net.run(16)
        # With the score at 7 a failed probe round lasts 8 probe intervals.
        self.assertLessEqual(me.counters["packets_out"] - before, 2 * 3 + 16)
