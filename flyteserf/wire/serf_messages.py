"""Serf 0.9.4 messages (serf-wire §3.1–3.3, §3.8, §3.11).

A serf message is ``[serf type][msgpack]`` and always travels inside a
memberlist user message (``0x08``).  Key-query payloads and conflict answers
nest further serf messages inside a query or response payload.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Sequence

import attrs
import msgpack

from flyteserf.wire.codec import (
    MSGPACK_ERRORS,
    BOOL,
    BYTES,
    BYTES_OR_NIL,
    FLOAT64,
    INT,
    STRING,
    STRINGS,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    GoStruct,
    ListOf,
    MapOf,
    Nilable,
    Struct,
    go_field,
    gossip_packb,
    gossip_unpackb,
    gossip_unpacker,
    gostruct,
)
from flyteserf.wire.errors import DecodeError


class SerfMessageType(enum.IntEnum):
    LEAVE = 0
    JOIN = 1
    PUSH_PULL = 2
    USER_EVENT = 3
    QUERY = 4
    QUERY_RESPONSE = 5
    CONFLICT_RESPONSE = 6
    KEY_REQUEST = 7
    KEY_RESPONSE = 8
    RELAY = 9


class MemberStatus(enum.IntEnum):
    """Serf's member statuses; :attr:`label` is the RPC string."""

    NONE = 0
    ALIVE = 1
    LEAVING = 2
    LEFT = 3
    FAILED = 4

    @property
    def label(self) -> str:
        return self.name.lower()


#: Query flag bits.
QUERY_FLAG_ACK = 1
QUERY_FLAG_NO_BROADCAST = 2

#: Filter type bytes inside ``messageQuery.Filters``.
FILTER_NODE = 0
FILTER_TAG = 1


class SerfMessage(GoStruct):
    TYPE: ClassVar[SerfMessageType]

    def encode(self) -> bytes:
        """``[serf type][msgpack]`` (without the memberlist ``0x08``)."""
        return bytes((self.TYPE,)) + self.pack()


@gostruct
class Leave(SerfMessage):
    TYPE = SerfMessageType.LEAVE
    ltime: int = go_field("LTime", UINT64)
    node: str = go_field("Node", STRING)
    prune: bool = go_field("Prune", BOOL)


@gostruct
class Join(SerfMessage):
    TYPE = SerfMessageType.JOIN
    ltime: int = go_field("LTime", UINT64)
    node: str = go_field("Node", STRING)


@gostruct
class UserEvent(SerfMessage):
    TYPE = SerfMessageType.USER_EVENT
    ltime: int = go_field("LTime", UINT64)
    name: str = go_field("Name", STRING)
    payload: bytes = go_field("Payload", BYTES_OR_NIL)
    cc: bool = go_field("CC", BOOL)


@gostruct
class Query(SerfMessage):
    TYPE = SerfMessageType.QUERY
    ltime: int = go_field("LTime", UINT64)
    id: int = go_field("ID", UINT32)
    addr: bytes = go_field("Addr", BYTES)
    port: int = go_field("Port", UINT16)
    source_node: str = go_field("SourceNode", STRING)
    filters: tuple[bytes, ...] = go_field("Filters", ListOf(BYTES))
    flags: int = go_field("Flags", UINT32)
    relay_factor: int = go_field("RelayFactor", UINT8)
    timeout: int = go_field("Timeout", INT)  # nanoseconds
    name: str = go_field("Name", STRING)
    payload: bytes = go_field("Payload", BYTES_OR_NIL)

    @property
    def ack(self) -> bool:
        return bool(self.flags & QUERY_FLAG_ACK)

    @property
    def no_broadcast(self) -> bool:
        return bool(self.flags & QUERY_FLAG_NO_BROADCAST)


@gostruct
class QueryResponse(SerfMessage):
    TYPE = SerfMessageType.QUERY_RESPONSE
    ltime: int = go_field("LTime", UINT64)
    id: int = go_field("ID", UINT32)
    from_: str = go_field("From", STRING)
    flags: int = go_field("Flags", UINT32)
    payload: bytes = go_field("Payload", BYTES_OR_NIL)

    @property
    def ack(self) -> bool:
        return bool(self.flags & QUERY_FLAG_ACK)


@gostruct
class EventEntry(GoStruct):
    """One ``{Name, Payload}`` of a ring slot."""

    name: str = go_field("Name", STRING)
    payload: bytes = go_field("Payload", BYTES_OR_NIL)


@gostruct
class UserEvents(GoStruct):
    """One slot of the 512-slot user-event ring."""

    ltime: int = go_field("LTime", UINT64)
    events: tuple[EventEntry, ...] = go_field("Events", ListOf(Struct(EventEntry)))


@gostruct
class PushPull(SerfMessage):
    TYPE = SerfMessageType.PUSH_PULL
    ltime: int = go_field("LTime", UINT64)
    status_ltimes: dict[str, int] = go_field("StatusLTimes", MapOf(UINT64))
    left_members: tuple[str, ...] = go_field("LeftMembers", ListOf(STRING, empty_as_array=True))
    event_ltime: int = go_field("EventLTime", UINT64)
    events: tuple[UserEvents | None, ...] = go_field(
        "Events", ListOf(Nilable(Struct(UserEvents)), empty_as_array=True)
    )
    query_ltime: int = go_field("QueryLTime", UINT64)


@gostruct
class UDPAddr(GoStruct):
    """Go's ``net.UDPAddr`` as a struct."""

    ip: bytes = go_field("IP", BYTES)
    port: int = go_field("Port", INT)
    zone: str = go_field("Zone", STRING)


@gostruct
class RelayHeader(GoStruct):
    dest_addr: UDPAddr = go_field("DestAddr", Struct(UDPAddr), default=attrs.Factory(UDPAddr))
    dest_name: str = go_field("DestName", STRING)


@gostruct
class KeyRequest(SerfMessage):
    TYPE = SerfMessageType.KEY_REQUEST
    key: bytes = go_field("Key", BYTES)


@gostruct
class KeyResponse(SerfMessage):
    TYPE = SerfMessageType.KEY_RESPONSE
    result: bool = go_field("Result", BOOL)
    message: str = go_field("Message", STRING)
    keys: tuple[str, ...] = go_field("Keys", STRINGS)
    primary_key: str = go_field("PrimaryKey", STRING)


@gostruct
class Member(GoStruct):
    """serf.Member as a ``_serf_conflict`` answer carries it."""

    name: str = go_field("Name", STRING)
    addr: bytes = go_field("Addr", BYTES)
    port: int = go_field("Port", UINT16)
    tags: dict[str, str] = go_field("Tags", MapOf(STRING))
    status: int = go_field("Status", INT)
    protocol_min: int = go_field("ProtocolMin", UINT8)
    protocol_max: int = go_field("ProtocolMax", UINT8)
    protocol_cur: int = go_field("ProtocolCur", UINT8)
    delegate_min: int = go_field("DelegateMin", UINT8)
    delegate_max: int = go_field("DelegateMax", UINT8)
    delegate_cur: int = go_field("DelegateCur", UINT8)


@gostruct
class Coordinate(GoStruct):
    """A Vivaldi coordinate (serf-wire §3.11)."""

    vec: tuple[float, ...] = go_field("Vec", ListOf(FLOAT64))
    error: float = go_field("Error", FLOAT64)
    adjustment: float = go_field("Adjustment", FLOAT64)
    height: float = go_field("Height", FLOAT64)


@gostruct
class TagFilter(GoStruct):
    tag: str = go_field("Tag", STRING)
    expr: str = go_field("Expr", STRING)


_BY_TYPE: dict[int, type[SerfMessage]] = {
    cls.TYPE: cls
    for cls in (Leave, Join, PushPull, UserEvent, Query, QueryResponse, KeyRequest, KeyResponse)
}


def decode_serf_message(buf: bytes) -> SerfMessage:
    """Decode ``[serf type][msgpack]`` (not relay, not conflict response)."""
    if not buf:
        raise DecodeError("empty serf message")
    cls = _BY_TYPE.get(buf[0])
    if cls is None:
        raise DecodeError(f"unknown serf message type {buf[0]}")
    return cls.from_map(gossip_unpackb(buf[1:]))


def encode_relay(header: RelayHeader, response: QueryResponse) -> bytes:
    """``[9] msgpack(relayHeader) [5] msgpack(response)``."""
    return bytes((SerfMessageType.RELAY,)) + header.pack() + response.encode()


def decode_relay(buf: bytes) -> tuple[RelayHeader, bytes]:
    """Split a relay message into its header and the type-5 message to forward."""
    if not buf or buf[0] != SerfMessageType.RELAY:
        raise DecodeError("not a relay message")
    unpacker = gossip_unpacker()
    unpacker.feed(buf[1:])
    try:
        raw = unpacker.unpack()
    except (msgpack.OutOfData, *MSGPACK_ERRORS) as e:
        raise DecodeError(f"invalid relay header: {e!r}") from None
    header = RelayHeader.from_map(raw)
    rest = buf[1 + unpacker.tell() :]
    if not rest or rest[0] != SerfMessageType.QUERY_RESPONSE:
        raise DecodeError("relay does not carry a query response")
    return header, rest


def encode_conflict_response(member: Member | None) -> bytes:
    """``[6] msgpack(Member)``, or ``06 c0`` when the name is unknown."""
    body = gossip_packb(None) if member is None else member.pack()
    return bytes((SerfMessageType.CONFLICT_RESPONSE,)) + body


def decode_conflict_response(buf: bytes) -> Member | None:
    if not buf or buf[0] != SerfMessageType.CONFLICT_RESPONSE:
        raise DecodeError("not a conflict response")
    raw = gossip_unpackb(buf[1:])
    return None if raw is None else Member.from_map(raw)


def encode_node_filter(names: Sequence[str]) -> bytes:
    return bytes((FILTER_NODE,)) + gossip_packb([STRING.encode(n) for n in names])


def encode_tag_filter(tag: str, expr: str) -> bytes:
    return bytes((FILTER_TAG,)) + TagFilter(tag=tag, expr=expr).pack()


def decode_filter(buf: bytes) -> tuple[str, tuple[str, ...] | TagFilter]:
    """``("node", names)`` or ``("tag", TagFilter)``; DecodeError otherwise."""
    if not buf:
        raise DecodeError("empty filter")
    if buf[0] == FILTER_NODE:
        return "node", STRINGS.decode(gossip_unpackb(buf[1:]))
    if buf[0] == FILTER_TAG:
        return "tag", TagFilter.unpack(buf[1:])
    raise DecodeError(f"unknown filter type {buf[0]}")
