"""Our node over IPv6 loopback: binding, advertising, joining, and a real agent.

Needs ``::1``.  Without IPv6 support, or without ``::1`` configured, the
socket tests are skipped with the reason, except under CI (``CI`` set),
where they fail instead, as the serf binary tests do.  The address
normalisation tests need no socket at all.
"""

from __future__ import annotations

from functools import partial

import ipaddress
import os
import random
import socket
from collections.abc import Generator
from typing import Any


from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from flyteserf.testing import polling
from flyteserf.testing.transport import RecordingTransport

from flyteserf.memberlist.config import MemberlistConfig

from flyteserf.memberlist.memberlist import Memberlist
from flyteserf.memberlist.build import TagsDelegate, build_memberlist
from flyteserf.memberlist.transport import host_of
from flyteserf.testing.serf_binary import SerfAgentProcess, find_free_port, skip_unless_serf
from flyteserf.wire.messages import (
    DEFAULT_VSN,
    AckResp,
    Alive,
    MessageType,
    NodeState,
    Ping,
    decode_message,
    ip_from_wire,
    ip_to_wire,
)
from flyteserf.wire.packet import decode_packet
from flyteserf.wire.stream import PushPullStream, StreamReader

reactor: Any = _reactor
DEADLINE = 60.0


def ipv6_loopback_problem() -> str | None:
    """Why ``::1`` cannot be used for UDP and TCP here, or ``None`` if it can."""
    if not socket.has_ipv6:
        return "this Python was built without IPv6 support (socket.has_ipv6 is False)"
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            with socket.socket(socket.AF_INET6, kind) as s:
                s.bind(("::1", 0))
        except OSError as e:
            return f"cannot bind {'UDP' if kind == socket.SOCK_DGRAM else 'TCP'} on [::1] ({e}); is ::1 configured on lo?"
    return None


def require_ipv6_loopback() -> None:
    problem = ipv6_loopback_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        raise unittest.FailTest(f"IPv6 loopback is needed under CI: {problem}")
    raise unittest.SkipTest(problem)


sleep = partial(polling.sleep, reactor)


poll = partial(polling.poll, reactor)


def alive_at(node: Memberlist, name: str, host: str, port: int) -> bool:
    other = node.nodes.get(name)
    return other is not None and other.state == NodeState.ALIVE and (other.addr, other.port) == (host, port)


class IPv6NodeTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        require_ipv6_loopback()

    def start_ours(self, name: str) -> Memberlist:
        node = build_memberlist(reactor, name, ("::1", 0), delegate=TagsDelegate({"family": "ipv6"}))
        node.start()
        self.addCleanup(lambda: node.shutdown() if node._running else None)
        return node

    def test_binds_and_advertises_ipv6(self) -> None:
        node = self.start_ours("py6")
        host, port = node.advertise
        self.assertEqual(host, "::1")
        self.assertNotEqual(port, 0)
        self.assertEqual(node.local_node.addr, "::1")
        me = node._local_push_pull(False)
        state = StreamReader().feed(me)
        assert isinstance(state, PushPullStream)
        self.assertEqual([ip_from_wire(s.addr) for s in state.states], [ipaddress.IPv6Address("::1")])
        self.assertEqual(len(ip_to_wire(host)), 16)

    @inlineCallbacks
    def test_two_nodes_join_over_ipv6(self) -> Generator[Deferred[Any], Any, None]:
        a = self.start_ours("py6a")
        b = self.start_ours("py6b")
        joined = yield b.join([a.advertise])
        self.assertEqual(joined, 1)
        yield poll(lambda: alive_at(a, "py6b", "::1", b.advertise[1]) and alive_at(b, "py6a", "::1", a.advertise[1]))
        # Probes and acks flow over UDP both ways, and nobody is suspected.
        yield poll(lambda: a.counters["packets_in"] > 3 and b.counters["packets_in"] > 3)
        yield sleep(3)
        self.assertEqual(a.nodes["py6b"].state, NodeState.ALIVE)
        self.assertEqual(b.nodes["py6a"].state, NodeState.ALIVE)
        for node in (a, b):
            self.assertEqual(node.counters["send_errors"], 0)
            self.assertEqual(node.counters["dropped_packets_malformed"], 0)

    @inlineCallbacks
    def test_serf_agent_joins_us_over_ipv6(self) -> Generator[Deferred[Any], Any, None]:
        """``serf agent -bind=[::1]:PORT`` joins our node and lists it alive at [::1]."""
        binary = skip_unless_serf()
        port = find_free_port("::1")
        # Go's flag package keeps the last -bind; the harness writes a 127.0.0.1 one first.
        agent = SerfAgentProcess(
            reactor, node="go6", bind_port=port, extra_args=[f"-bind=[::1]:{port}"], serf_binary=binary
        )
        self.addCleanup(agent.stop)
        yield agent.start()
        yield agent.wait_for_log("Bind addr: '[::1]:")
        ours = self.start_ours("py6")
        rc, out, err = yield agent.serf_cli("join", f"[::1]:{ours.advertise[1]}")
        self.assertEqual(rc, 0, (out, err))

        @inlineCallbacks
        def lists_us_alive() -> Generator[Deferred[Any], Any, bool]:
            members = yield agent.members()
            return any(
                m["name"] == "py6" and m["status"] == "alive" and m["addr"] == f"[::1]:{ours.advertise[1]}"
                and m["tags"] == {"family": "ipv6"}
                for m in members
            )

        yield poll(lists_us_alive)
        yield poll(lambda: alive_at(ours, "go6", "::1", port))
        mark = len(agent.log_lines)
        yield sleep(5)  # several probe rounds in both directions
        suspicions = [line for line in agent.log_lines[mark:] if "py6" in line and ("uspect" in line or "ailed" in line)]
        self.assertEqual(suspicions, [])
        self.assertTrue((yield lists_us_alive()))
        self.assertEqual(ours.nodes["go6"].state, NodeState.ALIVE)
        self.assertEqual(ours.counters["send_errors"], 0)
        self.assertEqual(ours.counters["dropped_packets_malformed"], 0)




class AddressNormalisationTests(unittest.SynchronousTestCase):
    """16-byte IPv4-mapped addresses from peers become the IPv4 text form."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport()
        self.node = Memberlist(
            "me",
            reactor=self.clock,
            transport=self.transport,  # type: ignore[arg-type]
            advertise=("10.0.0.1", 7946),
            config=MemberlistConfig.lan().evolve(enable_compression=False),
            rng=random.Random(0),
        )
        self.node.start()

    def tearDown(self) -> None:
        self.node.shutdown()

    def test_mapped_alive_addr_is_ipv4_text(self) -> None:
        mapped = ipaddress.IPv6Address("::ffff:10.0.0.2").packed
        self.assertEqual(len(mapped), 16)
        announce = Alive(incarnation=1, node="peer", addr=mapped, port=7947, meta=b"", vsn=DEFAULT_VSN)
        self.node.ingest_packet(announce.encode(), ("10.0.0.2", 7947))
        peer = self.node.nodes["peer"]
        self.assertEqual(peer.addr, "10.0.0.2")
        self.assertEqual(peer.address, ("10.0.0.2", 7947))
        # The same node announced with its 4-byte address is no address conflict.
        self.node.ingest_packet(
            Alive(incarnation=2, node="peer", addr=ip_to_wire("10.0.0.2"), port=7947, meta=b"", vsn=DEFAULT_VSN).encode(),
            ("10.0.0.2", 7947),
        )
        self.assertEqual(peer.incarnation, 2)
        # And we gossip and push it as 4 bytes again.
        state = StreamReader().feed(self.node._local_push_pull(False))
        assert isinstance(state, PushPullStream)
        addrs = {s.name: s.addr for s in state.states}
        self.assertEqual(addrs["peer"], ip_to_wire("10.0.0.2"))

    def test_mapped_ping_source_gets_ipv4_reply(self) -> None:
        mapped = ipaddress.IPv6Address("::ffff:10.0.0.9").packed
        self.node.ingest_packet(
            Ping(seq_no=31, node="me", source_addr=mapped, source_port=5000, source_node="x").encode(), ("10.0.0.8", 1)
        )
        [(data, addr)] = self.transport.packets
        self.assertEqual(addr, ("10.0.0.9", 5000))
        acks = [decode_message(m) for m in decode_packet(data).messages if m[0] == MessageType.ACK]
        self.assertEqual(acks, [AckResp(seq_no=31, payload=b"")])

    def test_ipv6_alive_keeps_ipv6_text(self) -> None:
        self.node.ingest_packet(
            Alive(incarnation=1, node="v6", addr=ip_to_wire("fd00::5"), port=7946, meta=b"", vsn=DEFAULT_VSN).encode(),
            ("fd00::5", 7946),
        )
        self.assertEqual(self.node.nodes["v6"].addr, "fd00::5")

    def test_mapped_stream_peer_is_ipv4(self) -> None:
        self.assertEqual(host_of(IPv6Address("TCP", "::ffff:10.1.2.3", 4000)), ("10.1.2.3", 4000))
        self.assertEqual(host_of(IPv6Address("TCP", "::1", 4000)), ("::1", 4000))
