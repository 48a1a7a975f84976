"""One TCP exchange: push/pull, fallback ping, stream user message (serf-wire §2.7).

A stream has no framing of its own: optional encryption header, optional
compress wrapper, then ``[type]`` and msgpack values, so the reader has to
parse as bytes arrive to know when the message is complete.
"""

from __future__ import annotations

from typing import Sequence, Union

import attrs
import msgpack

from flyteserf.wire import crypto
from flyteserf.wire.codec import MSGPACK_ERRORS, gossip_unpacker
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.framing import compress_message, decompress_wrapper
from flyteserf.wire.messages import (
    AckResp,
    Compress,
    ErrResp,
    MessageType,
    Ping,
    PushNodeState,
    PushPullHeader,
    UserMsgHeader,
    encode_message,
)

#: memberlist's maxPushStateBytes: the most a stream may carry.
MAX_STREAM_STATE = crypto.MAX_STREAM_STATE
#: Upper bound on the node count a push/pull header may claim.
MAX_PUSH_NODES = 1 << 20

#: Texts memberlist sends back in an errResp, and logs.
NOT_ENCRYPTED = "Encryption is configured but remote state is not encrypted"
NOT_CONFIGURED = "Remote state is encrypted and encryption is not configured"


class RemoteNotEncrypted(DecodeError):
    """A plaintext stream reached a node that requires encryption."""


@attrs.frozen
class PushPullStream:
    """A complete push/pull: header, node states and the delegate's bytes."""

    join: bool
    states: tuple[PushNodeState, ...]
    user_state: bytes


@attrs.frozen
class UserStream:
    """A stream user message (serf never sends one; accepting it is cheap)."""

    payload: bytes


StreamMessage = Union[PushPullStream, UserStream, Ping, AckResp, ErrResp]

_SINGLE_VALUE: dict[int, type[Ping] | type[AckResp] | type[ErrResp]] = {
    MessageType.PING: Ping,
    MessageType.ACK: AckResp,
    MessageType.ERR: ErrResp,
}


def encode_push_pull(join: bool, states: Sequence[PushNodeState], user_state: bytes) -> bytes:
    """The plaintext push/pull message."""
    header = PushPullHeader(nodes=len(states), user_state_len=len(user_state), join=join)
    return encode_message(header) + b"".join(s.pack() for s in states) + user_state


def encode_user_stream(payload: bytes) -> bytes:
    return encode_message(UserMsgHeader(user_msg_len=len(payload))) + payload


def encode_stream(msg: bytes, *, compress: bool = False, key: bytes | None = None) -> bytes:
    """What goes on the socket: memberlist always compresses streams when enabled."""
    if compress:
        msg = compress_message(msg)
    if key is not None:
        msg = crypto.encrypt_stream(key, msg)
    return msg


class StreamReader:
    """Parse one incoming stream message as its bytes arrive.

    :meth:`feed` returns ``None`` until the message is complete, then the
    message.  Any malformed input raises :class:`DecodeError` (or its
    subclass :class:`RemoteNotEncrypted`), and more than *limit* bytes is
    malformed too.
    """

    def __init__(self, keys: Sequence[bytes] = (), limit: int = MAX_STREAM_STATE) -> None:
        self._keys = tuple(keys)
        self._limit = limit
        self._received = 0
        self._encrypted: bool | None = None
        self._cipher = bytearray()
        self._plain = _PlainParser(limit)

    def feed(self, data: bytes) -> StreamMessage | None:
        if not data:
            return None
        self._received += len(data)
        if self._received > self._limit + 5:
            raise DecodeError(f"remote state is larger than the limit of {self._limit} bytes")
        if self._encrypted is None:
            self._encrypted = data[0] == MessageType.ENCRYPT
            if self._encrypted and not self._keys:
                raise DecodeError(NOT_CONFIGURED)
            if not self._encrypted and self._keys:
                raise RemoteNotEncrypted(NOT_ENCRYPTED)
        if not self._encrypted:
            return self._plain.feed(data)
        self._cipher += data
        if len(self._cipher) < 5:
            return None
        header = bytes(self._cipher[:5])
        length = crypto.stream_header_length(header)
        if len(self._cipher) < 5 + length:
            return None
        plaintext = crypto.decrypt_stream(self._keys, header, bytes(self._cipher[5 : 5 + length]))
        return parse_stream_plaintext(plaintext, self._limit)


def parse_stream_plaintext(plaintext: bytes, limit: int = MAX_STREAM_STATE) -> StreamMessage:
    """Parse a complete, decrypted stream message."""
    message = _PlainParser(limit).feed(plaintext)
    if message is None:
        raise DecodeError("stream message is truncated")
    return message


class _PlainParser:
    """The incremental parser for an unencrypted stream message."""

    def __init__(self, limit: int, allow_compress: bool = True) -> None:
        self._limit = limit
        self._allow_compress = allow_compress
        self._unpacker = gossip_unpacker(max_buffer_size=limit + 1)
        self._type: int | None = None
        self._header: PushPullHeader | None = None
        self._states: list[PushNodeState] = []
        self._raw_wanted = -1
        self._raw = bytearray()

    def feed(self, data: bytes) -> StreamMessage | None:
        try:
            self._unpacker.feed(data)
            return self._advance()
        except msgpack.OutOfData:
            return None
        except (msgpack.BufferFull, *MSGPACK_ERRORS) as e:
            if isinstance(e, DecodeError):
                raise
            raise DecodeError(f"invalid stream message: {e!r}") from None

    def _read_raw(self) -> bytes | None:
        """Raw bytes after the msgpack values (user state, user payload)."""
        need = self._raw_wanted - len(self._raw)
        if need > 0:
            self._raw += self._unpacker.read_bytes(need)
        if len(self._raw) < self._raw_wanted:
            return None
        return bytes(self._raw)

    def _advance(self) -> StreamMessage | None:
        if self._type is None:
            first = self._unpacker.read_bytes(1)
            if not first:
                return None
            self._type = first[0]
        kind = self._type
        if kind == MessageType.COMPRESS:
            if not self._allow_compress:
                raise DecodeError("Received invalid msgType (9)")
            wrapper = Compress.from_map(self._unpacker.unpack())
            inner = decompress_wrapper(wrapper, self._limit)
            message = _PlainParser(self._limit, allow_compress=False).feed(inner)
            if message is None:
                raise DecodeError("compressed stream message is truncated")
            return message
        if kind in _SINGLE_VALUE:
            return _SINGLE_VALUE[kind].from_map(self._unpacker.unpack())
        if kind == MessageType.PUSH_PULL:
            return self._advance_push_pull()
        if kind == MessageType.USER:
            if self._raw_wanted < 0:
                header = UserMsgHeader.from_map(self._unpacker.unpack())
                self._raw_wanted = self._check_length(header.user_msg_len, "user message")
            payload = self._read_raw()
            return None if payload is None else UserStream(payload)
        raise DecodeError(f"Received invalid msgType ({kind})")

    def _advance_push_pull(self) -> PushPullStream | None:
        if self._header is None:
            header = PushPullHeader.from_map(self._unpacker.unpack())
            if not 0 <= header.nodes <= MAX_PUSH_NODES:
                raise DecodeError(f"push/pull claims {header.nodes} nodes")
            self._raw_wanted = self._check_length(header.user_state_len, "user state")
            self._header = header
        while len(self._states) < self._header.nodes:
            self._states.append(PushNodeState.from_map(self._unpacker.unpack()))
        user_state = self._read_raw()
        if user_state is None:
            return None
        return PushPullStream(self._header.join, tuple(self._states), user_state)

    def _check_length(self, length: int, what: str) -> int:
        if not 0 <= length <= self._limit:
            raise DecodeError(f"{what} length {length} is out of range")
        return length
