"""An in-memory datagram and stream network driven by virtual time.

Gossip behaviour (probe timeouts, suspicion, convergence) only shows with many nodes,
lossy links and partitions. Real sockets make such tests slow and flaky; this module
gives every simulated host a small fake reactor (``IReactorTime``, ``IReactorUDP``,
``IReactorTCP``) whose timers all run on one shared :class:`VirtualClock`, and whose
packets and stream bytes travel through :class:`MemoryNetwork` as clock calls. A
trial test can then run a hundred nodes for minutes of virtual time in a fraction of
a second, deterministically: all randomness (loss, duplication) comes from one
``random.Random(seed)`` and equal-time events run in the order they were scheduled.

Usage::

    net = MemoryNetwork(seed=1234)
    a, b = net.host("10.0.0.1"), net.host("10.0.0.2")
    a.listenUDP(7946, SomeDatagramProtocol())
    net.set_link("10.0.0.1", "10.0.0.2", loss=0.2, delay=0.01)
    net.run(60)

Modelling choices (each is what a gossip test needs, not a full IP stack):

- ``loss`` and ``duplicate`` apply to datagrams only; streams are reliable and
  ordered. ``delay`` applies to both.
- Partition and heal: datagrams across the cut are dropped at send time; TCP
  connects across it are refused (``ConnectionRefusedError``) rather than left to
  time out; established streams across it are *reset*: both sides get
  ``connectionLost`` with ``ConnectionLost``, and data in flight is discarded.
- ``kill(ip)`` takes the host off the network in both directions: datagrams to or
  from it are dropped, connects to or from it are refused, its streams are reset.
  The Python objects above the fake reactor keep running (their sends just vanish);
  to model a crashed process stop its service too, and to model a restart,
  ``revive(ip)`` and start a fresh node on ``net.host(ip)``.
- ``stopListening()`` completes synchronously and returns an already-fired
  Deferred, so ``tearDown`` never waits on a clock nobody advances.
- Exceptions raised by a protocol callback during delivery are logged (trial then
  reports them as errors) and, for streams, drop that connection, as in Twisted.
  Exceptions raised by plain timers propagate out of ``clock.advance``/``net.run``,
  as with ``task.Clock``.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any, Literal, cast

import attrs
from twisted.internet import error, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProducer,
    IProtocol,
    IPullProducer,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import (
    P,
    ClientFactory,
    DatagramProtocol,
    Factory,
    Protocol,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DEFAULT_DELAY",
    "MAX_DATAGRAM",
    "HostReactor",
    "Link",
    "MemoryNetwork",
    "NetworkStats",
    "VirtualClock",
]

MAX_DATAGRAM = 65507
"""Largest UDP payload over IPv4; bigger datagrams are dropped, as the kernel would."""

DEFAULT_DELAY = 0.001
"""One-way link delay in seconds unless configured otherwise."""

_EPHEMERAL_LOW = 32768
_EPHEMERAL_HIGH = 60999
_NO_KW: dict[str, object] = {}
_WILDCARDS = frozenset(("", "0.0.0.0", "::"))

_log = Logger()

Address = IPv4Address | IPv6Address


# --------------------------------------------------------------------------- clock


class _Call(DelayedCall):
    """A DelayedCall that remembers which host scheduled it.

    Lets each host's ``getDelayedCalls`` report only its own timers, not the
    shared clock's in-flight packets or other nodes' timers.
    """

    owner: HostReactor | None = None


class VirtualClock(task.Clock):
    """A ``task.Clock`` backed by a heap instead of a list re-sorted on every call.

    ``task.Clock`` sorts all pending calls on each ``callLater`` and after each call
    it runs, which is quadratic once a simulation has hundreds of timers and packets
    in flight. This keeps the same public behaviour (``advance``, ``pump``,
    ``seconds``, ``getDelayedCalls``, ``callLater`` returning ``DelayedCall`` with
    working ``cancel``/``reset``/``delay``; equal-time calls run in scheduling order;
    exceptions propagate out of ``advance``) at O(log n) per call, and adds
    :meth:`run_until`, which runs each call at its own scheduled time.
    """

    def __init__(self) -> None:
        # task.Clock.__init__ only assigns the ``calls`` list, which is a view here.
        self._heap: list[tuple[float, int, _Call]] = []
        self._seq = itertools.count()
        self._cancels = 0

    @property
    def calls(self) -> list[DelayedCall]:
        """The pending calls, sorted by time (a copy, for code written against task.Clock)."""
        return [cast(DelayedCall, dc) for dc in self.getDelayedCalls()]

    @calls.setter
    def calls(self, value: list[DelayedCall]) -> None:
        self._heap = []
        for dc in value:
            if dc.active():
                heappush(self._heap, (dc.time, next(self._seq), cast(_Call, dc)))

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """See ``IReactorTime.callLater``."""
        return self._schedule_at(self.rightNow + delay, callable, args, kw, None)

    def _schedule_at(
        self,
        when: float,
        f: Callable[..., object],
        args: Sequence[object],
        kw: dict[str, object],
        owner: HostReactor | None,
    ) -> _Call:
        """Schedule at an absolute time, so ordered streams never suffer rounding."""
        dc = _Call(when, f, args, kw, self._cancelled, self._moved_sooner, self.seconds)
        if owner is not None:
            dc.owner = owner
        heap = self._heap
        heappush(heap, (when, next(self._seq), dc))
        if self._cancels > 256 and self._cancels * 2 > len(heap):
            self._compact()
        return dc

    def _cancelled(self, dc: DelayedCall) -> None:
        # Lazy deletion: the heap entry is skipped when it surfaces.
        self._cancels += 1

    def _moved_sooner(self, dc: DelayedCall) -> None:
        # reset() to an earlier time: push a fresh entry; the old one is now stale
        # (its time no longer equals dc.time) and is skipped when popped.
        heappush(self._heap, (dc.time, next(self._seq), cast(_Call, dc)))

    def _compact(self) -> None:
        heap = self._heap
        heap[:] = [e for e in heap if e[2].active() and e[0] == e[2].time]
        heapify(heap)
        self._cancels = 0

    def _pop_due(self, limit: float) -> _Call | None:
        """Remove and return the next live call due at or before ``limit``."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[0] > limit:
                return None
            heappop(heap)
            dc = entry[2]
            if dc.cancelled or dc.called or entry[0] != dc.time:
                if dc.cancelled and self._cancels:
                    self._cancels -= 1
                continue
            if dc.delayed_time:
                # reset()/delay() to a later time only records delayed_time,
                # exactly as with the real reactor: fold it in and requeue.
                dc.activate_delay()
                heappush(heap, (dc.time, next(self._seq), dc))
                continue
            return dc
        return None

    def next_call_time(self) -> float | None:
        """When the earliest pending call is due, or None if nothing is pending."""
        heap = self._heap
        while heap:
            t, _, dc = heap[0]
            if dc.cancelled or dc.called or t != dc.time:
                heappop(heap)
                continue
            if dc.delayed_time:
                heappop(heap)
                dc.activate_delay()
                heappush(heap, (dc.time, next(self._seq), dc))
                continue
            return t
        return None

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        """See ``IReactorTime.getDelayedCalls``: live calls, earliest first."""
        seen: set[int] = set()
        out: list[_Call] = []
        for t, _, dc in sorted(self._heap, key=lambda e: (e[0], e[1])):
            if dc.active() and t == dc.time and id(dc) not in seen:
                seen.add(id(dc))
                out.append(dc)
        out.sort(key=DelayedCall.getTime)
        return out

    def _settle_loop(self, loop: task.LoopingCall) -> None:
        """Make a LoopingCall tick see a time no earlier than its own multiple.

        LoopingCall computes its next delay as ``interval - (now - start) % interval``.
        A real reactor runs calls a little late, but this clock runs them exactly on
        time, and float rounding can then leave ``now - start`` a hair *below* the
        multiple: the loop would schedule a second tick a femtosecond later and run
        its function twice. Moving time on by a few ulps (never more than 1 ns) for
        that one call avoids it; all other calls see exact times.
        """
        start, interval = loop.starttime, loop.interval
        if start is None or not interval:
            return
        now = self.rightNow
        for _ in range(64):
            if interval - (now - start) % interval >= 1e-9:
                break
            now = math.nextafter(now, math.inf)
        self.rightNow = now

    def _run_due(self) -> None:
        pop = self._pop_due
        while (dc := pop(self.rightNow)) is not None:
            if type(dc.func) is task.LoopingCall:
                self._settle_loop(dc.func)
            dc.called = 1
            dc.func(*dc.args, **dc.kw)

    def advance(self, amount: float) -> None:
        """Like ``task.Clock.advance``: move time on, then run every call now due."""
        self.rightNow += amount
        self._run_due()

    def advance_to(self, when: float) -> None:
        """``advance`` to an absolute time, without float drift."""
        if when > self.rightNow:
            self.rightNow = when
        self._run_due()

    def run_until(self, when: float) -> None:
        """Run calls in time order, each at its own scheduled time, then stop at ``when``.

        Unlike ``advance(n)`` (which runs everything at the end time), timers that
        re-arm themselves see the time they were due, as under a real reactor.
        """
        pop = self._pop_due
        while (dc := pop(when)) is not None:
            if dc.time > self.rightNow:
                self.rightNow = dc.time
            if type(dc.func) is task.LoopingCall:
                self._settle_loop(dc.func)
            dc.called = 1
            dc.func(*dc.args, **dc.kw)
        if when > self.rightNow:
            self.rightNow = when


# --------------------------------------------------------------------------- config


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


@attrs.frozen
class Link:
    """Properties of one direction of a link between two hosts."""

    loss: float = 0.0
    """Probability that a datagram is dropped."""
    delay: float = DEFAULT_DELAY
    """One-way latency in seconds, for datagrams and stream bytes."""
    duplicate: float = 0.0
    """Probability that a delivered datagram arrives twice."""

    def __attrs_post_init__(self) -> None:
        _check_probability("loss", self.loss)
        _check_probability("duplicate", self.duplicate)
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {self.delay!r}")


@attrs.define
class NetworkStats:
    """Counters, so tests can assert on what the network did (and why packets vanished)."""

    datagrams_sent: int = 0
    datagrams_delivered: int = 0
    datagrams_dropped_loss: int = 0
    datagrams_dropped_partition: int = 0
    datagrams_dropped_dead: int = 0
    datagrams_dropped_no_listener: int = 0
    datagrams_dropped_oversize: int = 0
    datagrams_duplicated: int = 0
    datagrams_truncated: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    streams_opened: int = 0
    streams_refused: int = 0
    streams_reset: int = 0
    stream_bytes: int = 0

    @property
    def datagrams_dropped(self) -> int:
        """All dropped datagrams, whatever the reason."""
        return (
            self.datagrams_dropped_loss
            + self.datagrams_dropped_partition
            + self.datagrams_dropped_dead
            + self.datagrams_dropped_no_listener
            + self.datagrams_dropped_oversize
        )


# --------------------------------------------------------------------------- network


class MemoryNetwork:
    """Hosts, links and the shared clock of one simulated network."""

    def __init__(self, seed: int = 0, max_segment: int | None = None) -> None:
        """
        :param seed: seeds the one ``random.Random`` behind loss and duplication.
        :param max_segment: if set, stream data is handed to ``dataReceived`` in
            pieces of at most this many bytes, to exercise protocols' framing.
        """
        if max_segment is not None and max_segment < 1:
            raise ValueError(f"max_segment must be >= 1 byte, got {max_segment!r}")
        self.clock = VirtualClock()
        self.random = random.Random(seed)
        self.stats = NetworkStats()
        self.max_segment = max_segment
        self._hosts: dict[str, HostReactor] = {}
        self._canon: dict[str, str] = {}
        self._udp: dict[tuple[str, int], _UDPPort] = {}
        self._tcp: dict[tuple[str, int], _TCPPort] = {}
        self._links: dict[tuple[str, str], Link] = {}
        self._default = Link()
        self._blocked: set[tuple[str, str]] = set()
        self._dead: set[str] = set()
        self._streams: dict[int, tuple[_StreamEnd, _StreamEnd]] = {}
        self._stream_ids = itertools.count()

    # -- hosts and addresses

    def _ip(self, host: str) -> str:
        """Canonical text of an IP address (cached: this is on the packet path)."""
        canon = self._canon.get(host)
        if canon is None:
            try:
                canon = ipaddress.ip_address(host).compressed
            except ValueError:
                raise error.InvalidAddressError(
                    host, "the in-memory network knows hosts by IP address only"
                ) from None
            self._canon[host] = canon
        return canon

    def host(self, ip: str) -> HostReactor:
        """The fake reactor of the host with this IPv4 or IPv6 address (created on first use)."""
        canon = self._ip(ip)
        reactor = self._hosts.get(canon)
        if reactor is None:
            reactor = self._hosts[canon] = HostReactor(self, canon)
        return reactor

    @property
    def hosts(self) -> Sequence[HostReactor]:
        """Every host created so far, in creation order."""
        return list(self._hosts.values())

    # -- links

    def link(self, a: str, b: str) -> Link:
        """The properties of the direction a -> b."""
        return self._links.get((self._ip(a), self._ip(b)), self._default)

    def set_link(
        self,
        a: str,
        b: str,
        loss: float | None = None,
        delay: float | None = None,
        duplicate: float | None = None,
    ) -> None:
        """Configure the direction a -> b; unspecified values come from the default link."""
        d = self._default
        self._links[(self._ip(a), self._ip(b))] = Link(
            loss=d.loss if loss is None else loss,
            delay=d.delay if delay is None else delay,
            duplicate=d.duplicate if duplicate is None else duplicate,
        )

    def clear_link(self, a: str, b: str) -> None:
        """Make the direction a -> b follow the default link again."""
        self._links.pop((self._ip(a), self._ip(b)), None)

    def set_default_link(
        self,
        loss: float | None = None,
        delay: float | None = None,
        duplicate: float | None = None,
    ) -> None:
        """Change the properties of every link not configured with :meth:`set_link`."""
        d = self._default
        self._default = Link(
            loss=d.loss if loss is None else loss,
            delay=d.delay if delay is None else delay,
            duplicate=d.duplicate if duplicate is None else duplicate,
        )

    def _delay(self, a: str, b: str) -> float:
        return self._links.get((a, b), self._default).delay

    # -- failures

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every path between the two groups, both ways, until :meth:`heal`.

        Established streams across the cut are reset (see the module docstring).
        """
        a = [self._ip(h) for h in group_a]
        b = [self._ip(h) for h in group_b]
        for x in a:
            for y in b:
                self._blocked.add((x, y))
                self._blocked.add((y, x))
        self._reset_streams(lambda s, c: (s, c) in self._blocked)

    def heal(self) -> None:
        """Remove every partition."""
        self._blocked.clear()

    def reachable(self, a: str, b: str) -> bool:
        """Whether a datagram from a could reach b now (ignoring random loss)."""
        x, y = self._ip(a), self._ip(b)
        return x not in self._dead and y not in self._dead and (x, y) not in self._blocked

    def kill(self, ip: str) -> None:
        """Take the host off the network, both directions, and reset its streams."""
        canon = self._ip(ip)
        self._dead.add(canon)
        self._reset_streams(lambda s, c: canon in (s, c))

    def revive(self, ip: str) -> None:
        """Put a killed host back on the network."""
        self._dead.discard(self._ip(ip))

    def is_alive(self, ip: str) -> bool:
        """False between :meth:`kill` and :meth:`revive`."""
        return self._ip(ip) not in self._dead

    def _reset_streams(self, cut: Callable[[str, str], bool]) -> None:
        for client, server in list(self._streams.values()):
            if cut(client._ip, server._ip):
                self.stats.streams_reset += 1
                client._doom()
                server._doom()

    # -- time

    def run(self, seconds: float, step: float | None = None) -> None:
        """Advance virtual time by ``seconds``, running everything that falls due.

        Without ``step``, time jumps from one scheduled call to the next, and each
        call runs at its own time. With ``step``, the clock advances in increments
        of ``step`` seconds with ``task.Clock.advance`` semantics.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        clock = self.clock
        start = clock.rightNow
        deadline = start + seconds
        if step is None:
            clock.run_until(deadline)
            return
        if step <= 0:
            raise ValueError(f"step must be > 0 seconds, got {step!r}")
        i = 1
        while clock.rightNow < deadline:
            clock.advance_to(min(start + i * step, deadline))
            i += 1

    # -- datagrams (the hot path)

    def _send_datagram(
        self, port: _UDPPort, data: bytes, addr: tuple[str, int] | None
    ) -> None:
        if addr is None:
            raise error.NotConnectingError(
                "write() on an unconnected UDP port needs a destination address"
            )
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"datagram must be bytes, not {type(data).__name__}")
        host = addr[0]
        dst = self._canon.get(host)
        if dst is None:
            dst = self._ip(host)  # raises InvalidAddressError for a name, like udp.Port
        stats = self.stats
        size = len(data)
        stats.datagrams_sent += 1
        stats.bytes_sent += size
        if size > MAX_DATAGRAM:
            stats.datagrams_dropped_oversize += 1
            return
        src = port._ip
        dead = self._dead
        if dead and (src in dead or dst in dead):
            stats.datagrams_dropped_dead += 1
            return
        if self._blocked and (src, dst) in self._blocked:
            stats.datagrams_dropped_partition += 1
            return
        link = self._links.get((src, dst), self._default) if self._links else self._default
        if link.loss and self.random.random() < link.loss:
            stats.datagrams_dropped_loss += 1
            return
        clock = self.clock
        when = clock.rightNow + link.delay
        args = (data, port._source, (dst, addr[1]))
        clock._schedule_at(when, self._deliver_datagram, args, _NO_KW, None)
        if link.duplicate and self.random.random() < link.duplicate:
            stats.datagrams_duplicated += 1
            clock._schedule_at(when, self._deliver_datagram, args, _NO_KW, None)

    def _deliver_datagram(
        self, data: bytes, source: tuple[str, int], key: tuple[str, int]
    ) -> None:
        stats = self.stats
        if self._dead and key[0] in self._dead:
            stats.datagrams_dropped_dead += 1
            return
        port = self._udp.get(key)
        if port is None:
            stats.datagrams_dropped_no_listener += 1
            return
        stats.datagrams_delivered += 1
        stats.bytes_delivered += len(data)
        if len(data) > port.maxPacketSize:
            # recvfrom() with a short buffer truncates, as Twisted's udp.Port does.
            data = data[: port.maxPacketSize]
            stats.datagrams_truncated += 1
        try:
            port.protocol.datagramReceived(data, source)
        except Exception:
            _log.failure(
                "Unhandled error in datagramReceived of {protocol!r}",
                protocol=port.protocol,
            )

    # -- streams

    def _open_stream(self, connector: _Connector) -> _StreamEnd:
        """Start a TCP handshake for ``connector``; returns the client-side transport."""
        reactor = connector.reactor
        clock = self.clock
        try:
            dst = self._ip(connector.host)
        except error.InvalidAddressError:
            dst = None
        end = _StreamEnd(
            self, reactor, reactor._address("TCP", 0), connector.getDestination(), connector
        )
        if dst is None:
            clock._schedule_at(
                clock.rightNow,
                end.failIfNotConnected,
                (error.DNSLookupError(connector.host),),
                _NO_KW,
                None,
            )
            return end
        bind = connector.bindAddress
        if bind is not None and bind[1]:
            lport: int | None = bind[1]
            if reactor._tcp_in_use(bind[1]):
                clock._schedule_at(
                    clock.rightNow,
                    end.failIfNotConnected,
                    (error.ConnectBindError(string=f"port {bind[1]} is in use"),),
                    _NO_KW,
                    None,
                )
                return end
        else:
            lport = reactor._alloc_port(reactor._tcp_in_use)
            if lport is None:
                clock._schedule_at(
                    clock.rightNow,
                    end.failIfNotConnected,
                    (error.ConnectBindError(string="no free ephemeral port"),),
                    _NO_KW,
                    None,
                )
                return end
        assert lport is not None
        reactor._tcp_client_ports.add(lport)
        end._local_port = lport
        end._host_addr = reactor._address("TCP", lport)
        end._peer_ip = dst
        when = clock.rightNow + self._delay(reactor.ip, dst)
        clock._schedule_at(when, self._syn_arrived, (end, dst, connector.port), _NO_KW, None)
        return end

    def _syn_arrived(self, client: _StreamEnd, dst: str, port: int) -> None:
        """The connection request reaches the server host: accept or refuse it."""
        if client.disconnected:
            return  # the attempt was abandoned (timeout, stopConnecting)
        clock = self.clock
        src = client._ip
        back = clock.rightNow + self._delay(dst, src)
        listener = self._tcp.get((dst, port))
        if (
            listener is None
            or src in self._dead
            or dst in self._dead
            or (src, dst) in self._blocked
            or (dst, src) in self._blocked
        ):
            self.stats.streams_refused += 1
            clock._schedule_at(
                back,
                client.failIfNotConnected,
                (error.ConnectionRefusedError(),),
                _NO_KW,
                None,
            )
            return
        server = _StreamEnd(self, listener._host, listener._address, client._host_addr, None)
        server._peer_ip = src
        server.peer = client
        client.peer = server
        sid = next(self._stream_ids)
        client._sid = server._sid = sid
        self._streams[sid] = (client, server)
        self.stats.streams_opened += 1
        # The client learns of the connection before anything the server writes arrives.
        server._arrival = back
        clock._schedule_at(back, client._established, (), _NO_KW, None)
        try:
            proto = listener.factory.buildProtocol(client._host_addr)
        except Exception:
            _log.failure(
                "Unhandled error in buildProtocol of {factory!r}", factory=listener.factory
            )
            proto = None
        if proto is None:
            # Twisted closes the accepted socket: the client sees connect then EOF.
            server._write_shut = True
            server._transmit(client._receive, None)
            server.disconnected = True
            self._stream_closed(server)
            return
        server.protocol = proto
        server.connected = True
        try:
            proto.makeConnection(server)
        except Exception:
            _log.failure("Unhandled error in connectionMade of {protocol!r}", protocol=proto)
            server.abortConnection()

    def _stream_closed(self, end: _StreamEnd) -> None:
        if end._local_port is not None:
            end._reactor._tcp_client_ports.discard(end._local_port)
            end._local_port = None
        peer = end.peer
        if end._sid is not None and (peer is None or peer.disconnected):
            self._streams.pop(end._sid, None)


# --------------------------------------------------------------------------- reactor


@implementer(IReactorTime, IReactorUDP, IReactorTCP)
class HostReactor:
    """The reactor one simulated host sees: the shared clock plus this host's sockets."""

    def __init__(self, network: MemoryNetwork, ip: str) -> None:
        self.network = network
        self.ip = ip
        self._v6 = ":" in ip
        self._next_port = _EPHEMERAL_LOW
        self._tcp_client_ports: set[int] = set()

    def __repr__(self) -> str:
        return f"<HostReactor {self.ip}>"

    def _address(self, kind: Literal["TCP", "UDP"], port: int) -> Address:
        if self._v6:
            return IPv6Address(kind, self.ip, port)
        return IPv4Address(kind, self.ip, port)

    def _alloc_port(self, in_use: Callable[[int], bool]) -> int | None:
        """Next free ephemeral port, cycling like the kernel's allocator."""
        for _ in range(_EPHEMERAL_HIGH - _EPHEMERAL_LOW + 1):
            port = self._next_port
            self._next_port = port + 1 if port < _EPHEMERAL_HIGH else _EPHEMERAL_LOW
            if not in_use(port):
                return port
        return None

    def _udp_in_use(self, port: int) -> bool:
        return (self.ip, port) in self.network._udp

    def _tcp_in_use(self, port: int) -> bool:
        return (self.ip, port) in self.network._tcp or port in self._tcp_client_ports

    def _bind(self, port: int, interface: str, in_use: Callable[[int], bool]) -> int:
        if interface not in _WILDCARDS:
            try:
                ok = self.network._ip(interface) == self.ip
            except error.InvalidAddressError:
                ok = False
            if not ok:
                raise error.CannotListenError(
                    interface,
                    port,
                    OSError(
                        errno.EADDRNOTAVAIL,
                        f"host {self.ip} has no interface {interface!r}; "
                        "listen on '' or on the host's own address",
                    ),
                )
        if port == 0:
            free = self._alloc_port(in_use)
            if free is None:
                raise error.CannotListenError(
                    interface, port, OSError(errno.EADDRINUSE, "no free ephemeral port")
                )
            return free
        if in_use(port):
            raise error.CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "Address already in use")
            )
        return port

    # IReactorTime

    def seconds(self) -> float:
        """The shared virtual time."""
        return self.network.clock.rightNow

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall:
        """Schedule on the shared clock, tagged as this host's timer."""
        clock = self.network.clock
        return clock._schedule_at(clock.rightNow + delay, callable, args, kwargs, self)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        """This host's pending timers (not packets in flight, not other hosts' timers)."""
        return [
            dc
            for dc in self.network.clock.getDelayedCalls()
            if cast(_Call, dc).owner is self
        ]

    # IReactorUDP

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> IListeningPort:
        """Bind a datagram port on this host; port 0 picks a free one."""
        number = self._bind(port, interface, self._udp_in_use)
        p = _UDPPort(self, number, protocol, interface, maxPacketSize)
        p.startListening()
        return p

    # IReactorTCP

    def listenTCP(
        self,
        port: int,
        factory: Factory[Any],
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """Listen for streams on this host; port 0 picks a free one."""
        number = self._bind(port, interface, self._tcp_in_use)
        p = _TCPPort(self, number, factory, backlog, interface)
        p.startListening()
        return p

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory[P],
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        """Open a stream to ``host:port`` with ClientFactory semantics."""
        connector = _Connector(self, host, port, factory, timeout, bindAddress)
        connector.connect()
        return connector


# --------------------------------------------------------------------------- datagrams


@implementer(IListeningPort, IUDPTransport)
class _UDPPort:
    """A bound datagram port; as in Twisted, it is also the protocol's transport."""

    def __init__(
        self,
        host: HostReactor,
        port: int,
        protocol: DatagramProtocol,
        interface: str,
        maxPacketSize: int,
    ) -> None:
        self._host = host
        self._net = host.network
        self._ip = host.ip
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self._source = (host.ip, port)
        self._address = host._address("UDP", port)
        self.connected = False
        self._broadcast = False

    def __repr__(self) -> str:
        return f"<in-memory UDP port {self._ip}:{self.port}>"

    def startListening(self) -> None:
        """Register with the network and start the protocol, as Twisted's udp.Port does."""
        if self.connected:
            return
        self._net._udp[self._source] = self
        self.connected = True
        self.protocol.makeConnection(self)

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        """Send one datagram to ``addr`` (an IP address and port)."""
        if self.connected:
            self._net._send_datagram(self, packet, addr)

    def connect(self, host: str, port: int) -> None:
        """Connected UDP is out of scope: gossip always addresses each datagram."""
        raise NotImplementedError("the in-memory network does not simulate connected UDP")

    def getHost(self) -> Address:
        return self._address

    def stopListening(self) -> Deferred[None]:
        """Unbind now and stop the protocol; the Deferred has already fired."""
        if self.connected:
            self.connected = False
            if self._net._udp.get(self._source) is self:
                del self._net._udp[self._source]
            self.protocol.doStop()
        return succeed(None)

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._broadcast = enabled

    def getBroadcastAllowed(self) -> bool:
        return self._broadcast


# --------------------------------------------------------------------------- streams


@implementer(IListeningPort)
class _TCPPort:
    """A listening stream port."""

    def __init__(
        self,
        host: HostReactor,
        port: int,
        factory: Factory[Any],
        backlog: int,
        interface: str,
    ) -> None:
        self._host = host
        self._net = host.network
        self.port = port
        self.factory = factory
        self.backlog = backlog
        self.interface = interface
        self._key = (host.ip, port)
        self._address = host._address("TCP", port)
        self.connected = False

    def __repr__(self) -> str:
        return f"<in-memory TCP port {self._key[0]}:{self.port}>"

    def startListening(self) -> None:
        if self.connected:
            return
        self._net._tcp[self._key] = self
        self.factory.doStart()
        self.connected = True

    def stopListening(self) -> Deferred[None]:
        """Stop accepting (established streams carry on); the Deferred has already fired."""
        if self.connected:
            self.connected = False
            if self._net._tcp.get(self._key) is self:
                del self._net._tcp[self._key]
            self.factory.doStop()
        return succeed(None)

    loseConnection = stopListening

    def getHost(self) -> Address:
        return self._address


@implementer(IConnector)
class _Connector:
    """``IConnector`` with the exact state machine of ``twisted.internet.base.BaseConnector``."""

    def __init__(
        self,
        reactor: HostReactor,
        host: str,
        port: int,
        factory: ClientFactory[Any],
        timeout: float | None,
        bindAddress: tuple[str, int] | None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.bindAddress = bindAddress
        self.state = "disconnected"
        self.factoryStarted = False
        self.transport: _StreamEnd | None = None
        self.timeoutID: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<in-memory connector {self.state} {self.host}:{self.port}>"

    def connect(self) -> None:
        """Start connecting (again, for reconnecting factories)."""
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        if not self.factoryStarted:
            self.factory.doStart()
            self.factoryStarted = True
        self.transport = transport = self.reactor.network._open_stream(self)
        if self.timeout is not None:
            self.timeoutID = self.reactor.callLater(
                self.timeout, transport.failIfNotConnected, error.TimeoutError()
            )
        self.factory.startedConnecting(self)

    def stopConnecting(self) -> None:
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        assert self.transport is not None
        self.state = "disconnected"
        self.transport.failIfNotConnected(error.UserError())
        self.transport = None

    def disconnect(self) -> None:
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected":
            assert self.transport is not None
            self.transport.loseConnection()

    def getDestination(self) -> IAddress:
        if ":" in self.host:
            return IPv6Address("TCP", self.host, self.port)
        return IPv4Address("TCP", self.host, self.port)

    def cancelTimeout(self) -> None:
        if self.timeoutID is not None:
            if self.timeoutID.active():
                self.timeoutID.cancel()
            self.timeoutID = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        self.state = "connected"
        self.cancelTimeout()
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: Failure) -> None:
        self.cancelTimeout()
        self.transport = None
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, reason)
        if self.state == "disconnected":
            self.factory.doStop()
            self.factoryStarted = False

    def connectionLost(self, reason: Failure) -> None:
        self.state = "disconnected"
        self.factory.clientConnectionLost(self, reason)
        if self.state == "disconnected":
            self.factory.doStop()
            self.factoryStarted = False


@implementer(ITCPTransport, IConsumer, IPushProducer)
class _StreamEnd:
    """One side of an in-memory TCP connection.

    Each write is one clock call on the peer, at ``now + link delay`` but never
    before an earlier write from this side, so bytes stay ordered even if the
    link delay changes mid-stream. A ``None`` payload is an end-of-stream (FIN).
    """

    def __init__(
        self,
        net: MemoryNetwork,
        reactor: HostReactor,
        host_addr: IAddress,
        peer_addr: IAddress,
        connector: _Connector | None,
    ) -> None:
        self._net = net
        self._reactor = reactor
        self._ip = reactor.ip
        self._peer_ip = ""
        self._host_addr = host_addr
        self._peer_addr = peer_addr
        self._connector = connector
        self._local_port: int | None = None
        self._sid: int | None = None
        self.peer: _StreamEnd | None = None
        self.protocol: IProtocol | None = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self._write_shut = False
        self._read_shut = False
        self._arrival = 0.0
        self._paused = False
        self._inbox: deque[bytes | None] = deque()
        self._producer: IProducer | None = None
        self._streaming = False
        self._pull_pending = False
        self._no_delay = False
        self._keep_alive = False

    def __repr__(self) -> str:
        return f"<in-memory TCP {self._host_addr} -> {self._peer_addr}>"

    # -- plumbing

    def _transmit(self, f: Callable[..., object], *args: object) -> None:
        """Schedule ``f(*args)`` at the peer after the link delay, in order."""
        net = self._net
        clock = net.clock
        when = clock.rightNow + net._delay(self._ip, self._peer_ip)
        if when < self._arrival:
            when = self._arrival
        self._arrival = when
        clock._schedule_at(when, f, args, _NO_KW, None)

    def _later(self, f: Callable[..., object], *args: object) -> None:
        clock = self._net.clock
        clock._schedule_at(clock.rightNow, f, args, _NO_KW, None)

    def _established(self) -> None:
        """The handshake's answer reaches the client."""
        if self.disconnected or self._connector is None:
            return
        try:
            proto = self._connector.buildProtocol(self._peer_addr)
        except Exception:
            _log.failure(
                "Unhandled error in buildProtocol of {connector!r}", connector=self._connector
            )
            proto = None
        self.connected = True
        if proto is None:
            # As in Twisted: a placeholder protocol, and the connection is dropped.
            self.protocol = Protocol()
            self.loseConnection()
            return
        self.protocol = proto
        try:
            proto.makeConnection(self)
        except Exception:
            _log.failure("Unhandled error in connectionMade of {protocol!r}", protocol=proto)
            self.abortConnection()

    def failIfNotConnected(self, err: Exception) -> None:
        """Fail a pending connect (refused, timed out, stopped); no-op once connected."""
        if self.connected or self.disconnected or self._connector is None:
            return
        self.disconnected = True
        self._net._stream_closed(self)
        peer = self.peer
        if peer is not None and not peer.disconnected:
            self._transmit(peer._reset)
        connector, self._connector = self._connector, None
        connector.connectionFailed(Failure(err))

    def _receive(self, data: bytes | None) -> None:
        """Bytes (or EOF, as None) arrive from the peer."""
        if self.disconnected:
            peer = self.peer
            if data is not None and peer is not None and not peer.disconnected:
                self._transmit(peer._reset)  # data to a closed socket: RST
            return
        if self.disconnecting or self._read_shut:
            return
        if self._paused or self._inbox:
            self._inbox.append(data)
            return
        self._deliver(data)

    def _deliver(self, data: bytes | None) -> None:
        if data is None:
            self._eof()
            return
        proto = self.protocol
        assert proto is not None
        seg = self._net.max_segment
        try:
            if seg is None or len(data) <= seg:
                proto.dataReceived(data)
            else:
                for i in range(0, len(data), seg):
                    if self.disconnected or self.disconnecting:
                        break
                    proto.dataReceived(data[i : i + seg])
        except Exception:
            f = Failure()
            _log.failure("Unhandled error in dataReceived of {protocol!r}", f, protocol=proto)
            self.disconnecting = True
            peer = self.peer
            if peer is not None and not peer.disconnected:
                self._transmit(peer._reset)
            self._close(f)

    def _drain(self) -> None:
        while self._inbox and not self._paused and not self.disconnected:
            if self.disconnecting or self._read_shut:
                self._inbox.clear()
                return
            self._deliver(self._inbox.popleft())

    def _eof(self) -> None:
        """The peer shut its write side (or closed)."""
        self._read_shut = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            try:
                half.readConnectionLost()
            except Exception:
                _log.failure(
                    "Unhandled error in readConnectionLost of {protocol!r}",
                    protocol=self.protocol,
                )
                self.abortConnection()
            return
        # Not half-closeable: close too, which sends our FIN back.
        peer = self.peer
        if not self._write_shut and peer is not None and not peer.disconnected:
            self._write_shut = True
            self._transmit(peer._receive, None)
        self.disconnecting = True
        self._close(Failure(error.ConnectionDone()))

    def _reset(self) -> None:
        """An RST arrives."""
        if self.disconnected:
            return
        self.disconnecting = True
        self._close(Failure(error.ConnectionLost("Connection reset by peer")))

    def _doom(self) -> None:
        """The network (partition, kill) breaks this connection."""
        if self.disconnected:
            return
        if self.connected:
            self.disconnecting = True
        self._later(self._network_reset)

    def _network_reset(self) -> None:
        if self.disconnected:
            return
        if self.connected:
            self._close(Failure(error.ConnectionLost("Connection reset by the network")))
        else:
            self.failIfNotConnected(error.ConnectionRefusedError())

    def _close(self, reason: Failure) -> None:
        """Deliver connectionLost here (and to the connector, for a client)."""
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self._inbox.clear()
        self._net._stream_closed(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                _log.failure("Unhandled error in stopProducing of {producer!r}", producer=producer)
        proto = self.protocol
        if proto is not None:
            try:
                proto.connectionLost(reason)
            except Exception:
                _log.failure("Unhandled error in connectionLost of {protocol!r}", protocol=proto)
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.connectionLost(reason)

    def _pull(self) -> None:
        self._pull_pending = False
        producer = self._producer
        if producer is not None and not self._streaming and not self.disconnected:
            cast(IPullProducer, producer).resumeProducing()

    # -- ITransport / ITCPTransport

    def write(self, data: bytes) -> None:
        """Send bytes to the peer; ignored once closing, as in Twisted."""
        if not self.connected or self.disconnecting or self._write_shut:
            return
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if not data:
            return
        peer = self.peer
        assert peer is not None
        self._net.stats.stream_bytes += len(data)
        self._transmit(peer._receive, data)
        if self._producer is not None and not self._streaming and not self._pull_pending:
            # Our "send buffer" drains at once: ask a pull producer for more next turn.
            self._pull_pending = True
            self._later(self._pull)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after the data already written; both sides get ConnectionDone."""
        if not self.connected or self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        peer = self.peer
        if not self._write_shut and peer is not None:
            self._write_shut = True
            self._transmit(peer._receive, None)
        self._later(self._close, Failure(error.ConnectionDone()))

    def loseWriteConnection(self) -> None:
        """Half-close: the peer sees EOF after pending data; we can still read."""
        if not self.connected or self.disconnecting or self._write_shut:
            return
        self._write_shut = True
        peer = self.peer
        if peer is not None:
            self._transmit(peer._receive, None)
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            self._later(half.writeConnectionLost)

    def abortConnection(self) -> None:
        """Close at once, discarding nothing already sent; the peer gets a reset."""
        if not self.connected or self.disconnected:
            return
        self.disconnecting = True
        peer = self.peer
        if peer is not None and not peer.disconnected:
            self._transmit(peer._reset)
        self._later(self._close, Failure(error.ConnectionAborted()))

    def getHost(self) -> Address:
        return cast(Address, self._host_addr)

    def getPeer(self) -> Address:
        return cast(Address, self._peer_addr)

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = enabled

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = enabled

    # -- IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self._producer!r} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        if not streaming:
            cast(IPullProducer, producer).resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IPushProducer (flow control of what we receive)

    def pauseProducing(self) -> None:
        """Stop delivering received data; it queues until resumeProducing."""
        if not self.disconnected:
            self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._inbox:
            self._later(self._drain)

    def stopProducing(self) -> None:
        """As in Twisted: stopping the transport as a producer closes it."""
        self.loseConnection()
