"""Handlers registered by event name at run time, serfer-style (like ``net/http``).

Serf only ever offered shell scripts fixed at start-up; here a program adds
and removes Python callables while it runs.  A handler may be slow, raise or
return a failing Deferred: each call is isolated, failures are logged with
the event, and nothing waits on a handler before gossip goes on.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from flyteserf.serf.events import EventType, MemberEvent, UserEvent
from flyteserf.serf.query import IncomingQuery

#: The wildcard: every member event, every user event, or every query.
ANY = "*"

MemberHandler = Callable[[MemberEvent], Any]
UserHandler = Callable[[UserEvent], Any]
#: Returns bytes (the response), a Deferred of bytes, or None (no response,
#: or the handler calls ``query.respond`` itself).
QueryHandler = Callable[[IncomingQuery], Union[bytes, "Deferred[bytes | None]", None]]

_MEMBER_TYPES = {
    "join": EventType.MEMBER_JOIN,
    "leave": EventType.MEMBER_LEAVE,
    "failed": EventType.MEMBER_FAILED,
    "update": EventType.MEMBER_UPDATE,
    "reap": EventType.MEMBER_REAP,
}


def member_event_key(kind: str) -> str:
    """``join`` or ``member-join`` (or ``*``) → the canonical event name."""
    if kind == ANY:
        return ANY
    if kind in _MEMBER_TYPES:
        return _MEMBER_TYPES[kind].value
    try:
        return EventType(kind).value
    except ValueError:
        pass
    raise ValueError(
        f"unknown member event {kind!r}: use join, leave, failed, update, reap or {ANY!r}"
    )


@attrs.define(eq=False)
class Registration:
    """What :meth:`HandlerRegistry.add_member_handler` and friends return; ``remove()`` unregisters."""

    _table: dict[str, list[Any]]
    key: str
    handler: Any

    def remove(self) -> None:
        handlers = self._table.get(self.key, [])
        if self.handler in handlers:
            handlers.remove(self.handler)


class HandlerRegistry:
    """Handlers by event kind and name; :meth:`dispatch` calls the matching ones."""

    log = Logger()

    def __init__(self) -> None:
        self._member: dict[str, list[MemberHandler]] = {}
        self._user: dict[str, list[UserHandler]] = {}
        self._query: dict[str, list[QueryHandler]] = {}
        #: Handler failures so far (also logged).
        self.failures = 0

    def add_member_handler(self, kind: str, handler: MemberHandler) -> Registration:
        """*kind*: ``join``, ``leave``, ``failed``, ``update``, ``reap`` or ``*``."""
        return self._add(self._member, member_event_key(kind), handler)

    def add_user_handler(self, name: str, handler: UserHandler) -> Registration:
        """*name*: a user event name, or ``*`` for every user event."""
        return self._add(self._user, name, handler)

    def add_query_handler(self, name: str, handler: QueryHandler) -> Registration:
        """*name*: a query name, or ``*``; the first handler to answer wins."""
        return self._add(self._query, name, handler)

    def _add(self, table: dict[str, list[Any]], key: str, handler: Any) -> Registration:
        if not callable(handler):
            raise TypeError(f"handler for {key!r} is not callable: {handler!r}")
        table.setdefault(key, []).append(handler)
        return Registration(table, key, handler)

    def dispatch(self, event: Any) -> None:
        """Call every handler that matches *event*; never raises."""
        if isinstance(event, MemberEvent):
            for handler in self._matching(self._member, event.type.value):
                self._call(handler, event, str(event))
        elif isinstance(event, UserEvent):
            for handler in self._matching(self._user, event.name):
                self._call(handler, event, str(event))
        elif isinstance(event, IncomingQuery):
            for handler in self._matching(self._query, event.name):
                d = self._call(handler, event, f"query: {event.name}")
                d.addCallback(self._answer, event)

    @staticmethod
    def _matching(table: dict[str, list[Any]], key: str) -> list[Any]:
        return list(table.get(key, ())) + list(table.get(ANY, ()))

    def _call(self, handler: Any, event: Any, what: str) -> Deferred[Any]:
        d = maybeDeferred(handler, event)

        def failed(failure: Failure) -> None:
            self.failures += 1
            self.log.failure("Handler {handler} failed on {event}", failure, handler=_name(handler), event=what)

        d.addErrback(failed)
        return d

    def _answer(self, result: Any, query: IncomingQuery) -> None:
        if result is None:
            return
        if not isinstance(result, (bytes, bytearray, memoryview)):
            self.failures += 1
            self.log.error(
                "Query handler for {name} returned {kind}, not bytes; no response sent",
                name=query.name, kind=type(result).__name__,
            )
            return
        if query.responded:
            return  # another handler (or a script) answered first
        try:
            query.respond(bytes(result))
        except Exception as e:
            self.failures += 1
            self.log.error("Responding to query {name} failed: {error}", name=query.name, error=str(e))


def _name(handler: Any) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
