"""Our memberlist node in a cluster of real ``serf agent`` processes (loopback only)."""

from __future__ import annotations

from functools import partial

import base64
import os
import statistics
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from flyteserf.testing import polling

from flyteserf.memberlist.memberlist import Memberlist
from flyteserf.memberlist.build import TagsDelegate, build_memberlist
from flyteserf.testing.serf_binary import SerfAgentProcess, start_serf_agent
from flyteserf.wire.keyring import Keyring
from flyteserf.wire.messages import NodeState

reactor: Any = _reactor
KEY = base64.b64encode(os.urandom(32)).decode()
DEADLINE = 60.0


sleep = partial(polling.sleep, reactor)


poll = partial(polling.poll, reactor)


class ClusterMixin:
    encrypt: str | None = None

    def agent_args(self) -> list[str]:
        return [f"-encrypt={self.encrypt}"] if self.encrypt else []

    @inlineCallbacks
    def start_cluster(self, n: int) -> Any:
        agents = yield gatherResults(
            [start_serf_agent(self, reactor, node=f"go{i}", extra_args=self.agent_args()) for i in range(n)]  # type: ignore[arg-type]
        )
        if n > 1:
            rc, out, err = yield agents[0].join(*agents[1:])
            assert rc == 0, (out, err)
        return agents

    def start_ours(self, name: str = "py") -> Memberlist:
        keyring = Keyring([base64.b64decode(self.encrypt)]) if self.encrypt else None
        node = build_memberlist(
            reactor, name, ("127.0.0.1", 0), keyring=keyring, delegate=TagsDelegate({"role": "python"})
        )
        node.start()
        self.addCleanup(lambda: node.shutdown() if node._running else None)  # type: ignore[attr-defined]
        return node

    @inlineCallbacks
    def status_everywhere(self, agents: list[SerfAgentProcess], name: str) -> Any:
        lists = yield gatherResults([a.members() for a in agents])
        return [next((m["status"] for m in members if m["name"] == name), None) for members in lists]


class MemberlistInteropTests(ClusterMixin, unittest.TestCase):
    timeout = 240

    @inlineCallbacks
    def test_join_and_stay_alive(self) -> Any:
        """Our node joins three agents, is alive everywhere, and stays unsuspected for 30 s."""
        agents = yield self.start_cluster(3)
        ours = self.start_ours()
        joined = yield ours.join([("127.0.0.1", agents[0].bind_port)])
        self.assertEqual(joined, 1)

        @inlineCallbacks
        def alive_everywhere() -> Any:
            statuses = yield self.status_everywhere(agents, "py")
            return statuses == ["alive"] * 3

        yield poll(alive_everywhere)
        yield poll(lambda: len(ours.members()) == 4)
        marks = [len(a.log_lines) for a in agents]
        yield sleep(30)
        for agent, mark in zip(agents, marks):
            suspicions = [line for line in agent.log_lines[mark:] if "py" in line and ("uspect" in line or "ailed" in line)]
            self.assertEqual(suspicions, [], f"{agent.node} suspected our node")
        statuses = yield self.status_everywhere(agents, "py")
        self.assertEqual(statuses, ["alive"] * 3)
        self.assertEqual(ours.counters["dropped_packets_malformed"], 0)

    @inlineCallbacks
    def test_go_agent_joins_through_us(self) -> Any:
        agents = yield self.start_cluster(2)
        ours = self.start_ours()
        yield ours.join([("127.0.0.1", agents[0].bind_port)])
        newcomer = yield start_serf_agent(self, reactor, node="late", extra_args=self.agent_args())
        rc, out, err = yield newcomer.serf_cli("join", f"127.0.0.1:{ours.advertise[1]}")
        self.assertEqual(rc, 0, (out, err))

        @inlineCallbacks
        def sees_everyone() -> Any:
            members = yield newcomer.members()
            return {m["name"] for m in members if m["status"] == "alive"} == {"go0", "go1", "py", "late"}

        yield poll(sees_everyone)
        yield poll(lambda: ours.nodes.get("late") is not None and ours.nodes["late"].state == NodeState.ALIVE)

    @inlineCallbacks
    def test_kill_detection_matches_go(self) -> Any:
        """kill -9 of a Go agent: we declare it dead about when the Go agents do."""
        agents = yield self.start_cluster(4)
        ours = self.start_ours()
        yield ours.join([("127.0.0.1", agents[0].bind_port)])
        yield poll(lambda: len(ours.members()) == 5)
        survivors = agents[1:]

        @inlineCallbacks
        def all_see_five() -> Any:
            lists = yield gatherResults([a.members() for a in survivors])
            return all(sum(m["status"] == "alive" for m in ms) == 5 for ms in lists)

        yield poll(all_see_five)
        victim = agents[0]
        killed_at = reactor.seconds()
        yield victim.kill9()
        detected: dict[str, float] = {}

        @inlineCallbacks
        def everyone_detected() -> Any:
            if "py" not in detected and ours.nodes[victim.node].is_dead_or_left():
                detected["py"] = reactor.seconds() - killed_at
            pending = [a for a in survivors if a.node not in detected]
            statuses = yield self.status_everywhere(pending, victim.node)
            for agent, status in zip(pending, statuses):
                if status == "failed":
                    detected[agent.node] = reactor.seconds() - killed_at
            return len(detected) == len(survivors) + 1

        yield poll(everyone_detected, interval=0.05)
        go_times = [detected[a.node] for a in survivors]
        go_median = statistics.median(go_times)
        # The ratio the issue asks for, with the polling granularity as slack.
        self.assertLessEqual(
            abs(detected["py"] - go_median),
            0.2 * go_median + 0.5,
            f"ours {detected['py']:.2f} s, Go {go_times}",
        )
        self.assertEqual(ours.nodes[victim.node].state, NodeState.DEAD)

    @inlineCallbacks
    def test_stopped_without_leaving_is_failed(self) -> Any:
        agents = yield self.start_cluster(2)
        ours = self.start_ours()
        yield ours.join([("127.0.0.1", agents[0].bind_port)])

        @inlineCallbacks
        def statuses_are(wanted: str) -> Any:
            statuses = yield self.status_everywhere(agents, "py")
            return statuses == [wanted] * len(agents)

        yield poll(lambda: statuses_are("alive"))
        yield ours.shutdown()
        yield poll(lambda: statuses_are("failed"))


class EncryptedMemberlistInteropTests(MemberlistInteropTests):
    encrypt = KEY
