"""A small Twisted client for the Serf RPC protocol, for tests and scripts.

::

    client = await RPCClient.connect(reactor, "127.0.0.1", port, auth="token")
    header, body = await client.call("members")
    stream = await client.stream("stream", {"Type": "user"}, records.append)
    await client.stop(stream)
    client.close()

:meth:`RPCClient.call` fires with the response header and body (``None``
for commands that return none) whatever the header's ``Error`` says;
:meth:`RPCClient.stream` fires with a :class:`Stream` once the first header
arrives, then calls ``on_record`` with every record body.  A ``query``
stream ends by itself at its ``done`` record (:attr:`Stream.done`).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from flyteserf.rpc.codec import RPCDecoder, encode_frame
from flyteserf.rpc.messages import RESPONSE_BODY_COMMANDS
from flyteserf.rpc.server import AUTH_REQUIRED

__all__ = ["RPCClient", "RPCError", "Stream"]

Header = dict[str, Any]


class RPCError(Exception):
    """A response header carried an error (raised by :meth:`RPCClient.connect` only)."""


class _Call:
    def __init__(self, command: str) -> None:
        self.command = command
        self.result: Deferred[tuple[Header, Any]] = Deferred()
        self.header: Header | None = None

    def wants_body(self, header: Header) -> bool:
        return self.command in RESPONSE_BODY_COMMANDS and header.get("Error") != AUTH_REQUIRED


class Stream:
    """A ``stream``, ``monitor`` or ``query`` the client opened."""

    def __init__(self, seq: int, command: str, on_record: Callable[[Any], object]) -> None:
        self.seq = seq
        self.command = command
        self.on_record = on_record
        self.header: Header | None = None
        self.started: Deferred[Stream] = Deferred()
        #: Fires at a query's ``done`` record, at stop, or when the connection closes.
        self.done: Deferred[None] = Deferred()
        self.records: list[Any] = []

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)


class _ClientProtocol(Protocol):
    def __init__(self) -> None:
        self.decoder = RPCDecoder()
        self.handlers: dict[int, _Call | Stream] = {}
        self._body_for: _Call | Stream | None = None
        self._body_header: Header | None = None
        self.is_lost = False
        self._lost_waiters: list[Deferred[None]] = []

    def when_lost(self) -> Deferred[None]:
        if self.is_lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lost_waiters.append(d)
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            objects = self.decoder.feed(data)
        except Exception:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for obj in objects:
            self._object(obj)

    def _object(self, obj: Any) -> None:
        target, self._body_for = self._body_for, None
        if target is not None:
            self._deliver(target, self._body_header or {}, obj)
            return
        if not isinstance(obj, dict):
            return
        seq = obj.get("Seq")
        handler = self.handlers.get(seq) if isinstance(seq, int) else None
        if handler is None:
            return
        if isinstance(handler, _Call):
            if handler.wants_body(obj):
                self._body_for, self._body_header = handler, obj
            else:
                self._deliver(handler, obj, None)
        elif handler.header is None:
            handler.header = obj
            if obj.get("Error"):
                del self.handlers[handler.seq]
                handler._finish()
            handler.started.callback(handler)
        else:
            self._body_for, self._body_header = handler, obj

    def _deliver(self, handler: _Call | Stream, header: Header, body: Any) -> None:
        if isinstance(handler, _Call):
            self.handlers.pop(header.get("Seq", -1), None)
            handler.result.callback((header, body))
            return
        handler.records.append(body)
        handler.on_record(body)
        if handler.command == "query" and isinstance(body, dict) and body.get("Type") == "done":
            self.handlers.pop(handler.seq, None)
            handler._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            if isinstance(handler, _Call):
                handler.result.errback(reason)
            else:
                if not handler.started.called:
                    handler.started.errback(reason)
                handler._finish()
        self.is_lost = True
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)


class RPCClient:
    """One RPC connection; Seq numbers count up from 1 as the Go CLI's do."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self.protocol = protocol
        self._seq = 0

    @classmethod
    async def _connect(cls, reactor: IReactorTCP, host: str, port: int, auth: str | None) -> RPCClient:
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, host, port), _ClientProtocol())
        client = cls(proto)
        header, _ = await client.call("handshake", {"Version": 1})
        if header.get("Error"):
            client.close()
            raise RPCError(header["Error"])
        if auth is not None:
            header, _ = await client.call("auth", {"AuthKey": auth})
            if header.get("Error"):
                client.close()
                raise RPCError(header["Error"])
        return client

    @classmethod
    def connect(cls, reactor: IReactorTCP, host: str, port: int, auth: str | None = None) -> Deferred[RPCClient]:
        """Connect, handshake and (with *auth*) authenticate."""
        return Deferred.fromCoroutine(cls._connect(reactor, host, port, auth))

    def when_lost(self) -> Deferred[None]:
        """Fires when the connection is closed (by either side)."""
        return self.protocol.when_lost()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, command: str, seq: int, body: Any) -> None:
        transport = self.protocol.transport
        if transport is None:
            raise RPCError("not connected")
        has_body = body is not None
        transport.write(encode_frame({"Command": command, "Seq": seq}, body, has_body=has_body))

    def call(self, command: str, body: Any = None) -> Deferred[tuple[Header, Any]]:
        """Send one request; fires with ``(header, body)`` (body ``None`` if the command returns none)."""
        seq = self.next_seq()
        call = _Call(command)
        self.protocol.handlers[seq] = call
        try:
            self._send(command, seq, body)
        except RPCError as e:
            del self.protocol.handlers[seq]
            return fail(e)
        return call.result

    def stream(self, command: str, body: Any, on_record: Callable[[Any], object] = lambda r: None) -> Deferred[Stream]:
        """Open a ``stream``, ``monitor`` or ``query``; fires once its first header arrives."""
        seq = self.next_seq()
        stream = Stream(seq, command, on_record)
        self.protocol.handlers[seq] = stream
        try:
            self._send(command, seq, body)
        except RPCError as e:
            del self.protocol.handlers[seq]
            return fail(e)
        return stream.started

    def stop(self, stream: Stream) -> Deferred[tuple[Header, Any]]:
        """Stop a stream or monitor (records already in flight are dropped)."""
        self.protocol.handlers.pop(stream.seq, None)
        stream._finish()
        return self.call("stop", {"Stop": stream.seq})

    def close(self) -> Deferred[None]:
        transport = self.protocol.transport
        if transport is None:
            return succeed(None)
        transport.loseConnection()
        return self.protocol.when_lost()
