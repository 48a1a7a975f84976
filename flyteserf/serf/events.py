"""What the serf layer reports upwards: member events, user events, queries.

These are the values handlers, RPC streams and event scripts receive.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Union

import attrs

from flyteserf.wire.serf_messages import MemberStatus

if TYPE_CHECKING:
    from flyteserf.serf.query import IncomingQuery  # noqa: F401


class EventType(str, enum.Enum):
    """Event names exactly as Serf spells them (``SERF_EVENT``, RPC streams)."""

    MEMBER_JOIN = "member-join"
    MEMBER_LEAVE = "member-leave"
    MEMBER_FAILED = "member-failed"
    MEMBER_UPDATE = "member-update"
    MEMBER_REAP = "member-reap"
    USER = "user"
    QUERY = "query"


@attrs.frozen
class Member:
    """A snapshot of one serf member, as handlers and RPC see it."""

    name: str
    addr: str
    port: int
    tags: dict[str, str] = attrs.field(factory=dict, hash=False)
    status: MemberStatus = MemberStatus.NONE
    protocol_min: int = 1
    protocol_max: int = 5
    protocol_cur: int = 2
    delegate_min: int = 2
    delegate_max: int = 5
    delegate_cur: int = 5


@attrs.frozen
class MemberEvent:
    """One or more members joined, left, failed, changed or were reaped."""

    type: EventType
    members: tuple[Member, ...]

    def __str__(self) -> str:
        return f"{self.type.value}: {', '.join(m.name for m in self.members)}"


@attrs.frozen
class UserEvent:
    """A user event delivered locally (``coalesce`` is the wire's CC flag)."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool

    type: EventType = attrs.field(default=EventType.USER, init=False)

    def __str__(self) -> str:
        return f"user-event: {self.name}"


Event = Union[MemberEvent, UserEvent, "IncomingQuery"]
