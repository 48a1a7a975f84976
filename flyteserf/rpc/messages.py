"""RPC request and response shapes (spec §4.2): Go structs in, Go structs out.

Requests are decoded the way the Go agent's codec decodes them, because a
request that Go refuses closes the connection, and clients were written
against that: missing keys and ``nil`` give the zero value, unknown keys are
ignored, a body may also be a positional array (Go decodes a struct from an
array in field-declaration order), and a value of the wrong type, or an int
out of the field's range, is a :class:`BodyError`.  As in Go, a ``bin`` is
refused for a string field but a ``str`` is accepted for a ``[]byte`` one,
and a bool field also takes the ints 0 and 1.

Responses are plain dicts and lists; :mod:`flyteserf.rpc.codec` writes their
keys sorted, as Go writes struct fields.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

import attrs

__all__ = [
    "BODY_COMMANDS",
    "COMMANDS",
    "RESPONSE_BODY_COMMANDS",
    "AuthRequest",
    "BodyError",
    "CoordinateRequest",
    "EventRequest",
    "ForceLeaveRequest",
    "HandshakeRequest",
    "JoinRequest",
    "KeyRequest",
    "MembersFilteredRequest",
    "MonitorRequest",
    "QueryRequest",
    "RequestHeader",
    "RespondRequest",
    "StopRequest",
    "StreamRequest",
    "TagsRequest",
    "coordinate_record",
    "decode_body",
    "key_response_record",
    "member_record",
    "zero_key_response",
]

#: Every command the agent knows.
COMMANDS: frozenset[str] = frozenset(
    {
        "handshake",
        "auth",
        "event",
        "force-leave",
        "join",
        "members",
        "members-filtered",
        "stream",
        "stop",
        "monitor",
        "leave",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
        "tags",
        "query",
        "respond",
        "stats",
        "get-coordinate",
    }
)
#: Commands whose header is followed by a body.
BODY_COMMANDS: frozenset[str] = COMMANDS - {"members", "leave", "list-keys", "stats"}
#: Commands whose response header is followed by a body (even on error).
RESPONSE_BODY_COMMANDS: frozenset[str] = frozenset(
    {
        "join",
        "members",
        "members-filtered",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
        "stats",
        "get-coordinate",
    }
)


class BodyError(Exception):
    """A request header or body Go's decoder would refuse; the connection is closed."""


# --- field kinds: Go types, decoded as go-msgpack does ------------------------------


def _string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise BodyError(f"expected a string, got {type(value).__name__}")


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    raise BodyError(f"expected bytes, got {type(value).__name__}")


def _bool(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BodyError(f"expected a bool, got {value!r}")


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def decode(value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise BodyError(f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise BodyError(f"integer {value} out of range [{lo}, {hi}]")
        return value

    return decode


_INT32 = _int(-(2**31), 2**31 - 1)
_INT64 = _int(-(2**63), 2**63 - 1)
_UINT8 = _int(0, 2**8 - 1)
_UINT64 = _int(0, 2**64 - 1)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BodyError(f"expected an array of strings, got {type(value).__name__}")
    return tuple(_string(item) for item in value)


def _string_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(f"expected a map of strings, got {type(value).__name__}")
    return {_string(k): _string(v) for k, v in value.items()}


R = TypeVar("R", bound="_Request")


class _Request:
    #: (Go field name, attribute, decoder), in Go's declaration order.
    FIELDS: ClassVar[tuple[tuple[str, str, Callable[[Any], Any]], ...]] = ()


def decode_body(cls: type[R], body: Any) -> R:
    """Decode a request body into *cls*, as Go decodes into the request struct."""
    values: dict[str, Any] = {}
    if body is None:
        pass
    elif isinstance(body, dict):
        for go_name, attr, decode in cls.FIELDS:
            if go_name in body:
                values[attr] = decode(body[go_name])
    elif isinstance(body, list):
        if len(body) > len(cls.FIELDS):
            raise BodyError(f"{cls.__name__}: array of {len(body)} for {len(cls.FIELDS)} fields")
        for (_, attr, decode), value in zip(cls.FIELDS, body):
            values[attr] = decode(value)
    else:
        raise BodyError(f"{cls.__name__}: expected a map, got {type(body).__name__}")
    for _, attr, decode in cls.FIELDS:
        values.setdefault(attr, decode(None))
    return cls(**values)


@attrs.frozen
class RequestHeader(_Request):
    FIELDS = (("Command", "command", _string), ("Seq", "seq", _UINT64))
    command: str
    seq: int


@attrs.frozen
class HandshakeRequest(_Request):
    FIELDS = (("Version", "version", _INT32),)
    version: int


@attrs.frozen
class AuthRequest(_Request):
    FIELDS = (("AuthKey", "auth_key", _string),)
    auth_key: str


@attrs.frozen
class CoordinateRequest(_Request):
    FIELDS = (("Node", "node", _string),)
    node: str


@attrs.frozen
class EventRequest(_Request):
    FIELDS = (("Name", "name", _string), ("Payload", "payload", _bytes), ("Coalesce", "coalesce", _bool))
    name: str
    payload: bytes
    coalesce: bool


@attrs.frozen
class ForceLeaveRequest(_Request):
    FIELDS = (("Node", "node", _string), ("Prune", "prune", _bool))
    node: str
    prune: bool


@attrs.frozen
class JoinRequest(_Request):
    FIELDS = (("Existing", "existing", _strings), ("Replay", "replay", _bool))
    existing: tuple[str, ...]
    replay: bool


@attrs.frozen
class MembersFilteredRequest(_Request):
    FIELDS = (("Tags", "tags", _string_map), ("Status", "status", _string), ("Name", "name", _string))
    tags: dict[str, str]
    status: str
    name: str


@attrs.frozen
class KeyRequest(_Request):
    FIELDS = (("Key", "key", _string),)
    key: str


@attrs.frozen
class MonitorRequest(_Request):
    FIELDS = (("LogLevel", "log_level", _string),)
    log_level: str


@attrs.frozen
class StreamRequest(_Request):
    FIELDS = (("Type", "type", _string),)
    type: str


@attrs.frozen
class StopRequest(_Request):
    FIELDS = (("Stop", "stop", _UINT64),)
    stop: int


@attrs.frozen
class TagsRequest(_Request):
    FIELDS = (("Tags", "tags", _string_map), ("DeleteTags", "delete_tags", _strings))
    tags: dict[str, str]
    delete_tags: tuple[str, ...]


@attrs.frozen
class QueryRequest(_Request):
    FIELDS = (
        ("FilterNodes", "filter_nodes", _strings),
        ("FilterTags", "filter_tags", _string_map),
        ("RequestAck", "request_ack", _bool),
        ("RelayFactor", "relay_factor", _UINT8),
        ("Timeout", "timeout", _INT64),
        ("Name", "name", _string),
        ("Payload", "payload", _bytes),
    )
    filter_nodes: tuple[str, ...]
    filter_tags: dict[str, str]
    request_ack: bool
    relay_factor: int
    #: Nanoseconds (Go's time.Duration); 0 means the agent's default.
    timeout: int
    name: str
    payload: bytes


@attrs.frozen
class RespondRequest(_Request):
    FIELDS = (("ID", "id", _UINT64), ("Payload", "payload", _bytes))
    id: int
    payload: bytes


# --- responses -------------------------------------------------------------------------


def _addr_bytes(addr: Any) -> bytes | None:
    """``net.IP`` on the wire: 4 bytes for IPv4, 16 for IPv6 (v4-mapped stays 16)."""
    if isinstance(addr, (bytes, bytearray)):
        return bytes(addr)
    try:
        return ipaddress.ip_address(str(addr)).packed
    except ValueError:
        return None


def _status(status: Any) -> str:
    label = getattr(status, "label", None)
    if isinstance(label, str):
        return label
    if isinstance(status, str):
        return status
    return str(status).lower()


def member_record(member: Any) -> dict[str, Any]:
    """The IPC ``Member`` for a :class:`flyteserf.serf.events.Member`."""
    return {
        "Name": member.name,
        "Addr": _addr_bytes(member.addr),
        "Port": int(member.port),
        "Tags": dict(member.tags) if member.tags is not None else None,
        "Status": _status(member.status),
        "ProtocolMin": int(member.protocol_min),
        "ProtocolMax": int(member.protocol_max),
        "ProtocolCur": int(member.protocol_cur),
        "DelegateMin": int(member.delegate_min),
        "DelegateMax": int(member.delegate_max),
        "DelegateCur": int(member.delegate_cur),
    }


def members_record(members: Iterable[Any]) -> dict[str, Any]:
    return {"Members": [member_record(m) for m in members]}


def zero_key_response() -> dict[str, Any]:
    """What the agent sends when a key operation fails before any query (bad base64)."""
    return {"Keys": None, "Messages": {}, "NumErr": 0, "NumNodes": 0, "NumResp": 0}


def key_response_record(response: Any, *, with_keys: bool) -> dict[str, Any]:
    """``keyResponse`` from a :class:`flyteserf.serf.keymanager.KeyResponse`-like tally.

    Only ``list-keys`` fills ``Keys`` (a map, possibly empty); the other key
    commands always send ``Keys: nil``, as the Go agent does.
    """
    if response is None:
        return zero_key_response()
    keys: Mapping[str, int] | None = getattr(response, "keys", None)
    return {
        "Keys": {str(k): int(v) for k, v in (keys or {}).items()} if with_keys else None,
        "Messages": {str(k): str(v) for k, v in (getattr(response, "messages", None) or {}).items()},
        "NumErr": int(getattr(response, "num_err", 0)),
        "NumNodes": int(getattr(response, "num_nodes", 0)),
        "NumResp": int(getattr(response, "num_resp", 0)),
    }


def coordinate_record(coord: Any) -> dict[str, Any]:
    """``coordinateResponse``: ``Ok:false`` with a zero coordinate (``Vec`` nil) when unknown."""
    if coord is None:
        return {
            "Coord": {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None},
            "Ok": False,
        }
    return {
        "Coord": {
            "Adjustment": float(coord.adjustment),
            "Error": float(coord.error),
            "Height": float(coord.height),
            "Vec": [float(x) for x in coord.vec],
        },
        "Ok": True,
    }
