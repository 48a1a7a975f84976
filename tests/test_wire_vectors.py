"""Every captured byte vector of serf-wire §6.2 and §6.3, encoded and decoded."""

from __future__ import annotations

import struct

from twisted.trial import unittest

from flyteserf.wire import crypto, lzw
from flyteserf.wire.codec import gossip_packb
from flyteserf.wire.framing import (
    add_crc,
    compress_message,
    decompress_message,
    make_compounds,
    split_compound,
    strip_crc,
)
from flyteserf.wire.messages import (
    AckResp,
    Alive,
    Dead,
    ErrResp,
    NackResp,
    Ping,
    PushNodeState,
    decode_message,
)
from flyteserf.wire.packet import decode_packet, encode_packet
from flyteserf.wire.serf_messages import (
    Join,
    KeyRequest,
    KeyResponse,
    Leave,
    PushPull,
    Query,
    QueryResponse,
    RelayHeader,
    UDPAddr,
    UserEvent,
    decode_relay,
    decode_serf_message,
    encode_relay,
)
from flyteserf.wire.stream import (
    PushPullStream,
    StreamReader,
    encode_push_pull,
    encode_stream,
    parse_stream_plaintext,
)
from flyteserf.wire.tags import decode_tags, encode_tags


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


LOCALHOST = bytes((127, 0, 0, 1))
K1 = bytes(range(16))
K3 = bytes(range(0x20, 0x40))

PING = h(
    """00 85 a4 4e6f6465 a1 61  a5 5365714e6f 01  aa 536f7572636541646472 a4 7f000001
    aa 536f757263654e6f6465 a1 62  aa 536f75726365506f7274 cd 1f0b"""
)
JOIN_GOSSIP = h("0c 139aa55a 08 01 82 a5 4c54696d65 01 a4 4e6f6465 a1 62")
EVENT_GOSSIP = h(
    """0c a639cc5a 08 03 84 a2 4343 c3 a5 4c54696d65 01 a4 4e616d65 a6 6465706c6f79
    a7 5061796c6f6164 a6 76312e322e33"""
)
ALIVE_GOSSIP = h(
    """0c e1882502 04 86 a4 41646472 a4 7f000001 ab 496e6361726e6174696f6e 02 a4 4d657461
    ad ff81a66e6577746167a376616c a4 4e6f6465 a1 62 a4 506f7274 cd 1f0b a3 56736e a6 010502020505"""
)
QUERY_GOSSIP = h(
    """0c 91547859 08 04 8b a4 41646472 a4 7f000001 a7 46696c74657273 c0 a5 466c616773 01
    a2 4944 ce 55b2b06b a5 4c54696d65 01 a4 4e616d65 a6 70696e672d71 a7 5061796c6f6164
    a8 7061796c6f616431 a4 506f7274 cd 1f0b ab 52656c6179466163746f72 00
    aa 536f757263654e6f6465 a1 62 a7 54696d656f7574 ce 77359400"""
)
QUERY_ACK = h(
    """08 05 85 a5 466c616773 01 a4 46726f6d a1 62 a2 4944 ce 55b2b06b a5 4c54696d65 01
    a7 5061796c6f6164 c0"""
)
LEAVE_GOSSIP = h("0c fe63071c 08 00 83 a5 4c54696d65 02 a4 4e6f6465 a1 62 a5 5072756e65 c2")
DEAD_GOSSIP = h(
    "0c 460832bd 05 83 a4 46726f6d a1 62 ab 496e6361726e6174696f6e 02 a4 4e6f6465 a1 62"
)
COMPRESSED_ACK = h(
    """09 82 a4 416c676f 00 a3 427566 da 0062 0005083a05254c1e366fc290d10640500042aa82905153670e9d3665dc
    d05906a0a3c78ea58ac891f346ceb21ff83e763485a44c9a336836fa2087af16a27168e28db252660c268e2a3b020d3a54
    65d18f473d26151a9469d35253cac471f2264040"""
)


def raw(text: str) -> bytes:
    """Old-spec msgpack raw string."""
    return gossip_packb(text.encode())


def initial_coordinate_ack() -> bytes:
    """The 150-byte ack of §6.2, built from its annotated hex."""
    zero = h("cb 0000000000000000")
    coord = (
        h("84")
        + raw("Adjustment")
        + zero
        + raw("Error")
        + h("cb 3ff8000000000000")
        + raw("Height")
        + h("cb 3ee4f8b588e368f1")
        + raw("Vec")
        + h("98")
        + zero * 8
    )
    payload = h("01") + coord
    return h("02 82") + raw("Payload") + h("da") + struct.pack(">H", len(payload)) + payload + raw("SeqNo") + h("01")


class MemberlistVectorTests(unittest.TestCase):
    def test_ping(self) -> None:
        ping = Ping(seq_no=1, node="a", source_addr=LOCALHOST, source_node="b", source_port=7947)
        self.assertEqual(len(PING), 59)
        self.assertEqual(ping.encode(), PING)
        self.assertEqual(decode_message(PING), ping)

    def test_ping_without_source_omits_fields(self) -> None:
        self.assertEqual(Ping(seq_no=1, node="a").encode(), h("00 82 a4 4e6f6465 a1 61 a5 5365714e6f 01"))

    def test_alive_after_tag_change(self) -> None:
        alive = Alive(
            incarnation=2,
            node="b",
            addr=LOCALHOST,
            port=7947,
            meta=encode_tags({"newtag": "val"}),
            vsn=bytes((1, 5, 2, 2, 5, 5)),
        )
        self.assertEqual(len(ALIVE_GOSSIP), 75)
        self.assertEqual(add_crc(alive.encode()), ALIVE_GOSSIP)
        decoded = decode_message(strip_crc(ALIVE_GOSSIP))
        self.assertEqual(decoded, alive)
        assert isinstance(decoded, Alive)
        self.assertEqual(decode_tags(decoded.meta), {"newtag": "val"})

    def test_dead_self(self) -> None:
        dead = Dead(incarnation=2, node="b", from_="b")
        self.assertEqual(len(DEAD_GOSSIP), 34)
        self.assertEqual(add_crc(dead.encode()), DEAD_GOSSIP)
        self.assertEqual(decode_message(strip_crc(DEAD_GOSSIP)), dead)

    def test_compound_ping_and_event(self) -> None:
        ping = Ping(seq_no=5, node="a", source_addr=LOCALHOST, source_node="b", source_port=7947).encode()
        event = EVENT_GOSSIP[5:]
        self.assertEqual((len(ping), len(event)), (0x3B, 0x29))
        [compound] = make_compounds([ping, event])
        self.assertEqual(len(compound), 106)
        self.assertEqual(compound[:6], h("07 02 003b 0029"))
        self.assertEqual(split_compound(compound), ([ping, event], 0))

    def test_compressed_ack(self) -> None:
        ack = initial_coordinate_ack()
        self.assertEqual(len(ack), 150)
        self.assertEqual(len(COMPRESSED_ACK), 113)
        self.assertEqual(decompress_message(COMPRESSED_ACK), ack)
        self.assertEqual(compress_message(ack), COMPRESSED_ACK)
        decoded = decode_message(ack)
        assert isinstance(decoded, AckResp)
        self.assertEqual(decoded.seq_no, 1)
        self.assertEqual(decoded.payload[0], 1)
        # The sender compresses because it is smaller; the receiver unwraps.
        self.assertEqual(encode_packet(ack, compress=True), COMPRESSED_ACK)
        self.assertEqual(decode_packet(COMPRESSED_ACK).messages, [ack])

    def test_plain_ack_payload_is_nil(self) -> None:
        self.assertEqual(AckResp(seq_no=1).encode(), h("02 82 a7 5061796c6f6164 c0 a5 5365714e6f 01"))


class SerfVectorTests(unittest.TestCase):
    def test_join_intent(self) -> None:
        self.assertEqual(len(JOIN_GOSSIP), 22)
        join = Join(ltime=1, node="b")
        self.assertEqual(add_crc(b"\x08" + join.encode()), JOIN_GOSSIP)
        [msg] = decode_packet(JOIN_GOSSIP).messages
        self.assertEqual(decode_serf_message(msg[1:]), join)

    def test_user_event(self) -> None:
        self.assertEqual(len(EVENT_GOSSIP), 46)
        event = UserEvent(ltime=1, name="deploy", payload=b"v1.2.3", cc=True)
        self.assertEqual(add_crc(b"\x08" + event.encode()), EVENT_GOSSIP)
        self.assertEqual(decode_serf_message(EVENT_GOSSIP[6:]), event)

    def test_query(self) -> None:
        self.assertEqual(len(QUERY_GOSSIP), 125)
        query = Query(
            addr=LOCALHOST,
            filters=(),
            flags=1,
            id=1437773931,
            ltime=1,
            name="ping-q",
            payload=b"payload1",
            port=7947,
            relay_factor=0,
            source_node="b",
            timeout=2_000_000_000,
        )
        self.assertEqual(encode_packet(b"\x08" + query.encode(), crc=True), QUERY_GOSSIP)
        decoded = decode_serf_message(QUERY_GOSSIP[6:])
        self.assertEqual(decoded, query)
        assert isinstance(decoded, Query)
        self.assertTrue(decoded.ack)

    def test_query_ack(self) -> None:
        self.assertEqual(len(QUERY_ACK), 41)
        ack = QueryResponse(flags=1, from_="b", id=0x55B2B06B, ltime=1)
        self.assertEqual(b"\x08" + ack.encode(), QUERY_ACK)
        self.assertEqual(decode_serf_message(QUERY_ACK[1:]), ack)

    def test_leave_intent(self) -> None:
        self.assertEqual(len(LEAVE_GOSSIP), 29)
        leave = Leave(ltime=2, node="b", prune=False)
        self.assertEqual(add_crc(b"\x08" + leave.encode()), LEAVE_GOSSIP)
        self.assertEqual(decode_serf_message(LEAVE_GOSSIP[6:]), leave)

    def test_key_request_payloads(self) -> None:
        self.assertEqual(KeyRequest(key=b"").encode(), h("07 81 a3 4b6579 a0"))
        self.assertEqual(KeyRequest(key=K3).encode(), h("07 81 a3 4b6579 da 0020") + K3)
        self.assertEqual(KeyRequest(key=K1).encode(), h("07 81 a3 4b6579 b0") + K1)
        self.assertEqual(decode_serf_message(KeyRequest(key=K3).encode()), KeyRequest(key=K3))

    def test_key_responses(self) -> None:
        ok = h("08 84 a4 4b657973 c0 a7 4d657373616765 a0 aa 5072696d6172794b6579 a0 a6 526573756c74 c3")
        self.assertEqual(KeyResponse(result=True).encode(), ok)
        self.assertEqual(decode_serf_message(ok), KeyResponse(result=True))
        listing = KeyResponse(result=True, keys=("AAECAwQFBgcICQoLDA0ODw==",), primary_key="AAECAwQFBgcICQoLDA0ODw==")
        encoded = listing.encode()
        self.assertIn(h("91 b8") + b"AAECAwQFBgcICQoLDA0ODw==", encoded)
        self.assertIn(raw("PrimaryKey") + h("b8") + b"AAECAwQFBgcICQoLDA0ODw==", encoded)
        self.assertEqual(decode_serf_message(encoded), listing)

    def test_relay(self) -> None:
        header = RelayHeader(dest_addr=UDPAddr(ip=LOCALHOST, port=7948, zone=""), dest_name="c")
        response = QueryResponse(flags=1, from_="c", id=99, ltime=1)
        relay = encode_relay(header, response)
        self.assertEqual(relay[:1], h("09"))
        self.assertEqual(relay[1 : 1 + len(header.pack())], header.pack())
        decoded_header, forwarded = decode_relay(relay)
        self.assertEqual(decoded_header, header)
        self.assertEqual(forwarded, response.encode())
        self.assertEqual(forwarded[:1], h("05"))
        self.assertEqual(
            header.pack(),
            h("82")
            + raw("DestAddr")
            + h("83")
            + raw("IP")
            + h("a4 7f000001")
            + raw("Port")
            + h("cd 1f0c")
            + raw("Zone")
            + h("a0")
            + raw("DestName")
            + h("a1 63"),
        )


class EncryptedVectorTests(unittest.TestCase):
    def test_nack_k3(self) -> None:
        wire = h("01 745dd928048ce50354631f5c f223a18c3848280a5abf088526195f7cd5bc3164bc38a19039")
        self.assertEqual(len(wire), 38)
        self.assertEqual(decode_packet(wire, [K1, K3]).messages, [NackResp(seq_no=22).encode()])
        self.assertEqual(crypto.encrypt(K3, NackResp(seq_no=22).encode(), nonce=wire[1:13]), wire)

    def test_join_intent_k1(self) -> None:
        wire = h(
            "017f71f54e7cd777bc4499f863f2f3a6a03707476d92892bacebbadb8ce507a9fd3c7e0138e35a2dd82374ef234c295e45a909"
        )
        self.assertEqual(len(wire), 51)
        self.assertEqual(crypto.decrypt(K1, wire), JOIN_GOSSIP)
        self.assertEqual(encode_packet(b"\x08" + Join(ltime=1, node="b").encode(), crc=True, key=K1)[0], 1)
        [msg] = decode_packet(wire, [K1]).messages
        self.assertEqual(decode_serf_message(msg[1:]), Join(ltime=1, node="b"))

    def captured_push_pull(self) -> bytes:
        state = PushNodeState(
            name="b",
            addr=LOCALHOST,
            port=7947,
            meta=encode_tags({}),
            incarnation=1,
            state=0,
            vsn=bytes((1, 5, 2, 2, 5, 5)),
        )
        user_state = PushPull(
            ltime=1,
            status_ltimes={"b": 0},
            left_members=(),
            event_ltime=1,
            events=(None,) * 512,
            query_ltime=1,
        ).encode()
        self.assertEqual(len(user_state), 585)
        return encode_push_pull(True, [state], user_state)

    def test_push_pull_plaintext(self) -> None:
        pp = self.captured_push_pull()
        self.assertEqual(len(pp), 681)
        header = h("06 83 a4 4a6f696e c3 a5 4e6f646573 01 ac 557365725374617465 4c656e cd 0249")
        self.assertEqual(pp[: len(header)], header)
        self.assertIn(h("dc 0200") + b"\xc0" * 512, pp)
        self.assertTrue(pp.endswith(h("ac 5374617475734c54696d6573 81 a1 62 00")))
        # Go 1.19's LZW writer gave a 212-byte compress wrapper for exactly these bytes.
        self.assertEqual(len(compress_message(pp)), 212)
        self.assertEqual(compress_message(pp)[:15], h("09 82 a4 416c676f 00 a3 427566 da 00c5"))
        message = parse_stream_plaintext(pp)
        assert isinstance(message, PushPullStream)
        self.assertTrue(message.join)
        self.assertEqual(message.states[0].name, "b")
        self.assertEqual(decode_serf_message(message.user_state), decode_serf_message(pp[-585:]))

    def test_push_pull_encrypted_stream(self) -> None:
        pp = self.captured_push_pull()
        wire = encode_stream(pp, compress=True, key=K1)
        self.assertEqual(wire[:5], h("0a 000000f1"))
        self.assertEqual(wire[5], 1)
        reader = StreamReader([K1])
        self.assertIsNone(reader.feed(wire[:100]))
        message = reader.feed(wire[100:])
        self.assertEqual(message, parse_stream_plaintext(pp))

    def test_err_resp(self) -> None:
        text = "Encryption is configured but remote state is not encrypted"
        encoded = ErrResp(error=text).encode()
        self.assertEqual(encoded, h("0d 81 a5 4572726f72 da 003a") + text.encode())
        self.assertEqual(parse_stream_plaintext(encoded), ErrResp(error=text))

    def test_lzw_module_vectors(self) -> None:
        self.assertEqual(lzw.compress(b""), h("000302"))
