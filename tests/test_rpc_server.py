# mypy: disable-error-code="no-untyped-call"
"""Every RPC command and error (spec §4.2) against FakeRPCAgent, over StringTransport."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from flyteserf.rpc.codec import packb
from flyteserf.rpc.interfaces import IRPCAgent
from flyteserf.rpc.messages import COMMANDS
from flyteserf.rpc.server import RPCFactory
from flyteserf.rpc.testing import FakeRPCAgent, JoinFailed, RPCConnection
from flyteserf.serf.errors import SerfError
from flyteserf.serf.events import EventType
from flyteserf.wire.keyring import Keyring, encode_key
from flyteserf.wire.serf_messages import Coordinate, MemberStatus

KEY1 = bytes(range(16))
KEY2 = bytes(range(16, 32))


def ok(seq: int) -> dict[str, Any]:
    return {"Seq": seq, "Error": ""}


def err(seq: int, text: str) -> dict[str, Any]:
    return {"Seq": seq, "Error": text}


class ServerTestCase(SynchronousTestCase):
    auth_key = ""

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = FakeRPCAgent(self.clock, "a", "127.0.0.1", 7946, tags={"role": "web"})
        self.agent.add_member("b", "127.0.0.2", 7946, {"role": "db", "dc": "east"})
        self.agent.add_member("c", "::ffff:127.0.0.3", 7947, {}, MemberStatus.FAILED)
        self.factory = self.make_factory()
        self.conn = RPCConnection(self.factory)

    def make_factory(self, **kw: Any) -> RPCFactory:
        return RPCFactory(self.clock, self.agent, self.auth_key, **kw)

    def ready(self) -> RPCConnection:
        self.conn.handshake()
        return self.conn

    def call(self, command: str, seq: int, body: Any = None, *, no_body: bool = False) -> list[Any]:
        if no_body:
            self.conn.request(command, seq)
        else:
            self.conn.request(command, seq, body)
        return self.conn.read()


class InterfaceTests(ServerTestCase):
    def test_fake_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IRPCAgent, self.agent))

    def test_protocol_is_a_push_producer(self) -> None:
        self.assertTrue(verifyObject(IPushProducer, self.conn.protocol))
        self.assertIs(self.conn.transport.producer, self.conn.protocol)


class HandshakeTests(ServerTestCase):
    def test_handshake_required_then_close(self) -> None:
        self.assertEqual(self.conn.raw(), b"")  # nothing is sent on connect
        self.conn.request("members", 7)
        self.assertEqual(self.conn.raw(), b"\x82\xa5Error\xb2Handshake required\xa3Seq\x07")
        self.assertTrue(self.conn.closing)
        self.assertFalse(self.conn.aborted)  # the answer is flushed first

    def test_body_commands_get_no_chance_either(self) -> None:
        self.conn.request("event", 3, {"Name": "x"})
        self.assertEqual(self.conn.read(), [err(3, "Handshake required")])
        self.assertTrue(self.conn.closing)
        self.assertEqual(self.agent.events, [])

    def test_version(self) -> None:
        self.assertEqual(self.call("handshake", 1, {"Version": 2}), [err(1, "Unsupported IPC version")])
        self.assertEqual(self.call("handshake", 2, {"Version": 0}), [err(2, "Unsupported IPC version")])
        self.assertFalse(self.conn.closing)
        self.assertEqual(self.call("handshake", 3, {"Version": 1}), [ok(3)])
        self.assertEqual(self.call("handshake", 4, {"Version": 1}), [err(4, "Handshake already performed")])
        # A bad version is checked before the duplicate.
        self.assertEqual(self.call("handshake", 5, {"Version": 9}), [err(5, "Unsupported IPC version")])

    def test_exact_bytes(self) -> None:
        self.conn.send_bytes(bytes.fromhex("82a7436f6d6d616e64a968616e647368616b65a353657101") + bytes.fromhex("81a756657273696f6e01"))
        self.assertEqual(self.conn.raw(), bytes.fromhex("82a54572726f72a0a353657101"))

    def test_handshake_timeout(self) -> None:
        self.clock.advance(29)
        self.assertFalse(self.conn.closing)
        self.clock.advance(2)
        self.assertTrue(self.conn.aborted)

    def test_no_timeout_after_handshake(self) -> None:
        self.ready()
        self.clock.advance(3600)
        self.assertFalse(self.conn.closing)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AuthTests(ServerTestCase):
    auth_key = "sekrit"

    def test_required_no_body_stays_open(self) -> None:
        self.ready()
        self.assertEqual(self.call("members", 2, no_body=True), [err(2, "Authentication required")])
        self.assertEqual(self.call("stats", 3, no_body=True), [err(3, "Authentication required")])
        self.assertFalse(self.conn.closing)

    def test_body_is_skipped(self) -> None:
        """One answer per request (the Go agent answers the body a second time, as a header)."""
        self.ready()
        self.assertEqual(
            self.call("members-filtered", 2, {"Name": "", "Status": "", "Tags": {}}),
            [err(2, "Authentication required")],
        )
        self.assertEqual(self.call("event", 3, {"Name": "x"}), [err(3, "Authentication required")])
        self.assertEqual(self.agent.events, [])
        self.assertEqual(self.call("auth", 4, {"AuthKey": "sekrit"}), [ok(4)])
        [header, body] = self.call("members", 5, no_body=True)
        self.assertEqual(header, ok(5))
        self.assertEqual(len(body["Members"]), 3)

    def test_invalid_token(self) -> None:
        self.ready()
        self.assertEqual(self.call("auth", 2, {"AuthKey": "nope"}), [err(2, "Invalid authentication token")])
        self.assertEqual(self.call("members", 3, no_body=True), [err(3, "Authentication required")])
        self.assertEqual(self.call("auth", 4, {"AuthKey": "sekrit"}), [ok(4)])
        # A later bad token does not take authentication away (as in Go).
        self.assertEqual(self.call("auth", 5, {"AuthKey": "nope"}), [err(5, "Invalid authentication token")])
        self.assertEqual(len(self.call("members", 6, no_body=True)), 2)

    def test_handshake_still_first(self) -> None:
        self.assertEqual(self.call("auth", 1, {"AuthKey": "sekrit"}), [err(1, "Handshake required")])
        self.assertTrue(self.conn.closing)


class NoAuthTests(ServerTestCase):
    def test_auth_without_key(self) -> None:
        self.ready()
        self.assertEqual(self.call("auth", 2, {"AuthKey": ""}), [ok(2)])
        self.assertEqual(self.call("auth", 3, {"AuthKey": "x"}), [err(3, "Invalid authentication token")])


class ClosingTests(ServerTestCase):
    def test_unsupported_command(self) -> None:
        self.ready()
        self.assertEqual(self.call("bogus", 2, no_body=True), [err(2, "Unsupported command")])
        self.assertTrue(self.conn.closing)

    def test_nil_header_is_unsupported(self) -> None:
        self.ready()
        self.conn.send(None)
        self.assertEqual(self.conn.read(), [err(0, "Unsupported command")])
        self.assertTrue(self.conn.closing)

    def test_undecodable_header_closes_silently(self) -> None:
        for bad in (5, {"Command": "members", "Seq": -1}, {"Command": "members", "Seq": "1"}, [1, 2, 3]):
            conn = RPCConnection(self.factory)
            conn.handshake()
            conn.send(bad)
            self.assertEqual(conn.raw(), b"", bad)
            self.assertTrue(conn.closing, bad)

    def test_undecodable_body_closes_silently(self) -> None:
        bodies = [
            ("event", 5),
            ("event", {"Name": 5}),
            ("event", {"Name": b"bin"}),
            ("event", {"Coalesce": 2}),
            ("handshake", {"Version": 2**40}),
            ("join", {"Existing": "x"}),
            ("stop", {"Stop": -1}),
            ("query", {"Name": "q", "RelayFactor": 300}),
            ("respond", {"ID": -1}),
            ("members-filtered", {"Tags": ["a"]}),
        ]
        for command, body in bodies:
            conn = RPCConnection(self.factory)
            conn.handshake()
            conn.request(command, 2, body)
            self.assertEqual(conn.raw(), b"", command)
            self.assertTrue(conn.closing, command)
        self.assertEqual(self.agent.events, [])

    def test_garbage_closes(self) -> None:
        self.ready()
        self.conn.send_bytes(b"\xc1\xc1\xc1")
        self.assertTrue(self.conn.aborted)
        self.conn.lose()
        self.assertEqual(self.factory.connections, set())

    def test_oversized_request_closes(self) -> None:
        factory = self.make_factory(max_request=4096)
        conn = RPCConnection(factory)
        conn.handshake()
        conn.send_bytes(b"\x82\xa7Command\xa5event\xa3Seq\x02" + b"\xdb\x06\x40\x00\x00")  # a 100 MiB str32
        self.assertFalse(conn.closing)
        for _ in range(4):
            conn.send_bytes(b"x" * 1024)
        conn.send_bytes(b"x" * 1024)
        self.assertTrue(conn.aborted)

    def test_many_pipelined_requests_with_synchronous_results(self) -> None:
        """Deferreds that have already fired must not recurse once per request."""
        self.ready()
        requests = []
        for seq in range(2, 252):
            requests += [{"Command": "force-leave", "Seq": seq}, {"Node": f"n{seq}"}]
        for start in range(0, len(requests), 250):
            self.conn.send(*requests[start : start + 250])
        out = self.conn.read()
        self.assertEqual(out, [ok(seq) for seq in range(2, 252)])
        self.assertEqual(self.conn.transport.producerState, "producing")

    def test_nil_body_is_zero(self) -> None:
        self.ready()
        self.assertEqual(self.call("event", 2, None), [ok(2)])
        self.assertEqual(self.agent.events, [("", b"", False)])

    def test_split_and_pipelined(self) -> None:
        data = b"".join(
            packb(o)
            for o in (
                {"Command": "handshake", "Seq": 1},
                {"Version": 1},
                {"Command": "event", "Seq": 2},
                {"Name": "e", "Payload": b"p", "Coalesce": True},
                {"Command": "stats", "Seq": 3},
            )
        )
        for byte in data:
            self.conn.send_bytes(bytes([byte]))
        out = self.conn.read()
        self.assertEqual([o.get("Seq") for o in out[:3]], [1, 2, 3])
        self.assertEqual(self.agent.events, [("e", b"p", True)])


class EventTests(ServerTestCase):
    def test_event(self) -> None:
        self.ready()
        self.assertEqual(self.call("event", 2, {"Name": "deploy", "Payload": b"v1", "Coalesce": True}), [ok(2)])
        self.assertEqual(self.agent.events, [("deploy", b"v1", True)])

    def test_size_error(self) -> None:
        self.ready()
        self.assertEqual(
            self.call("event", 2, {"Name": "x" * 600}),
            [err(2, "user event exceeds configured limit of 512 bytes before encoding")],
        )


class ForceLeaveTests(ServerTestCase):
    def test_force_leave(self) -> None:
        self.ready()
        self.assertEqual(self.call("force-leave", 2, {"Node": "c"}), [ok(2)])
        self.assertEqual(self.call("force-leave", 3, {"Node": "nobody", "Prune": True}), [ok(3)])
        self.assertEqual(self.agent.force_leaves, [("c", False), ("nobody", True)])
        statuses = {m.name: m.status for m in self.agent.members()}
        self.assertEqual(statuses["c"], MemberStatus.LEFT)

    def test_error_text(self) -> None:
        def refuse(node: str, prune: bool) -> None:
            raise SerfError("timed out broadcasting node removal")

        self.agent.force_leave = refuse  # type: ignore[method-assign,assignment]
        self.ready()
        self.assertEqual(self.call("force-leave", 2, {"Node": "b"}), [err(2, "timed out broadcasting node removal")])


class JoinTests(ServerTestCase):
    def test_join(self) -> None:
        self.ready()
        self.assertEqual(
            self.call("join", 2, {"Existing": ["127.0.0.9", "127.0.0.10:7946"], "Replay": True}),
            [ok(2), {"Num": 2}],
        )
        self.assertEqual(self.agent.joins, [(["127.0.0.9", "127.0.0.10:7946"], True)])

    def test_join_error_sends_body(self) -> None:
        self.agent.join_errors["127.0.0.1:1"] = "dial tcp 127.0.0.1:1: connect: connection refused"
        self.ready()
        self.assertEqual(
            self.call("join", 2, {"Existing": ["127.0.0.1:1"]}),
            [
                err(
                    2,
                    "1 error occurred:\n\t* Failed to join 127.0.0.1: dial tcp 127.0.0.1:1: connect: connection refused\n\n",
                ),
                {"Num": 0},
            ],
        )

    def test_join_error_num(self) -> None:
        def failing(addresses: Any, replay: bool) -> Deferred[int]:
            d: Deferred[int] = Deferred()
            d.errback(JoinFailed("boom", num=3))
            return d

        self.agent.join = failing  # type: ignore[method-assign]
        self.ready()
        self.assertEqual(self.call("join", 2, {"Existing": ["x"]}), [err(2, "boom"), {"Num": 3}])

    def test_requests_wait_for_a_running_join(self) -> None:
        pending: Deferred[int] = Deferred()
        self.agent.join = lambda addresses, replay: pending  # type: ignore[method-assign]
        self.ready()
        self.conn.request("join", 2, {"Existing": ["x"]})
        self.conn.request("members", 3)
        self.assertEqual(self.conn.read(), [])
        self.assertEqual(self.conn.transport.producerState, "paused")
        pending.callback(1)
        out = self.conn.read()
        self.assertEqual(out[:2], [ok(2), {"Num": 1}])
        self.assertEqual(out[2], ok(3))
        self.assertEqual(self.conn.transport.producerState, "producing")

    def test_too_many_queued_requests(self) -> None:
        pending: Deferred[int] = Deferred()
        self.agent.join = lambda addresses, replay: pending  # type: ignore[method-assign]
        self.ready()
        self.conn.request("join", 2, {"Existing": ["x"]})
        self.conn.send(*[{"Command": "members", "Seq": i} for i in range(3, 400)])
        self.assertTrue(self.conn.aborted)
        pending.callback(1)  # the late answer goes nowhere
        self.assertEqual(self.conn.read(), [])


class MembersTests(ServerTestCase):
    def members(self, body: Any) -> list[str]:
        [header, result] = self.call("members-filtered", 9, body)
        self.assertEqual(header, ok(9))
        return [m["Name"] for m in result["Members"]]

    def test_members(self) -> None:
        self.ready()
        [header, body] = self.call("members", 2, no_body=True)
        self.assertEqual(header, ok(2))
        a, b, c = body["Members"]
        self.assertEqual(
            a,
            {
                "Name": "a",
                "Addr": b"\x7f\x00\x00\x01",
                "Port": 7946,
                "Tags": {"role": "web"},
                "Status": "alive",
                "ProtocolMin": 1,
                "ProtocolMax": 5,
                "ProtocolCur": 2,
                "DelegateMin": 2,
                "DelegateMax": 5,
                "DelegateCur": 5,
            },
        )
        self.assertEqual(c["Addr"], b"\x00" * 10 + b"\xff\xff\x7f\x00\x00\x03")
        self.assertEqual(c["Status"], "failed")

    def test_wire_order(self) -> None:
        self.ready()
        self.conn.request("members", 2)
        raw = self.conn.raw()
        header_len = len(packb({"Error": "", "Seq": 2}))
        body = raw[header_len:]
        self.assertTrue(body.startswith(b"\x81\xa7Members\x93\x8b\xa4Addr\xc4\x04\x7f\x00\x00\x01\xabDelegateCur"))

    def test_filters(self) -> None:
        self.ready()
        self.assertEqual(self.members({"Name": "", "Status": "", "Tags": {}}), ["a", "b", "c"])
        self.assertEqual(self.members({}), ["a", "b", "c"])
        self.assertEqual(self.members({"Status": "alive"}), ["a", "b"])
        self.assertEqual(self.members({"Status": "ali"}), [])  # anchored
        self.assertEqual(self.members({"Status": "alive|failed"}), ["a", "b", "c"])
        self.assertEqual(self.members({"Name": "[ab]"}), ["a", "b"])
        self.assertEqual(self.members({"Tags": {"role": "we"}}), [])
        self.assertEqual(self.members({"Tags": {"role": "web|db"}}), ["a", "b"])
        self.assertEqual(self.members({"Tags": {"role": "web", "dc": ".*"}}), ["a"])
        # A tag regex always applies: "" matches members without the tag.
        self.assertEqual(self.members({"Tags": {"dc": ""}}), ["a", "c"])
        self.assertEqual(self.members({"Tags": {"dc": "east"}, "Status": "alive", "Name": "b"}), ["b"])

    def test_go_anchoring_is_not_grouped(self) -> None:
        """Go compiles "^" + expr + "$": "a|zz" means "starts with a, or ends with zz"."""
        self.agent.add_member("abc", "127.0.0.4")
        self.ready()
        self.assertEqual(self.members({"Name": "a|zz"}), ["a", "abc"])

    def test_invalid_regex_closes_silently(self) -> None:
        for body in ({"Name": "("}, {"Status": "[z-a]"}, {"Tags": {"role": "a)"}}):
            conn = RPCConnection(self.factory)
            conn.handshake()
            conn.request("members-filtered", 2, body)
            self.assertEqual(conn.raw(), b"")
            self.assertTrue(conn.closing)


class TagsTests(ServerTestCase):
    def test_set_and_delete(self) -> None:
        self.ready()
        self.assertEqual(self.call("tags", 2, {"Tags": {"dc": "west"}, "DeleteTags": ["role"]}), [ok(2)])
        self.assertEqual(self.agent.tags, {"dc": "west"})
        [_, body] = self.call("members-filtered", 3, {"Name": "a"})
        self.assertEqual(body["Members"][0]["Tags"], {"dc": "west"})

    def test_error(self) -> None:
        def refuse(tags: Any, delete: Any) -> None:
            raise SerfError("Encoded length of tags exceeds limit of 512 bytes")

        self.agent.set_tags = refuse  # type: ignore[method-assign,assignment]
        self.ready()
        self.assertEqual(
            self.call("tags", 2, {"Tags": {"x": "y"}}), [err(2, "Encoded length of tags exceeds limit of 512 bytes")]
        )


class LeaveTests(ServerTestCase):
    def test_leave_then_stop(self) -> None:
        self.ready()
        self.assertEqual(self.call("leave", 2, no_body=True), [ok(2)])
        self.assertTrue(self.agent.left)
        self.assertTrue(self.agent.stopped)

    def test_leave_error_still_stops(self) -> None:
        self.agent.leave_error = SerfError("Leave already in progress")
        self.ready()
        self.assertEqual(self.call("leave", 2, no_body=True), [err(2, "Leave already in progress")])
        self.assertTrue(self.agent.stopped)


class KeyTests(ServerTestCase):
    def test_bad_base64(self) -> None:
        self.ready()
        zero: dict[str, Any] = {"Keys": None, "Messages": {}, "NumErr": 0, "NumNodes": 0, "NumResp": 0}
        for seq, (command, key) in enumerate(
            [("install-key", "!!!"), ("use-key", "abc"), ("remove-key", "aGVsbG8=x")], start=2
        ):
            out = self.call(command, seq, {"Key": key})
            self.assertEqual(out[1], zero)
            self.assertTrue(out[0]["Error"].startswith("illegal base64 data at input byte "), out)
        self.assertEqual(self.call("install-key", 9, {"Key": "!!!"})[0], err(9, "illegal base64 data at input byte 0"))

    def test_no_encryption(self) -> None:
        self.ready()
        key = encode_key(KEY1)
        self.assertEqual(
            self.call("install-key", 2, {"Key": key}),
            [
                err(2, "2/2 nodes reported failure"),
                {
                    "Keys": None,
                    "Messages": {
                        "a": "No keyring to modify (encryption not enabled)",
                        "b": "No keyring to modify (encryption not enabled)",
                    },
                    "NumErr": 2,
                    "NumNodes": 2,
                    "NumResp": 2,
                },
            ],
        )
        [header, body] = self.call("list-keys", 3, no_body=True)
        self.assertEqual(header, err(3, "2/2 nodes reported failure"))
        self.assertEqual(body["Keys"], {})
        self.assertEqual(body["Messages"]["a"], "Keyring is empty (encryption not enabled)")

    def test_key_lifecycle(self) -> None:
        self.agent.keyring = Keyring([KEY1])
        self.ready()
        k1, k2 = encode_key(KEY1), encode_key(KEY2)
        good: dict[str, Any] = {"Keys": None, "Messages": {}, "NumErr": 0, "NumNodes": 2, "NumResp": 2}
        self.assertEqual(self.call("install-key", 2, {"Key": k2}), [ok(2), good])
        self.assertEqual(
            self.call("list-keys", 3, no_body=True),
            [ok(3), {"Keys": {k1: 2, k2: 2}, "Messages": {}, "NumErr": 0, "NumNodes": 2, "NumResp": 2}],
        )
        [header, body] = self.call("remove-key", 4, {"Key": k1})
        self.assertEqual(header, err(4, "2/2 nodes reported failure"))
        self.assertEqual(body["Messages"], {"a": "Removing the primary key is not allowed", "b": "Removing the primary key is not allowed"})
        self.assertEqual(self.call("use-key", 5, {"Key": k2}), [ok(5), good])
        self.assertEqual(self.call("remove-key", 6, {"Key": k1}), [ok(6), good])
        self.assertEqual(self.call("list-keys", 7, no_body=True)[1]["Keys"], {k2: 2})


class InfoTests(ServerTestCase):
    def test_stats(self) -> None:
        self.agent.event_handlers["user:deploy"] = "/bin/deploy"
        self.ready()
        [header, body] = self.call("stats", 2, no_body=True)
        self.assertEqual(header, ok(2))
        self.assertEqual(set(body), {"agent", "runtime", "serf", "tags", "event_handlers"})
        self.assertEqual(body["agent"], {"name": "a"})
        self.assertEqual(body["event_handlers"], {"user:deploy": "/bin/deploy"})
        for section in body.values():
            for value in section.values():
                self.assertIsInstance(value, str)

    def test_stats_values_become_strings(self) -> None:
        self.agent.stats = lambda: {"serf": {"members": 3}}  # type: ignore[method-assign,dict-item]
        self.ready()
        self.assertEqual(self.call("stats", 2, no_body=True)[1], {"serf": {"members": "3"}})

    def test_get_coordinate(self) -> None:
        self.ready()
        self.assertEqual(
            self.call("get-coordinate", 2, {"Node": "a"}),
            [ok(2), {"Coord": {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None}, "Ok": False}],
        )
        self.agent.coordinates["a"] = Coordinate(vec=(0.0,) * 8, error=1.5, adjustment=0.0, height=1e-05)
        self.assertEqual(
            self.call("get-coordinate", 3, {"Node": "a"}),
            [ok(3), {"Coord": {"Adjustment": 0.0, "Error": 1.5, "Height": 1e-05, "Vec": [0.0] * 8}, "Ok": True}],
        )


class StreamTests(ServerTestCase):
    def test_invalid_filter(self) -> None:
        self.ready()
        for spec in ("user, query", "bogus", "member-join,"):
            self.assertEqual(self.call("stream", 2, {"Type": spec}), [err(2, "Invalid event filter")])
        self.assertEqual(self.agent.subscriber_count, 0)

    def test_duplicate_seq(self) -> None:
        self.ready()
        self.assertEqual(self.call("stream", 2, {"Type": "*"}), [ok(2)])
        self.assertEqual(self.call("stream", 2, {"Type": "user"}), [err(2, "Stream with given sequence exists")])
        # The filter is checked first.
        self.assertEqual(self.call("stream", 2, {"Type": "nope"}), [err(2, "Invalid event filter")])
        self.assertEqual(self.agent.subscriber_count, 1)

    def test_records(self) -> None:
        self.ready()
        self.assertEqual(self.call("stream", 2, {"Type": ""}), [ok(2)])
        self.agent.emit_member_event(EventType.MEMBER_JOIN, "a", "b")
        self.agent.emit_user_event("deploy", b"v1", ltime=7, coalesce=True)
        out = self.conn.read()
        self.assertEqual(out[0], ok(2))
        self.assertEqual(out[1]["Event"], "member-join")
        self.assertEqual([m["Name"] for m in out[1]["Members"]], ["a", "b"])
        self.assertEqual(out[1]["Members"][0]["Addr"], b"\x7f\x00\x00\x01")
        self.assertEqual(
            out[2:], [ok(2), {"Event": "user", "LTime": 7, "Name": "deploy", "Payload": b"v1", "Coalesce": True}]
        )

    def test_filtering_and_two_streams(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "user:deploy"})
        self.call("stream", 3, {"Type": "member-failed,member-reap"})
        self.agent.emit_user_event("other")
        self.agent.emit_user_event("deploy")
        self.agent.emit_member_event(EventType.MEMBER_JOIN, "b")
        self.agent.emit_member_event(EventType.MEMBER_REAP, "c")
        out = self.conn.read()
        self.assertEqual([(h["Seq"], r["Event"]) for h, r in zip(out[::2], out[1::2])], [(2, "user"), (3, "member-reap")])

    def test_query_ids_and_respond(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "query"})
        q1 = self.agent.emit_query("load", b"?", ltime=4, timeout=5)
        q2 = self.agent.emit_query("load", b"??", ltime=5, timeout=5)
        out = self.conn.read()
        self.assertEqual(out[1], {"Event": "query", "ID": 1, "LTime": 4, "Name": "load", "Payload": b"?"})
        self.assertEqual(out[3]["ID"], 2)
        self.assertEqual(self.call("respond", 3, {"ID": 2, "Payload": b"0.5"}), [ok(3)])
        self.assertEqual([(r.query, r.payload) for r in self.agent.responses], [(q2, b"0.5")])
        self.assertEqual(self.call("respond", 4, {"ID": 2, "Payload": b"again"}), [err(4, "response already sent")])
        self.assertEqual(self.call("respond", 5, {"ID": 99}), [err(5, "No pending queries matching ID")])
        # After the deadline the ID is forgotten.
        self.clock.advance(5.1)
        self.assertEqual(self.call("respond", 6, {"ID": 1, "Payload": b"late"}), [err(6, "No pending queries matching ID")])
        self.assertTrue(q1.pending() is False)
        self.assertEqual(self.conn.protocol.pending_queries, {})

    def test_expired_query_gets_an_id_but_no_registration(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "*"})
        self.agent.emit_query("late", timeout=-1)
        out = self.conn.read()
        self.assertEqual(out[1]["ID"], 1)
        self.assertEqual(self.call("respond", 3, {"ID": 1}), [err(3, "No pending queries matching ID")])

    def test_ids_are_per_connection(self) -> None:
        other = RPCConnection(self.factory, ("127.0.0.1", 50001))
        other.handshake()
        self.ready()
        other.request("stream", 2, {"Type": "query"})
        self.call("stream", 2, {"Type": "query"})
        self.agent.emit_query("q")
        self.assertEqual(self.conn.read()[1]["ID"], 1)
        self.assertEqual(other.read()[-1]["ID"], 1)

    def test_stop(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "*"})
        self.assertEqual(self.call("stop", 3, {"Stop": 2}), [ok(3)])
        self.agent.emit_user_event("x")
        self.assertEqual(self.conn.read(), [])
        self.assertEqual(self.agent.subscriber_count, 0)
        self.assertEqual(self.call("stop", 4, {"Stop": 12345}), [ok(4)])  # always succeeds

    def test_stream_limit(self) -> None:
        factory = self.make_factory(max_streams=2)
        conn = RPCConnection(factory)
        conn.handshake()
        for seq in (2, 3, 4):
            conn.request("stream", seq, {"Type": "*"})
        out = conn.read()
        self.assertEqual(out, [ok(2), ok(3), err(4, "Too many streams on this connection")])


class MonitorTests(ServerTestCase):
    def test_unknown_level(self) -> None:
        self.ready()
        self.assertEqual(self.call("monitor", 2, {"LogLevel": "foo"}), [err(2, "Unknown log level: FOO")])
        self.assertEqual(self.call("monitor", 3, {"LogLevel": ""}), [err(3, "Unknown log level: ")])

    def test_replay_then_stream(self) -> None:
        self.agent.log_ring.add("DEBUG", "2024/01/01 00:00:00 [DEBUG] memberlist: old debug")
        self.agent.log_ring.add("INFO", "2024/01/01 00:00:01 [INFO] serf: old info")
        globalLogPublisher.addObserver(self.agent.log_ring)
        self.addCleanup(globalLogPublisher.removeObserver, self.agent.log_ring)
        self.conn = RPCConnection(self.factory)
        self.ready()  # the connection's own "Accepted client" line is in the ring too
        out = self.call("monitor", 2, {"LogLevel": "info"})
        self.assertEqual(out[0], ok(2))
        logs = [r["Log"] for r in out[2::2]]
        self.assertEqual(logs[0], "2024/01/01 00:00:01 [INFO] serf: old info")
        self.assertIn("[INFO] agent.ipc: Accepted client: 127.0.0.1:50000", logs[1])
        self.assertTrue(all(h == ok(2) for h in out[1::2]))
        self.agent.log_ring.add("ERR", "2024/01/01 00:00:02 [ERR] agent: new")
        self.agent.log_ring.add("DEBUG", "2024/01/01 00:00:03 [DEBUG] agent: hidden")
        self.assertEqual(self.conn.read(), [ok(2), {"Log": "2024/01/01 00:00:02 [ERR] agent: new"}])

    def test_exists_and_stop(self) -> None:
        self.ready()
        self.call("monitor", 2, {"LogLevel": "ERR"})
        self.assertEqual(self.call("monitor", 3, {"LogLevel": "ERR"}), [err(3, "Monitor already exists")])
        self.assertEqual(self.call("stop", 4, {"Stop": 3}), [ok(4)])  # not the monitor's seq
        self.assertEqual(self.agent.log_ring.subscriber_count, 1)
        self.assertEqual(self.call("stop", 5, {"Stop": 2}), [ok(5)])
        self.assertEqual(self.agent.log_ring.subscriber_count, 0)
        self.agent.log_ring.add("ERR", "x")
        self.assertEqual(self.conn.read(), [])
        # A new monitor may start; it replays the ring.
        self.assertEqual(self.call("monitor", 6, {"LogLevel": "err"}), [ok(6), ok(6), {"Log": "x"}])

    def test_level_checked_before_exists(self) -> None:
        self.ready()
        self.call("monitor", 2, {"LogLevel": "ERR"})
        self.assertEqual(self.call("monitor", 3, {"LogLevel": "x"}), [err(3, "Unknown log level: X")])


class QueryTests(ServerTestCase):
    def test_records(self) -> None:
        """The spec's example stream: header, ack, response, done, all under the query's Seq."""
        self.ready()
        self.assertEqual(
            self.call(
                "query",
                2,
                {"Name": "load", "Payload": b"x", "RequestAck": True, "Timeout": 1_000_000_000, "FilterNodes": ["b"]},
            ),
            [ok(2)],
        )
        self.clock.advance(0.015)
        self.assertEqual(self.conn.read(), [ok(2), {"Type": "ack", "From": "b", "Payload": None}])
        self.clock.advance(0.01)
        self.assertEqual(self.conn.read(), [ok(2), {"Type": "response", "From": "b", "Payload": b"x"}])
        self.clock.advance(1)
        self.assertEqual(self.conn.read(), [ok(2), {"Type": "done", "From": "", "Payload": None}])
        [q] = self.agent.queries
        self.assertEqual(q["timeout"], 1.0)
        self.assertEqual(q["filter_nodes"], ["b"])

    def test_exact_bytes(self) -> None:
        self.ready()
        self.call("query", 2, {"Name": "q", "RequestAck": True, "FilterNodes": ["a"], "Timeout": 10**8})
        self.clock.pump([0.01] * 20)
        self.assertEqual(
            self.conn.raw(),
            b"\x82\xa5Error\xa0\xa3Seq\x02\x83\xa4From\xa1a\xa7Payload\xc0\xa4Type\xa3ack"
            b"\x82\xa5Error\xa0\xa3Seq\x02\x83\xa4From\xa1a\xa7Payload\xc4\x00\xa4Type\xa8response"
            b"\x82\xa5Error\xa0\xa3Seq\x02\x83\xa4From\xa0\xa7Payload\xc0\xa4Type\xa4done",
        )

    def test_params(self) -> None:
        self.ready()
        self.call(
            "query",
            2,
            {"Name": "q", "FilterTags": {"role": "w.b"}, "RelayFactor": 2, "RequestAck": False, "Timeout": 0},
        )
        self.clock.pump([0.01] * 400)
        out = self.conn.read()
        self.assertEqual([r["Type"] for r in out[1::2]], ["response", "done"])
        self.assertEqual(out[1]["From"], "a")
        [q] = self.agent.queries
        self.assertEqual((q["relay_factor"], q["request_ack"], q["filter_tags"]), (2, False, {"role": "w.b"}))
        self.assertAlmostEqual(q["timeout"], 3.2)  # Serf's default for 3 members

    def test_negative_timeout_is_default(self) -> None:
        self.ready()
        self.call("query", 2, {"Name": "q", "Timeout": -5})
        self.assertAlmostEqual(self.agent.queries[0]["timeout"], 3.2)

    def test_refused(self) -> None:
        def refuse(*args: Any) -> None:
            raise SerfError("query exceeds limit of 1024 bytes")

        self.agent.query = refuse  # type: ignore[method-assign,assignment]
        self.ready()
        self.assertEqual(self.call("query", 2, {"Name": "q"}), [err(2, "query exceeds limit of 1024 bytes")])
        self.clock.advance(60)
        self.assertEqual(self.conn.read(), [])

    def test_closed_connection_ignores_late_records(self) -> None:
        self.ready()
        self.call("query", 2, {"Name": "q", "RequestAck": True, "Timeout": 10**9})
        self.conn.lose()
        self.clock.advance(2)
        self.assertEqual(self.conn.read(), [])


class SlowClientTests(ServerTestCase):
    def test_backpressure_queues_then_flushes(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "user"})
        self.conn.protocol.pauseProducing()  # the transport's buffer is full
        self.agent.emit_user_event("one")
        self.conn.request("members", 3)  # not handled while the client is not reading
        self.assertEqual(self.conn.read(), [])
        self.assertEqual(self.conn.transport.producerState, "paused")
        self.conn.protocol.resumeProducing()
        out = self.conn.read()
        self.assertEqual(out[1]["Name"], "one")
        self.assertEqual(out[2], ok(3))
        self.assertEqual(self.conn.transport.producerState, "producing")

    def test_slow_stream_client_is_dropped_once(self) -> None:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        factory = self.make_factory(max_outgoing=64 * 1024)
        conn = RPCConnection(factory)
        conn.handshake()
        conn.request("stream", 2, {"Type": "*"})
        conn.request("monitor", 3, {"LogLevel": "trace"})
        conn.read()
        conn.protocol.pauseProducing()
        for i in range(200):
            self.agent.emit_user_event("e", b"x" * 500, ltime=i)
        self.assertTrue(conn.aborted)
        self.assertEqual(self.agent.subscriber_count, 0)
        self.assertEqual(self.agent.log_ring.subscriber_count, 0)
        drops = [e for e in observer if "Dropping RPC client" in e.get("log_format", "")]
        self.assertEqual(len(drops), 1)
        self.assertLess(conn.protocol._outq_bytes, 1)


class CleanupTests(ServerTestCase):
    def test_everything_freed_on_close(self) -> None:
        self.ready()
        self.call("stream", 2, {"Type": "*"})
        self.call("stream", 3, {"Type": "query"})
        self.call("monitor", 4, {"LogLevel": "debug"})
        self.agent.emit_query("q", timeout=30)
        self.conn.read()
        self.assertEqual(self.agent.subscriber_count, 2)
        self.assertEqual(len(self.conn.protocol.pending_queries), 2)
        self.assertEqual(len(self.factory.connections), 1)
        self.conn.lose()
        self.assertEqual(self.agent.subscriber_count, 0)
        self.assertEqual(self.agent.log_ring.subscriber_count, 0)
        self.assertEqual(self.conn.protocol.pending_queries, {})
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_limit(self) -> None:
        factory = self.make_factory(max_connections=3)
        conns = [RPCConnection(factory, ("127.0.0.1", 40000 + i)) for i in range(3)]
        self.assertRaises(RuntimeError, RPCConnection, factory)
        conns[0].lose()
        RPCConnection(factory)

    def test_close_all(self) -> None:
        other = RPCConnection(self.factory, ("127.0.0.1", 50001))
        self.factory.close_all()
        self.assertTrue(self.conn.closing and other.closing)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8) | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_field_names = st.sampled_from(
    ["Version", "AuthKey", "Name", "Payload", "Coalesce", "Node", "Prune", "Existing", "Replay", "Tags", "Status",
     "DeleteTags", "Type", "LogLevel", "Stop", "FilterNodes", "FilterTags", "RequestAck", "RelayFactor", "Timeout",
     "ID", "Key"]
)
_bodies = st.dictionaries(_field_names, _values, max_size=4) | _values
_headers = st.fixed_dictionaries(
    {"Command": st.sampled_from(sorted(COMMANDS) + ["bogus"]), "Seq": st.integers(0, 2**64 - 1)}
) | _values


class FuzzTests(SynchronousTestCase):
    """Whatever arrives, the server answers or closes; nothing escapes, nothing leaks."""

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(st.lists(st.one_of(_headers, _bodies), max_size=12), st.booleans(), st.booleans())
    def test_random_objects(self, objects: list[Any], handshake: bool, auth: bool) -> None:
        clock = Clock()
        agent = FakeRPCAgent(clock, "a")
        agent.add_member("b", "127.0.0.2")
        factory = RPCFactory(clock, agent, "k" if auth else "")
        conn = RPCConnection(factory)
        if handshake:
            conn.handshake()
        for obj in objects:
            conn.send(obj)
            if conn.closing:
                break
        clock.pump([0.5] * 40)
        conn.read()  # whatever was written is valid msgpack
        agent.emit_user_event("e")
        agent.emit_query("q")
        conn.lose()
        self.assertEqual(agent.subscriber_count, 0)
        self.assertEqual(agent.log_ring.subscriber_count, 0)
        self.assertEqual(factory.connections, set())

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes_after_handshake(self, data: bytes) -> None:
        clock = Clock()
        agent = FakeRPCAgent(clock, "a")
        conn = RPCConnection(RPCFactory(clock, agent))
        conn.handshake()
        conn.send_bytes(data)
        clock.pump([1.0] * 10)
        conn.read()
        conn.lose()
