"""Queries: parameters, filters, the origin's response collector and the receiver's query (spec §3.7).

A query is a user event that expects answers: it is gossiped like one, but
each node that passes its filters may ack it and answer it once, by UDP
straight to the origin (and through up to ``relay_factor`` other members),
before its deadline.  The origin collects acks and responses in a
:class:`QueryResponse` keyed by the query's Lamport time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import attrs
import re2
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from flyteserf.serf.errors import RespondError
from flyteserf.serf.events import EventType
from flyteserf.serf.interfaces import IQueryResponder
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.serf_messages import (
    QueryResponse as QueryResponseMessage,
    TagFilter,
    decode_filter,
    encode_node_filter,
    encode_tag_filter,
)

__all__ = [
    "IncomingQuery",
    "NodeResponse",
    "QueryParam",
    "QueryResponse",
    "should_process",
]

_log = Logger()

#: Go's regexp syntax; errors are reported here, not printed by the C++ library.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _tags(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _relay_factor(instance: object, attribute: object, value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"relay factor must be between 0 and 255 (a uint8), got {value!r}")


def _timeout(instance: object, attribute: object, value: float) -> None:
    if value < 0:
        raise ValueError(f"query timeout must be >= 0 seconds (0 = the default), got {value!r}")


@attrs.frozen
class QueryParam:
    """How to run a query (Go's ``QueryParam``); the defaults are Serf's."""

    #: Only these nodes process the query (empty = all).
    filter_nodes: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: tag -> RE2 regex, matched unanchored against the tag's value.
    filter_tags: Mapping[str, str] = attrs.field(factory=dict, converter=_tags)
    #: Ask every node that passes the filters for an ack.
    request_ack: bool = False
    #: Each answer is also relayed through this many other members.
    relay_factor: int = attrs.field(default=0, validator=_relay_factor)
    #: Seconds; 0 means ``GossipInterval × QueryTimeoutMult × ceil(log10(N+1))``.
    timeout: float = attrs.field(default=0.0, validator=_timeout)
    #: End the query as soon as every member (memberlist's count at start)
    #: has responded, instead of always waiting for the deadline as Go does.
    finish_when_all_responded: bool = False

    def encode_filters(self) -> tuple[bytes, ...]:
        """The wire ``Filters``: one node filter, then one per tag."""
        filters: list[bytes] = []
        if self.filter_nodes:
            filters.append(encode_node_filter(self.filter_nodes))
        for tag, expr in self.filter_tags.items():
            filters.append(encode_tag_filter(tag, expr))
        return tuple(filters)


def should_process(filters: Sequence[bytes], node_name: str, tags: Mapping[str, str]) -> bool:
    """Whether this node passes every filter (ANDed).

    Tag regexes are Go RE2 and unanchored.  A filter that does not decode, an
    unknown filter type and an invalid regex all mean "do not process".
    """
    for raw in filters:
        try:
            _, value = decode_filter(raw)
        except DecodeError as e:
            _log.warn("failed to decode query filter: {e}", e=str(e))
            return False
        if not isinstance(value, TagFilter):
            if node_name not in value:
                return False
        else:
            try:
                pattern = re2.compile(value.expr, _RE2_OPTIONS)
                matched = pattern.search(tags.get(value.tag, "")) is not None
            except re2.error as e:
                _log.warn("failed to compile filter regex ({expr}): {e}", expr=value.expr, e=str(e))
                return False
            if not matched:
                return False
    return True


@attrs.frozen
class NodeResponse:
    """One node's answer to our query."""

    from_: str
    payload: bytes


class QueryResponse:
    """The origin's view of one running query: acks and responses as they arrive.

    Register listeners with :meth:`on_ack` / :meth:`on_response` (they are
    first called with what already arrived), and wait for the end with
    :meth:`when_done`, which fires at the deadline, at :meth:`close`, or,
    with ``finish_when_all_responded``, once every expected node answered.
    Acks and responses are deduplicated per node, as Serf does.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        name: str,
        ltime: int,
        query_id: int,
        timeout: float,
        request_ack: bool,
        expected: int,
        finish_when_all_responded: bool = False,
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.ltime = ltime
        self.id = query_id
        self.timeout = timeout
        self.deadline = reactor.seconds() + timeout
        self.request_ack = request_ack
        #: memberlist's member count when the query started.
        self.expected = expected
        self.finish_when_all_responded = finish_when_all_responded
        self.acks: list[str] = []
        self.responses: list[NodeResponse] = []
        self._acked: set[str] = set()
        self._answered: set[str] = set()
        self._ack_listeners: list[Callable[[str], object]] = []
        self._response_listeners: list[Callable[[NodeResponse], object]] = []
        self._done_waiters: list[Deferred[QueryResponse]] = []
        self._closed = False
        self._timer: IDelayedCall | None = reactor.callLater(timeout, self.close)
        self._on_close: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return (
            f"<QueryResponse {self.name!r} ltime={self.ltime} acks={len(self.acks)} "
            f"responses={len(self.responses)}{' closed' if self._closed else ''}>"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def finished(self) -> bool:
        """Closed, or past the deadline (Go's ``Finished``)."""
        return self._closed or self.reactor.seconds() > self.deadline

    def on_ack(self, listener: Callable[[str], object]) -> None:
        """Call *listener* with each acking node's name (past ones first)."""
        for name in self.acks:
            self._call(listener, name)
        self._ack_listeners.append(listener)

    def on_response(self, listener: Callable[[NodeResponse], object]) -> None:
        """Call *listener* with each :class:`NodeResponse` (past ones first)."""
        for response in self.responses:
            self._call(listener, response)
        self._response_listeners.append(listener)

    def when_done(self) -> Deferred[QueryResponse]:
        """A Deferred firing with ``self`` when the query is over."""
        if self._closed:
            return succeed(self)
        waiter: Deferred[QueryResponse] = Deferred()
        self._done_waiters.append(waiter)
        return waiter

    def add_close_hook(self, hook: Callable[[], object]) -> None:
        """For Serf: forget the query when it closes."""
        self._on_close.append(hook)

    def close(self) -> None:
        """End the query now; later answers are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for hook in self._on_close:
            hook()
        waiters, self._done_waiters = self._done_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    # -- fed by Serf --------------------------------------------------------

    def add_ack(self, node: str) -> bool:
        """Record an ack; False if finished or a duplicate."""
        if self.finished() or node in self._acked or not self.request_ack:
            return False
        self._acked.add(node)
        self.acks.append(node)
        for listener in list(self._ack_listeners):
            self._call(listener, node)
        return True

    def add_response(self, node: str, payload: bytes) -> bool:
        """Record a response; False if finished or a duplicate."""
        if self.finished() or node in self._answered:
            return False
        self._answered.add(node)
        response = NodeResponse(node, payload)
        self.responses.append(response)
        for listener in list(self._response_listeners):
            self._call(listener, response)
        if self.finish_when_all_responded and len(self.responses) >= self.expected:
            self.close()
        return True

    def _call(self, listener: Callable[..., object], value: object) -> None:
        try:
            listener(value)
        except Exception:
            self.log.failure("query listener failed on {value!r}", value=value)


@attrs.define(eq=False)
class IncomingQuery:
    """A query this node received (the ``query`` event); answer with :meth:`respond`."""

    ltime: int
    name: str
    payload: bytes
    id: int
    #: The origin's address and port, where the answer goes.
    addr: bytes
    port: int
    source_node: str
    relay_factor: int
    #: Reactor time after which responding fails; 0 once answered.
    deadline: float
    _responder: IQueryResponder = attrs.field(repr=False)
    type: EventType = attrs.field(default=EventType.QUERY, init=False)

    def __str__(self) -> str:
        return f"query: {self.name}"

    @property
    def response_size_limit(self) -> int:
        return self._responder.query_response_size_limit

    @property
    def responded(self) -> bool:
        return self.deadline == 0

    def pending(self) -> bool:
        """Whether a response can still be sent (not answered, not past the deadline)."""
        return not self.responded and self._responder.seconds() <= self.deadline

    def create_response(self, payload: bytes) -> QueryResponseMessage:
        return QueryResponseMessage(ltime=self.ltime, id=self.id, from_=self._responder.node_name, payload=payload)

    def respond(self, payload: bytes) -> None:
        """Answer once, before the deadline; raises :class:`RespondError` with Serf's text."""
        message = self.create_response(payload)
        self.respond_with(message.encode(), message)

    def respond_with(self, raw: bytes, message: QueryResponseMessage) -> None:
        """Send an already-encoded response (the key-list query sizes its own)."""
        limit = self._responder.query_response_size_limit
        if len(raw) > limit:
            raise RespondError(f"response exceeds limit of {limit} bytes")
        if self.responded:
            raise RespondError("response already sent")
        if self._responder.seconds() > self.deadline:
            raise RespondError("response is past the deadline")
        self._responder.send_query_response(self, raw, message)
        self.deadline = 0.0

