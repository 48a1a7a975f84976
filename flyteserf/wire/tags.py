"""Serf tags carried as memberlist node meta (serf-wire §3.3)."""

from __future__ import annotations

from typing import Mapping

from flyteserf.wire.codec import MapOf, STRING, gossip_packb, gossip_unpackb
from flyteserf.wire.errors import DecodeError

#: Serf protocol >= 3 marks tag meta with this first byte.
TAG_MAGIC_BYTE = 0xFF
#: memberlist's MetaMaxSize.
META_MAX_SIZE = 512

_TAGS = MapOf(STRING)


class TagsTooLarge(ValueError):
    """The encoded tags do not fit memberlist's 512-byte meta."""


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """``0xFF + msgpack(map)``, refused past 512 bytes with Serf's text."""
    meta = bytes((TAG_MAGIC_BYTE,)) + gossip_packb(_TAGS.encode(dict(sorted(tags.items()))))
    if len(meta) > META_MAX_SIZE:
        raise TagsTooLarge(f"Encoded length of tags exceeds limit of {META_MAX_SIZE} bytes")
    return meta


def decode_tags(meta: bytes) -> dict[str, str]:
    """Tags from node meta; empty or non-0xFF meta is a bare role string."""
    if not meta or meta[0] != TAG_MAGIC_BYTE:
        return {"role": meta.decode("utf-8", "surrogateescape")}
    raw = gossip_unpackb(meta[1:])
    try:
        return _TAGS.decode(raw)
    except DecodeError as e:
        raise DecodeError(f"invalid tags in node meta: {e}") from None
