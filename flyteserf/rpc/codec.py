"""RPC framing: back-to-back msgpack objects in the new spec (spec §4.1).

The RPC stream has no length prefix: a request is a header map, followed by
a body map for the commands that take one, and a response is a header map
followed by a body for the commands that return one.  Go's RPC handle writes
the new msgpack spec: Go strings as ``str`` (``fixstr``/``0xd9``/…), byte
slices and IPs as ``bin``; Python's ``use_bin_type=True`` does the same.

:class:`RPCDecoder` splits an incoming byte stream into objects with a hard
cap on what it buffers; :func:`encode_frame` writes a header and optional
body with every map's keys in sorted order (Go writes struct fields sorted;
its maps come in random order, so sorted is as good as any).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import msgpack

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "FrameError",
    "RPCDecoder",
    "encode_frame",
    "packb",
    "sort_keys",
]

#: The most a connection may have buffered and not yet decoded (one object,
#: plus whatever a pipelining client sent after it).
DEFAULT_MAX_BUFFER = 1 << 20

_DECODE_ERRORS = (
    ValueError,  # includes UnicodeDecodeError and msgpack's own limits
    TypeError,
    OverflowError,
    RecursionError,
    msgpack.UnpackException,
)


class FrameError(Exception):
    """The incoming byte stream is not valid RPC msgpack, or too big; close the connection."""


def sort_keys(obj: Any) -> Any:
    """A copy of *obj* whose maps, at any depth, have their keys in sorted order."""
    if isinstance(obj, Mapping):
        return {key: sort_keys(obj[key]) for key in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [sort_keys(item) for item in obj]
    return obj


def packb(obj: Any) -> bytes:
    """One object in the RPC encoding, maps sorted."""
    data: bytes = msgpack.packb(sort_keys(obj), use_bin_type=True)
    return data


def encode_frame(header: Mapping[str, Any], body: Any = None, *, has_body: bool = False) -> bytes:
    """A header followed by *body* when there is one.

    A body of ``None`` is not written unless *has_body* asks for it (a Go
    body that is a nil map is written as ``nil``).
    """
    data = packb(header)
    if body is not None or has_body:
        data += packb(body)
    return data


class RPCDecoder:
    """Incremental decoder of back-to-back RPC objects, with a buffer cap.

    :meth:`feed` returns every object completed by the new bytes and raises
    :class:`FrameError` on bytes that are not msgpack, strings that are not
    UTF-8, maps with non-string keys, and on more than *max_buffer* bytes
    pending (a claimed 100 MB string fails once the cap is reached; a claimed
    100-million-element array or map fails at once).
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.max_buffer = max_buffer
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=max_buffer,
        )
        self._failed: FrameError | None = None

    def feed(self, data: bytes) -> list[Any]:
        """Add *data*; return the objects it completed."""
        if self._failed is not None:
            raise self._failed
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self._failed = FrameError(f"request larger than {self.max_buffer} bytes")
            raise self._failed from None
        return list(self._drain())

    def _drain(self) -> Iterator[Any]:
        while True:
            try:
                obj = next(self._unpacker)
            except StopIteration:
                return
            except _DECODE_ERRORS as e:
                self._failed = FrameError(f"invalid msgpack: {type(e).__name__}: {e}")
                raise self._failed from None
            yield obj
