"""memberlist 0.2.2 messages (serf-wire §2.1–2.2).

Each class is one Go struct; :func:`encode_message` frames it with its type
byte and :func:`decode_message` turns ``[type][msgpack]`` back into an
instance.  Vsn, Addr, Meta and the other byte fields stay ``bytes``.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from typing import ClassVar

from flyteserf.wire.codec import (
    BOOL,
    BYTES,
    BYTES_OR_NIL,
    INT,
    STRING,
    UINT8,
    UINT16,
    UINT32,
    GoStruct,
    go_field,
    gossip_unpackb,
    gostruct,
)
from flyteserf.wire.errors import DecodeError


class MessageType(enum.IntEnum):
    """The first byte of every memberlist message."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13


class NodeState(enum.IntEnum):
    """memberlist's node states as they travel in push/pull."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


#: What a compatible node advertises: memberlist 1..5 speaking 2, serf 2..5 speaking 5.
DEFAULT_VSN = bytes((1, 5, 2, 2, 5, 5))


class Message(GoStruct):
    """A memberlist message with its one-byte type."""

    TYPE: ClassVar[MessageType]

    def encode(self) -> bytes:
        return encode_message(self)


@gostruct
class Ping(Message):
    TYPE = MessageType.PING
    seq_no: int = go_field("SeqNo", UINT32)
    node: str = go_field("Node", STRING)
    source_addr: bytes = go_field("SourceAddr", BYTES, omitempty=True)
    source_port: int = go_field("SourcePort", UINT16, omitempty=True)
    source_node: str = go_field("SourceNode", STRING, omitempty=True)


@gostruct
class IndirectPingReq(Message):
    TYPE = MessageType.INDIRECT_PING
    seq_no: int = go_field("SeqNo", UINT32)
    target: bytes = go_field("Target", BYTES)
    port: int = go_field("Port", UINT16)
    node: str = go_field("Node", STRING)
    nack: bool = go_field("Nack", BOOL)
    source_addr: bytes = go_field("SourceAddr", BYTES, omitempty=True)
    source_port: int = go_field("SourcePort", UINT16, omitempty=True)
    source_node: str = go_field("SourceNode", STRING, omitempty=True)


@gostruct
class AckResp(Message):
    TYPE = MessageType.ACK
    seq_no: int = go_field("SeqNo", UINT32)
    payload: bytes = go_field("Payload", BYTES_OR_NIL)


@gostruct
class NackResp(Message):
    TYPE = MessageType.NACK
    seq_no: int = go_field("SeqNo", UINT32)


@gostruct
class ErrResp(Message):
    TYPE = MessageType.ERR
    error: str = go_field("Error", STRING)


@gostruct
class Suspect(Message):
    TYPE = MessageType.SUSPECT
    incarnation: int = go_field("Incarnation", UINT32)
    node: str = go_field("Node", STRING)
    from_: str = go_field("From", STRING)


@gostruct
class Alive(Message):
    TYPE = MessageType.ALIVE
    incarnation: int = go_field("Incarnation", UINT32)
    node: str = go_field("Node", STRING)
    addr: bytes = go_field("Addr", BYTES)
    port: int = go_field("Port", UINT16)
    meta: bytes = go_field("Meta", BYTES)
    vsn: bytes = go_field("Vsn", BYTES)


@gostruct
class Dead(Message):
    TYPE = MessageType.DEAD
    incarnation: int = go_field("Incarnation", UINT32)
    node: str = go_field("Node", STRING)
    from_: str = go_field("From", STRING)


@gostruct
class PushPullHeader(Message):
    TYPE = MessageType.PUSH_PULL
    nodes: int = go_field("Nodes", INT)
    user_state_len: int = go_field("UserStateLen", INT)
    join: bool = go_field("Join", BOOL)


@gostruct
class PushNodeState(GoStruct):
    name: str = go_field("Name", STRING)
    addr: bytes = go_field("Addr", BYTES)
    port: int = go_field("Port", UINT16)
    meta: bytes = go_field("Meta", BYTES)
    incarnation: int = go_field("Incarnation", UINT32)
    state: int = go_field("State", INT)
    vsn: bytes = go_field("Vsn", BYTES)


@gostruct
class UserMsgHeader(Message):
    TYPE = MessageType.USER
    user_msg_len: int = go_field("UserMsgLen", INT)


@gostruct
class Compress(Message):
    TYPE = MessageType.COMPRESS
    algo: int = go_field("Algo", UINT8)
    buf: bytes = go_field("Buf", BYTES)


#: Messages that are one msgpack value after the type byte.
_SIMPLE: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Ping, IndirectPingReq, AckResp, NackResp, ErrResp, Suspect, Alive, Dead, Compress)
}


def encode_message(msg: Message) -> bytes:
    """``[type][msgpack]`` for one message."""
    return bytes((msg.TYPE,)) + msg.pack()


def decode_message(buf: bytes) -> Message:
    """Decode a single-value memberlist message (not compound, user or CRC)."""
    if not buf:
        raise DecodeError("empty message")
    cls = _SIMPLE.get(buf[0])
    if cls is None:
        raise DecodeError(f"msg type ({buf[0]}) not supported")
    return cls.from_map(gossip_unpackb(buf[1:]))


def vsn_is_valid(vsn: bytes) -> bool:
    """memberlist ignores an alive whose protocol range is empty or inverted.

    A Vsn that is present must be six bytes (0.2.2 indexes all six).  Stricter
    than Go: a current version outside its own [min, max] range (PCur or DCur)
    is refused too, since every push/pull's verifyProtocol would then fail,
    for us and for each Go peer we relayed the alive to.
    """
    if not vsn:
        return True
    return len(vsn) == 6 and 0 < vsn[0] <= vsn[2] <= vsn[1] and vsn[3] <= vsn[5] <= vsn[4]


@functools.lru_cache(maxsize=4096)  # per packet, and a cluster has few addresses
def ip_from_wire(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP from its 4- or 16-byte wire form; v4-mapped v6 becomes v4."""
    if len(addr) == 4:
        return ipaddress.IPv4Address(addr)
    if len(addr) == 16:
        ip6 = ipaddress.IPv6Address(addr)
        return ip6.ipv4_mapped or ip6
    raise DecodeError(f"IP address must be 4 or 16 bytes, got {len(addr)}")


@functools.lru_cache(maxsize=4096)
def ip_to_wire(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The wire form of an IP: 4 bytes for IPv4, 16 for IPv6."""
    return ipaddress.ip_address(host).packed
