"""The Serf RPC server the ``serf`` CLI talks to (spec §4).

One :class:`RPCProtocol` per TCP connection, built by :class:`RPCFactory`
around an :class:`~flyteserf.rpc.interfaces.IRPCAgent`.  Requests are
handled one at a time per connection, in order, as the Go agent does: a
command that waits on the network (``join``, ``leave``, ``force-leave``,
``tags``, key commands) holds back the next request, and reading from the
socket is paused meanwhile.  Streams (``stream``, ``monitor``, ``query``)
write their records whenever they come, under the Seq of the request that
opened them.

Everything a hostile or broken client can send is bounded:

* bytes not yet decoded are capped (``max_request``), so a claimed 100 MB
  string closes the connection once the cap is reached;
* a connection that does not complete the handshake in
  ``handshake_timeout`` seconds is closed;
* what we could not write yet because the client does not read is capped
  (``max_outgoing``); past it the connection is dropped, logged once;
* streams per connection and connections per server are capped.

Where the Go agent closes the connection (no handshake, an unknown command,
an undecodable body, an invalid ``members-filtered`` regex) so do we, with
the same bytes sent first.  One deliberate difference: a request that needs
authentication and carries a body gets one ``Authentication required``
answer and its body is skipped; the Go agent leaves the body in the stream,
reads it as the next header, and answers it a second time.
"""

from __future__ import annotations

import hmac
from collections import deque
from typing import Any, Callable

import re2
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from flyteserf.agent.filters import EventFilter, parse_event_filters
from flyteserf.agent.logring import parse_level
from flyteserf.rpc.codec import DEFAULT_MAX_BUFFER, FrameError, RPCDecoder, encode_frame
from flyteserf.rpc.interfaces import IRPCAgent
from flyteserf.rpc.messages import (
    BODY_COMMANDS,
    COMMANDS,
    AuthRequest,
    BodyError,
    CoordinateRequest,
    EventRequest,
    ForceLeaveRequest,
    HandshakeRequest,
    JoinRequest,
    KeyRequest,
    MembersFilteredRequest,
    MonitorRequest,
    QueryRequest,
    RequestHeader,
    RespondRequest,
    StopRequest,
    StreamRequest,
    TagsRequest,
    coordinate_record,
    decode_body,
    key_response_record,
    member_record,
    members_record,
    zero_key_response,
)
from flyteserf.wire.keyring import KeyringError, decode_base64

__all__ = [
    "IPC_VERSION",
    "RPCFactory",
    "RPCProtocol",
]

#: The only IPC version there is (Go's MinIPCVersion = MaxIPCVersion = 1).
IPC_VERSION = 1

# Error texts, exactly as the Go agent sends them.
UNSUPPORTED_COMMAND = "Unsupported command"
UNSUPPORTED_IPC_VERSION = "Unsupported IPC version"
DUPLICATE_HANDSHAKE = "Handshake already performed"
HANDSHAKE_REQUIRED = "Handshake required"
MONITOR_EXISTS = "Monitor already exists"
INVALID_FILTER = "Invalid event filter"
STREAM_EXISTS = "Stream with given sequence exists"
INVALID_QUERY_ID = "No pending queries matching ID"
AUTH_REQUIRED = "Authentication required"
INVALID_AUTH_TOKEN = "Invalid authentication token"
#: Ours: the Go agent has no limit on streams per connection.
TOO_MANY_STREAMS = "Too many streams on this connection"

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

#: Go's log prefix is "agent.ipc" (a module-level Logger: as a class attribute it would take the class's name).
_log = Logger(namespace="flyteserf.agent.ipc")

#: Decoded requests a connection may have queued while one is running.
_MAX_INBOX = 256


def _error_text(failure: Failure) -> str:
    text = str(failure.value)
    return text if text else type(failure.value).__name__


def _compile_anchored(expr: str) -> Any:
    """Go's ``regexp.Compile(fmt.Sprintf("^%s$", expr))``: the text is not grouped, as in Go."""
    return re2.compile(f"^{expr}$", _RE2_OPTIONS)


class _Close(Exception):
    """Internal: close the connection after sending what was queued."""


@implementer(IPushProducer)
class RPCProtocol(Protocol):
    """One RPC client connection."""

    factory: RPCFactory

    def __init__(self) -> None:
        self.decoder: RPCDecoder | None = None
        self.handshaken = False
        self.authenticated = False
        self.closed = False
        self.peer = "?"
        self._inbox: deque[Any] = deque()
        self._awaiting_body: RequestHeader | None = None
        self._busy = False
        self._processing = False
        self._write_paused = False
        self._reading_paused = False
        self._outq: deque[bytes] = deque()
        self._outq_bytes = 0
        self._handshake_timer: IDelayedCall | None = None
        #: stream Seq -> unsubscribe
        self.streams: dict[int, Callable[[], None]] = {}
        self.monitor_seq: int | None = None
        self._monitor_unsubscribe: Callable[[], None] | None = None
        self._query_id = 0
        #: per-connection query ID -> (IncomingQuery, deregistration timer)
        self.pending_queries: dict[int, tuple[Any, IDelayedCall | None]] = {}

    # --- connection life --------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.decoder = RPCDecoder(factory.max_request)
        peer: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        self.peer = f"{host}:{port}" if host is not None else str(peer)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if factory.handshake_timeout:
            self._handshake_timer = factory.reactor.callLater(factory.handshake_timeout, self._handshake_expired)
        _log.info("Accepted client: {peer}", peer=self.peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._teardown()
        self.factory.connection_lost(self)

    def _teardown(self) -> None:
        """Free every per-connection resource (idempotent)."""
        self.closed = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        for unsubscribe in list(self.streams.values()):
            unsubscribe()
        self.streams.clear()
        if self._monitor_unsubscribe is not None:
            self._monitor_unsubscribe()
        self._monitor_unsubscribe = None
        self.monitor_seq = None
        for _, timer in self.pending_queries.values():
            if timer is not None and timer.active():
                timer.cancel()
        self.pending_queries.clear()
        self._inbox.clear()
        self._outq.clear()
        self._outq_bytes = 0
        self.decoder = None

    def _close(self, why: str, *, abort: bool = False) -> None:
        """Close after what was already written; *abort* drops unsent data too."""
        if self.closed:
            return
        _log.debug("closing RPC client {peer}: {why}", peer=self.peer, why=why)
        flush = not abort and not self._outq
        self._teardown()
        if self.transport is None:
            return
        if flush:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.handshaken:
            _log.warn("closing RPC client {peer}: no handshake", peer=self.peer)
            self._close("no handshake in time", abort=True)

    # --- IPushProducer: the transport tells us when the client stops reading --------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        while self._outq and not self._write_paused and not self.closed:
            data = self._outq.popleft()
            self._outq_bytes -= len(data)
            self.transport.write(data)  # type: ignore[union-attr]
        if not self._write_paused:
            self._process()

    def stopProducing(self) -> None:
        self._teardown()

    # --- writing --------------------------------------------------------------------------

    def send(self, seq: int, error: str = "", body: Any = None, *, has_body: bool = False) -> None:
        """Write a response header (and body) for *seq*."""
        self._write(encode_frame({"Seq": seq, "Error": error}, body, has_body=has_body))

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if not self._write_paused and not self._outq:
            self.transport.write(data)
            return
        self._outq.append(data)
        self._outq_bytes += len(data)
        if self._outq_bytes > self.factory.max_outgoing:
            queued = self._outq_bytes
            self._close("client too slow", abort=True)
            # Closed first, so that this line reaching our own monitor is not re-entered.
            _log.warn(
                "Dropping RPC client {peer}: it is not reading ({queued} bytes unsent, limit {limit})",
                peer=self.peer,
                queued=queued,
                limit=self.factory.max_outgoing,
            )

    # --- reading --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed or self.decoder is None:
            return
        try:
            objects = self.decoder.feed(data)
        except FrameError as e:
            _log.warn("closing RPC client {peer}: {e}", peer=self.peer, e=str(e))
            self._close(str(e), abort=True)
            return
        self._inbox.extend(objects)
        if len(self._inbox) > _MAX_INBOX:
            _log.warn("closing RPC client {peer}: too many requests queued", peer=self.peer)
            self._close("too many requests queued", abort=True)
            return
        self._process()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _process(self) -> None:
        """Handle queued requests until one waits on the network or the client stops reading.

        Not re-entered: a command whose Deferred has already fired calls back
        into here from inside the loop, which then simply goes on.
        """
        if self._processing:
            return
        self._processing = True
        try:
            self._process_inbox()
        finally:
            self._processing = False

    def _process_inbox(self) -> None:
        while self._inbox and not self.closed:
            if self._busy or self._write_paused:
                self._pause_reading()
                return
            obj = self._inbox.popleft()
            try:
                if self._awaiting_body is None:
                    self._header(obj)
                else:
                    header, self._awaiting_body = self._awaiting_body, None
                    self._dispatch(header, obj)
            except (BodyError, _Close) as e:
                _log.warn("closing RPC client {peer}: {e}", peer=self.peer, e=str(e))
                self._close(str(e))
                return
            except Exception:
                _log.failure("RPC request from {peer} failed", peer=self.peer)
                self._close("internal error")
                return
        if not self._busy and not self._write_paused:
            self._resume_reading()

    def _header(self, obj: Any) -> None:
        header = decode_body(RequestHeader, obj)
        command, seq = header.command, header.seq
        if command != "handshake" and not self.handshaken:
            self.send(seq, HANDSHAKE_REQUIRED)
            raise _Close(HANDSHAKE_REQUIRED)
        if command not in COMMANDS:
            self.send(seq, UNSUPPORTED_COMMAND)
            raise _Close(f"command {command!r} not recognized")
        if command in BODY_COMMANDS:
            self._awaiting_body = header
        else:
            self._dispatch(header, None)

    def _dispatch(self, header: RequestHeader, body: Any) -> None:
        command, seq = header.command, header.seq
        if self.factory.auth_key and not self.authenticated and command not in ("handshake", "auth"):
            _log.warn("Client sending commands before auth")
            self.send(seq, AUTH_REQUIRED)
            return
        handler = getattr(self, "cmd_" + command.replace("-", "_"))
        result = handler(seq, body)
        if isinstance(result, Deferred):
            self._busy = True
            result.addErrback(self._handler_failed, command)
            result.addBoth(self._unbusy)
            if self._busy:  # still running: hold the next requests back
                self._pause_reading()

    def _handler_failed(self, failure: Failure, command: str) -> None:
        _log.failure("RPC command {command} failed", failure, command=command)
        self._close("internal error")

    def _unbusy(self, _: object) -> None:
        self._busy = False
        if not self.closed:
            self._process()

    @property
    def agent(self) -> IRPCAgent:
        return self.factory.agent

    # --- commands -------------------------------------------------------------------------

    def cmd_handshake(self, seq: int, body: Any) -> None:
        req = decode_body(HandshakeRequest, body)
        if req.version != IPC_VERSION:
            self.send(seq, UNSUPPORTED_IPC_VERSION)
        elif self.handshaken:
            self.send(seq, DUPLICATE_HANDSHAKE)
        else:
            self.handshaken = True
            if self._handshake_timer is not None and self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None
            self.send(seq)

    def cmd_auth(self, seq: int, body: Any) -> None:
        req = decode_body(AuthRequest, body)
        expected = self.factory.auth_key or ""
        if hmac.compare_digest(req.auth_key.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
            self.authenticated = True
            self.send(seq)
        else:
            self.send(seq, INVALID_AUTH_TOKEN)

    def _simple(self, seq: int, call: Callable[[], object]) -> Deferred[None]:
        """Run *call*; answer with its error text (or none), no body."""

        def done(result: object) -> None:
            error = _error_text(result) if isinstance(result, Failure) else ""
            self.send(seq, error)

        return maybeDeferred(call).addBoth(done)

    def cmd_event(self, seq: int, body: Any) -> Deferred[None]:
        req = decode_body(EventRequest, body)
        return self._simple(seq, lambda: self.agent.event(req.name, req.payload, req.coalesce))

    def cmd_force_leave(self, seq: int, body: Any) -> Deferred[None]:
        req = decode_body(ForceLeaveRequest, body)
        return self._simple(seq, lambda: self.agent.force_leave(req.node, req.prune))

    def cmd_join(self, seq: int, body: Any) -> Deferred[None]:
        req = decode_body(JoinRequest, body)

        def done(result: object) -> None:
            if isinstance(result, Failure):
                num = getattr(result.value, "num", 0)
                self.send(seq, _error_text(result), {"Num": int(num) if isinstance(num, int) else 0})
            else:
                self.send(seq, "", {"Num": int(result)})  # type: ignore[call-overload]

        return maybeDeferred(self.agent.join, list(req.existing), req.replay).addBoth(done)

    def cmd_members(self, seq: int, body: Any) -> None:
        self.send(seq, "", members_record(self.agent.members()))

    def cmd_members_filtered(self, seq: int, body: Any) -> None:
        req = decode_body(MembersFilteredRequest, body)
        try:
            tag_res = {tag: _compile_anchored(expr) for tag, expr in req.tags.items()}
            status_re = _compile_anchored(req.status)
            name_re = _compile_anchored(req.name)
        except re2.error as e:
            # The Go agent closes the connection without an answer.
            raise _Close(f"Failed to compile regex: {e}") from None
        selected = []
        for member in self.agent.members():
            record = member_record(member)
            tags = record["Tags"] or {}
            if not all(regex.search(tags.get(tag, "")) for tag, regex in tag_res.items()):
                continue
            if req.status and not status_re.search(record["Status"]):
                continue
            if req.name and not name_re.search(record["Name"]):
                continue
            selected.append(record)
        self.send(seq, "", {"Members": selected})

    def cmd_tags(self, seq: int, body: Any) -> Deferred[None]:
        req = decode_body(TagsRequest, body)
        return self._simple(seq, lambda: self.agent.set_tags(dict(req.tags), list(req.delete_tags)))

    def cmd_leave(self, seq: int, body: Any) -> Deferred[None]:
        _log.info("Graceful leave triggered")

        def done(result: object) -> None:
            error = ""
            if isinstance(result, Failure):
                error = _error_text(result)
                _log.error("leave failed: {error}", error=error)
            self.send(seq, error)
            try:
                self.agent.stop_agent()
            except Exception:
                _log.failure("shutdown failed")

        return maybeDeferred(self.agent.leave).addBoth(done)

    # --- keys -----------------------------------------------------------------------------

    def _key_command(self, seq: int, body: Any, call: Callable[[str], Deferred[Any]]) -> Deferred[None] | None:
        req = decode_body(KeyRequest, body)
        try:
            decode_base64(req.key)
        except KeyringError as e:
            self.send(seq, str(e), zero_key_response())
            return None
        return self._key_result(seq, maybeDeferred(call, req.key), with_keys=False)

    def _key_result(self, seq: int, d: Deferred[Any], *, with_keys: bool) -> Deferred[None]:
        def done(result: object) -> None:
            if isinstance(result, Failure):
                response = getattr(result.value, "response", None)
                self.send(seq, _error_text(result), key_response_record(response, with_keys=with_keys))
            else:
                self.send(seq, "", key_response_record(result, with_keys=with_keys))

        return d.addBoth(done)

    def cmd_install_key(self, seq: int, body: Any) -> Deferred[None] | None:
        return self._key_command(seq, body, self.agent.install_key)

    def cmd_use_key(self, seq: int, body: Any) -> Deferred[None] | None:
        return self._key_command(seq, body, self.agent.use_key)

    def cmd_remove_key(self, seq: int, body: Any) -> Deferred[None] | None:
        return self._key_command(seq, body, self.agent.remove_key)

    def cmd_list_keys(self, seq: int, body: Any) -> Deferred[None]:
        return self._key_result(seq, maybeDeferred(self.agent.list_keys), with_keys=True)

    # --- information --------------------------------------------------------------------------

    def cmd_stats(self, seq: int, body: Any) -> None:
        stats = self.agent.stats()
        self.send(seq, "", {str(k): {str(a): str(b) for a, b in v.items()} for k, v in stats.items()})

    def cmd_get_coordinate(self, seq: int, body: Any) -> None:
        req = decode_body(CoordinateRequest, body)
        self.send(seq, "", coordinate_record(self.agent.get_coordinate(req.node)))

    # --- streams ------------------------------------------------------------------------------

    def cmd_stream(self, seq: int, body: Any) -> None:
        req = decode_body(StreamRequest, body)
        try:
            event_filter = parse_event_filters(req.type)
        except ValueError:
            self.send(seq, INVALID_FILTER)
            return
        if seq in self.streams:
            self.send(seq, STREAM_EXISTS)
            return
        if len(self.streams) >= self.factory.max_streams:
            self.send(seq, TOO_MANY_STREAMS)
            return
        self.send(seq)
        # Registered after the answer, so no record can precede it.
        self.streams[seq] = lambda: None
        unsubscribe = self.agent.subscribe_events(lambda event: self._stream_event(seq, event_filter, event))
        if seq in self.streams:
            self.streams[seq] = unsubscribe
        else:  # the connection closed while subscribing
            unsubscribe()

    def _stream_event(self, seq: int, event_filter: EventFilter, event: Any) -> None:
        if self.closed or seq not in self.streams or not event_filter.matches(event):
            return
        kind = getattr(event.type, "value", event.type)
        record: dict[str, Any]
        if kind == "user":
            record = {
                "Event": "user",
                "LTime": int(event.ltime),
                "Name": event.name,
                "Payload": bytes(event.payload),
                "Coalesce": bool(event.coalesce),
            }
        elif kind == "query":
            record = {
                "Event": "query",
                "ID": self._register_query(event),
                "LTime": int(event.ltime),
                "Name": event.name,
                "Payload": bytes(event.payload),
            }
        else:
            record = {"Event": str(kind), "Members": [member_record(m) for m in event.members]}
        self.send(seq, "", record)

    def _register_query(self, query: Any) -> int:
        """A per-connection ID for *query*; it answers ``respond`` only while the query is pending."""
        self._query_id += 1
        query_id = self._query_id
        pending = getattr(query, "pending", None)
        if callable(pending) and not pending():
            return query_id
        remaining = float(getattr(query, "deadline", 0.0)) - self.factory.reactor.seconds()
        if remaining < 0:
            return query_id
        timer = self.factory.reactor.callLater(remaining, self._forget_query, query_id)
        self.pending_queries[query_id] = (query, timer)
        return query_id

    def _forget_query(self, query_id: int) -> None:
        self.pending_queries.pop(query_id, None)

    def cmd_respond(self, seq: int, body: Any) -> None:
        req = decode_body(RespondRequest, body)
        entry = self.pending_queries.get(req.id)
        if entry is None:
            self.send(seq, INVALID_QUERY_ID)
            return
        try:
            entry[0].respond(req.payload)
        except Exception as e:
            self.send(seq, str(e) or type(e).__name__)
            return
        self.send(seq)

    def cmd_monitor(self, seq: int, body: Any) -> None:
        req = decode_body(MonitorRequest, body)
        try:
            level = parse_level(req.log_level)
        except ValueError as e:
            self.send(seq, str(e))
            return
        if self.monitor_seq is not None:
            self.send(seq, MONITOR_EXISTS)
            return
        self.send(seq)
        self.monitor_seq = seq

        def line(text: str) -> None:
            if not self.closed and self.monitor_seq == seq:
                self.send(seq, "", {"Log": text})

        unsubscribe = self.agent.log_ring.subscribe(level, line)
        if self.monitor_seq == seq and not self.closed:
            self._monitor_unsubscribe = unsubscribe
        else:
            unsubscribe()

    def cmd_stop(self, seq: int, body: Any) -> None:
        req = decode_body(StopRequest, body)
        if self.monitor_seq is not None and self.monitor_seq == req.stop:
            if self._monitor_unsubscribe is not None:
                self._monitor_unsubscribe()
            self._monitor_unsubscribe = None
            self.monitor_seq = None
        unsubscribe = self.streams.pop(req.stop, None)
        if unsubscribe is not None:
            unsubscribe()
        self.send(seq)

    def cmd_query(self, seq: int, body: Any) -> None:
        req = decode_body(QueryRequest, body)
        # Go passes a negative timeout through and streams garbage until the
        # (past) deadline; we take it, like 0, as "the default".
        timeout = req.timeout / 1e9 if req.timeout > 0 else 0.0
        try:
            handle = self.agent.query(
                req.name,
                req.payload,
                list(req.filter_nodes),
                dict(req.filter_tags),
                req.request_ack,
                req.relay_factor,
                timeout,
            )
        except Exception as e:
            self.send(seq, str(e) or type(e).__name__)
            return
        self.send(seq)

        def ack(node: str) -> None:
            self.send(seq, "", {"Type": "ack", "From": node, "Payload": None})

        def response(answer: Any) -> None:
            self.send(seq, "", {"Type": "response", "From": answer.from_, "Payload": bytes(answer.payload)})

        def done(_: object) -> None:
            self.send(seq, "", {"Type": "done", "From": "", "Payload": None})

        handle.on_ack(ack)
        handle.on_response(response)
        handle.when_done().addBoth(done)


class RPCFactory(Factory):
    """Serves the RPC protocol for one agent.

    :param reactor: for timers (handshake timeout, pending query expiry);
        must be the clock the agent's queries use.
    :param agent: the :class:`~flyteserf.rpc.interfaces.IRPCAgent`.
    :param auth_key: the ``rpc_auth`` token; empty means no authentication.
    """

    protocol = RPCProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: IReactorTime,
        agent: IRPCAgent,
        auth_key: str = "",
        *,
        max_request: int = DEFAULT_MAX_BUFFER,
        max_outgoing: int = 4 * 1024 * 1024,
        max_connections: int = 1024,
        max_streams: int = 64,
        handshake_timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.agent = agent
        self.auth_key = auth_key
        self.max_request = max_request
        self.max_outgoing = max_outgoing
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.handshake_timeout = handshake_timeout
        self.connections: set[RPCProtocol] = set()
        self._refusing = False

    def buildProtocol(self, addr: IAddress) -> RPCProtocol | None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                _log.warn(
                    "Refusing RPC clients: {count} connections already open", count=len(self.connections)
                )
            return None
        self._refusing = False
        proto = RPCProtocol()
        proto.factory = self
        self.connections.add(proto)
        return proto

    def connection_lost(self, proto: RPCProtocol) -> None:
        self.connections.discard(proto)

    def close_all(self) -> None:
        """Close every client connection (the agent is shutting down)."""
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.loseConnection()
