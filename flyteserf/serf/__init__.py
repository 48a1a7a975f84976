"""Serf on top of memberlist: members, intents, user events, queries, keys, snapshot.

Start with :class:`Serf` (``Serf.create(SerfConfig(...), reactor, bind=...)``)
and :class:`SerfConfig`; events reach ``on_event`` as
:class:`~flyteserf.serf.events.MemberEvent`,
:class:`~flyteserf.serf.events.UserEvent` and :class:`IncomingQuery`.
"""

from flyteserf.serf.config import SerfConfig
from flyteserf.serf.errors import RespondError, SerfError
from flyteserf.serf.events import Event, EventType, Member, MemberEvent, UserEvent
from flyteserf.serf.keymanager import KeyManager, KeyQueryError, KeyResponse
from flyteserf.serf.query import IncomingQuery, NodeResponse, QueryParam, QueryResponse
from flyteserf.serf.serf import Serf, SerfState

__all__ = [
    "Event",
    "EventType",
    "IncomingQuery",
    "KeyManager",
    "KeyQueryError",
    "KeyResponse",
    "Member",
    "MemberEvent",
    "NodeResponse",
    "QueryParam",
    "QueryResponse",
    "RespondError",
    "Serf",
    "SerfConfig",
    "SerfError",
    "SerfState",
    "UserEvent",
]
