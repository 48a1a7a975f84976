"""A fake agent for testing RPC clients and the RPC server without a cluster.

:class:`FakeRPCAgent` implements :class:`~flyteserf.rpc.interfaces.IRPCAgent`
over plain in-memory state, with Serf's texts for the failures the ``serf``
CLI shows, so that a test can drive :class:`~flyteserf.rpc.server.RPCFactory`
(or the real ``serf`` CLI) and check what a user would see::

    agent = FakeRPCAgent(clock, "a")
    agent.add_member("b", "127.0.0.2", tags={"role": "web"})
    factory = RPCFactory(clock, agent)

Queries are answered by every alive member that passes the filters: an ack
when one is asked for, then the response :attr:`FakeRPCAgent.query_responder`
gives (default: the payload echoed back), after :attr:`ack_delay` and
:attr:`response_delay` seconds of the injected clock.

:class:`RPCConnection` is one client connection to a factory over a
``StringTransport``: send requests, read back the decoded answers.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import attrs
import re2
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from flyteserf.agent.logring import LogRing
from flyteserf.rpc.codec import RPCDecoder, packb
from flyteserf.rpc.interfaces import IRPCAgent
from flyteserf.rpc.server import RPCFactory, RPCProtocol
from flyteserf.serf.errors import SerfError
from flyteserf.serf.events import Event, EventType, Member, MemberEvent, UserEvent
from flyteserf.serf.interfaces import IQueryResponder
from flyteserf.serf.keymanager import KeyQueryError, KeyResponse
from flyteserf.serf.query import IncomingQuery, QueryResponse
from flyteserf.wire.keyring import Keyring, KeyringError, decode_base64, encode_key
from flyteserf.wire.serf_messages import Coordinate, MemberStatus, QueryResponse as QueryResponseMessage

__all__ = ["FakeRPCAgent", "JoinFailed", "RPCConnection", "SentResponse"]

_NO_BODY: Any = object()

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

USER_EVENT_SIZE_LIMIT = 512
_NO_KEYRING = "No keyring to modify (encryption not enabled)"
_EMPTY_KEYRING = "Keyring is empty (encryption not enabled)"


class JoinFailed(SerfError):
    """A join in which no address answered: Go's multierror text, and ``num``."""

    def __init__(self, text: str, num: int = 0) -> None:
        super().__init__(text)
        self.num = num


@attrs.frozen
class SentResponse:
    """A response one of our incoming queries got through ``respond``."""

    query: IncomingQuery
    payload: bytes


def _multierror(errors: Sequence[str]) -> str:
    lines = "".join(f"\t* {e}\n" for e in errors)
    return f"{len(errors)} error{'s' if len(errors) != 1 else ''} occurred:\n{lines}\n"


@implementer(IQueryResponder)
class _FakeResponder:
    """Answers for the queries :meth:`FakeRPCAgent.emit_query` delivers."""

    def __init__(self, agent: FakeRPCAgent) -> None:
        self.agent = agent

    @property
    def node_name(self) -> str:
        return self.agent.node_name

    @property
    def query_response_size_limit(self) -> int:
        return self.agent.query_response_size_limit

    def seconds(self) -> float:
        return self.agent.reactor.seconds()

    def send_query_response(self, query: IncomingQuery, raw: bytes, message: QueryResponseMessage) -> None:
        self.agent.responses.append(SentResponse(query, message.payload))


@implementer(IRPCAgent)
class FakeRPCAgent:
    """An in-memory agent: members, tags, keyring, queries, events and logs you control."""

    def __init__(
        self,
        reactor: IReactorTime,
        node_name: str = "fake",
        addr: str = "127.0.0.1",
        port: int = 7946,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.node_name = node_name
        self.log_ring = LogRing()
        self.tags: dict[str, str] = dict(tags or {})
        self._members: dict[str, Member] = {}
        self._members[node_name] = Member(node_name, addr, port, dict(self.tags), MemberStatus.ALIVE)
        self._subscribers: dict[int, Callable[[Any], object]] = {}
        self._next_token = 0
        # What the RPC server asked for, in order.
        self.events: list[tuple[str, bytes, bool]] = []
        self.force_leaves: list[tuple[str, bool]] = []
        self.joins: list[tuple[list[str], bool]] = []
        self.queries: list[dict[str, Any]] = []
        self.responses: list[SentResponse] = []
        self.left = False
        self.stopped = False
        # Knobs.
        #: address -> error text ("dial tcp …: connection refused"); others join fine.
        self.join_errors: dict[str, str] = {}
        #: An exception for :meth:`leave` to fail with.
        self.leave_error: Exception | None = None
        self.user_event_size_limit = USER_EVENT_SIZE_LIMIT
        self.keyring: Keyring | None = None
        self.coordinates: dict[str, Coordinate] = {}
        self.event_handlers: dict[str, str] = {}
        #: (node, query name, payload) -> response payload, or None for no response.
        self.query_responder: Callable[[str, str, bytes], bytes | None] = lambda node, name, payload: payload
        self.ack_delay = 0.01
        self.response_delay = 0.02
        #: Seconds; None means Serf's ``0.2 × 16 × ceil(log10(N + 1))``.
        self.default_query_timeout: float | None = None
        self.query_response_size_limit = 1024
        self._incoming_id = 0

    # --- state helpers for tests --------------------------------------------------------------

    def add_member(
        self,
        name: str,
        addr: str,
        port: int = 7946,
        tags: Mapping[str, str] | None = None,
        status: MemberStatus = MemberStatus.ALIVE,
        **versions: int,
    ) -> Member:
        member = Member(name, addr, port, dict(tags or {}), status, **versions)
        self._members[name] = member
        return member

    def set_status(self, name: str, status: MemberStatus) -> None:
        self._members[name] = attrs.evolve(self._members[name], status=status)

    def emit(self, event: Event) -> None:
        """Deliver *event* to every subscriber (RPC streams)."""
        for callback in list(self._subscribers.values()):
            callback(event)

    def emit_member_event(self, etype: EventType, *names: str) -> MemberEvent:
        event = MemberEvent(etype, tuple(self._members[n] for n in names))
        self.emit(event)
        return event

    def emit_user_event(self, name: str, payload: bytes = b"", ltime: int = 1, coalesce: bool = False) -> UserEvent:
        event = UserEvent(ltime=ltime, name=name, payload=payload, coalesce=coalesce)
        self.emit(event)
        return event

    def emit_query(self, name: str, payload: bytes = b"", ltime: int = 1, timeout: float = 5.0) -> IncomingQuery:
        """An incoming query from another node; answers end up in :attr:`responses`."""
        self._incoming_id += 1
        query = IncomingQuery(
            ltime=ltime,
            name=name,
            payload=payload,
            id=self._incoming_id,
            addr=b"\x7f\x00\x00\x02",
            port=7946,
            source_node="origin",
            relay_factor=0,
            deadline=self.reactor.seconds() + timeout,
            responder=_FakeResponder(self),
        )
        self.emit(query)
        return query

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- IRPCAgent ----------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return list(self._members.values())

    def _alive(self) -> list[Member]:
        return [m for m in self._members.values() if m.status == MemberStatus.ALIVE]

    def event(self, name: str, payload: bytes, coalesce: bool) -> None:
        limit = self.user_event_size_limit
        if len(name.encode("utf-8", "surrogatepass")) + len(payload) > limit:
            raise SerfError(f"user event exceeds configured limit of {limit} bytes before encoding")
        self.events.append((name, payload, coalesce))

    def force_leave(self, node: str, prune: bool) -> Deferred[None]:
        self.force_leaves.append((node, prune))
        member = self._members.get(node)
        if member is not None and node != self.node_name:
            if prune:
                del self._members[node]
            elif member.status == MemberStatus.FAILED:
                self.set_status(node, MemberStatus.LEFT)
        return succeed(None)

    def join(self, addresses: Sequence[str], replay: bool) -> Deferred[int]:
        self.joins.append((list(addresses), replay))
        errors = []
        for address in addresses:
            if address in self.join_errors:
                host = address.rpartition("/")[2].rsplit(":", 1)[0]
                errors.append(f"Failed to join {host}: {self.join_errors[address]}")
        num = len(addresses) - len(errors)
        if num == 0 and errors:
            return fail(JoinFailed(_multierror(errors)))
        return succeed(num)

    def leave(self) -> Deferred[None]:
        if self.leave_error is not None:
            return fail(self.leave_error)
        self.left = True
        self.set_status(self.node_name, MemberStatus.LEFT)
        return succeed(None)

    def stop_agent(self) -> None:
        self.stopped = True

    def set_tags(self, tags: Mapping[str, str], delete: Sequence[str]) -> Deferred[None]:
        new = {k: v for k, v in self.tags.items() if k not in delete}
        new.update(tags)
        self.tags = new
        self._members[self.node_name] = attrs.evolve(self._members[self.node_name], tags=dict(new))
        return succeed(None)

    def _passes(self, member: Member, filter_nodes: Sequence[str], filter_tags: Mapping[str, str]) -> bool:
        if filter_nodes and member.name not in filter_nodes:
            return False
        for tag, expr in filter_tags.items():
            try:
                if re2.compile(expr, _RE2_OPTIONS).search(member.tags.get(tag, "")) is None:
                    return False
            except re2.error:
                return False
        return True

    def query(
        self,
        name: str,
        payload: bytes,
        filter_nodes: Sequence[str],
        filter_tags: Mapping[str, str],
        request_ack: bool,
        relay_factor: int,
        timeout: float,
    ) -> QueryResponse:
        alive = self._alive()
        if timeout <= 0:
            if self.default_query_timeout is not None:
                timeout = self.default_query_timeout
            else:
                timeout = 0.2 * 16 * math.ceil(math.log10(len(self._members) + 1))
        self.queries.append(
            {
                "name": name,
                "payload": payload,
                "filter_nodes": list(filter_nodes),
                "filter_tags": dict(filter_tags),
                "request_ack": request_ack,
                "relay_factor": relay_factor,
                "timeout": timeout,
            }
        )
        response = QueryResponse(
            self.reactor,
            name=name,
            ltime=len(self.queries),
            query_id=len(self.queries),
            timeout=timeout,
            request_ack=request_ack,
            expected=len(alive),
        )
        for member in alive:
            if not self._passes(member, filter_nodes, filter_tags):
                continue
            if request_ack:
                self.reactor.callLater(self.ack_delay, response.add_ack, member.name)
            # Internal queries (_serf_ping, …) are only acked, as Serf's handlers do.
            answer = None if name.startswith("_serf_") else self.query_responder(member.name, name, payload)
            if answer is not None:
                self.reactor.callLater(
                    self.response_delay, response.add_response, member.name, answer
                )
        return response

    # --- keys ---------------------------------------------------------------------------------

    def _key_op(self, key: str, apply: Callable[[Keyring, bytes], None]) -> Deferred[KeyResponse]:
        response = KeyResponse()
        try:
            raw = decode_base64(key)
        except KeyringError as e:
            return fail(KeyQueryError(str(e), response))
        nodes = self._alive()
        response.num_nodes = len(nodes)
        for member in nodes:
            response.num_resp += 1
            if not self.keyring:
                response.messages[member.name] = _NO_KEYRING
                response.num_err += 1
                continue
            try:
                apply(self.keyring, raw)
            except KeyringError as e:
                response.messages[member.name] = str(e)
                response.num_err += 1
        if response.num_err:
            return fail(KeyQueryError(f"{response.num_err}/{response.num_nodes} nodes reported failure", response))
        return succeed(response)

    def install_key(self, key: str) -> Deferred[KeyResponse]:
        return self._key_op(key, Keyring.add_key)

    def use_key(self, key: str) -> Deferred[KeyResponse]:
        return self._key_op(key, Keyring.use_key)

    def remove_key(self, key: str) -> Deferred[KeyResponse]:
        return self._key_op(key, Keyring.remove_key)

    def list_keys(self) -> Deferred[KeyResponse]:
        response = KeyResponse()
        nodes = self._alive()
        response.num_nodes = len(nodes)
        for member in nodes:
            response.num_resp += 1
            if not self.keyring:
                response.messages[member.name] = _EMPTY_KEYRING
                response.num_err += 1
                continue
            for raw in self.keyring.keys:
                k = encode_key(raw)
                response.keys[k] = response.keys.get(k, 0) + 1
            primary = self.keyring.primary_key
            if primary:
                k = encode_key(primary)
                response.primary_keys[k] = response.primary_keys.get(k, 0) + 1
        if response.num_err:
            return fail(KeyQueryError(f"{response.num_err}/{response.num_nodes} nodes reported failure", response))
        return succeed(response)

    # --- information --------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, str]]:
        members = self._members.values()
        return {
            "agent": {"name": self.node_name},
            "runtime": {
                "os": "linux",
                "arch": "amd64",
                "version": "python",
                "max_procs": "1",
                "goroutines": "1",
                "cpu_count": "1",
            },
            "serf": {
                "members": str(len(self._members)),
                "failed": str(sum(1 for m in members if m.status == MemberStatus.FAILED)),
                "left": str(sum(1 for m in members if m.status == MemberStatus.LEFT)),
                "health_score": "0",
                "member_time": "1",
                "event_time": str(len(self.events) + 1),
                "query_time": str(len(self.queries) + 1),
                "intent_queue": "0",
                "event_queue": "0",
                "query_queue": "0",
                "encrypted": "true" if self.keyring else "false",
            },
            "tags": dict(self.tags),
            "event_handlers": dict(self.event_handlers),
        }

    def get_coordinate(self, node: str) -> Coordinate | None:
        return self.coordinates.get(node)

    def subscribe_events(self, callback: Callable[[Any], object]) -> Callable[[], None]:
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe


class RPCConnection:
    """One RPC connection to *factory* over a :class:`StringTransport`, for tests without sockets.

    ::

        conn = RPCConnection(factory)
        conn.handshake()
        conn.request("members", 2)
        header, body = conn.read()
    """

    def __init__(self, factory: RPCFactory, peer: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.factory = factory
        address = IPv4Address("TCP", *peer)
        protocol = factory.buildProtocol(address)
        if protocol is None:
            raise RuntimeError("the factory refused the connection")
        self.protocol: RPCProtocol = protocol
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self.decoder = RPCDecoder()
        self._lost = False

    def send_bytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, *objects: Any) -> None:
        """Send msgpack objects back to back, in one segment."""
        self.send_bytes(b"".join(packb(o) for o in objects))

    def request(self, command: str, seq: int, body: Any = _NO_BODY) -> None:
        """A request header, followed by *body* unless none is given."""
        if body is _NO_BODY:
            self.send({"Command": command, "Seq": seq})
        else:
            self.send({"Command": command, "Seq": seq}, body)

    def handshake(self, seq: int = 1) -> None:
        self.request("handshake", seq, {"Version": 1})
        [header] = self.read()
        if header != {"Seq": seq, "Error": ""}:
            raise AssertionError(f"handshake failed: {header!r}")

    def read(self) -> list[Any]:
        """Every object written since the last read."""
        data = self.transport.value()
        self.transport.clear()
        return self.decoder.feed(data)

    def raw(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closing(self) -> bool:
        """The server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    def lose(self) -> None:
        """The connection goes away (as the reactor would report it)."""
        if not self._lost:
            self._lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
