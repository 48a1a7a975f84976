"""Tests for :mod:`flyteserf.testing.network`, the in-memory network in virtual time."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import error, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from flyteserf.testing.network import (
    DEFAULT_DELAY,
    MAX_DATAGRAM,
    Link,
    MemoryNetwork,
    VirtualClock,
)

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


# --------------------------------------------------------------------------- helpers


class Recorder(DatagramProtocol):
    """Records what arrives, with the virtual time it arrived."""

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.received: list[tuple[float, bytes, tuple[str, int]]] = []
        self.started = 0
        self.stopped = 0

    def startProtocol(self) -> None:
        self.started += 1

    def stopProtocol(self) -> None:
        self.stopped += 1

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.received.append((self.net.clock.seconds(), datagram, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, addr)


class Echo(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(datagram, addr)


class StreamRecorder(Protocol):
    """Records the stream lifecycle as a list of events."""

    def __init__(self, events: list[Any], name: str) -> None:
        self.events = events
        self.name = name
        self.data = b""

    def connectionMade(self) -> None:
        self.events.append((self.name, "made"))

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.events.append((self.name, "data", data))

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.events.append((self.name, "lost", reason.type))


class StreamEcho(StreamRecorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


class RecordingServerFactory(Factory):
    def __init__(self, events: list[Any], protocol: type[StreamRecorder] = StreamRecorder) -> None:
        self.events = events
        self.proto = protocol
        self.protocols: list[StreamRecorder] = []
        self.addrs: list[IAddress | None] = []

    def buildProtocol(self, addr: IAddress | None) -> StreamRecorder:
        self.addrs.append(addr)
        p = self.proto(self.events, "server")
        self.protocols.append(p)
        return p


class RecordingClientFactory(ClientFactory):
    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.protocols: list[StreamRecorder] = []
        self.failed: list[Failure] = []
        self.lost: list[Failure] = []
        self.starts = 0
        self.stops = 0

    def doStart(self) -> None:
        self.starts += 1

    def doStop(self) -> None:
        self.stops += 1

    def startedConnecting(self, connector: IConnector) -> None:
        self.events.append(("client", "connecting"))

    def buildProtocol(self, addr: IAddress | None) -> StreamRecorder:
        self.events.append(("client", "build", addr))
        p = StreamRecorder(self.events, "client")
        self.protocols.append(p)
        return p

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.failed.append(reason)
        self.events.append(("client", "failed", reason.type))

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self.lost.append(reason)
        self.events.append(("client", "clientConnectionLost", reason.type))


def send(port: IListeningPort, data: bytes, addr: tuple[str, int]) -> None:
    """Write a datagram through a listening UDP port (which is its own transport)."""
    IUDPTransport(port).write(data, addr)


def _lost(events: list[Any], who: str) -> list[Any]:
    return [e[2] for e in events if e[0] == who and e[1] == "lost"]


# --------------------------------------------------------------------------- interfaces


class InterfaceTests(unittest.TestCase):
    def test_reactor_interfaces(self) -> None:
        """A host reactor provides the three reactor interfaces gossip code uses."""
        reactor = MemoryNetwork().host(A)
        self.assertTrue(verifyObject(IReactorTime, reactor))
        self.assertTrue(verifyObject(IReactorUDP, reactor))
        self.assertTrue(verifyObject(IReactorTCP, reactor))

    def test_clock_interface(self) -> None:
        """The shared clock is a task.Clock and an IReactorTime."""
        net = MemoryNetwork()
        self.assertIsInstance(net.clock, task.Clock)
        self.assertTrue(verifyObject(IReactorTime, net.clock))

    def test_port_and_transport_interfaces(self) -> None:
        """Ports, connectors and stream transports provide their interfaces."""
        net = MemoryNetwork()
        a, b = net.host(A), net.host(B)
        udp = a.listenUDP(0, Recorder(net))
        self.assertTrue(verifyObject(IListeningPort, udp))
        self.assertTrue(verifyObject(IUDPTransport, udp))
        events: list[Any] = []
        server = RecordingServerFactory(events)
        tcp = b.listenTCP(80, server)
        self.assertTrue(verifyObject(IListeningPort, tcp))
        connector = a.connectTCP(B, 80, RecordingClientFactory(events))
        self.assertTrue(verifyObject(IConnector, connector))
        net.run(1)
        transport = server.protocols[0].transport
        self.assertTrue(verifyObject(ITCPTransport, transport))

    def test_same_host(self) -> None:
        """net.host() returns one reactor per address, whatever its spelling."""
        net = MemoryNetwork()
        self.assertIs(net.host(A), net.host(A))
        self.assertIs(net.host("::1"), net.host("0:0::0001"))
        self.assertIs(net.host(A).network, net)
        self.assertEqual(net.host(A).seconds(), 0.0)

    def test_bad_address(self) -> None:
        """Hosts are IP addresses; a name is refused with a clear error."""
        net = MemoryNetwork()
        self.assertRaises(error.InvalidAddressError, net.host, "node1.example.com")

    def test_link_validation(self) -> None:
        """Nonsense link settings are refused up front."""
        self.assertRaises(ValueError, Link, loss=1.5)
        self.assertRaises(ValueError, Link, delay=-1)
        self.assertRaises(ValueError, Link, duplicate=-0.1)


# --------------------------------------------------------------------------- clock


class VirtualClockTests(unittest.TestCase):
    def test_order_and_ties(self) -> None:
        """Calls run in time order; equal times in scheduling order."""
        clock = VirtualClock()
        seen: list[str] = []
        clock.callLater(2, seen.append, "c")
        clock.callLater(1, seen.append, "a")
        clock.callLater(1, seen.append, "b")
        clock.callLater(0, seen.append, "zero")
        clock.advance(0)
        self.assertEqual(seen, ["zero"])
        clock.advance(1)
        self.assertEqual(seen, ["zero", "a", "b"])
        clock.advance(5)
        self.assertEqual(seen, ["zero", "a", "b", "c"])

    def test_cancel_reset_delay(self) -> None:
        """cancel, reset (sooner and later) and delay behave as on a real reactor."""
        clock = VirtualClock()
        seen: list[tuple[str, float]] = []

        def mark(name: str) -> None:
            seen.append((name, clock.seconds()))

        cancelled = clock.callLater(1, mark, "cancelled")
        sooner = clock.callLater(10, mark, "sooner")
        later = clock.callLater(2, mark, "later")
        delayed = clock.callLater(3, mark, "delayed")
        cancelled.cancel()
        sooner.reset(4)
        later.reset(6)
        delayed.delay(2)
        self.assertEqual(
            [dc.getTime() for dc in clock.getDelayedCalls()], [4.0, 5.0, 6.0]
        )
        clock.run_until(20)
        self.assertEqual(seen, [("sooner", 4.0), ("delayed", 5.0), ("later", 6.0)])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.seconds(), 20.0)

    def test_advance_semantics(self) -> None:
        """advance() keeps task.Clock's semantics: due calls run at the new time."""
        clock = VirtualClock()
        times: list[float] = []
        loop = task.LoopingCall(lambda: times.append(clock.seconds()))
        loop.clock = clock
        loop.start(1.0)
        clock.advance(3.5)
        self.assertEqual(times, [0.0, 3.5])
        loop.stop()

    def test_run_until_runs_each_call_at_its_time(self) -> None:
        """run_until() steps through time, so a LoopingCall fires every period."""
        clock = VirtualClock()
        times: list[float] = []
        loop = task.LoopingCall(lambda: times.append(clock.seconds()))
        loop.clock = clock
        loop.start(1.0)
        clock.run_until(3.5)
        self.assertEqual(times, [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(clock.seconds(), 3.5)
        loop.stop()

    def test_looping_call_float_rounding(self) -> None:
        """A LoopingCall never ticks twice for one period because of float rounding.

        Run exactly on time, ``now - start`` can land a hair below a multiple of the
        interval (0.123456789 + 1 is such a start), and LoopingCall would then run
        again a femtosecond later.
        """
        for start, interval in [(0.123456789, 1.0), (1.2989300551816858, 0.2), (0.7, 0.1)]:
            clock = VirtualClock()
            times: list[float] = []
            loop = task.LoopingCall(lambda: times.append(clock.seconds()))
            loop.clock = clock
            clock.callLater(start, loop.start, interval)
            clock.run_until(start + 30 - interval / 2)
            loop.stop()
            self.assertEqual(len(times), round(30 / interval), (start, interval))
            for k, t in enumerate(times):
                self.assertAlmostEqual(t, start + k * interval, places=9)

    def test_many_cancellations(self) -> None:
        """Cancelled calls are compacted away and never run."""
        clock = VirtualClock()
        ran: list[int] = []
        calls = [clock.callLater(i % 7, ran.append, i) for i in range(2000)]
        for i, dc in enumerate(calls):
            if i % 10:
                dc.cancel()
        self.assertEqual(len(clock.getDelayedCalls()), 200)
        clock.advance(10)
        self.assertEqual(sorted(ran), list(range(0, 2000, 10)))

    def test_calls_view(self) -> None:
        """The task.Clock ``calls`` attribute still lists pending calls."""
        clock = VirtualClock()
        dc = clock.callLater(1, lambda: None)
        self.assertEqual(clock.calls, [dc])
        clock.calls = []
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_host_delayed_calls(self) -> None:
        """A host lists only its own timers, not packets in flight or other hosts'."""
        net = MemoryNetwork()
        a, b = net.host(A), net.host(B)
        mine = a.callLater(5, lambda: None)
        b.callLater(5, lambda: None)
        port = a.listenUDP(0, Recorder(net))
        send(port, b"x", (B, 1))
        self.assertEqual(list(a.getDelayedCalls()), [mine])
        self.assertEqual(len(net.clock.getDelayedCalls()), 3)

    def test_run_with_step(self) -> None:
        """run(step=) advances in fixed steps and ends exactly at the deadline."""
        net = MemoryNetwork()
        times: list[float] = []
        net.host(A).callLater(0.25, lambda: times.append(net.clock.seconds()))
        net.run(1, step=0.1)
        self.assertEqual(len(times), 1)
        self.assertAlmostEqual(times[0], 0.3)
        self.assertEqual(net.clock.seconds(), 1.0)


# --------------------------------------------------------------------------- datagrams


class DatagramTests(unittest.TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork(seed=1234)
        self.a = self.net.host(A)
        self.b = self.net.host(B)

    def test_echo(self) -> None:
        """A datagram reaches the listener after the link delay and the answer comes back."""
        self.b.listenUDP(7946, Echo())
        client = Recorder(self.net)
        port = self.a.listenUDP(0, client)
        self.assertEqual(client.started, 1)
        host = port.getHost()
        self.assertIsInstance(host, IPv4Address)
        assert isinstance(host, IPv4Address)
        self.assertEqual((host.type, host.host), ("UDP", A))
        self.assertNotEqual(host.port, 0)
        client.send(b"hello", (B, 7946))
        self.net.run(1)
        self.assertEqual(len(client.received), 1)
        when, data, addr = client.received[0]
        self.assertEqual((data, addr), (b"hello", (B, 7946)))
        self.assertAlmostEqual(when, 2 * DEFAULT_DELAY)
        self.assertEqual(self.net.stats.datagrams_sent, 2)
        self.assertEqual(self.net.stats.datagrams_delivered, 2)
        self.assertEqual(self.net.stats.bytes_delivered, 10)

    def test_ipv6(self) -> None:
        """IPv6 hosts get IPv6 addresses and (host, port) sources."""
        a, b = self.net.host("fd00::1"), self.net.host("fd00::2")
        server = Recorder(self.net)
        port = b.listenUDP(7946, server, interface="::")
        self.assertEqual(port.getHost(), IPv6Address("UDP", "fd00::2", 7946))
        sender = a.listenUDP(5000, Recorder(self.net))
        send(sender, b"v6", ("FD00:0::2", 7946))
        self.net.run(1)
        self.assertEqual(server.received[0][1:], (b"v6", ("fd00::1", 5000)))

    def test_bind_errors(self) -> None:
        """A port in use, or an address the host does not have, cannot be bound."""
        self.a.listenUDP(7946, Recorder(self.net))
        self.assertRaises(
            error.CannotListenError, self.a.listenUDP, 7946, Recorder(self.net)
        )
        self.assertRaises(
            error.CannotListenError, self.a.listenUDP, 7947, Recorder(self.net), B
        )
        self.a.listenUDP(7947, Recorder(self.net), A)
        self.b.listenUDP(7946, Recorder(self.net))  # another host: its own ports

    def test_stop_listening(self) -> None:
        """stopListening stops the protocol at once and later datagrams are dropped."""
        server = Recorder(self.net)
        port = self.b.listenUDP(7946, server)
        d = port.stopListening()
        self.assertIsInstance(d, Deferred)
        self.successResultOf(d)  # type: ignore[arg-type]
        self.assertEqual(server.stopped, 1)
        send(self.a.listenUDP(0, Recorder(self.net)), b"x", (B, 7946))
        self.net.run(1)
        self.assertEqual(server.received, [])
        self.assertEqual(self.net.stats.datagrams_dropped_no_listener, 1)
        self.b.listenUDP(7946, Recorder(self.net))  # the port is free again

    def test_link_delay_per_direction(self) -> None:
        """set_link sets one direction only."""
        self.net.set_link(A, B, delay=0.25)
        ra, rb = Recorder(self.net), Recorder(self.net)
        send(self.a.listenUDP(1, ra), b"ab", (B, 1))
        send(self.b.listenUDP(1, rb), b"ba", (A, 1))
        self.net.run(1)
        self.assertAlmostEqual(rb.received[0][0], 0.25)
        self.assertAlmostEqual(ra.received[0][0], DEFAULT_DELAY)
        self.assertEqual(self.net.link(A, B).delay, 0.25)
        self.net.clear_link(A, B)
        self.assertEqual(self.net.link(A, B), Link())

    def test_loss_rate(self) -> None:
        """With loss=0.2, about 80% of datagrams arrive (within 7 sigma)."""
        self.net.set_link(A, B, loss=0.2)
        server = Recorder(self.net)
        self.b.listenUDP(7946, server)
        port = self.a.listenUDP(0, Recorder(self.net))
        for i in range(10000):
            send(port, b"%d" % i, (B, 7946))
        self.net.run(1)
        got = len(server.received)
        self.assertTrue(7720 <= got <= 8280, got)
        stats = self.net.stats
        self.assertEqual(stats.datagrams_dropped_loss, 10000 - got)
        self.assertEqual(stats.datagrams_delivered, got)
        self.assertEqual(stats.datagrams_dropped, 10000 - got)

    def test_duplicate(self) -> None:
        """duplicate=1 delivers every datagram twice."""
        self.net.set_default_link(duplicate=1.0)
        server = Recorder(self.net)
        self.b.listenUDP(7946, server)
        send(self.a.listenUDP(0, Recorder(self.net)), b"twice", (B, 7946))
        self.net.run(1)
        self.assertEqual([d for _, d, _ in server.received], [b"twice", b"twice"])
        self.assertEqual(self.net.stats.datagrams_duplicated, 1)

    def test_oversize_and_truncation(self) -> None:
        """Datagrams over 65507 bytes are dropped; a small receive buffer truncates."""
        server = Recorder(self.net)
        self.b.listenUDP(7946, server, maxPacketSize=100)
        port = self.a.listenUDP(0, Recorder(self.net))
        send(port, b"x" * (MAX_DATAGRAM + 1), (B, 7946))
        send(port, b"y" * 150, (B, 7946))
        self.net.run(1)
        self.assertEqual([d for _, d, _ in server.received], [b"y" * 100])
        self.assertEqual(self.net.stats.datagrams_dropped_oversize, 1)
        self.assertEqual(self.net.stats.datagrams_truncated, 1)

    def test_write_checks(self) -> None:
        """Only bytes to IP addresses can be sent, as with a real UDP port."""
        port = self.a.listenUDP(0, Recorder(self.net))
        self.assertRaises(TypeError, IUDPTransport(port).write, "text", (B, 1))
        self.assertRaises(
            error.InvalidAddressError, IUDPTransport(port).write, b"x", ("example.com", 1)
        )

    def test_partition_and_heal(self) -> None:
        """A partition drops datagrams across it, both ways; heal restores them."""
        c = self.net.host(C)
        recorders = {}
        ports = {}
        for ip, reactor in ((A, self.a), (B, self.b), (C, c)):
            recorders[ip] = Recorder(self.net)
            ports[ip] = reactor.listenUDP(7946, recorders[ip])

        def everyone_sends(tag: bytes) -> None:
            for src in (A, B, C):
                for dst in (A, B, C):
                    if src != dst:
                        send(ports[src], tag, (dst, 7946))

        self.net.partition([A], [B, C])
        self.assertFalse(self.net.reachable(A, B))
        self.assertTrue(self.net.reachable(B, C))
        everyone_sends(b"cut")
        self.net.run(1)
        self.assertEqual(recorders[A].received, [])
        self.assertEqual({a for _, _, a in recorders[B].received}, {(C, 7946)})
        self.assertEqual({a for _, _, a in recorders[C].received}, {(B, 7946)})
        self.assertEqual(self.net.stats.datagrams_dropped_partition, 4)
        self.net.heal()
        everyone_sends(b"healed")
        self.net.run(1)
        self.assertEqual(len(recorders[A].received), 2)
        self.assertEqual(len(recorders[B].received), 3)

    def test_kill_and_revive(self) -> None:
        """A killed host neither receives nor sends, including packets in flight to it."""
        server, client = Recorder(self.net), Recorder(self.net)
        sport = self.b.listenUDP(7946, server)
        cport = self.a.listenUDP(7946, client)
        send(cport, b"in flight", (B, 7946))
        self.net.kill(B)
        self.assertFalse(self.net.is_alive(B))
        send(cport, b"to dead", (B, 7946))
        send(sport, b"from dead", (A, 7946))
        self.net.run(1)
        self.assertEqual(server.received, [])
        self.assertEqual(client.received, [])
        self.assertEqual(self.net.stats.datagrams_dropped_dead, 3)
        self.net.revive(B)
        send(cport, b"alive", (B, 7946))
        self.net.run(1)
        self.assertEqual([d for _, d, _ in server.received], [b"alive"])

    def test_protocol_error_is_logged(self) -> None:
        """An exception in datagramReceived is logged and the network carries on."""

        class Broken(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
                raise ZeroDivisionError(datagram)

        self.b.listenUDP(1, Broken())
        ok = Recorder(self.net)
        self.b.listenUDP(2, ok)
        port = self.a.listenUDP(0, Recorder(self.net))
        send(port, b"boom", (B, 1))
        send(port, b"fine", (B, 2))
        self.net.run(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(ok.received), 1)

    def test_determinism(self) -> None:
        """The same seed gives the same deliveries, packet for packet; another seed differs."""

        def simulate(seed: int) -> list[tuple[float, str, bytes, tuple[str, int]]]:
            net = MemoryNetwork(seed=seed)
            net.set_default_link(loss=0.3, duplicate=0.1, delay=0.005)
            log: list[tuple[float, str, bytes, tuple[str, int]]] = []
            ips = [f"10.1.0.{i}" for i in range(1, 11)]
            ports = {}
            for ip in ips:

                class Log(DatagramProtocol):
                    def datagramReceived(
                        self, datagram: bytes, addr: tuple[str, int], ip: str = ip
                    ) -> None:
                        log.append((net.clock.seconds(), ip, datagram, addr))

                ports[ip] = net.host(ip).listenUDP(7946, Log())
            for n in range(500):
                src, dst = ips[n % 10], ips[(n * 7 + 3) % 10]
                send(ports[src], b"%d" % n, (dst, 7946))
            net.run(1)
            return log

        first = simulate(42)
        self.assertEqual(first, simulate(42))
        self.assertNotEqual(first, simulate(43))
        self.assertTrue(250 < len(first) < 450, len(first))


# --------------------------------------------------------------------------- streams


class StreamTests(unittest.TestCase):
    def setUp(self) -> None:
        self.net = MemoryNetwork(seed=7)
        self.a = self.net.host(A)
        self.b = self.net.host(B)
        self.events: list[Any] = []
        self.server = RecordingServerFactory(self.events, StreamEcho)
        self.port = self.b.listenTCP(7946, self.server)
        self.client = RecordingClientFactory(self.events)

    def connect(self, host: str = B) -> IConnector:
        return self.a.connectTCP(host, 7946, self.client)

    def test_echo_lifecycle(self) -> None:
        """Connect, echo, close: every ClientFactory and Protocol callback in order."""
        connector = self.connect()
        self.assertEqual(self.events, [("client", "connecting")])
        self.assertEqual(self.client.starts, 1)
        self.net.run(DEFAULT_DELAY)
        self.assertEqual(self.events[-1], ("server", "made"))
        self.net.run(DEFAULT_DELAY)
        self.assertEqual(self.events[-1], ("client", "made"))
        build = self.events[-2]
        self.assertEqual(build[:2], ("client", "build"))
        self.assertEqual(build[2], IPv4Address("TCP", B, 7946))
        client = self.client.protocols[0]
        assert client.transport is not None
        local = client.transport.getHost()
        self.assertEqual(self.server.addrs, [local])
        self.assertEqual(client.transport.getPeer(), IPv4Address("TCP", B, 7946))
        self.assertEqual(connector.getDestination(), IPv4Address("TCP", B, 7946))
        client.transport.write(b"ping")
        client.transport.writeSequence([b" ", b"pong"])
        self.net.run(1)
        self.assertEqual(client.data, b"ping pong")
        self.assertEqual(self.net.stats.streams_opened, 1)
        client.transport.loseConnection()
        self.net.run(1)
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionDone])
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionDone])
        self.assertEqual([f.type for f in self.client.lost], [error.ConnectionDone])
        self.assertEqual(self.client.stops, 1)
        # protocol.connectionLost comes before factory.clientConnectionLost
        names = [e[1] for e in self.events if e[0] == "client"]
        self.assertLess(names.index("lost"), names.index("clientConnectionLost"))

    def test_refused_no_listener(self) -> None:
        """Nothing listening: clientConnectionFailed with ConnectionRefusedError."""
        self.a.connectTCP(B, 9999, self.client)
        self.net.run(1)
        self.assertEqual([f.type for f in self.client.failed], [error.ConnectionRefusedError])
        self.assertEqual(self.client.stops, 1)
        self.assertEqual(self.net.stats.streams_refused, 1)
        self.assertEqual(self.net.stats.streams_opened, 0)

    def test_refused_after_stop_listening(self) -> None:
        """A stopped listener refuses; established streams are not affected."""
        self.connect()
        self.net.run(1)
        self.successResultOf(self.port.stopListening())  # type: ignore[arg-type]
        self.connect()
        self.net.run(1)
        self.assertEqual([f.type for f in self.client.failed], [error.ConnectionRefusedError])
        client = self.client.protocols[0]
        assert client.transport is not None
        client.transport.write(b"still here")
        self.net.run(1)
        self.assertEqual(client.data, b"still here")

    def test_refused_partition_and_dead(self) -> None:
        """Connects across a partition, or to or from a killed host, are refused."""
        self.net.partition([A], [B])
        self.connect()
        self.net.run(1)
        self.net.heal()
        self.net.kill(B)
        self.connect()
        self.net.run(1)
        self.net.revive(B)
        self.net.kill(A)
        self.connect()
        self.net.run(1)
        self.net.revive(A)
        self.connect()
        self.net.run(1)
        self.assertEqual(
            [f.type for f in self.client.failed], [error.ConnectionRefusedError] * 3
        )
        self.assertEqual(len(self.client.protocols), 1)

    def test_unresolvable(self) -> None:
        """A host name fails like a DNS failure: the network knows only IP addresses."""
        self.a.connectTCP("serf.example.com", 7946, self.client)
        self.net.run(1)
        self.assertEqual([f.type for f in self.client.failed], [error.DNSLookupError])

    def test_lose_connection_after_pending_data(self) -> None:
        """loseConnection: the peer gets all data written before, then ConnectionDone."""
        self.connect()
        self.net.run(1)
        server = self.server.protocols[0]
        assert server.transport is not None
        self.net.set_link(B, A, delay=0.5)
        for i in range(5):
            server.transport.write(b"chunk%d;" % i)
        server.transport.loseConnection()
        server.transport.write(b"ignored")
        self.net.run(0.1)
        # The closing side is done at once; the data is still on the wire.
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionDone])
        self.assertEqual(self.client.protocols[0].data, b"")
        self.net.run(1)
        client_events = [e for e in self.events if e[0] == "client" and e[1] in ("data", "lost")]
        self.assertEqual(client_events[-1], ("client", "lost", error.ConnectionDone))
        self.assertEqual(
            self.client.protocols[0].data, b"".join(b"chunk%d;" % i for i in range(5))
        )

    def test_order_kept_when_delay_drops(self) -> None:
        """Stream bytes stay ordered even if the link gets faster mid-stream."""
        self.connect()
        self.net.run(1)
        client = self.client.protocols[0]
        assert client.transport is not None
        self.net.set_link(A, B, delay=1.0)
        client.transport.write(b"first ")
        self.net.set_link(A, B, delay=0.001)
        client.transport.write(b"second")
        self.net.run(3)
        self.assertEqual(self.server.protocols[0].data, b"first second")

    def test_abort(self) -> None:
        """abortConnection: ConnectionAborted here, ConnectionLost (reset) at the peer."""
        self.connect()
        self.net.run(1)
        client = self.client.protocols[0]
        assert client.transport is not None
        ITCPTransport(client.transport).abortConnection()
        self.net.run(1)
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionAborted])
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionLost])

    def test_partition_resets_streams(self) -> None:
        """A partition resets established streams across it: ConnectionLost both sides."""
        self.connect()
        self.net.run(1)
        client = self.client.protocols[0]
        assert client.transport is not None
        client.transport.write(b"lost in the cut")
        self.net.partition([A], [B])
        self.net.run(1)
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionLost])
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionLost])
        self.assertEqual(self.server.protocols[0].data, b"")
        self.assertEqual(self.net.stats.streams_reset, 1)
        self.assertEqual([f.type for f in self.client.lost], [error.ConnectionLost])

    def test_kill_resets_streams(self) -> None:
        """Killing a host resets its streams."""
        self.connect()
        self.net.run(1)
        self.net.kill(B)
        self.net.run(1)
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionLost])
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionLost])

    def test_timeout(self) -> None:
        """A handshake slower than the connector's timeout fails with TimeoutError."""
        self.net.set_link(A, B, delay=20)
        self.a.connectTCP(B, 7946, self.client, timeout=10)
        self.net.run(60)
        self.assertEqual([f.type for f in self.client.failed], [error.TimeoutError])
        self.assertEqual(self.server.protocols, [])  # the request never got there
        self.assertEqual(self.a.getDelayedCalls(), [])

    def test_timeout_resets_half_open_server(self) -> None:
        """If the server accepted but the answer is too slow, the server side is reset."""
        self.net.set_link(A, B, delay=5)
        self.net.set_link(B, A, delay=20)
        self.a.connectTCP(B, 7946, self.client, timeout=10)
        self.net.run(60)
        self.assertEqual([f.type for f in self.client.failed], [error.TimeoutError])
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionLost])
        self.assertEqual(self.client.protocols, [])

    def test_stop_connecting(self) -> None:
        """connector.stopConnecting() fails the attempt with UserError."""
        connector = self.connect()
        connector.stopConnecting()
        self.net.run(1)
        self.assertEqual([f.type for f in self.client.failed], [error.UserError])
        self.assertEqual(self.server.protocols, [])

    def test_reconnect_from_factory(self) -> None:
        """A factory may call connector.connect() again from clientConnectionFailed."""
        attempts: list[int] = []

        class Retry(RecordingClientFactory):
            def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
                super().clientConnectionFailed(connector, reason)
                attempts.append(1)
                if len(attempts) < 3:
                    connector.connect()

        factory = Retry(self.events)
        self.a.connectTCP(B, 1, factory)
        self.net.run(1)
        self.assertEqual(len(attempts), 3)
        self.assertEqual((factory.starts, factory.stops), (1, 1))

    def test_server_refuses_protocol(self) -> None:
        """A server factory returning None: the client connects, then sees EOF."""

        class Nope(Factory):
            def buildProtocol(self, addr: IAddress | None) -> None:
                return None

        self.b.listenTCP(1, Nope())
        self.a.connectTCP(B, 1, self.client)
        self.net.run(1)
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionDone])

    def test_max_segment(self) -> None:
        """max_segment splits deliveries, to exercise a protocol's framing."""
        net = MemoryNetwork(max_segment=3)
        events: list[Any] = []
        server = RecordingServerFactory(events)
        net.host(B).listenTCP(1, server)
        client = RecordingClientFactory(events)
        net.host(A).connectTCP(B, 1, client)
        net.run(1)
        transport = client.protocols[0].transport
        assert transport is not None
        transport.write(b"abcdefgh")
        net.run(1)
        chunks = [e[2] for e in events if e[:2] == ("server", "data")]
        self.assertEqual(chunks, [b"abc", b"def", b"gh"])

    def test_pause_resume(self) -> None:
        """pauseProducing holds received data until resumeProducing."""
        self.connect()
        self.net.run(1)
        server = self.server.protocols[0]
        client = self.client.protocols[0]
        assert server.transport is not None and client.transport is not None
        IPushProducer(server.transport).pauseProducing()
        client.transport.write(b"held")
        client.transport.loseConnection()
        self.net.run(1)
        self.assertEqual(server.data, b"")
        IPushProducer(server.transport).resumeProducing()
        self.net.run(1)
        self.assertEqual(client.data, b"")  # the server could not echo: we closed
        self.assertEqual(server.data, b"held")
        self.assertEqual(_lost(self.events, "server"), [error.ConnectionDone])

    def test_half_close(self) -> None:
        """loseWriteConnection: a half-closeable peer gets readConnectionLost and can answer."""
        seen: list[str] = []

        @implementer(IHalfCloseableProtocol)
        class Half(StreamRecorder):
            def readConnectionLost(self) -> None:
                seen.append("readConnectionLost")
                assert self.transport is not None
                self.transport.write(b"answer:" + self.data)
                self.transport.loseConnection()

            def writeConnectionLost(self) -> None:
                seen.append("writeConnectionLost")

        self.b.listenTCP(2, RecordingServerFactory(self.events, Half))
        self.a.connectTCP(B, 2, self.client)
        self.net.run(1)
        client = self.client.protocols[0]
        transport = client.transport
        assert transport is not None
        transport.write(b"question")
        ITCPTransport(transport).loseWriteConnection()
        self.net.run(1)
        self.assertEqual(seen, ["readConnectionLost"])
        self.assertEqual(client.data, b"answer:question")
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionDone])

    def test_data_received_error(self) -> None:
        """An exception in dataReceived is logged and drops that connection."""

        class Broken(StreamRecorder):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError(data)

        self.b.listenTCP(3, RecordingServerFactory(self.events, Broken))
        self.a.connectTCP(B, 3, self.client)
        self.net.run(1)
        transport = self.client.protocols[0].transport
        assert transport is not None
        transport.write(b"boom")
        self.net.run(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(_lost(self.events, "server"), [ZeroDivisionError])
        self.assertEqual(_lost(self.events, "client"), [error.ConnectionLost])

    def test_endpoints(self) -> None:
        """Twisted's TCP endpoints work on a host reactor."""

        class Hello(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"hello")

        listening = TCP4ServerEndpoint(self.b, 8000).listen(Factory.forProtocol(Hello))
        self.successResultOf(listening)
        received: list[bytes] = []

        class Got(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        d = connectProtocol(TCP4ClientEndpoint(self.a, B, 8000), Got())
        self.net.run(1)
        self.successResultOf(d)
        self.assertEqual(received, [b"hello"])


# --------------------------------------------------------------------------- scale


class Pinger(DatagramProtocol):
    """Pings a random peer every tick; answers pings; counts answers."""

    def __init__(self, ip: str, peers: list[str], rnd: random.Random) -> None:
        self.ip = ip
        self.peers = [p for p in peers if p != ip]
        self.rnd = rnd
        self.sent: set[bytes] = set()
        self.answered: set[bytes] = set()
        self.seq = 0

    def tick(self) -> None:
        assert self.transport is not None
        self.seq += 1
        token = b"%s/%d" % (self.ip.encode(), self.seq)
        self.sent.add(token)
        self.transport.write(b"ping " + token, (self.rnd.choice(self.peers), 7946))

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        kind, token = datagram.split(b" ", 1)
        if kind == b"ping":
            self.transport.write(b"pong " + token, addr)
        else:
            self.answered.add(token)


def run_ping_cluster(hosts: int = 100, seconds: float = 60.0, seed: int = 1) -> tuple[
    MemoryNetwork, list[Pinger]
]:
    """100 hosts, each with a LoopingCall(1 s) pinging a random peer, for 60 s."""
    net = MemoryNetwork(seed=seed)
    rnd = random.Random(seed)
    ips = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(hosts)]
    nodes = []
    loops = []
    for ip in ips:
        reactor = net.host(ip)
        node = Pinger(ip, ips, rnd)
        reactor.listenUDP(7946, node)
        loop = task.LoopingCall(node.tick)
        loop.clock = reactor
        reactor.callLater(rnd.random(), loop.start, 1.0)
        nodes.append(node)
        loops.append(loop)
    net.run(seconds)
    for loop in loops:
        loop.stop()
    net.run(1)  # let the last answers arrive
    return net, nodes


class ScaleTests(unittest.TestCase):
    def test_hundred_hosts(self) -> None:
        """100 hosts x 60 virtual seconds: every ping is answered, counters add up."""
        net, nodes = run_ping_cluster()
        total = sum(len(n.sent) for n in nodes)
        self.assertEqual(total, 100 * 60)
        for node in nodes:
            self.assertEqual(node.answered, node.sent, node.ip)
        self.assertEqual(net.stats.datagrams_sent, 2 * total)
        self.assertEqual(net.stats.datagrams_delivered, 2 * total)
        self.assertEqual(net.stats.datagrams_dropped, 0)
        self.assertEqual(net.clock.getDelayedCalls(), [])
