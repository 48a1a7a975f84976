# mypy: disable-error-code="no-untyped-call"
"""The RPC server over real loopback TCP: every command through RPCClient, and hostile clients."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from flyteserf.rpc.client import RPCClient, RPCError
from flyteserf.rpc.codec import RPCDecoder, encode_frame, packb
from flyteserf.rpc.server import RPCFactory
from flyteserf.rpc.testing import FakeRPCAgent
from flyteserf.serf.events import EventType
from flyteserf.wire.keyring import Keyring, encode_key
from flyteserf.wire.serf_messages import MemberStatus

reactor: Any = _reactor


class RawClient(Protocol):
    """Bytes in, bytes out, and a Deferred for the end of the connection."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended.callback(None)

    def objects(self) -> list[Any]:
        return RPCDecoder(max_buffer=64 << 20).feed(self.data)


def sleep(seconds: float) -> Deferred[None]:
    clock: IReactorTime = reactor
    return deferLater(clock, seconds, lambda: None)


class LoopbackTestCase(TestCase):
    auth_key = ""
    factory_options: dict[str, Any] = {}

    async def asyncSetUp(self) -> None:
        self.agent = FakeRPCAgent(reactor, "a", "127.0.0.1", 7946, tags={"role": "web"})
        self.agent.add_member("b", "127.0.0.2", 7946, {"role": "db"})
        self.agent.add_member("c", "127.0.0.3", 7946, {}, MemberStatus.FAILED)
        self.agent.ack_delay = 0.01
        self.agent.response_delay = 0.02
        self.factory = RPCFactory(reactor, self.agent, self.auth_key, **self.factory_options)
        tcp: IReactorTCP = reactor
        self.port: IListeningPort = await TCP4ServerEndpoint(tcp, 0, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(self.port.stopListening)
        self.portno = self.port.getHost().port
        self.addCleanup(self._close_server_side)

    def _close_server_side(self) -> Deferred[None] | None:
        for proto in list(self.factory.connections):
            if proto.transport is not None:
                proto.transport.abortConnection()  # type: ignore[attr-defined]
        return sleep(0.01)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self.asyncSetUp())

    async def client(self, auth: str | None = None) -> RPCClient:
        c = await RPCClient.connect(reactor, "127.0.0.1", self.portno, auth=auth)
        self.addCleanup(c.close)
        return c

    async def raw(self, data: bytes = b"") -> RawClient:
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.portno), RawClient())
        self.addCleanup(lambda: proto.transport.abortConnection() if proto.transport else None)
        if data:
            proto.transport.write(data)
        return proto


class CommandTests(LoopbackTestCase):
    async def test_members(self) -> None:
        c = await self.client()
        header, body = await c.call("members")
        self.assertEqual(header["Error"], "")
        self.assertEqual([m["Name"] for m in body["Members"]], ["a", "b", "c"])
        header, body = await c.call("members-filtered", {"Status": "alive", "Tags": {"role": "web|db"}, "Name": ""})
        self.assertEqual([m["Name"] for m in body["Members"]], ["a", "b"])

    async def test_event_force_leave_tags(self) -> None:
        c = await self.client()
        self.assertEqual((await c.call("event", {"Name": "e", "Payload": b"p", "Coalesce": False}))[0]["Error"], "")
        self.assertEqual((await c.call("force-leave", {"Node": "c", "Prune": False}))[1], None)
        self.assertEqual((await c.call("tags", {"Tags": {"x": "1"}, "DeleteTags": ["role"]}))[0]["Error"], "")
        self.assertEqual(self.agent.events, [("e", b"p", False)])
        self.assertEqual(self.agent.force_leaves, [("c", False)])
        self.assertEqual(self.agent.tags, {"x": "1"})

    async def test_join(self) -> None:
        self.agent.join_errors["10.0.0.1:1"] = "dial tcp 10.0.0.1:1: i/o timeout"
        c = await self.client()
        self.assertEqual(await c.call("join", {"Existing": ["x", "y"], "Replay": False}), ({"Seq": 2, "Error": ""}, {"Num": 2}))
        header, body = await c.call("join", {"Existing": ["10.0.0.1:1"], "Replay": False})
        self.assertEqual(header["Error"], "1 error occurred:\n\t* Failed to join 10.0.0.1: dial tcp 10.0.0.1:1: i/o timeout\n\n")
        self.assertEqual(body, {"Num": 0})

    async def test_keys_stats_coordinate(self) -> None:
        self.agent.keyring = Keyring([bytes(16)])
        c = await self.client()
        header, body = await c.call("install-key", {"Key": "not base64!"})
        self.assertEqual(header["Error"], "illegal base64 data at input byte 3")
        self.assertEqual(body["NumNodes"], 0)
        header, body = await c.call("list-keys")
        self.assertEqual(body["Keys"], {encode_key(bytes(16)): 2})
        header, body = await c.call("stats")
        self.assertEqual(body["agent"], {"name": "a"})
        header, body = await c.call("get-coordinate", {"Node": "b"})
        self.assertFalse(body["Ok"])

    async def test_stream_and_respond(self) -> None:
        c = await self.client()
        records: list[Any] = []
        stream = await c.stream("stream", {"Type": "user,query"}, records.append)
        self.assertEqual(stream.header, {"Seq": 2, "Error": ""})
        self.agent.emit_member_event(EventType.MEMBER_JOIN, "b")
        self.agent.emit_user_event("deploy", b"v2")
        query = self.agent.emit_query("uptime", b"", timeout=5)
        while len(records) < 2:
            await sleep(0.01)
        self.assertEqual([r["Event"] for r in records], ["user", "query"])
        header, _ = await c.call("respond", {"ID": records[1]["ID"], "Payload": b"42"})
        self.assertEqual(header["Error"], "")
        self.assertEqual(self.agent.responses[0].query, query)
        await c.stop(stream)
        self.assertEqual(self.agent.subscriber_count, 0)

    async def test_monitor(self) -> None:
        self.agent.log_ring.add("INFO", "2024/01/01 00:00:00 [INFO] agent: hello")
        c = await self.client()
        lines: list[Any] = []
        bad = await c.stream("monitor", {"LogLevel": "chatty"})
        self.assertEqual(bad.header, {"Seq": 2, "Error": "Unknown log level: CHATTY"})
        mon = await c.stream("monitor", {"LogLevel": "INFO"}, lines.append)
        self.agent.log_ring.add("WARN", "2024/01/01 00:00:01 [WARN] agent: later")
        while len(lines) < 2:
            await sleep(0.01)
        self.assertEqual([r["Log"] for r in lines], ["2024/01/01 00:00:00 [INFO] agent: hello", "2024/01/01 00:00:01 [WARN] agent: later"])
        await c.stop(mon)
        self.assertEqual(self.agent.log_ring.subscriber_count, 0)

    async def test_query(self) -> None:
        c = await self.client()
        records: list[Any] = []
        q = await c.stream("query", {"Name": "q", "Payload": b"hi", "RequestAck": True, "Timeout": 300_000_000}, records.append)
        await q.done
        self.assertEqual(
            [(r["Type"], r["From"]) for r in records],
            [("ack", "a"), ("ack", "b"), ("response", "a"), ("response", "b"), ("done", "")],
        )
        self.assertEqual(records[2]["Payload"], b"hi")

    async def test_leave(self) -> None:
        c = await self.client()
        self.assertEqual(await c.call("leave"), ({"Seq": 2, "Error": ""}, None))
        self.assertTrue(self.agent.stopped)


class AuthTests(LoopbackTestCase):
    auth_key = "tok"

    async def test_auth(self) -> None:
        c = await self.client()
        self.assertEqual(await c.call("members"), ({"Seq": 2, "Error": "Authentication required"}, None))
        good = await self.client(auth="tok")
        self.assertEqual((await good.call("members"))[0]["Error"], "")
        with self.assertRaises(RPCError) as ctx:
            await RPCClient.connect(reactor, "127.0.0.1", self.portno, auth="bad")
        self.assertEqual(str(ctx.exception), "Invalid authentication token")


class HostileTests(LoopbackTestCase):
    factory_options = {"max_request": 1 << 20, "max_outgoing": 256 * 1024}

    async def still_serving(self) -> None:
        c = await self.client()
        header, body = await c.call("members")
        self.assertEqual(len(body["Members"]), 3)

    async def test_garbage(self) -> None:
        proto = await self.raw(b"\xc1" * 64 + b"GET / HTTP/1.1\r\n\r\n")
        await proto.ended
        self.assertEqual(proto.data, b"")
        await self.still_serving()

    async def test_http_request(self) -> None:
        # "G" is a positive fixint: a header that is not a map, so nothing is answered.
        proto = await self.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await proto.ended
        self.assertEqual(proto.data, b"")

    async def test_claimed_100mb_str32(self) -> None:
        handshake = encode_frame({"Command": "handshake", "Seq": 1}, {"Version": 1})
        proto = await self.raw(handshake + packb({"Command": "event", "Seq": 2}) + b"\x81\xa4Name\xdb" + struct.pack(">I", 100 << 20))
        chunk = b"z" * 65536
        for _ in range(40):  # 2.5 MiB, past the 1 MiB cap
            if proto.ended.called:
                break
            proto.transport.write(chunk)  # type: ignore[union-attr]
            await sleep(0)
        await proto.ended
        self.assertEqual(proto.objects(), [{"Seq": 1, "Error": ""}])
        await self.still_serving()

    async def test_no_handshake(self) -> None:
        proto = await self.raw(packb({"Command": "members", "Seq": 1}))
        await proto.ended
        self.assertEqual(proto.objects(), [{"Seq": 1, "Error": "Handshake required"}])

    async def test_unknown_command(self) -> None:
        handshake = encode_frame({"Command": "handshake", "Seq": 1}, {"Version": 1})
        proto = await self.raw(handshake + packb({"Command": "shutdown-everything", "Seq": 2}))
        await proto.ended
        self.assertEqual(proto.objects(), [{"Seq": 1, "Error": ""}, {"Seq": 2, "Error": "Unsupported command"}])

    async def test_half_header_then_close(self) -> None:
        proto = await self.raw(packb({"Command": "handshake", "Seq": 1})[:5])
        proto.transport.loseConnection()  # type: ignore[union-attr]
        await proto.ended
        await sleep(0.01)
        self.assertEqual(self.factory.connections, set())
        await self.still_serving()

    async def test_500_connections(self) -> None:
        clients = await gatherResults([Deferred.fromCoroutine(self.client()) for _ in range(500)])
        results = await gatherResults([c.call("members") for c in clients])
        self.assertTrue(all(len(body["Members"]) == 3 for _, body in results))
        self.assertEqual(len(self.factory.connections), 500)
        await gatherResults([c.close() for c in clients])
        await sleep(0.05)
        self.assertEqual(self.factory.connections, set())
        await self.still_serving()

    async def test_slow_reader_is_dropped(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        handshake = encode_frame({"Command": "handshake", "Seq": 1}, {"Version": 1})
        proto = await self.raw(handshake + encode_frame({"Command": "stream", "Seq": 2}, {"Type": "user"}))
        while len(proto.data) < 2 * len(packb({"Seq": 1, "Error": ""})):
            await sleep(0.01)
        proto.transport.pauseProducing()  # type: ignore[union-attr]  # and never read again
        payload = b"x" * 400
        for i in range(200_000):
            if proto.ended.called or not self.factory.connections:
                break
            self.agent.emit_user_event("flood", payload, ltime=i)
            if i % 1000 == 0:
                await sleep(0)
        self.assertEqual(self.agent.subscriber_count, 0)
        drops = [e for e in observer if "Dropping RPC client" in e.get("log_format", "")]
        self.assertEqual(len(drops), 1)
        await self.still_serving()

    async def test_many_streams_closed_by_disconnect(self) -> None:
        c = await self.client()
        for _ in range(10):
            await c.stream("stream", {"Type": "*"})
        await c.stream("monitor", {"LogLevel": "debug"})
        self.assertEqual(self.agent.subscriber_count, 10)
        await c.close()
        await sleep(0.02)
        self.assertEqual(self.agent.subscriber_count, 0)
        self.assertEqual(self.agent.log_ring.subscriber_count, 0)

