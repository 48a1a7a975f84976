"""LZW exactly as Go's ``compress/lzw`` speaks it (LSB order, 8-bit literals).

memberlist wraps compressed messages as ``{"Algo": 0, "Buf": ...}`` where
``Buf`` is a Go ``compress/lzw`` stream (spec §2.5). No maintained Python
package reproduces Go's writer byte for byte, so this is the one codec the
project writes itself.

* :func:`compress` is byte-exact with the Go 1.19 writer that the Debian
  ``serf`` 0.9.4 build links: the stream starts with a clear code, codes grow
  from 9 to 12 bits, and the writer emits a clear code and starts over when
  the next dictionary code would be 4095. Byte-exactness matters for the test vectors
  and for side-by-side comparisons with the real agent, not for interop
  (any valid stream decodes).
* :func:`decompress` follows Go's reader, so it accepts streams from every Go
  version (with or without the leading clear code), rejects what Go rejects
  (invalid codes, a stream that stops before the EOF code) and, unlike Go,
  caps the output: each 12-bit code can stand for ~4 KB, so a crafted
  stream would otherwise expand about 2700-fold.

Both run once per gossip packet in pure Python, so they trade some elegance
for speed: all state lives in local variables, bits are gathered in a Python
int and moved several bytes at a time, and the decoder keeps each code's full
expansion instead of walking prefix chains.
"""

from __future__ import annotations

from flyteserf.wire.errors import DecodeError

__all__ = ["MAX_DECOMPRESSED_SIZE", "compress", "decompress"]

#: Default cap on decompressed output. memberlist's largest legitimate
#: payloads (push/pull state of a big cluster over TCP) stay far below this.
MAX_DECOMPRESSED_SIZE = 40 * 1024 * 1024

_CLEAR = 256
_EOF = 257
_MAX_WIDTH = 12
# The Go writer resets its table when hi reaches this value (so the
# largest dictionary code it ever assigns is 4094).
_WRITER_MAX_CODE = (1 << _MAX_WIDTH) - 1
# Decoder table prefix: the single-byte expansions of the literal codes,
# then placeholders for the clear and EOF codes (never looked up).
_LITERALS: tuple[bytes, ...] = tuple(bytes((i,)) for i in range(256)) + (b"", b"")
# Input bytes moved into the bit accumulator at once; 32 measured fastest
# (fewer slices than 8, while the accumulator stays a small int).
_READ_CHUNK = 32


def compress(data: bytes) -> bytes:
    """Compress *data* into the exact bytes Go 1.19's LZW writer produces.

    The dictionary maps ``prefix_code << 8 | next_byte`` to a code; Go uses a
    hash table with the same keys, and the output does not depend on how the
    lookup is done, only on which keys are present.
    """
    out = bytearray()
    # Pending output bits, least significant first; flushed 8 bytes at a time
    # so the int stays small and we avoid a per-byte loop.
    bits = _CLEAR  # Go 1.19 starts every stream with a clear code.
    nbits = 9
    width = 9
    hi = _EOF
    overflow = 512
    if data:
        table: dict[int, int] = {}
        get = table.get
        code = data[0]
        for byte in data[1:]:
            key = code << 8 | byte
            nxt = get(key)
            if nxt is not None:
                code = nxt
                continue
            bits |= code << nbits
            nbits += width
            if nbits >= 64:
                out += (bits & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
                bits >>= 64
                nbits -= 64
            code = byte
            hi += 1
            if hi == overflow:
                width += 1
                overflow <<= 1
            if hi == _WRITER_MAX_CODE:
                # Out of codes: the clear code goes out at the current (12-bit)
                # width, then everything restarts at 9 bits.
                bits |= _CLEAR << nbits
                nbits += width
                width = 9
                hi = _EOF
                overflow = 512
                table.clear()
                continue
            table[key] = hi
        # Close(): the pending code, then the same hi bookkeeping as above.
        bits |= code << nbits
        nbits += width
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _WRITER_MAX_CODE:
            bits |= _CLEAR << nbits
            nbits += width
            width = 9
    bits |= _EOF << nbits
    nbits += width
    out += bits.to_bytes((nbits + 7) >> 3, "little")
    return bytes(out)


def decompress(data: bytes, limit: int = MAX_DECOMPRESSED_SIZE) -> bytes:
    """Decompress a Go ``compress/lzw`` stream (LSB, 8-bit literals).

    Raises :class:`DecodeError` (and nothing else) for an invalid code, a
    stream that ends before its EOF code, or output longer than *limit*
    bytes. The limit is checked after every code, so memory stays within
    *limit* plus one dictionary entry (at most ~4 KiB) however the input is
    crafted. Bytes after the EOF code are ignored, as Go ignores them.
    """
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as e:
        raise DecodeError(f"lzw: input must be bytes, not {type(data).__name__}") from e
    size = len(view)
    from_bytes = int.from_bytes
    out = bytearray()
    # table[c] is the full expansion of code c. Entries are appended in code
    # order (len(table) == hi whenever one is added), so a clear code just
    # truncates the list back to the literals and the two special codes.
    table: list[bytes] = list(_LITERALS)
    append = table.append
    width = 9
    mask = 511
    hi = _EOF
    overflow = 512
    prev: bytes | None = None  # expansion of the last code; None = no last
    bits = 0
    nbits = 0
    pos = 0
    # The loop below spells the constants out (256 clear, 257 EOF, 12 bits)
    # because it runs once per code and every lookup counts.
    while True:
        if nbits < width:
            if pos >= size:
                raise DecodeError(
                    f"lzw: stream truncated after {size} bytes before the EOF code"
                )
            end = pos + _READ_CHUNK
            bits |= from_bytes(view[pos:end], "little") << nbits
            nbits += 8 * (min(end, size) - pos)
            pos = end
            if nbits < width:
                raise DecodeError(
                    f"lzw: stream truncated after {size} bytes before the EOF code"
                )
        code = bits & mask
        bits >>= width
        nbits -= width
        if code < 256 or 257 < code < hi:
            entry = table[code]
        elif code == 256:
            width = 9
            mask = 511
            hi = 257
            overflow = 512
            prev = None
            del table[258:]
            continue
        elif code == 257:
            return bytes(out)
        elif code == hi:
            if prev is not None:
                # The code being defined right now (the KwKwK case).
                entry = prev + prev[:1]
            else:
                # Only reachable with a frozen full table, where entry hi
                # was defined just before freezing.
                entry = table[code]
        else:
            raise DecodeError(
                f"lzw: invalid code {code} (highest valid code is {hi})"
            )
        out += entry
        if len(out) > limit:
            raise DecodeError(
                f"lzw: decompressed data exceeds the limit of {limit} bytes"
            )
        if prev is not None:
            append(prev + entry[:1])
        prev = entry
        hi += 1
        if hi >= overflow:
            if width == 12:
                # Table full: Go freezes it until the next clear code.
                prev = None
                hi -= 1
            else:
                width += 1
                overflow <<= 1
                mask = overflow - 1
