"""The containers around messages: compound, hasCrc and compress (serf-wire §2.4–2.5)."""

from __future__ import annotations

import struct
import zlib
from typing import Sequence

from flyteserf.wire import lzw
from flyteserf.wire.codec import gossip_unpackb
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.messages import Compress, MessageType, encode_message

#: A compound counts its parts in one byte.
MAX_COMPOUND_PARTS = 255
#: LZW is the only algorithm memberlist knows.
LZW_ALGO = 0

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def make_compounds(msgs: Sequence[bytes]) -> list[bytes]:
    """Pack messages into as few compounds as the one-byte count allows.

    A single message goes out bare.  Empty messages are never packed: a 0.2.2
    peer reads ``part[0]`` without a length check.
    """
    msgs = [m for m in msgs if m]
    if len(msgs) == 1:
        return [msgs[0]]
    out = []
    for start in range(0, len(msgs), MAX_COMPOUND_PARTS):
        chunk = msgs[start : start + MAX_COMPOUND_PARTS]
        if len(chunk) == 1:
            out.append(chunk[0])
            continue
        for m in chunk:
            if len(m) > 0xFFFF:
                raise ValueError(f"message of {len(m)} bytes does not fit a compound part")
        header = bytearray((MessageType.COMPOUND, len(chunk)))
        for m in chunk:
            header += _U16.pack(len(m))
        out.append(bytes(header) + b"".join(chunk))
    return out


def split_compound(buf: bytes) -> tuple[list[bytes], int]:
    """Split ``[7][n][len…][msg…]`` into its parts.

    Returns the parts and how many were lost: truncated ones (memberlist's
    "Compound request had N truncated messages") and empty ones.
    """
    if len(buf) < 2 or buf[0] != MessageType.COMPOUND:
        raise DecodeError("missing compound length byte")
    count = buf[1]
    offset = 2 + 2 * count
    if len(buf) < offset:
        raise DecodeError("truncated len slice")
    parts: list[bytes] = []
    lost = 0
    for i in range(count):
        (length,) = _U16.unpack_from(buf, 2 + 2 * i)
        if offset + length > len(buf):
            lost += count - i
            break
        if length == 0:
            lost += 1
        else:
            parts.append(buf[offset : offset + length])
        offset += length
    return parts, lost


def add_crc(msg: bytes) -> bytes:
    """``[12][crc32 ieee, big-endian] + msg``, for peers with PMax >= 5."""
    return bytes((MessageType.HAS_CRC,)) + _U32.pack(zlib.crc32(msg)) + msg


def strip_crc(buf: bytes) -> bytes:
    """Verify and remove the outermost hasCrc; DecodeError on mismatch."""
    if len(buf) < 5 or buf[0] != MessageType.HAS_CRC:
        raise DecodeError("not a hasCrc message")
    (expected,) = _U32.unpack_from(buf, 1)
    body = buf[5:]
    if zlib.crc32(body) != expected:
        raise DecodeError("invalid checksum")
    return body


def compress_message(msg: bytes) -> bytes:
    """``[9] msgpack({Algo: 0, Buf: lzw(msg)})``."""
    return encode_message(Compress(algo=LZW_ALGO, buf=lzw.compress(msg)))


def decompress_message(buf: bytes, limit: int = lzw.MAX_DECOMPRESSED_SIZE) -> bytes:
    """Undo :func:`compress_message`; the output is capped at *limit* bytes."""
    if not buf or buf[0] != MessageType.COMPRESS:
        raise DecodeError("not a compress message")
    return decompress_wrapper(Compress.from_map(gossip_unpackb(buf[1:])), limit)


def decompress_wrapper(wrapper: Compress, limit: int = lzw.MAX_DECOMPRESSED_SIZE) -> bytes:
    """The bytes inside a decoded compress wrapper."""
    if wrapper.algo != LZW_ALGO:
        raise DecodeError(f"Cannot decompress unknown compression type {wrapper.algo}")
    return lzw.decompress(wrapper.buf, limit)
