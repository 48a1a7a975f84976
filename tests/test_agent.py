"""The embedding API: Agents in virtual time, handlers by name, queries, tags."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flyteserf import Agent, AgentConfig, IncomingQuery, MemberEvent, UserEvent
from flyteserf.rpc.interfaces import IRPCAgent
from flyteserf.testing.network import MemoryNetwork


def ip(i: int) -> str:
    return f"10.1.0.{i + 1}"


class AgentCluster:
    def __init__(self, n: int, **config: Any) -> None:
        self.net = MemoryNetwork(seed=3)
        self.agents: list[Agent] = []
        for i in range(n):
            cfg = AgentConfig(node_name=f"a{i}", bind=(ip(i), 7946), tags={"role": f"r{i}"}, **config)
            agent = Agent(cfg, self.net.host(ip(i)))
            agent.startService()
            self.agents.append(agent)
        for agent in self.agents[1:]:
            agent.join([f"{ip(0)}:7946"])
        self.run_until(lambda: all(len(a.members()) == n for a in self.agents))

    def run_until(self, condition: Any, limit: float = 60.0) -> None:
        start = self.net.clock.seconds()
        while not condition():
            if self.net.clock.seconds() - start > limit:
                raise AssertionError(f"not reached within {limit} virtual seconds")
            self.net.run(0.1)

    def stop(self) -> None:
        for agent in self.agents:
            if agent.running:
                agent.stopService()
        self.net.run(30)


class AgentTests(unittest.TestCase):
    def setUp(self) -> None:
        self.cluster = AgentCluster(3, coalesce=False)
        self.addCleanup(self.cluster.stop)
        self.a0, self.a1, self.a2 = self.cluster.agents

    def test_provides_rpc_interface(self) -> None:
        verifyObject(IRPCAgent, self.a0, tentative=True)

    def test_user_handlers_by_name_and_removal(self) -> None:
        deploys: list[UserEvent] = []
        everything: list[UserEvent] = []
        registration = self.a1.on_user_event("deploy", deploys.append)
        self.a1.on_user_event("*", everything.append)
        self.a0.event("deploy", b"v1", coalesce=False)
        self.a0.event("other", b"x", coalesce=False)
        self.cluster.run_until(lambda: len(everything) == 2)
        self.assertEqual([(e.name, e.payload) for e in deploys], [("deploy", b"v1")])
        registration.remove()
        self.a0.event("deploy", b"v2", coalesce=False)
        self.cluster.run_until(lambda: len(everything) == 3)
        self.assertEqual(len(deploys), 1)

    def test_failing_and_slow_handlers_do_not_block_others(self) -> None:
        seen: list[str] = []

        def boom(event: UserEvent) -> None:
            raise RuntimeError("handler bug")

        self.a1.on_user_event("e", boom)
        self.a1.on_user_event("e", lambda event: Deferred())  # never fires
        self.a1.on_user_event("e", lambda event: seen.append(event.name))
        with capturedLogs() as events:
            self.a0.event("e", b"", coalesce=False)
            self.cluster.run_until(lambda: bool(seen))
        self.assertEqual(seen, ["e"])
        self.assertEqual(self.a1.handlers.failures, 1)
        failures = [e for e in events if e.get("log_level") == LogLevel.critical and "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(RuntimeError)
        # Gossip went on: membership is intact.
        self.cluster.net.run(10)
        self.assertEqual(len(self.a1.members()), 3)

    def test_member_handlers(self) -> None:
        failed: list[MemberEvent] = []
        self.a0.on_member("failed", failed.append)
        self.cluster.net.kill(ip(2))
        self.cluster.run_until(lambda: bool(failed))
        self.assertEqual([m.name for m in failed[0].members], ["a2"])
        self.assertRaises(ValueError, self.a0.on_member, "exploded", failed.append)

    def test_query_handlers_and_early_completion(self) -> None:
        self.a1.on_query("status", lambda q: b"fine")

        def later(q: IncomingQuery) -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            self.cluster.net.clock.callLater(0.2, d.callback, b"slow but fine")
            return d

        self.a2.on_query("status", later)
        self.a0.on_query("status", lambda q: None)  # sees it, stays silent
        response = self.a0.query("status", b"", request_ack=True, finish_when_all_responded=False)
        acks: list[str] = []
        answers: dict[str, bytes] = {}
        response.on_ack(acks.append)
        response.on_response(lambda r: answers.__setitem__(r.from_, r.payload))
        done: list[Any] = []
        response.when_done().addCallback(done.append)
        self.cluster.run_until(lambda: bool(done))
        self.assertEqual(sorted(acks), ["a0", "a1", "a2"])
        self.assertEqual(answers, {"a1": b"fine", "a2": b"slow but fine"})

        # Early completion: everyone answers, the query ends before its deadline.
        self.a0.on_query("status", lambda q: b"me too")
        quick = self.a0.query("status", finish_when_all_responded=True, timeout=30)
        started = self.cluster.net.clock.seconds()
        finished: list[Any] = []
        quick.when_done().addCallback(finished.append)
        self.cluster.run_until(lambda: bool(finished))
        self.assertLess(self.cluster.net.clock.seconds() - started, 30)

    def test_tags_update_reaches_peers(self) -> None:
        updates: list[MemberEvent] = []
        self.a1.on_member("update", updates.append)
        self.a0.set_tags({"dc": "eu"})
        self.cluster.run_until(lambda: bool(updates))
        self.assertEqual(updates[-1].members[0].tags, {"role": "r0", "dc": "eu"})
        self.a0.delete_tags(["dc"])
        self.cluster.run_until(lambda: updates[-1].members[0].tags == {"role": "r0"})

    def test_leave_shows_left(self) -> None:
        left: list[MemberEvent] = []
        self.a0.on_member("leave", left.append)
        self.a2.leave()
        self.cluster.run_until(lambda: bool(left))
        statuses = {m.name: m.status.label for m in self.a0.members()}
        self.assertEqual(statuses["a2"], "left")

    def test_stats_and_oversized_event(self) -> None:
        stats = self.a0.stats()
        self.assertEqual(stats["agent"], {"name": "a0"})
        self.assertEqual(stats["serf"]["members"], "3")
        self.assertEqual(stats["tags"], {"role": "r0"})
        with self.assertRaises(Exception) as caught:
            self.a0.event("big", b"x" * 600)
        self.assertIn("user event exceeds configured limit of 512 bytes before encoding", str(caught.exception))
