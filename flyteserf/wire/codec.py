"""Go structs as go-msgpack 0.5.5 writes them, for the gossip wire.

Gossip uses the *old* msgpack spec: strings and byte slices are both "raw"
(``0xa0-0xbf``, ``0xda``, ``0xdb``), never ``str8`` or ``bin``.  A struct is a
map keyed by its Go field names, written in byte-wise sorted key order;
decoders ignore unknown keys and key order, and ``nil`` means the zero value.

A message class declares its fields with :func:`go_field` and the
:func:`gostruct` decorator precomputes the encode and decode plans, so that
the per-packet path is a loop over a short tuple.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Mapping, TypeVar, dataclass_transform

import attrs
import msgpack

from flyteserf.wire.errors import DecodeError

T = TypeVar("T")
S = TypeVar("S", bound="GoStruct")

#: Every exception msgpack-python (C or fallback) raises for bad input.
MSGPACK_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    msgpack.UnpackException,
)


def gossip_packb(obj: Any) -> bytes:
    """Pack with the old spec (raw strings), as go-msgpack's gossip handle."""
    return msgpack.packb(obj, use_bin_type=False)


def gossip_unpackb(data: bytes) -> Any:
    """Unpack one value from the start of *data*; trailing bytes are ignored.

    Go decodes one value from a reader and never looks at what follows, so
    neither do we.  Every string comes back as ``bytes``.
    """
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=False)
    except msgpack.ExtraData as extra:
        return extra.unpacked
    except MSGPACK_ERRORS as e:
        raise DecodeError(f"invalid msgpack: {e}") from None


def gossip_unpacker(max_buffer_size: int = 0) -> msgpack.Unpacker:
    """An incremental unpacker for gossip streams (raw strings)."""
    return msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max_buffer_size)


# --- field kinds -------------------------------------------------------------


class Kind(Generic[T]):
    """How one Go field type maps to Python and to msgpack."""

    name: str = "?"

    def zero(self) -> T:
        raise NotImplementedError

    def encode(self, value: T) -> Any:
        raise NotImplementedError

    def decode(self, raw: Any) -> T:
        raise NotImplementedError

    def is_zero(self, value: T) -> bool:
        return not value


def _bad(kind: str, raw: Any) -> DecodeError:
    return DecodeError(f"expected {kind}, got {type(raw).__name__}")


class _Str(Kind[str]):
    """Go ``string``: arbitrary bytes, kept lossless with surrogateescape."""

    name = "string"

    def zero(self) -> str:
        return ""

    def encode(self, value: str) -> bytes:
        return value.encode("utf-8", "surrogateescape")

    def decode(self, raw: Any) -> str:
        if type(raw) is bytes:
            return raw.decode("utf-8", "surrogateescape")
        if raw is None:
            return ""
        raise _bad("string", raw)


class _Bytes(Kind[bytes]):
    """Go ``[]byte``; *nil_when_empty* writes an empty slice as ``nil``."""

    name = "bytes"

    def __init__(self, nil_when_empty: bool = False) -> None:
        self.nil_when_empty = nil_when_empty

    def zero(self) -> bytes:
        return b""

    def encode(self, value: bytes) -> bytes | None:
        if not value and self.nil_when_empty:
            return None
        return bytes(value)

    def decode(self, raw: Any) -> bytes:
        if type(raw) is bytes:
            return raw
        if raw is None:
            return b""
        if type(raw) is list and all(type(b) is int and 0 <= b <= 255 for b in raw):
            return bytes(raw)  # go-msgpack accepts an array of small ints for []uint8
        raise _bad("bytes", raw)


class _Int(Kind[int]):
    """Go integer types, range-checked on decode."""

    name = "int"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def zero(self) -> int:
        return 0

    def encode(self, value: int) -> int:
        return int(value)

    def decode(self, raw: Any) -> int:
        if type(raw) is int:
            if self.lo <= raw <= self.hi:
                return raw
            raise DecodeError(f"integer {raw} out of range [{self.lo}, {self.hi}]")
        if raw is None:
            return 0
        if type(raw) is bool:
            return int(raw)
        raise _bad("integer", raw)


class _Bool(Kind[bool]):
    name = "bool"

    def zero(self) -> bool:
        return False

    def encode(self, value: bool) -> bool:
        return bool(value)

    def decode(self, raw: Any) -> bool:
        if type(raw) is bool:
            return raw
        if raw is None:
            return False
        if type(raw) is int and raw in (0, 1):
            return bool(raw)
        raise _bad("bool", raw)


class _Float(Kind[float]):
    name = "float64"

    def zero(self) -> float:
        return 0.0

    def encode(self, value: float) -> float:
        return float(value)

    def decode(self, raw: Any) -> float:
        if type(raw) is float:
            return raw
        if type(raw) is int:
            return float(raw)
        if raw is None:
            return 0.0
        raise _bad("float", raw)


class ListOf(Kind[tuple[T, ...]]):
    """A Go slice of non-byte elements: a msgpack array (``nil`` when empty
    unless *empty_as_array*)."""

    def __init__(self, item: Kind[T], empty_as_array: bool = False) -> None:
        self.item = item
        self.empty_as_array = empty_as_array
        self.name = f"[]{item.name}"

    def zero(self) -> tuple[T, ...]:
        return ()

    def encode(self, value: tuple[T, ...]) -> list[Any] | None:
        if not value and not self.empty_as_array:
            return None
        enc = self.item.encode
        return [enc(v) for v in value]

    def decode(self, raw: Any) -> tuple[T, ...]:
        if type(raw) is list:
            dec = self.item.decode
            return tuple(dec(v) for v in raw)
        if raw is None:
            return ()
        raise _bad("array", raw)


class MapOf(Kind[dict[str, T]]):
    """A Go ``map[string]X``."""

    def __init__(self, value: Kind[T]) -> None:
        self.value = value
        self.name = f"map[string]{value.name}"

    def zero(self) -> dict[str, T]:
        return {}

    def encode(self, value: Mapping[str, T]) -> dict[bytes, Any] | None:
        enc = self.value.encode
        return {STRING.encode(k): enc(v) for k, v in value.items()}

    def decode(self, raw: Any) -> dict[str, T]:
        if type(raw) is dict:
            dec = self.value.decode
            return {STRING.decode(k): dec(v) for k, v in raw.items()}
        if raw is None:
            return {}
        raise _bad("map", raw)


class Nilable(Kind[T | None]):
    """A Go pointer (or nilable value): ``nil`` is ``None``."""

    def __init__(self, inner: Kind[T]) -> None:
        self.inner = inner
        self.name = f"*{inner.name}"

    def zero(self) -> T | None:
        return None

    def encode(self, value: T | None) -> Any:
        return None if value is None else self.inner.encode(value)

    def decode(self, raw: Any) -> T | None:
        return None if raw is None else self.inner.decode(raw)

    def is_zero(self, value: T | None) -> bool:
        return value is None


class Struct(Kind[S]):
    """A nested Go struct."""

    def __init__(self, cls: type[S]) -> None:
        self.cls = cls
        self.name = cls.__name__

    def zero(self) -> S:
        return self.cls()

    def encode(self, value: S) -> dict[bytes, Any]:
        return value.to_map()

    def decode(self, raw: Any) -> S:
        return self.cls.from_map(raw)

    def is_zero(self, value: S) -> bool:
        return value == self.cls()


STRING = _Str()
BYTES = _Bytes()
BYTES_OR_NIL = _Bytes(nil_when_empty=True)
BOOL = _Bool()
FLOAT64 = _Float()
UINT8 = _Int(0, 0xFF)
UINT16 = _Int(0, 0xFFFF)
UINT32 = _Int(0, 0xFFFFFFFF)
UINT64 = _Int(0, 0xFFFFFFFFFFFFFFFF)
INT = _Int(-(2**63), 2**63 - 1)
STRINGS = ListOf(STRING)


# --- structs ---------------------------------------------------------------------


def go_field(
    go_name: str,
    kind: Kind[Any],
    *,
    omitempty: bool = False,
    default: Any = attrs.NOTHING,
) -> Any:
    """Declare an attrs field that is the Go struct field *go_name*."""
    if default is attrs.NOTHING:
        zero = kind.zero()
        if isinstance(zero, (dict, list)):
            return attrs.field(
                factory=type(zero), metadata={"go": (go_name, kind, omitempty)}
            )
        default = zero
    return attrs.field(default=default, metadata={"go": (go_name, kind, omitempty)})


class GoStruct:
    """Base of every class that is a Go struct on the wire."""

    _plan: ClassVar[tuple[tuple[bytes, str, Kind[Any], bool], ...]] = ()

    def to_map(self) -> dict[bytes, Any]:
        """The msgpack map, keys in Go's sorted order, omitempty applied."""
        out: dict[bytes, Any] = {}
        for key, attr, kind, omitempty in self._plan:
            value = getattr(self, attr)
            if omitempty and kind.is_zero(value):
                continue
            out[key] = kind.encode(value)
        return out

    @classmethod
    def from_map(cls: type[S], raw: Any) -> S:
        """Build from a decoded msgpack map; unknown keys are ignored."""
        if type(raw) is not dict:
            if raw is None:
                return cls()
            raise DecodeError(f"{cls.__name__}: expected a map, got {type(raw).__name__}")
        kwargs: dict[str, Any] = {}
        for key, attr, kind, _ in cls._plan:
            if key in raw:
                try:
                    kwargs[attr] = kind.decode(raw[key])
                except DecodeError as e:
                    raise DecodeError(f"{cls.__name__}.{key.decode()}: {e}") from None
        return cls(**kwargs)

    def pack(self) -> bytes:
        """The struct alone, msgpack-encoded (no type byte)."""
        return gossip_packb(self.to_map())

    @classmethod
    def unpack(cls: type[S], data: bytes) -> S:
        """Decode the struct from the first msgpack value in *data*."""
        return cls.from_map(gossip_unpackb(data))


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field,))
def gostruct(cls: type[S]) -> type[S]:
    """Make *cls* a frozen attrs class and precompute its wire plan."""
    cls = attrs.frozen(cls)
    plan = []
    for a in attrs.fields(cls):  # type: ignore[arg-type]
        go = a.metadata.get("go")
        if go is None:
            continue
        go_name, kind, omitempty = go
        plan.append((go_name.encode(), a.name, kind, omitempty))
    plan.sort(key=lambda p: p[0])
    cls._plan = tuple(plan)
    return cls


def typed(type_byte: int, body: bytes) -> bytes:
    """Frame a body with its one-byte message type."""
    return bytes((type_byte,)) + body
