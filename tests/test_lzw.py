"""Tests for :mod:`flyteserf.wire.lzw`, Go's ``compress/lzw`` in Python.

The vectors come from ``spec/serf-wire.md`` §2.5 and §6.2 (a compressed ack
captured from the real agent). Beyond them, the codec is checked against a
deliberately plain reference decoder written here from the spec's
description of Go's reader, and hypothesis feeds it arbitrary and mutated
streams to prove that malformed input only ever raises ``DecodeError``.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from flyteserf.wire.errors import DecodeError
from flyteserf.wire.lzw import MAX_DECOMPRESSED_SIZE, compress, decompress

# spec §2.5
VECTORS: list[tuple[bytes, str]] = [
    (b"", "000302"),
    (b"a", "00c30404"),
    (b"TOBEORNOTTOBEORTOBEORNOT", "00a93c1152e48914274fa80824687061c183090302"),
]

# spec §6.2, "Compressed ack": the Buf of the compress wrapper ...
ACK_BUF = bytes.fromhex(
    "0005083a05254c1e366fc290d10640500042aa82905153670e9d3665dc"
    "d05906a0a3c78ea58ac891f346ceb21ff83e763485a44c9a"
    "336836fa2087af16a27168e28db252660c268e2a3b020d3a54"
    "65d18f473d26151a9469d35253cac471f2264040"
)
# ... and the ackResp it decompresses to, built from the annotated hex.
ACK_PLAIN = (
    bytes.fromhex("02 82 a7")
    + b"Payload"
    + bytes.fromhex("da 0082 01 84 aa")
    + b"Adjustment"
    + bytes.fromhex("cb 0000000000000000 a5")
    + b"Error"
    + bytes.fromhex("cb 3ff8000000000000 a6")
    + b"Height"
    + bytes.fromhex("cb 3ee4f8b588e368f1 a3")
    + b"Vec"
    + bytes.fromhex("98")
    + bytes.fromhex("cb 0000000000000000") * 8
    + bytes.fromhex("a5")
    + b"SeqNo"
    + bytes.fromhex("01")
)


def pack_codes(codes: list[int]) -> bytes:
    """Pack *codes* LSB-first at the widths Go's reader expects.

    Test streams that Go's writer would never produce (no leading clear,
    a full table that freezes) are built with this.
    """
    width, hi = 9, 257
    acc, nacc = 0, 0
    out = bytearray()
    for code in codes:
        acc |= code << nacc
        nacc += width
        while nacc >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nacc -= 8
        if code == 256:
            width, hi = 9, 257
            continue
        hi += 1
        if hi >= 1 << width:
            if width == 12:
                hi -= 1
            else:
                width += 1
    if nacc:
        out.append(acc)
    return bytes(out)


def reference_decompress(data: bytes) -> bytes:
    """Go's reader transcribed literally: bit by bit, prefix/suffix arrays.

    Slow and obvious on purpose, to cross-check the optimised decoder.
    Raises ``DecodeError`` where Go returns an error.
    """
    prefix = [0] * 4096
    suffix = [0] * 4096
    width, hi, overflow, last = 9, 257, 512, -1
    bitpos, out = 0, bytearray()
    while True:
        if bitpos + width > len(data) * 8:
            raise DecodeError("unexpected EOF")
        code = 0
        for i in range(width):
            bit = (data[(bitpos + i) // 8] >> ((bitpos + i) % 8)) & 1
            code |= bit << i
        bitpos += width
        if code < 256:
            out.append(code)
            if last != -1:
                suffix[hi], prefix[hi] = code, last
        elif code == 256:
            width, hi, overflow, last = 9, 257, 512, -1
            continue
        elif code == 257:
            return bytes(out)
        elif code <= hi:
            expansion = bytearray()
            c = code
            if code == hi and last != -1:
                c = last
                while c >= 256:
                    c = prefix[c]
                expansion.append(c)
                c = last
            while c >= 256:
                expansion.append(suffix[c])
                c = prefix[c]
            expansion.append(c)
            expansion.reverse()
            out += expansion
            if last != -1:
                suffix[hi], prefix[hi] = c, last
        else:
            raise DecodeError("invalid code")
        last, hi = code, hi + 1
        if hi >= overflow:
            if width == 12:
                last, hi = -1, hi - 1
            else:
                width, overflow = width + 1, overflow << 1


def go_code_stream(data: bytes) -> list[int]:
    """The codes Go 1.19's writer emits for *data*, without bit packing.

    Plain LZW over byte strings, with Go's clear-at-4095 rule; compared with
    ``compress`` through the reference packer.
    """
    codes = [256]
    table: dict[bytes, int] = {}
    hi = 257
    w = b""
    for byte in data:
        wc = w + bytes((byte,))
        if len(wc) == 1 or wc in table:
            w = wc
            continue
        codes.append(w[0] if len(w) == 1 else table[w])
        hi += 1
        if hi == 4095:
            codes.append(256)
            table.clear()
            hi = 257
        else:
            table[wc] = hi
        w = bytes((byte,))
    if w:
        codes.append(w[0] if len(w) == 1 else table[w])
        hi += 1
        if hi == 4095:
            codes.append(256)
    codes.append(257)
    return codes


class VectorTests(unittest.TestCase):
    """The byte-exact vectors of the spec."""

    def test_compress_vectors(self) -> None:
        """Our writer reproduces Go 1.19's bytes for the spec's vectors."""
        for plain, hexed in VECTORS:
            self.assertEqual(compress(plain).hex(), hexed, plain)

    def test_decompress_vectors(self) -> None:
        """The spec's vectors decode to their plaintexts."""
        for plain, hexed in VECTORS:
            self.assertEqual(decompress(bytes.fromhex(hexed)), plain)

    def test_compressed_ack_decompresses(self) -> None:
        """The captured §6.2 ack decodes to the 150-byte ackResp."""
        self.assertEqual(len(ACK_BUF), 0x62)
        self.assertEqual(len(ACK_PLAIN), 150)
        self.assertEqual(decompress(ACK_BUF), ACK_PLAIN)

    def test_compressed_ack_recompresses(self) -> None:
        """Re-compressing the ack gives the agent's exact Buf bytes."""
        self.assertEqual(compress(ACK_PLAIN).hex(), ACK_BUF.hex())


class LongStreamTests(unittest.TestCase):
    """Streams long enough to widen codes to 12 bits and reset the table."""

    def assertRoundTrip(self, data: bytes) -> bytes:
        packed = compress(data)
        self.assertEqual(decompress(packed), data)
        return packed

    def test_random_100k(self) -> None:
        """Incompressible data: many table resets at every width."""
        data = random.Random(1).randbytes(100 * 1024)
        packed = self.assertRoundTrip(data)
        self.assertEqual(reference_decompress(packed), data)
        self.assertEqual(packed, pack_codes(go_code_stream(data)))

    def test_repetitive_1m(self) -> None:
        """Highly repetitive data: long dictionary entries, tiny output."""
        data = b"\x00" * (512 * 1024) + b"serf " * (100 * 1024)
        data = (data + bytes(range(256)) * 2048)[: 1024 * 1024]
        packed = self.assertRoundTrip(data)
        self.assertLess(len(packed), len(data) // 20)

    def test_mixed_matches_reference(self) -> None:
        """Text-like data that walks through every width matches Go's codes."""
        rng = random.Random(2)
        words = [
            bytes(rng.choices(b"abcdefgh", k=rng.randint(1, 9))) for _ in range(300)
        ]
        data = b" ".join(rng.choices(words, k=12000))
        packed = self.assertRoundTrip(data)
        self.assertEqual(packed, pack_codes(go_code_stream(data)))
        self.assertEqual(reference_decompress(packed), data)

    def test_clear_exactly_at_end(self) -> None:
        """Inputs whose final code lands on or near the 4095 reset point.

        Close() bumps hi like Write() does, so the last code may trigger a
        12-bit clear code before the 9-bit EOF.
        """
        base = random.Random(3).randbytes(5000)
        seen_end_clear = False
        for n in range(3950, 3975):  # 3961 ends exactly on hi == 4095
            data = base[:n]
            codes = go_code_stream(data)
            seen_end_clear |= codes[-2] == 256
            packed = self.assertRoundTrip(data)
            self.assertEqual(packed, pack_codes(codes), n)
        self.assertTrue(seen_end_clear)

    def test_without_leading_clear(self) -> None:
        """Newer Go writers omit the first clear code; we still decode."""
        self.assertEqual(decompress(pack_codes([257])), b"")
        self.assertEqual(decompress(pack_codes([ord("a"), 257])), b"a")
        data = random.Random(4).randbytes(20000)
        codes = go_code_stream(data)
        self.assertEqual(codes[0], 256)
        self.assertEqual(decompress(pack_codes(codes[1:])), data)

    def test_frozen_table(self) -> None:
        """A full table is frozen until a clear code, as in Go's reader.

        Go's writer never lets this happen, but other encoders (and GIFs)
        do, and Go accepts it.
        """
        x, y = ord("x"), ord("y")
        # After 3839 codes hi reaches 4096: entry 4095 = "xx", then freeze.
        codes = [x] * 3839 + [4095, 4095, y, 256, x, 258, 257]
        # 258 right after the clear is the KwKwK case: "x" + "x".
        stream = pack_codes(codes)
        expected = b"x" * 3839 + b"xx" + b"xx" + b"y" + b"x" + b"xx"
        self.assertEqual(decompress(stream), expected)
        self.assertEqual(reference_decompress(stream), expected)

    def test_trailing_bytes_ignored(self) -> None:
        """Go stops at the EOF code and never looks at what follows."""
        self.assertEqual(decompress(compress(b"hello") + b"\xff" * 10), b"hello")


class ErrorTests(unittest.TestCase):
    """Malformed input raises DecodeError with a useful message."""

    def test_empty_input(self) -> None:
        """No bytes at all is a truncated stream."""
        self.assertRaises(DecodeError, decompress, b"")

    def test_truncated(self) -> None:
        """Every proper prefix of a stream lacks its EOF code."""
        packed = compress(b"TOBEORNOTTOBEORTOBEORNOT" * 3)
        for n in range(len(packed) - 1):
            e = self.assertRaises(DecodeError, decompress, packed[:n])
            self.assertIn("EOF code", str(e))

    def test_invalid_code(self) -> None:
        """A code beyond the next one to be defined is rejected."""
        e = self.assertRaises(DecodeError, decompress, pack_codes([256, 259, 257]))
        self.assertIn("invalid code 259", str(e))
        # Right after a clear, hi is 257, so 258 is not yet valid either.
        self.assertRaises(DecodeError, decompress, pack_codes([256, 258, 257]))

    def test_limit(self) -> None:
        """Output past the limit is refused, and exactly the limit is fine."""
        data = b"z" * 1000
        packed = compress(data)
        self.assertEqual(decompress(packed, limit=1000), data)
        e = self.assertRaises(DecodeError, decompress, packed, limit=999)
        self.assertIn("999", str(e))
        self.assertEqual(MAX_DECOMPRESSED_SIZE, 40 * 1024 * 1024)

    def test_bomb(self) -> None:
        """A frozen table repeating its longest entry hits the default cap.

        Each 12-bit code expands to 3839 bytes: 30 KB of input that would
        decode to ~77 MB, twice the default cap.
        """
        # Build entries "a", "aa", "aaa", ... then freeze and repeat the last.
        codes = [ord("a")]
        hi = 258
        # The code for the longest run so far is always hi - 1 in this chain
        # ("a", then 258="aa", then 259="aaa", ...), the KwKwK case each time.
        while hi < 4096:
            codes.append(hi)
            hi += 1
        stream = pack_codes(codes + [4095] * 20_000 + [257])
        e = self.assertRaises(DecodeError, decompress, stream)
        self.assertIn("limit", str(e))

    def test_not_bytes(self) -> None:
        """Even a wrong argument type surfaces as DecodeError."""
        self.assertRaises(DecodeError, decompress, "000302")


valid_streams = st.binary(max_size=3000).map(compress)


class PropertyTests(unittest.TestCase):
    """Hypothesis: round-trips, and robustness against hostile bytes."""

    @given(st.binary(max_size=4096))
    @settings(max_examples=300, deadline=None)
    def test_round_trip(self, data: bytes) -> None:
        """Anything we compress decompresses to itself, matching Go's codes."""
        packed = compress(data)
        self.assertEqual(decompress(packed), data)
        self.assertEqual(packed, pack_codes(go_code_stream(data)))

    @given(st.lists(st.sampled_from(b"ab\x00"), max_size=3000).map(bytes))
    @settings(max_examples=100, deadline=None)
    def test_round_trip_low_entropy(self, data: bytes) -> None:
        """Small alphabets exercise long entries and the KwKwK case."""
        self.assertEqual(decompress(compress(data)), data)

    @given(st.binary(max_size=2000))
    @settings(max_examples=300, deadline=None)
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Random input either decodes like Go's reader or raises DecodeError."""
        self.assertDecodesLikeGo(data)

    @given(
        valid_streams,
        st.lists(
            st.tuples(st.integers(min_value=0), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        ),
        st.integers(min_value=0),
    )
    @settings(max_examples=300, deadline=None)
    def test_mutated_streams(
        self, packed: bytes, edits: list[tuple[int, int]], cut: int
    ) -> None:
        """Valid streams with bytes flipped or cut off never escape DecodeError."""
        mutated = bytearray(packed)
        for where, value in edits:
            mutated[where % len(mutated)] ^= value or 1
        self.assertDecodesLikeGo(bytes(mutated))
        self.assertDecodesLikeGo(bytes(mutated[: cut % (len(mutated) + 1)]))

    @given(st.binary(min_size=1, max_size=2000), st.integers(0, 2000))
    @settings(max_examples=200, deadline=None)
    def test_limit_property(self, data: bytes, limit: int) -> None:
        """The limit admits exactly the outputs no longer than it."""
        packed = compress(data)
        if len(data) <= limit:
            self.assertEqual(decompress(packed, limit=limit), data)
        else:
            self.assertRaises(DecodeError, decompress, packed, limit=limit)

    def assertDecodesLikeGo(self, data: bytes) -> None:
        try:
            expected = reference_decompress(data)
        except DecodeError:
            self.assertRaises(DecodeError, decompress, data)
        else:
            self.assertEqual(decompress(data), expected)
