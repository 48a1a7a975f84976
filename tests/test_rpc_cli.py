# mypy: disable-error-code="no-untyped-call"
"""The stock ``serf`` CLI (Debian serf 0.9.4) and PyPI ``serfclient`` against our RPC server.

Where the output can be checked against a real agent, a real ``serf agent``
("the twin") runs with the same node name, address, port and tags as the
FakeRPCAgent behind our server, and both outputs must be identical.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from flyteserf.rpc.server import RPCFactory
from flyteserf.rpc.testing import FakeRPCAgent
from flyteserf.testing.serf_binary import SerfAgentProcess, find_free_port, skip_unless_serf, start_serf_agent
from flyteserf.wire.keyring import Keyring, encode_key
from flyteserf.wire.serf_messages import Coordinate, MemberStatus

reactor: Any = _reactor

KEY = bytes(range(32))
KEY2 = bytes(range(32, 48))
REFUSED = "dial tcp 127.0.0.1:1: connect: connection refused"


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class ServedTestCase(TestCase):
    """Our RPC server on a free loopback port, backed by a FakeRPCAgent."""

    timeout = 120

    def serve(self, agent: FakeRPCAgent, auth_key: str = "") -> Deferred[SerfAgentProcess]:
        self.binary = skip_unless_serf()
        self.agent = agent
        self.factory = RPCFactory(reactor, agent, auth_key)
        port = find_free_port()
        self.assertNotIn(port, (7373, 7946))

        def listening(lp: Any) -> SerfAgentProcess:
            self.addCleanup(lp.stopListening)
            # Never started: only its serf_cli(), which adds -rpc-addr, is used.
            return SerfAgentProcess(reactor, rpc_port=port, node=agent.node_name, serf_binary=self.binary)

        return TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(self.factory).addCallback(listening)

    async def cli(self, target: SerfAgentProcess, *args: str) -> tuple[int, str, str]:
        result: tuple[int, str, str] = await target.serf_cli(*args)
        return result


class TwinTests(ServedTestCase):
    """Same state, same command: our server's CLI output equals the real agent's."""

    async def asyncSetUp(self, *extra: str, keyring: Keyring | None = None) -> None:
        self.real = await start_serf_agent(self, reactor, node="twin", extra_args=["-tag", "role=web", *extra])
        agent = FakeRPCAgent(reactor, "twin", "127.0.0.1", self.real.bind_port, tags={"role": "web"})
        agent.query_responder = lambda node, name, payload: None  # the twin has no handlers
        agent.join_errors["127.0.0.1:1"] = REFUSED
        agent.keyring = keyring
        self.ours = await self.serve(agent)

    async def both(self, *args: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        real, ours = await gatherResults([Deferred.fromCoroutine(self.cli(t, *args)) for t in (self.real, self.ours)])
        return real, ours

    async def same(self, *args: str) -> tuple[int, str, str]:
        real, ours = await self.both(*args)
        self.assertEqual(ours, real, f"serf {' '.join(args)}")
        return ours

    async def same_lines(self, *args: str) -> None:
        """As :meth:`same`, for output whose line order comes from a Go map."""
        real, ours = await self.both(*args)
        self.assertEqual((ours[0], sorted(ours[1].splitlines())), (real[0], sorted(real[1].splitlines())))

    async def test_members(self) -> None:
        await self.asyncSetUp()
        code, out, _ = await self.same("members")
        self.assertEqual((code, out), (0, f"twin  127.0.0.1:{self.real.bind_port}  alive  role=web\n"))
        await self.same("members", "-detailed")
        await self.same("members", "-format", "json")
        await self.same("members", "-status=alive")
        await self.same("members", "-status=ali")
        await self.same("members", "-status=left")
        await self.same("members", "-tag", "role=web")
        await self.same("members", "-tag", "role=we")
        await self.same("members", "-tag", "role=w.*", "-name", "tw.n")
        await self.same("members", "-name", "tw")
        code, out, _ = await self.same("members", "-name", "(")
        self.assertEqual((code, out), (1, "Error retrieving members: client closed\n"))

    async def test_event(self) -> None:
        await self.asyncSetUp()
        code, out, _ = await self.same("event", "deploy", "v1")
        self.assertEqual(out, "Event 'deploy' dispatched! Coalescing enabled: true\n")
        await self.same("event", "-coalesce=false", "x")
        code, out, _ = await self.same("event", "x" * 600)
        self.assertEqual(code, 1)
        self.assertIn("user event exceeds configured limit of 512 bytes before encoding", out)
        self.assertEqual(self.agent.events, [("deploy", b"v1", True), ("x", b"", False)])

    async def test_query(self) -> None:
        await self.asyncSetUp()
        code, out, _ = await self.same("query", "-timeout=300ms", "load")
        self.assertEqual(out, "Query 'load' dispatched\nAck from 'twin'\nTotal Acks: 1\nTotal Responses: 0\n")
        await self.same("query", "-timeout=300ms", "-no-ack", "load", "payload")
        await self.same("query", "-timeout=300ms", "-format", "json", "load")
        await self.same("query", "-timeout=300ms", "-node", "twin", "-tag", "role=w", "-relay-factor", "2", "q")
        await self.same("query", "-timeout=300ms", "-node", "nobody", "q")
        await self.same("query", "-timeout=300ms", "-tag", "role=^db$", "q")

    async def test_join_force_leave_tags(self) -> None:
        await self.asyncSetUp()
        code, out, _ = await self.same("join", "127.0.0.1:1")
        self.assertEqual(code, 1)
        self.assertEqual(out, f"Error joining the cluster: 1 error occurred:\n\t* Failed to join 127.0.0.1: {REFUSED}\n\n\n")
        await self.same("force-leave", "nobody")
        await self.same("force-leave", "-prune", "nobody")
        code, out, _ = await self.same("tags", "-set", "dc=east")
        self.assertEqual(out, "Successfully updated agent tags\n")
        await self.same("tags", "-delete", "role")
        await sleep(0.3)
        await self.same("members", "-format", "json")
        await self.same("tags", "-set", "role=db", "-delete", "dc")
        await sleep(0.3)
        await self.same("members")

    async def test_keys_without_encryption(self) -> None:
        await self.asyncSetUp()
        await self.same("keys", "-list")
        await self.same("keys", "-install", encode_key(KEY))
        await self.same("keys", "-use", encode_key(KEY))
        await self.same("keys", "-remove", encode_key(KEY))
        code, out, _ = await self.same("keys", "-install", "!!!")
        self.assertIn("illegal base64 data at input byte 0", out)
        await self.same("keys", "-install", "aGVsbG8")

    async def test_keys_with_encryption(self) -> None:
        await self.asyncSetUp("-encrypt", encode_key(KEY), keyring=Keyring([KEY]))
        await self.same("keys", "-list")
        await self.same("keys", "-install", encode_key(KEY2))
        await self.same_lines("keys", "-list")
        await self.same("keys", "-remove", encode_key(KEY))  # the primary
        await self.same("keys", "-use", encode_key(KEY2))
        await self.same("keys", "-remove", encode_key(KEY))
        await self.same("keys", "-list")
        await self.same("keys", "-install", encode_key(b"short"))

    async def test_info_rtt_reachability_monitor_errors(self) -> None:
        await self.asyncSetUp()
        (rc_real, real, _), (rc_ours, ours, _) = await self.both("info", "-format", "json")
        self.assertEqual((rc_real, rc_ours), (0, 0))
        real_info, our_info = json.loads(real), json.loads(ours)
        self.assertEqual(set(real_info), set(our_info))
        self.assertEqual(our_info["agent"], real_info["agent"])
        self.assertEqual(our_info["tags"], real_info["tags"])
        self.assertEqual(set(our_info["runtime"]), set(real_info["runtime"]))
        # coordinate_resets is there only when coordinates are on, as in Serf.
        self.assertEqual(set(our_info["serf"]) | {"coordinate_resets"}, set(real_info["serf"]))
        code, out, _ = await self.cli(self.ours, "info")
        self.assertTrue(out.startswith("agent:\n\tname = twin\n"), out)
        await self.same("rtt", "nobody")
        await self.same("rtt")
        code, out, _ = await self.cli(self.ours, "rtt", "twin")
        self.assertEqual((code, out), (1, 'Could not find a coordinate for node "twin"\n'))
        self.agent.default_query_timeout = 3.2  # the twin's default for one member
        code, out, _ = await self.same("reachability")
        self.assertEqual(out, "Total members: 1, live members: 1\nStarting reachability test...\nSuccessfully contacted all live nodes\n")
        code, out, _ = await self.same("monitor", "-log-level=bogus")
        self.assertEqual((code, out), (1, "Error starting monitor: Unknown log level: BOGUS\n"))

    async def test_leave(self) -> None:
        await self.asyncSetUp()
        await self.same("leave")
        self.assertTrue(self.agent.left and self.agent.stopped)


class CLITests(ServedTestCase):
    """Our server alone: more state than a single real agent can be put in."""

    async def asyncSetUp(self) -> None:
        agent = FakeRPCAgent(reactor, "a", "127.0.0.1", 7946, tags={"role": "web"})
        agent.add_member("b", "127.0.0.2", 7947, {"role": "db"})
        agent.add_member("c", "::ffff:127.0.0.3", 7948, {"role": "db"}, MemberStatus.FAILED)
        agent.add_member("d", "::1", 7949, {}, MemberStatus.LEFT)
        self.ours = await self.serve(agent)

    async def run_ok(self, *args: str) -> str:
        code, out, err = await self.cli(self.ours, *args)
        self.assertEqual(code, 0, f"serf {' '.join(args)}: {err or out}")
        return out

    async def test_members(self) -> None:
        await self.asyncSetUp()
        out = await self.run_ok("members")
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(
            rows,
            [
                ["a", "127.0.0.1:7946", "alive", "role=web"],
                ["b", "127.0.0.2:7947", "alive", "role=db"],
                ["c", "127.0.0.3:7948", "failed", "role=db"],  # v4-mapped prints as v4
                ["d", "[::1]:7949", "left"],
            ],
        )
        self.assertEqual([r[0] for r in (line.split() for line in (await self.run_ok("members", "-status", "alive")).splitlines())], ["a", "b"])
        self.assertEqual((await self.run_ok("members", "-status", "failed|left")).count("\n"), 2)
        self.assertEqual((await self.run_ok("members", "-tag", "role=db", "-status", "alive")).split()[0], "b")
        self.assertEqual((await self.run_ok("members", "-name", "[cd]")).count("\n"), 2)
        data = json.loads(await self.run_ok("members", "-format", "json"))
        self.assertEqual(
            data["members"][2],
            {
                "name": "c",
                "addr": "127.0.0.3:7948",
                "port": 7948,
                "tags": {"role": "db"},
                "status": "failed",
                "protocol": {"max": 5, "min": 2, "version": 5},
            },
        )

    async def test_query_with_responses(self) -> None:
        await self.asyncSetUp()
        self.agent.query_responder = lambda node, name, payload: f"{node}:{payload.decode()}\n".encode()
        out = await self.run_ok("query", "-timeout=400ms", "uptime", "hi")
        lines = out.splitlines()
        self.assertEqual(lines[0], "Query 'uptime' dispatched")
        self.assertEqual(sorted(lines[1:5]), ["Ack from 'a'", "Ack from 'b'", "Response from 'a': a:hi", "Response from 'b': b:hi"])
        self.assertEqual(lines[5:], ["Total Acks: 2", "Total Responses: 2"])
        data = json.loads(await self.run_ok("query", "-timeout=300ms", "-format", "json", "-node", "b", "-relay-factor", "3", "q", "p"))
        self.assertEqual(data, {"Acks": ["b"], "Responses": {"b": "b:p\n"}})
        data = json.loads(await self.run_ok("query", "-timeout=300ms", "-format", "json", "-tag", "role=web", "-no-ack", "q"))
        self.assertEqual(data, {"Acks": None, "Responses": {"a": "a:\n"}})
        last = self.agent.queries[-1]
        self.assertEqual((last["request_ack"], last["filter_tags"]), (False, {"role": "web"}))
        self.assertEqual(self.agent.queries[-2]["relay_factor"], 3)
        self.assertAlmostEqual(self.agent.queries[-2]["timeout"], 0.3)

    async def test_join_success(self) -> None:
        await self.asyncSetUp()
        out = await self.run_ok("join", "-replay", "127.0.0.9:7946", "127.0.0.10")
        self.assertEqual(out, "Successfully joined cluster by contacting 2 nodes.\n")
        self.assertEqual(self.agent.joins, [(["127.0.0.9:7946", "127.0.0.10"], True)])

    async def test_force_leave(self) -> None:
        await self.asyncSetUp()
        await self.run_ok("force-leave", "c")
        self.assertEqual({m.name: m.status for m in self.agent.members()}["c"], MemberStatus.LEFT)
        await self.run_ok("force-leave", "-prune", "d")
        self.assertNotIn("d", [m.name for m in self.agent.members()])

    async def test_keys(self) -> None:
        await self.asyncSetUp()
        self.agent.keyring = Keyring([KEY])
        out = await self.run_ok("keys", "-list")
        self.assertTrue(out.endswith(f"\n{encode_key(KEY)}  [2/2]\n"), out)

    async def test_rtt(self) -> None:
        await self.asyncSetUp()
        self.agent.coordinates["a"] = Coordinate(vec=(0.001,) + (0.0,) * 7, error=0.2, adjustment=0.0, height=1e-05)
        self.agent.coordinates["b"] = Coordinate(vec=(0.0,) * 8, error=0.2, adjustment=0.0, height=1e-05)
        self.assertEqual(await self.run_ok("rtt", "b"), "Estimated b <-> a rtt: 1.020 ms\n")
        self.assertEqual(await self.run_ok("rtt", "a", "b"), "Estimated a <-> b rtt: 1.020 ms\n")

    async def test_reachability(self) -> None:
        await self.asyncSetUp()
        self.agent.default_query_timeout = 0.3
        out = await self.run_ok("reachability", "-verbose")
        self.assertTrue(out.startswith("Total members: 4, live members: 2\nStarting reachability test...\n"), out)
        self.assertIn("\tAck from 'a'\n", out)
        self.assertIn("\tAck from 'b'\n", out)
        self.assertTrue(out.endswith("Successfully contacted all live nodes\n"), out)
        self.assertEqual(self.agent.queries[-1]["name"], "_serf_ping")

    async def test_info(self) -> None:
        await self.asyncSetUp()
        self.agent.event_handlers["user:deploy"] = "/bin/true"
        out = await self.run_ok("info")
        self.assertIn("event_handlers:\n\tuser:deploy = /bin/true\n", out)
        self.assertIn("serf:\n", out)

    async def test_auth(self) -> None:
        self.binary = skip_unless_serf()
        agent = FakeRPCAgent(reactor, "a")
        ours = await self.serve(agent, auth_key="s3cret")
        code, out, _ = await self.cli(ours, "members")
        self.assertEqual((code, out), (1, "Error retrieving members: Authentication required\n"))
        code, out, _ = await self.cli(ours, "members", "-rpc-auth=wrong")
        self.assertEqual(code, 1)
        self.assertIn("Invalid authentication token", out)
        code, out, _ = await self.cli(ours, "members", "-rpc-auth=s3cret")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("a  127.0.0.1:7946  alive"))

    async def test_monitor(self) -> None:
        await self.asyncSetUp()
        ring = self.agent.log_ring
        globalLogPublisher.addObserver(ring)
        self.addCleanup(globalLogPublisher.removeObserver, ring)
        ring.add("DEBUG", "2024/01/01 00:00:00 [DEBUG] memberlist: hidden at info")
        ring.add("INFO", "2024/01/01 00:00:01 [INFO] serf: EventMemberJoin: b 127.0.0.2")
        proto = _Lines()
        argv = [self.binary, "monitor", f"-rpc-addr={self.ours.rpc_address}", "-log-level=info"]
        process = reactor.spawnProcess(proto, self.binary, argv, env={"PATH": os.environ.get("PATH", "")})

        def kill() -> Deferred[None]:
            if not proto.is_ended:
                try:
                    process.signalProcess("KILL")
                except Exception:
                    pass
            return proto.when_ended()

        self.addCleanup(kill)
        await proto.wait_for(lambda lines: any("Accepted client" in line for line in lines))
        self.agent.log_ring.add("WARN", "2024/01/01 00:00:02 [WARN] agent: something new")
        await proto.wait_for(lambda lines: any("something new" in line for line in lines))
        lines = proto.lines
        self.assertEqual(lines[0], "2024/01/01 00:00:01 [INFO] serf: EventMemberJoin: b 127.0.0.2")
        self.assertNotIn("hidden at info", "".join(lines))
        self.assertTrue(
            re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[INFO\] agent\.ipc: Accepted client: 127\.0\.0\.1:\d+$", lines[1]),
            lines,
        )
        process.signalProcess("TERM")
        await proto.when_ended()
        await sleep(0.1)
        self.assertEqual(ring.subscriber_count, 0)
        self.assertEqual(self.agent.subscriber_count, 0)

    async def test_leave(self) -> None:
        await self.asyncSetUp()
        out = await self.run_ok("leave")
        self.assertEqual(out, "Graceful leave complete\n")
        self.assertTrue(self.agent.stopped)


async def _nothing() -> None:
    return None


class _Lines(ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[str] = []
        self.is_ended = False
        self._waiters: list[tuple[Any, Deferred[None]]] = []
        self._end_waiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode("utf-8", "replace") for line in complete]
        for check, waiter in list(self._waiters):
            if check(self.lines):
                self._waiters.remove((check, waiter))
                waiter.callback(None)

    def processEnded(self, reason: Failure) -> None:
        for _, waiter in self._waiters:
            waiter.errback(reason)
        self._waiters = []
        self.is_ended = True
        for waiter in self._end_waiters:
            waiter.callback(None)
        self._end_waiters = []

    def when_ended(self) -> Deferred[None]:
        if self.is_ended:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._end_waiters.append(d)
        return d

    def wait_for(self, check: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if check(self.lines):
            d.callback(None)
        else:
            self._waiters.append((check, d))
        return d.addTimeout(20, reactor)


class SerfclientTests(ServedTestCase):
    """PyPI ``serfclient`` (synchronous: it runs in a thread while the reactor serves)."""

    async def asyncSetUp(self) -> Any:
        try:
            import serfclient  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            raise SkipTest("pip install serfclient (it is in the [test] extra)")
        agent = FakeRPCAgent(reactor, "a", "127.0.0.1", 7946, tags={"role": "web"})
        agent.add_member("b", "::ffff:127.0.0.2", 7946, {"role": "db"})
        agent.join_errors["127.0.0.1:1"] = REFUSED
        self.ours = await self.serve(agent)
        return serfclient

    def call(self, fn: Any) -> Deferred[Any]:
        from serfclient import SerfClient

        def run() -> Any:
            client = SerfClient("127.0.0.1", self.ours.rpc_port, timeout=10)
            try:
                return fn(client)
            finally:
                client.close()

        return deferToThread(run)

    async def test_members(self) -> None:
        await self.asyncSetUp()
        result = await self.call(lambda c: c.members())
        self.assertEqual(result.head, {"Seq": 1, "Error": ""})
        self.assertEqual([m["Name"] for m in result.body["Members"]], ["a", "b"])
        self.assertEqual(result.body["Members"][1]["Addr"], b"\x00" * 10 + b"\xff\xff\x7f\x00\x00\x02")
        result = await self.call(lambda c: c.members(tags={"role": "db"}))
        self.assertEqual([m["Name"] for m in result.body["Members"]], ["b"])
        result = await self.call(lambda c: c.members(name="a", status="alive"))
        self.assertEqual([m["Name"] for m in result.body["Members"]], ["a"])

    async def test_event(self) -> None:
        await self.asyncSetUp()
        result = await self.call(lambda c: c.event("deploy", "v2", coalesce=False))
        self.assertEqual(result.head["Error"], "")
        result = await self.call(lambda c: c.event("bare"))
        self.assertEqual(self.agent.events, [("deploy", b"v2", False), ("bare", b"", True)])

    async def test_join(self) -> None:
        await self.asyncSetUp()
        result = await self.call(lambda c: c.join(["127.0.0.5:7946", "127.0.0.6:7946"]))
        self.assertEqual((result.head["Error"], result.body), ("", {"Num": 2}))
        result = await self.call(lambda c: c.join("127.0.0.1:1"))
        self.assertEqual(result.head["Error"], f"1 error occurred:\n\t* Failed to join 127.0.0.1: {REFUSED}\n\n")
        self.assertEqual(result.body, {"Num": 0})

    async def test_force_leave_and_stats(self) -> None:
        await self.asyncSetUp()
        self.agent.set_status("b", MemberStatus.FAILED)
        result = await self.call(lambda c: c.force_leave("b"))
        self.assertEqual(result.head["Error"], "")
        self.assertEqual(self.agent.force_leaves, [("b", False)])
        result = await self.call(lambda c: c.stats())
        self.assertEqual(result.body["agent"], {"name": "a"})
        self.assertEqual(result.body["serf"]["left"], "1")
