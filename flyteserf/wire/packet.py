"""One UDP datagram, each way (serf-wire §2.4).

Outbound: message or compound → compress when smaller → hasCrc for peers
that speak memberlist ≥ 5 → encrypt with the primary key.
Inbound: decrypt with any key → verify hasCrc → unwrap compress and compound
→ the leaf messages, each still ``[type][msgpack]``.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from flyteserf.wire import crypto
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.framing import (
    add_crc,
    compress_message,
    decompress_message,
    split_compound,
    strip_crc,
)
from flyteserf.wire.messages import MessageType

#: How deep compound and compress may nest inside one another.  Go recurses
#: without a bound; real senders use at most compress(compound(...)).
MAX_NESTING = 4
#: The most a datagram may expand to.  Senders pack at most 1400 bytes
#: before compressing, so 1 MiB is far above anything real, and it bounds
#: the CPU a decompression bomb can cost (Go allows 40 MiB per layer).
MAX_PACKET_EXPANSION = 1 << 20


def encode_packet(
    msg: bytes,
    *,
    crc: bool = False,
    compress: bool = False,
    key: bytes | None = None,
) -> bytes:
    """The datagram for *msg* (one message or a compound)."""
    if compress:
        packed = compress_message(msg)
        if len(packed) < len(msg):
            msg = packed
    if crc:
        msg = add_crc(msg)
    if key is not None:
        msg = crypto.encrypt(key, msg)
    return msg


@attrs.define
class PacketContents:
    """What a datagram held: its leaf messages, and what was lost inside it."""

    messages: list[bytes] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)


def decode_packet(data: bytes, keys: Sequence[bytes] = ()) -> PacketContents:
    """Unwrap a datagram.

    A failure of the outermost layer (decryption, checksum, the outermost
    compound or compress) raises :class:`DecodeError`; a bad part inside a
    compound is recorded in ``errors`` and the other parts still count.
    """
    if keys:
        data = crypto.decrypt_with_keys(keys, data)
    if not data:
        raise DecodeError("empty packet")
    if data[0] == MessageType.HAS_CRC:
        data = strip_crc(data)
    contents = PacketContents()
    _unwrap(data, contents, 0)
    return contents


def _unwrap(buf: bytes, out: PacketContents, depth: int) -> None:
    if not buf:
        raise DecodeError("empty message")
    kind = buf[0]
    if kind == MessageType.COMPOUND:
        if depth >= MAX_NESTING:
            raise DecodeError("compound nested too deep")
        parts, lost = split_compound(buf)
        if lost:
            out.errors.append(f"compound request had {lost} truncated or empty messages")
        for part in parts:
            try:
                _unwrap(part, out, depth + 1)
            except DecodeError as e:
                out.errors.append(str(e))
    elif kind == MessageType.COMPRESS:
        if depth >= MAX_NESTING:
            raise DecodeError("compress nested too deep")
        _unwrap(decompress_message(buf, MAX_PACKET_EXPANSION), out, depth + 1)
    elif kind == MessageType.HAS_CRC:
        raise DecodeError("hasCrc is only valid as the outermost layer")
    else:
        out.messages.append(buf)
