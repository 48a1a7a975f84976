"""The example applications in tap/: node and guardian, with each other and with a real agent."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import protocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

import flyteserf
from flyteserf.testing.serf_binary import find_free_port, start_serf_agent

reactor: Any = _reactor
TAP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tap")


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.text = ""
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.text += data.decode(errors="replace")

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class TacTests(unittest.TestCase):
    timeout = 120

    def run_tac(self, name: str, **env: str) -> _Output:
        out = _Output()
        root = os.path.dirname(os.path.dirname(os.path.abspath(flyteserf.__file__)))
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "--logfile=-", "--python", os.path.join(TAP, f"{name}.tac")]
        environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": root, **env}
        transport = reactor.spawnProcess(out, argv[0], argv, env=environment)

        def stop() -> Deferred[None] | None:
            if out.ended.called:
                return None
            transport.signalProcess("KILL")
            return out.ended

        self.addCleanup(stop)
        return out

    @inlineCallbacks
    def wait_for(self, out: _Output, text: str, deadline: float = 60.0) -> Any:
        end = reactor.seconds() + deadline
        while text not in out.text:
            if reactor.seconds() > end:
                raise AssertionError(f"{text!r} not seen within {deadline} s; output:\n{out.text[-3000:]}")
            yield deferLater(reactor, 0.1, lambda: None)

    @inlineCallbacks
    def test_node_and_guardian_with_a_real_agent(self) -> Any:
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho go is fine\n")
        os.chmod(script, 0o755)
        go = yield start_serf_agent(self, reactor, node="go", extra_args=[f"-event-handler=query:status={script}"])
        node_port, guardian_port = find_free_port(), find_free_port()
        node = self.run_tac(
            "node", FLYTESERF_NODE="node", FLYTESERF_BIND=f"127.0.0.1:{node_port}", FLYTESERF_JOIN=go.bind_address
        )
        yield self.wait_for(node, "joined:")
        guardian = self.run_tac(
            "guardian",
            FLYTESERF_NODE="guardian",
            FLYTESERF_BIND=f"127.0.0.1:{guardian_port}",
            FLYTESERF_JOIN=f"127.0.0.1:{node_port}",
        )
        yield self.wait_for(guardian, "status from node: node is fine")
        yield self.wait_for(guardian, "status from go: go is fine")
        yield self.wait_for(guardian, "status ack from go")
        yield self.wait_for(node, "user event useless: b'nothing to see'")
        yield self.wait_for(node, "joined: guardian")
        members = yield go.members()
        self.assertEqual({m["name"]: m["status"] for m in members}, {"go": "alive", "node": "alive", "guardian": "alive"})
