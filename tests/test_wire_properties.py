"""Round-trips for every message type, and hostile bytes into the decoders."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from flyteserf.wire.codec import GoStruct, gossip_packb
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.framing import make_compounds, split_compound
from flyteserf.wire.messages import (
    AckResp,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    NackResp,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    UserMsgHeader,
    decode_message,
)
from flyteserf.wire.packet import decode_packet, encode_packet
from flyteserf.wire.serf_messages import (
    Coordinate,
    EventEntry,
    Join,
    KeyRequest,
    KeyResponse,
    Leave,
    Member,
    PushPull,
    Query,
    QueryResponse,
    RelayHeader,
    UDPAddr,
    UserEvent,
    UserEvents,
    decode_conflict_response,
    decode_filter,
    decode_relay,
    decode_serf_message,
    encode_conflict_response,
    encode_node_filter,
    encode_relay,
    encode_tag_filter,
)
from flyteserf.wire.stream import StreamReader, encode_push_pull, encode_stream
from flyteserf.wire.tags import decode_tags, encode_tags

KEY = bytes(range(32))

names = st.text(max_size=20)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
blobs = st.binary(max_size=64)
ips = st.sampled_from([bytes(4), bytes((127, 0, 0, 1)), bytes(16)])
vsns = st.binary(min_size=6, max_size=6)

MEMBERLIST = [
    st.builds(Ping, seq_no=u32, node=names, source_addr=blobs, source_port=u16, source_node=names),
    st.builds(
        IndirectPingReq,
        seq_no=u32,
        target=ips,
        port=u16,
        node=names,
        nack=st.booleans(),
        source_addr=blobs,
        source_port=u16,
        source_node=names,
    ),
    st.builds(AckResp, seq_no=u32, payload=blobs),
    st.builds(NackResp, seq_no=u32),
    st.builds(ErrResp, error=names),
    st.builds(Suspect, incarnation=u32, node=names, from_=names),
    st.builds(Dead, incarnation=u32, node=names, from_=names),
    st.builds(Alive, incarnation=u32, node=names, addr=ips, port=u16, meta=blobs, vsn=vsns),
]
SERF = [
    st.builds(Leave, ltime=u64, node=names, prune=st.booleans()),
    st.builds(Join, ltime=u64, node=names),
    st.builds(UserEvent, ltime=u64, name=names, payload=blobs, cc=st.booleans()),
    st.builds(
        Query,
        ltime=u64,
        id=u32,
        addr=ips,
        port=u16,
        source_node=names,
        filters=st.lists(blobs, max_size=3).map(tuple),
        flags=u32,
        relay_factor=u8,
        timeout=i64,
        name=names,
        payload=blobs,
    ),
    st.builds(QueryResponse, ltime=u64, id=u32, from_=names, flags=u32, payload=blobs),
    st.builds(
        PushPull,
        ltime=u64,
        status_ltimes=st.dictionaries(names, u64, max_size=4),
        left_members=st.lists(names, max_size=3).map(tuple),
        event_ltime=u64,
        events=st.lists(
            st.none()
            | st.builds(
                UserEvents,
                ltime=u64,
                events=st.lists(st.builds(EventEntry, name=names, payload=blobs), max_size=2).map(tuple),
            ),
            max_size=5,
        ).map(tuple),
        query_ltime=u64,
    ),
    st.builds(KeyRequest, key=blobs),
    st.builds(
        KeyResponse,
        result=st.booleans(),
        message=names,
        keys=st.lists(names, max_size=3).map(tuple),
        primary_key=names,
    ),
]
OTHER_STRUCTS = [
    st.builds(PushPullHeader, nodes=i64, user_state_len=i64, join=st.booleans()),
    st.builds(UserMsgHeader, user_msg_len=i64),
    st.builds(
        PushNodeState, name=names, addr=ips, port=u16, meta=blobs, incarnation=u32, state=u8, vsn=vsns
    ),
    st.builds(
        Member,
        name=names,
        addr=ips,
        port=u16,
        tags=st.dictionaries(names, names, max_size=3),
        status=u8,
        protocol_min=u8,
        protocol_max=u8,
        protocol_cur=u8,
        delegate_min=u8,
        delegate_max=u8,
        delegate_cur=u8,
    ),
    st.builds(
        Coordinate,
        vec=st.lists(st.floats(allow_nan=False), min_size=8, max_size=8).map(tuple),
        error=st.floats(allow_nan=False),
        adjustment=st.floats(allow_nan=False),
        height=st.floats(allow_nan=False),
    ),
    st.builds(RelayHeader, dest_addr=st.builds(UDPAddr, ip=ips, port=u16, zone=names), dest_name=names),
]


def msgpack_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=20) | st.floats()
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
        max_leaves=10,
    )


def valid_packets() -> st.SearchStrategy[bytes]:
    messages = st.one_of(*MEMBERLIST).map(lambda m: m.encode()) | st.one_of(*SERF).map(
        lambda m: b"\x08" + m.encode()
    )
    return st.builds(
        lambda msgs, crc, compress: encode_packet(make_compounds(msgs)[0], crc=crc, compress=compress, key=KEY),
        st.lists(messages, min_size=1, max_size=5),
        st.booleans(),
        st.booleans(),
    )


def mutate(data: bytes, draw: Any) -> bytes:
    """Flip, truncate, splice or extend a valid buffer."""
    how = draw(st.sampled_from(["flip", "truncate", "splice", "extend"]))
    if not data:
        return data
    if how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes((data[i] ^ draw(st.integers(1, 255)),)) + data[i + 1 :]
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "splice":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(max_size=16)) + data[i:]
    return data + draw(st.binary(min_size=1, max_size=16))


class RoundTripTests(unittest.TestCase):
    @given(st.one_of(*MEMBERLIST))
    def test_memberlist_messages(self, msg: Any) -> None:
        self.assertEqual(decode_message(msg.encode()), msg)

    @given(st.one_of(*SERF))
    def test_serf_messages(self, msg: Any) -> None:
        self.assertEqual(decode_serf_message(msg.encode()), msg)

    @given(st.one_of(*OTHER_STRUCTS))
    def test_other_structs(self, msg: GoStruct) -> None:
        self.assertEqual(type(msg).unpack(msg.pack()), msg)

    @given(st.lists(st.binary(min_size=1, max_size=40), min_size=2, max_size=600))
    def test_compound_split_respects_255(self, msgs: list[bytes]) -> None:
        packets = make_compounds(msgs)
        out: list[bytes] = []
        for p in packets:
            if p[0] == 7 and len(p) > 1:
                parts, lost = split_compound(p)
                self.assertEqual(lost, 0)
                out.extend(parts)
            else:
                out.append(p)
        self.assertEqual(out, msgs)
        self.assertEqual(len(packets), -(-len(msgs) // 255))

    @given(st.dictionaries(names, names, max_size=8))
    def test_tags(self, tags: dict[str, str]) -> None:
        try:
            meta = encode_tags(tags)
        except ValueError:
            return
        self.assertLessEqual(len(meta), 512)
        self.assertEqual(decode_tags(meta), tags)

    @given(st.lists(names, max_size=4), names, names)
    def test_filters(self, nodes: list[str], tag: str, expr: str) -> None:
        self.assertEqual(decode_filter(encode_node_filter(nodes)), ("node", tuple(nodes)))
        kind, tag_filter = decode_filter(encode_tag_filter(tag, expr))
        self.assertEqual(kind, "tag")

    @given(st.builds(QueryResponse, ltime=u64, id=u32, from_=names, flags=u32, payload=blobs), names)
    def test_relay(self, response: QueryResponse, dest: str) -> None:
        header = RelayHeader(dest_addr=UDPAddr(ip=bytes(4), port=7946), dest_name=dest)
        self.assertEqual(decode_relay(encode_relay(header, response)), (header, response.encode()))

    @given(st.none() | OTHER_STRUCTS[3])
    def test_conflict_response(self, member: Member | None) -> None:
        self.assertEqual(decode_conflict_response(encode_conflict_response(member)), member)

    @given(st.lists(st.one_of(*MEMBERLIST), min_size=1, max_size=6), st.booleans(), st.booleans(), st.booleans())
    def test_packet_pipeline(self, msgs: list[Any], crc: bool, compress: bool, encrypt: bool) -> None:
        encoded = [m.encode() for m in msgs]
        [packet] = make_compounds(encoded)
        wire = encode_packet(packet, crc=crc, compress=compress, key=KEY if encrypt else None)
        contents = decode_packet(wire, [KEY] if encrypt else [])
        self.assertEqual(contents.messages, encoded)
        self.assertEqual(contents.errors, [])

    @given(st.builds(PushNodeState, name=names, addr=ips, port=u16, incarnation=u32, vsn=vsns), blobs, st.booleans())
    def test_stream_pipeline(self, state: PushNodeState, user_state: bytes, encrypt: bool) -> None:
        wire = encode_stream(encode_push_pull(True, [state] * 3, user_state), compress=True, key=KEY if encrypt else None)
        reader = StreamReader([KEY] if encrypt else [])
        result = None
        for i in range(0, len(wire), 7):  # arrives in small pieces
            result = reader.feed(wire[i : i + 7])
            if result is not None:
                break
        assert result is not None
        self.assertEqual(result.states, (state,) * 3)  # type: ignore[union-attr]
        self.assertEqual(result.user_state, user_state)  # type: ignore[union-attr]


class HostileInputTests(unittest.TestCase):
    """Only DecodeError may ever come out of a decoder."""

    def assertOnlyDecodeError(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except DecodeError:
            pass

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_random_packets(self, data: bytes) -> None:
        self.assertOnlyDecodeError(decode_packet, data)
        self.assertOnlyDecodeError(decode_packet, data, [KEY])
        self.assertOnlyDecodeError(decode_message, data)
        self.assertOnlyDecodeError(decode_serf_message, data)
        self.assertOnlyDecodeError(decode_relay, data)
        self.assertOnlyDecodeError(decode_filter, data)
        self.assertOnlyDecodeError(decode_tags, data)
        self.assertOnlyDecodeError(decode_conflict_response, data)

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutated_packets(self, data: st.DataObject) -> None:
        packet = data.draw(valid_packets())
        self.assertOnlyDecodeError(decode_packet, mutate(packet, data.draw), [KEY])

    @settings(max_examples=300)
    @given(st.data(), st.booleans())
    def test_mutated_plain_packets(self, data: st.DataObject, compress: bool) -> None:
        msgs = data.draw(st.lists(st.one_of(*MEMBERLIST).map(lambda m: m.encode()), min_size=1, max_size=4))
        packet = encode_packet(make_compounds(msgs)[0], crc=True, compress=compress)
        mutated = mutate(packet, data.draw)
        try:
            contents = decode_packet(mutated)
        except DecodeError:
            return
        for message in contents.messages:
            self.assertOnlyDecodeError(decode_message, message)

    @given(msgpack_values(), st.sampled_from(range(14)))
    def test_wrong_shapes(self, value: Any, type_byte: int) -> None:
        """Valid msgpack of the wrong shape behind each type byte."""
        body = gossip_packb(value)
        self.assertOnlyDecodeError(decode_message, bytes((type_byte,)) + body)
        self.assertOnlyDecodeError(decode_serf_message, bytes((type_byte % 10,)) + body)
        self.assertOnlyDecodeError(decode_packet, bytes((type_byte,)) + body)
        reader = StreamReader()
        self.assertOnlyDecodeError(reader.feed, bytes((type_byte,)) + body)

    @settings(max_examples=200)
    @given(st.binary(max_size=200), st.booleans())
    def test_random_streams(self, data: bytes, keyed: bool) -> None:
        self.assertOnlyDecodeError(StreamReader([KEY] if keyed else []).feed, data)

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.booleans())
    def test_mutated_streams(self, data: st.DataObject, encrypt: bool) -> None:
        state = PushNodeState(name="x", addr=bytes(4), port=1, vsn=bytes(6))
        wire = encode_stream(encode_push_pull(False, [state], b"\x02\x80"), compress=True, key=KEY if encrypt else None)
        self.assertOnlyDecodeError(StreamReader([KEY] if encrypt else []).feed, mutate(wire, data.draw))

    def test_push_pull_claiming_huge_counts(self) -> None:
        header = PushPullHeader(nodes=10**9, user_state_len=1, join=True).encode()
        self.assertRaises(DecodeError, StreamReader().feed, header)
        header = PushPullHeader(nodes=1, user_state_len=10**12, join=True).encode()
        self.assertRaises(DecodeError, StreamReader().feed, header)

    def test_compound_claiming_255_parts(self) -> None:
        self.assertRaises(DecodeError, decode_packet, b"\x07\xff" + b"\x00\x01" * 10)
        contents = decode_packet(b"\x07\x02\x00\x00\x00\x03" + b"\x02\x80\x00")
        self.assertEqual(contents.messages, [b"\x02\x80\x00"])
        self.assertEqual(contents.errors, ["compound request had 1 truncated or empty messages"])

    def test_stream_limit(self) -> None:
        reader = StreamReader(limit=1000)
        self.assertRaises(DecodeError, reader.feed, b"\x08" + b"\x81\xaaUserMsgLen\xcd\x10\x00")
        reader = StreamReader(limit=1000)
        with self.assertRaises(DecodeError):
            for _ in range(100):
                reader.feed(b"\x06\x83" + b"\x00" * 50)

    def test_nested_compression_is_bounded(self) -> None:
        msg = AckResp(seq_no=1).encode()
        from flyteserf.wire.framing import compress_message

        for _ in range(10):
            msg = compress_message(msg)
        self.assertRaises(DecodeError, decode_packet, msg)
