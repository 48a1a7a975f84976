"""Event filters: which events an event handler or an RPC ``stream`` wants (spec §5.3).

The grammar is Serf's: a comma-separated list of ``member-join``,
``member-leave``, ``member-failed``, ``member-update``, ``member-reap``,
``user``, ``user:<name>``, ``query``, ``query:<name>`` or ``*``; an empty
filter means ``*``.  As in Serf, nothing is trimmed (``"user, query"`` is
invalid because of the space), ``user:`` is the same as ``user``, and a name
may contain anything, commas aside (``user:a:b`` is the event ``a:b``).

Matching is duck-typed over the events in :mod:`flyteserf.serf.events` and
:class:`flyteserf.serf.query.IncomingQuery`: an event has a ``type`` (an
:class:`~flyteserf.serf.events.EventType` or its string value) and, for user
events and queries, a ``name``.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import attrs

__all__ = [
    "EVENT_KINDS",
    "EventFilter",
    "FilterClause",
    "handler_key",
    "handler_keys",
    "parse_event_filters",
]

#: Every event kind a clause may name, ``*`` being "everything".
EVENT_KINDS: tuple[str, ...] = (
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "user",
    "query",
    "*",
)
_NAMED_KINDS = ("user", "query")
_GRAMMAR = "member-join, member-leave, member-failed, member-update, member-reap, user[:name], query[:name] or *"


def _event_kind(event: object) -> str | None:
    etype = getattr(event, "type", None)
    if etype is None:
        return None
    value = getattr(etype, "value", etype)
    return value if isinstance(value, str) else None


@attrs.frozen
class FilterClause:
    """One comma-separated element of a filter: an event kind and, for user events and queries, a name.

    An empty :attr:`name` matches every name.
    """

    event: str
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise ValueError(f"Invalid event filter: unknown event {self.event!r}; use {_GRAMMAR}")
        if self.name and self.event not in _NAMED_KINDS:
            raise ValueError(f"Invalid event filter: only user and query events have names, not {self.event!r}")

    def matches(self, event: object) -> bool:
        if self.event == "*":
            return True
        if _event_kind(event) != self.event:
            return False
        if self.name:
            return getattr(event, "name", None) == self.name
        return True

    def __str__(self) -> str:
        return f"{self.event}:{self.name}" if self.name else self.event


def _clauses(value: Iterable[FilterClause]) -> tuple[FilterClause, ...]:
    return tuple(value)


@attrs.frozen
class EventFilter:
    """A parsed filter: an event matches if any clause matches it."""

    clauses: tuple[FilterClause, ...] = attrs.field(converter=_clauses)

    @clauses.validator
    def _not_empty(self, attribute: object, value: tuple[FilterClause, ...]) -> None:
        if not value:
            raise ValueError("Invalid event filter: no clauses; use '*' for every event")

    def matches(self, event: object) -> bool:
        return any(clause.matches(event) for clause in self.clauses)

    def __str__(self) -> str:
        return ",".join(str(clause) for clause in self.clauses)

    def __iter__(self) -> Iterator[FilterClause]:
        return iter(self.clauses)


def _parse_clause(text: str, spec: str) -> FilterClause:
    event, name = text, ""
    for kind in _NAMED_KINDS:
        if text.startswith(kind + ":"):
            event, name = kind, text[len(kind) + 1 :]
            break
    if event not in EVENT_KINDS:
        raise ValueError(f"Invalid event filter: {text!r} in {spec!r}; use {_GRAMMAR}, comma-separated")
    return FilterClause(event, name)


def parse_event_filters(spec: str) -> EventFilter:
    """Parse Serf's filter syntax; ``""`` means ``*``.

    Raises :class:`ValueError` (``"Invalid event filter: ..."``) on any
    element that is not in the grammar, including empty ones (``"user,"``).
    """
    if spec == "":
        spec = "*"
    return EventFilter(_parse_clause(part, spec) for part in spec.split(","))


def handler_key(clause: FilterClause | EventFilter) -> str:
    """The key ``stats`` shows under ``event_handlers`` for one clause: ``"*:"``, ``"user:deploy"``.

    Serf keys its map per clause (``event:name``, the name possibly empty);
    an :class:`EventFilter` is accepted only if it has exactly one clause
    (see :func:`handler_keys` for the others).
    """
    if isinstance(clause, EventFilter):
        if len(clause.clauses) != 1:
            raise ValueError(f"handler_key needs a single-clause filter, not {str(clause)!r}; use handler_keys")
        clause = clause.clauses[0]
    return f"{clause.event}:{clause.name}"


def handler_keys(event_filter: EventFilter) -> list[str]:
    """One :func:`handler_key` per clause, in order (Serf's map keeps the last script per key)."""
    return [handler_key(clause) for clause in event_filter.clauses]
