# mypy: disable-error-code="no-untyped-call"
"""RPC framing (spec §4.1): new-spec msgpack, sorted keys, back-to-back objects, caps."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.rpc.codec import FrameError, RPCDecoder, encode_frame, packb, sort_keys
from flyteserf.rpc.messages import (
    BodyError,
    EventRequest,
    HandshakeRequest,
    JoinRequest,
    MembersFilteredRequest,
    QueryRequest,
    RequestHeader,
    StopRequest,
    coordinate_record,
    decode_body,
    key_response_record,
    member_record,
    zero_key_response,
)
from flyteserf.serf.events import Member
from flyteserf.serf.keymanager import KeyResponse
from flyteserf.wire.serf_messages import Coordinate, MemberStatus


def s(text: str) -> bytes:
    """A fixstr: the form every short Go string takes."""
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


class SpecExampleTests(SynchronousTestCase):
    """The encoded examples of spec §4.1, byte for byte."""

    def test_handshake_header(self) -> None:
        self.assertEqual(
            packb({"Seq": 1, "Command": "handshake"}),
            b"\x82" + s("Command") + s("handshake") + s("Seq") + b"\x01",
        )

    def test_handshake_body(self) -> None:
        self.assertEqual(packb({"Version": 1}), b"\x81" + s("Version") + b"\x01")

    def test_response(self) -> None:
        self.assertEqual(encode_frame({"Seq": 1, "Error": ""}), b"\x82" + s("Error") + b"\xa0" + s("Seq") + b"\x01")

    def test_event_body(self) -> None:
        self.assertEqual(
            packb({"Payload": b"pl", "Name": "ev1", "Coalesce": True}),
            b"\x83" + s("Coalesce") + b"\xc3" + s("Name") + s("ev1") + s("Payload") + b"\xc4\x02pl",
        )

    def test_str8_and_bin(self) -> None:
        # Go's RPC handle writes str8 (0xd9) for 32..255-byte strings, bin for []byte.
        text = "x" * 40
        self.assertEqual(packb(text), b"\xd9\x28" + text.encode())
        self.assertEqual(packb(b"\x7f\x00\x00\x01"), b"\xc4\x04\x7f\x00\x00\x01")

    def test_header_then_body(self) -> None:
        self.assertEqual(
            encode_frame({"Seq": 3, "Error": ""}, {"Num": 0}),
            b"\x82" + s("Error") + b"\xa0" + s("Seq") + b"\x03" + b"\x81" + s("Num") + b"\x00",
        )
        self.assertEqual(encode_frame({"Seq": 1, "Error": ""}, None, has_body=True)[-1:], b"\xc0")

    def test_observed_member_bytes(self) -> None:
        """The member the real agent sent in our capture, byte for byte (Tags has one key)."""
        m = Member("probe", "127.0.0.1", 17946, {"role": "web"}, MemberStatus.ALIVE)
        expected = bytes.fromhex(
            "8ba441646472c4047f000001ab44656c656761746543757205ab44656c65676174654d617805ab44656c65"
            "676174654d696e02a44e616d65a570726f6265a4506f7274cd461aab50726f746f636f6c43757202ab5072"
            "6f746f636f6c4d617805ab50726f746f636f6c4d696e01a6537461747573a5616c697665a45461677381a4"
            "726f6c65a3776562"
        )
        self.assertEqual(packb(member_record(m)), expected)

    def test_observed_coordinate_miss(self) -> None:
        expected = bytes.fromhex(
            "82a5436f6f726484aa41646a7573746d656e74cb0000000000000000a54572726f72cb0000000000000000"
            "a6486569676874cb0000000000000000a3566563c0a24f6bc2"
        )
        self.assertEqual(packb(coordinate_record(None)), expected)

    def test_observed_bad_base64_body(self) -> None:
        expected = bytes.fromhex("85a44b657973c0a84d6573736167657380a64e756d45727200a84e756d4e6f64657300a74e756d5265737000")
        self.assertEqual(packb(zero_key_response()), expected)


class SortTests(SynchronousTestCase):
    def test_nested(self) -> None:
        obj = {"b": [{"z": 1, "a": 2}], "a": {"y": 1, "x": 2}}
        self.assertEqual(list(sort_keys(obj)), ["a", "b"])
        self.assertEqual(list(sort_keys(obj)["b"][0]), ["a", "z"])
        self.assertEqual(list(sort_keys(obj)["a"]), ["x", "y"])


class DecoderTests(SynchronousTestCase):
    def test_back_to_back_split_anywhere(self) -> None:
        data = encode_frame({"Command": "handshake", "Seq": 1}, {"Version": 1}) + packb({"Command": "members", "Seq": 2})
        for cut in range(len(data) + 1):
            d = RPCDecoder()
            got = d.feed(data[:cut]) + d.feed(data[cut:])
            self.assertEqual(
                got, [{"Command": "handshake", "Seq": 1}, {"Version": 1}, {"Command": "members", "Seq": 2}]
            )

    def test_byte_at_a_time(self) -> None:
        data = packb({"Command": "event", "Seq": 9}) + packb({"Name": "x", "Payload": b"\x00\xff"})
        d = RPCDecoder()
        got: list[Any] = []
        for i in range(len(data)):
            got += d.feed(data[i : i + 1])
        self.assertEqual(got[1]["Payload"], b"\x00\xff")

    def test_garbage(self) -> None:
        self.assertRaises(FrameError, RPCDecoder().feed, b"\xc1")

    def test_invalid_utf8(self) -> None:
        self.assertRaises(FrameError, RPCDecoder().feed, b"\xa2\xff\xfe")

    def test_non_string_keys(self) -> None:
        self.assertRaises(FrameError, RPCDecoder().feed, b"\x81\x01\x02")

    def test_claimed_huge_string_hits_cap(self) -> None:
        d = RPCDecoder(max_buffer=64 * 1024)
        self.assertEqual(d.feed(b"\xdb" + struct.pack(">I", 100 * 1024 * 1024)), [])
        with self.assertRaises(FrameError):
            for _ in range(100):
                d.feed(b"x" * 4096)
        # Once failed, it stays failed.
        self.assertRaises(FrameError, d.feed, b"\x01")

    def test_claimed_huge_array_fails_at_once(self) -> None:
        self.assertRaises(FrameError, RPCDecoder(max_buffer=1024).feed, b"\xdd" + struct.pack(">I", 10**8))

    def test_deep_nesting(self) -> None:
        self.assertRaises(FrameError, RPCDecoder().feed, b"\x91" * 100000)

    @settings(max_examples=300)
    @given(st.binary(max_size=256))
    def test_random_bytes_never_escape(self, data: bytes) -> None:
        try:
            RPCDecoder(max_buffer=128).feed(data)
        except FrameError:
            pass

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
            max_leaves=20,
        )
    )
    def test_round_trip(self, obj: Any) -> None:
        self.assertEqual(RPCDecoder().feed(packb(obj)), [sort_keys(obj)])


class BodyTests(SynchronousTestCase):
    """Go's decoder rules, as observed against the real agent."""

    def test_zero_values(self) -> None:
        self.assertEqual(decode_body(EventRequest, None), EventRequest("", b"", False))
        self.assertEqual(decode_body(EventRequest, {}), EventRequest("", b"", False))
        self.assertEqual(decode_body(EventRequest, {"Name": None, "Payload": None, "Coalesce": None}),
                         EventRequest("", b"", False))

    def test_unknown_keys_ignored(self) -> None:
        self.assertEqual(decode_body(EventRequest, {"Name": "n", "Zzz": [1]}).name, "n")

    def test_positional(self) -> None:
        self.assertEqual(decode_body(EventRequest, ["n", b"p", True]), EventRequest("n", b"p", True))
        self.assertRaises(BodyError, decode_body, EventRequest, ["n", b"p", True, 4])

    def test_str_into_bytes_ok_bin_into_str_not(self) -> None:
        self.assertEqual(decode_body(EventRequest, {"Payload": "text"}).payload, b"text")
        self.assertRaises(BodyError, decode_body, EventRequest, {"Name": b"bin"})

    def test_bools(self) -> None:
        self.assertTrue(decode_body(EventRequest, {"Coalesce": 1}).coalesce)
        self.assertRaises(BodyError, decode_body, EventRequest, {"Coalesce": 2})
        self.assertRaises(BodyError, decode_body, EventRequest, {"Coalesce": "true"})

    def test_int_ranges(self) -> None:
        self.assertRaises(BodyError, decode_body, HandshakeRequest, {"Version": 2**40})
        self.assertRaises(BodyError, decode_body, HandshakeRequest, {"Version": 1.0})
        self.assertRaises(BodyError, decode_body, HandshakeRequest, {"Version": True})
        self.assertRaises(BodyError, decode_body, RequestHeader, {"Command": "x", "Seq": -1})
        self.assertEqual(decode_body(RequestHeader, {"Command": "x", "Seq": 2**64 - 1}).seq, 2**64 - 1)
        self.assertRaises(BodyError, decode_body, StopRequest, {"Stop": -1})
        self.assertRaises(BodyError, decode_body, QueryRequest, {"RelayFactor": 300})
        self.assertEqual(decode_body(QueryRequest, {"Timeout": -5}).timeout, -5)

    def test_containers(self) -> None:
        self.assertRaises(BodyError, decode_body, JoinRequest, {"Existing": "a"})
        self.assertRaises(BodyError, decode_body, JoinRequest, {"Existing": [5]})
        self.assertRaises(BodyError, decode_body, MembersFilteredRequest, {"Tags": ["a"]})
        self.assertEqual(decode_body(MembersFilteredRequest, {"Tags": {"role": None}}).tags, {"role": ""})
        self.assertRaises(BodyError, decode_body, EventRequest, 5)
        self.assertRaises(BodyError, decode_body, EventRequest, {"Payload": msgpack.ExtType(1, b"x")})


class RecordTests(SynchronousTestCase):
    def test_member_addresses(self) -> None:
        self.assertEqual(member_record(Member("a", "10.0.0.1", 1))["Addr"], b"\x0a\x00\x00\x01")
        self.assertEqual(len(member_record(Member("a", "::ffff:10.0.0.1", 1))["Addr"]), 16)
        self.assertEqual(len(member_record(Member("a", "::1", 1))["Addr"]), 16)
        self.assertIsNone(member_record(Member("a", "not-an-ip", 1))["Addr"])

    def test_member_statuses(self) -> None:
        for status in MemberStatus:
            self.assertEqual(member_record(Member("a", "10.0.0.1", 1, status=status))["Status"], status.name.lower())

    def test_key_response(self) -> None:
        r = KeyResponse(messages={"a": "x"}, num_nodes=2, num_resp=2, num_err=1, keys={"k": 2})
        self.assertEqual(
            key_response_record(r, with_keys=True),
            {"Keys": {"k": 2}, "Messages": {"a": "x"}, "NumErr": 1, "NumNodes": 2, "NumResp": 2},
        )
        self.assertIsNone(key_response_record(r, with_keys=False)["Keys"])
        self.assertEqual(key_response_record(KeyResponse(), with_keys=True)["Keys"], {})

    def test_coordinate(self) -> None:
        c = Coordinate(vec=(0.5,) * 8, error=1.5, adjustment=0.0, height=1e-5)
        rec = coordinate_record(c)
        self.assertTrue(rec["Ok"])
        self.assertEqual(rec["Coord"]["Vec"], [0.5] * 8)
        self.assertIn(b"\xcb", packb(rec))
