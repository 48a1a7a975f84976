"""memberlist over Twisted sockets: one UDP port and one TCP port, same number.

The reactor is injected, so the same classes run over real sockets and over
:class:`flyteserf.testing.network.MemoryNetwork`.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Protocol as TypingProtocol

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from flyteserf.memberlist.delegates import Address, IMemberlistTransport
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.stream import StreamMessage, StreamReader

#: memberlist reads datagrams into a 64 KiB buffer.
UDP_RECEIVE_SIZE = 65536
#: How many inbound streams may be open at once.
MAX_INBOUND_STREAMS = 128
#: Pending connections the kernel may queue for us (a join storm, a burst of push/pulls).
LISTEN_BACKLOG = 1024
#: memberlist's udpRecvBufSize: asked for, halving until the kernel accepts.
UDP_RECEIVE_BUFFER = 2 * 1024 * 1024


class StreamHandler(TypingProtocol):
    """What the transport asks of memberlist for an inbound stream."""

    def new_stream_reader(self) -> StreamReader: ...

    def handle_stream(self, message: StreamMessage, peer: Address) -> bytes | None: ...

    def stream_error_reply(self, reason: DecodeError) -> bytes: ...

    def ingest_packet(self, data: bytes, addr: Address) -> None: ...

    def count(self, what: str, n: int = 1) -> None: ...


def host_of(address: Any) -> Address:
    """(host, port) of a Twisted address, v4-mapped v6 normalised."""
    host = address.host
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            host = str(ip.ipv4_mapped)
    except ValueError:
        pass
    return (host, address.port)


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, handler: StreamHandler) -> None:
        self.handler = handler

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.handler.count("packets_in")
        self.handler.count("bytes_in", len(datagram))
        self.handler.ingest_packet(datagram, (addr[0], addr[1]))


class _InboundStream(protocol.Protocol):
    """Reads one request, writes memberlist's reply, closes."""

    log = Logger()

    def __init__(self, factory: _InboundFactory) -> None:
        self.factory = factory
        self.reader = factory.handler.new_stream_reader()
        self.timeout: IDelayedCall | None = None
        self.done = False

    def connectionMade(self) -> None:
        self.factory.active += 1
        if self.factory.active > MAX_INBOUND_STREAMS:
            self.factory.handler.count("dropped_streams_too_many")
            self.done = True
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.timeout = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timeout = None
        self.factory.handler.count("dropped_streams_timeout")
        self.done = True
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        handler = self.factory.handler
        assert self.transport is not None
        peer = host_of(self.transport.getPeer())
        try:
            message = self.reader.feed(data)
        except DecodeError as e:
            handler.count("dropped_streams_malformed")
            self.log.debug("Failed to read stream from {peer}: {reason}", peer=peer, reason=str(e))
            self._finish(handler.stream_error_reply(e))
            return
        if message is None:
            return
        try:
            reply = handler.handle_stream(message, peer)
        except Exception:
            handler.count("dropped_streams_handler_error")
            self.log.failure("stream handler failed for {peer}", peer=peer)
            reply = None
        self._finish(reply)

    def _finish(self, reply: bytes | None) -> None:
        self.done = True
        assert self.transport is not None
        if reply:
            self.factory.handler.count("bytes_out", len(reply))
            self.transport.write(reply)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.active -= 1
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None


class _InboundFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, handler: StreamHandler, reactor: Any, timeout: float) -> None:
        self.handler = handler
        self.reactor = reactor
        self.timeout = timeout
        self.active = 0

    def buildProtocol(self, addr: Any) -> _InboundStream:
        return _InboundStream(self)


class _Exchange(protocol.Protocol):
    """Outbound: write the request, read one reply, close."""

    def __init__(self, data: bytes, reader: StreamReader, result: Deferred[StreamMessage | None]) -> None:
        self.data = data
        self.reader = reader
        self.result = result

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            message = self.reader.feed(data)
        except DecodeError as e:
            self.result.errback(Failure(e))
        else:
            if message is None:
                return
            self.result.callback(message)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.result.called:
            if reason.check(error.ConnectionDone):
                self.result.callback(None)
            else:
                self.result.errback(reason)


class _ExchangeFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, data: bytes, reader: StreamReader, result: Deferred[StreamMessage | None]) -> None:
        self.data, self.reader, self.result = data, reader, result

    def buildProtocol(self, addr: Any) -> _Exchange:
        return _Exchange(self.data, self.reader, self.result)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)


@implementer(IMemberlistTransport)
class NetTransport:
    """UDP and TCP bound to the same host and port."""

    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, tcp_timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.tcp_timeout = tcp_timeout
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None
        self._handler: StreamHandler | None = None

    @property
    def local_address(self) -> Address:
        return (self.host, self.port)

    def start(self, handler: StreamHandler) -> Address:
        """Bind both sockets; with port 0, find a number free for both."""
        self._handler = handler
        interface = self.host
        attempts = 10 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = self.reactor.listenUDP(self.port, _Datagrams(handler), interface=interface, maxPacketSize=UDP_RECEIVE_SIZE)
            port = udp.getHost().port
            try:
                tcp = self.reactor.listenTCP(
                    port, _InboundFactory(handler, self.reactor, self.tcp_timeout), backlog=LISTEN_BACKLOG, interface=interface
                )
            except error.CannotListenError:
                udp.stopListening()
                if attempt + 1 == attempts:
                    raise
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        _grow_receive_buffer(self._udp)
        return self.local_address

    def send_packet(self, data: bytes, addr: Address) -> None:
        assert self._udp is not None and self._handler is not None
        try:
            self._udp.write(data, addr)  # type: ignore[attr-defined]
        except Exception as e:  # the kernel said no (unreachable, too big): count, don't raise
            self._handler.count("send_errors")
            self.log.debug("UDP send to {addr} failed: {e}", addr=addr, e=e)
            return
        self._handler.count("packets_out")
        self._handler.count("bytes_out", len(data))

    def stream_exchange(
        self, addr: Address, data: bytes, reader: StreamReader, timeout: float
    ) -> Deferred[StreamMessage | None]:
        connectors: list[Any] = []

        def cancel(_: Deferred[Any]) -> None:
            # Cancelling (shutdown, a timeout) drops the connection too.
            for c in connectors:
                c.disconnect()

        result: Deferred[StreamMessage | None] = Deferred(cancel)
        factory = _ExchangeFactory(data, reader, result)
        connector = self.reactor.connectTCP(addr[0], addr[1], factory, timeout=timeout)
        connectors.append(connector)
        if self._handler is not None:
            self._handler.count("streams_out")
            self._handler.count("bytes_out", len(data))
        result.addTimeout(timeout, self.reactor)
        return result

    def stop(self) -> Deferred[None]:
        waits = []
        for port in (self._udp, self._tcp):
            if port is not None:
                d = port.stopListening()
                if isinstance(d, Deferred):
                    waits.append(d)
        self._udp = self._tcp = None
        if not waits:
            return succeed(None)
        from twisted.internet.defer import gatherResults

        return gatherResults(waits).addCallback(lambda _: None)


def _grow_receive_buffer(port: Any) -> None:
    """Ask for a 2 MiB UDP receive buffer, as memberlist does (``setUDPRecvBuf``).

    The kernel default (about 208 KiB on Linux) overflows in a burst, and
    then real pings are dropped along with the burst.
    """
    get_handle = getattr(port, "getHandle", None)
    if get_handle is None:  # not a real socket (the in-memory network)
        return
    sock = get_handle()
    size = UDP_RECEIVE_BUFFER
    while size > 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            return
        except OSError:
            size //= 2
