"""Tests for :mod:`flyteserf.testing.serf_binary`, against the real ``serf``."""

from __future__ import annotations

import errno
import os
import re
import socket
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorProcess
from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase, TestCase

from flyteserf.testing import serf_binary
from flyteserf.testing.serf_binary import (
    SERF_DEFAULT_PORTS,
    SerfAgentError,
    SerfAgentProcess,
    find_free_port,
    skip_unless_serf,
    start_serf_agent,
)

reactor = cast(IReactorProcess, _reactor)


def pid_exists(pid: int) -> bool:
    """True if a process (even a zombie) has this PID."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class FindFreePortTests(SynchronousTestCase):
    def test_free_for_tcp_and_udp(self) -> None:
        port = find_free_port()
        self.assertNotIn(port, SERF_DEFAULT_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))

    def test_never_the_same_twice(self) -> None:
        ports = [find_free_port() for _ in range(20)]
        self.assertEqual(len(set(ports)), len(ports))


class SkipUnlessSerfTests(SynchronousTestCase):
    def test_found(self) -> None:
        self.patch(serf_binary, "find_serf_binary", lambda: "/bin/serf-here")
        self.assertEqual(skip_unless_serf(), "/bin/serf-here")

    def test_missing_skips(self) -> None:
        self.patch(serf_binary, "find_serf_binary", lambda: None)
        self.patch(os, "environ", {})
        self.assertRaises(SkipTest, skip_unless_serf)

    def test_missing_under_ci_fails(self) -> None:
        """CI installs serf, so there a missing binary must not pass as a skip."""
        self.patch(serf_binary, "find_serf_binary", lambda: None)
        self.patch(os, "environ", {"CI": "true"})
        self.assertRaises(FailTest, skip_unless_serf)


class SerfAgentProcessTests(TestCase):
    timeout = 120

    async def test_two_agents_join(self) -> None:
        """Two agents on free ports join; both see two alive members; both stop."""
        a = await start_serf_agent(self, reactor, node="harness-a")
        b = await start_serf_agent(self, reactor, node="harness-b", extra_args=["-tag", "k=v"])
        self.assertNotEqual(a.bind_port, b.bind_port)
        await a.wait_for_log("agent: Serf agent starting")
        code, out, err = await b.join(a)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("Successfully joined cluster by contacting 1 nodes", out)
        for agent in (a, b):
            members = await agent.members()
            self.assertEqual(
                sorted((m["name"], m["status"]) for m in members),
                [("harness-a", "alive"), ("harness-b", "alive")],
            )
        (member_b,) = [m for m in await a.members() if m["name"] == "harness-b"]
        self.assertEqual(member_b["tags"], {"k": "v"})
        self.assertEqual(f"{member_b['addr']}", b.bind_address)
        line = await a.wait_for_log(re.compile(r"EventMemberJoin: harness-b 127\.0\.0\.1"))
        self.assertIn("harness-b", line)

        pids = [a.pid, b.pid]
        self.assertTrue(all(pid is not None and pid_exists(pid) for pid in pids))
        await a.stop()
        await b.stop(signal="INT")
        for agent, pid in zip((a, b), pids):
            self.assertFalse(agent.running)
            self.assertIsNone(agent.pid)
            assert pid is not None
            self.assertFalse(pid_exists(pid), f"{agent.node} (pid {pid}) still exists")
        # A second stop is harmless.
        await a.stop()

    async def test_kill9(self) -> None:
        agent = await start_serf_agent(self, reactor)
        pid = agent.pid
        assert pid is not None
        await agent.kill9()
        self.assertEqual(agent.exit_signal, 9)
        self.assertFalse(pid_exists(pid))

    async def test_wait_for_log_timeout(self) -> None:
        agent = await start_serf_agent(self, reactor)
        mark = len(agent.log_lines)
        with self.assertRaises(SerfAgentError) as caught:
            await agent.wait_for_log("no agent ever logs this", timeout=0.2, from_line=mark)
        self.assertIn("no agent ever logs this", str(caught.exception))
        self.assertIn("its last log lines", str(caught.exception))

    async def test_exit_before_ready(self) -> None:
        """An agent that cannot start fails start() with its own error text."""
        skip_unless_serf()
        agent = SerfAgentProcess(reactor, extra_args=["-profile=moon"])
        self.addCleanup(agent.stop)
        with self.assertRaises(SerfAgentError) as caught:
            await agent.start()
        self.assertIn("Unknown profile: moon", str(caught.exception))
        self.assertFalse(agent.running)
        with self.assertRaises(SerfAgentError):
            await agent.wait_for_log("never")

    async def test_cli_error(self) -> None:
        """A failing CLI call gives its status and stderr, not an exception."""
        agent = await start_serf_agent(self, reactor)
        code, out, err = await agent.serf_cli("join", "127.0.0.1:1")
        self.assertNotEqual(code, 0)
        self.assertIn("Error joining", out + err)
