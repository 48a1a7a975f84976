"""The stock ``serf`` CLI against our Agent, next to a real agent in the same cluster."""

from __future__ import annotations

from functools import partial

import base64
import json
import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from flyteserf.testing import polling

from flyteserf import Agent, AgentConfig, Keyring
from flyteserf.rpc.service import RPCService
from flyteserf.testing.serf_binary import SerfAgentProcess, find_free_port, find_serf_binary, start_serf_agent
from flyteserf.wire.keyring import load_keyring_file, save_keyring_file

reactor: Any = _reactor


eventually = partial(polling.poll, reactor)


class CLIAgainstOurAgentTests(unittest.TestCase):
    timeout = 180
    key = base64.b64encode(bytes(range(32))).decode()

    @inlineCallbacks
    def setUp(self) -> Any:
        self.go: SerfAgentProcess = yield start_serf_agent(
            self, reactor, node="go", extra_args=[f"-encrypt={self.key}", "-tag", "role=web"]
        )
        self.keyring_file = os.path.abspath(self.mktemp())
        save_keyring_file(self.keyring_file, Keyring([base64.b64decode(self.key)]))
        self.rpc_port = find_free_port()
        config = AgentConfig(
            node_name="py",
            bind=("127.0.0.1", 0),
            tags={"role": "py", "dc": "eu"},
            keyring=load_keyring_file(self.keyring_file),
            keyring_file=self.keyring_file,
            start_join=(self.go.bind_address,),
            coalesce=False,
            leave_on_stop=False,
        )
        self.agent = Agent(config, reactor)
        self.agent.attach(RPCService(reactor, self.agent, ("127.0.0.1", self.rpc_port)))
        self.agent.on_query("status", lambda q: b"py is fine")
        yield self.agent.startService()
        self.addCleanup(lambda: self.agent.stopService() if self.agent.running else None)

    def cli(self, *args: str) -> Any:
        binary = find_serf_binary()
        assert binary is not None
        from twisted.internet.utils import getProcessOutputAndValue

        argv = [args[0], f"-rpc-addr=127.0.0.1:{self.rpc_port}", *args[1:]]  # flags before names
        d = getProcessOutputAndValue(binary, argv, env={})
        return d.addCallback(lambda r: (r[2], r[0].decode(), r[1].decode()))

    @inlineCallbacks
    def test_members_and_filters(self) -> Any:
        rc, out, err = yield self.cli("members")
        self.assertEqual(rc, 0, out + err)
        lines = sorted(line.split() for line in out.strip().splitlines())
        self.assertEqual([(l[0], l[2]) for l in lines], [("go", "alive"), ("py", "alive")])
        rc, out, _ = yield self.cli("members", "-tag", "role=web")
        self.assertEqual([line.split()[0] for line in out.strip().splitlines()], ["go"])
        rc, out, _ = yield self.cli("members", "-name", "p.*")
        self.assertEqual([line.split()[0] for line in out.strip().splitlines()], ["py"])
        rc, out, _ = yield self.cli("members", "-status", "failed")
        self.assertEqual(out.strip(), "")
        rc, out, _ = yield self.cli("members", "-format", "json")
        members = {m["name"]: m for m in json.loads(out)["members"]}
        self.assertEqual(members["py"]["tags"], {"role": "py", "dc": "eu"})
        self.assertEqual(members["py"]["protocol"]["version"], 5)
        # The Go agent reports us the same way.
        go_view = yield self.go.members()
        self.assertEqual({m["name"]: m["status"] for m in go_view}, {"go": "alive", "py": "alive"})

    @inlineCallbacks
    def test_event_and_query(self) -> Any:
        seen: list[Any] = []
        self.agent.on_user_event("deploy", seen.append)
        rc, out, err = yield self.cli("event", "-coalesce=false", "deploy", "v1")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Event 'deploy' dispatched! Coalescing enabled: false", out)
        yield eventually(lambda: bool(seen))
        rc, out, err = yield self.cli("query", "-timeout=3s", "status", "")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Ack from 'py'", out)
        self.assertIn("Ack from 'go'", out)
        self.assertIn("Response from 'py': py is fine", out)
        rc, out, _ = yield self.cli("query", "-timeout=3s", "-node", "py", "-format", "json", "status")
        result = json.loads(out)
        self.assertEqual(result["Responses"], {"py": "py is fine"})
        rc, out, _ = yield self.cli("query", "-timeout=3s", "-tag", "role=web", "-no-ack", "status")
        self.assertNotIn("Response from 'py'", out)
        rc, out, err = yield self.cli("query", "_serf_bad")
        self.assertNotEqual(rc, 0)
        self.assertIn("Queries cannot contain the '_serf_' prefix", out + err)

    @inlineCallbacks
    def test_tags_info_keys_and_rtt(self) -> Any:
        rc, out, err = yield self.cli("tags", "-set", "zone=a", "-delete", "dc")
        self.assertEqual(rc, 0, out + err)

        @inlineCallbacks
        def go_sees_tags() -> Any:
            members = yield self.go.members()
            return any(m["name"] == "py" and m["tags"] == {"role": "py", "zone": "a"} for m in members)

        yield eventually(go_sees_tags)
        rc, out, _ = yield self.cli("info")
        self.assertIn("name = py", out)
        self.assertIn("encrypted = true", out)
        rc, out, _ = yield self.cli("keys", "-list")
        self.assertIn(f"{self.key}  [2/2]", out)
        new_key = base64.b64encode(os.urandom(32)).decode()
        rc, out, err = yield self.cli("keys", "-install", new_key)
        self.assertEqual(rc, 0, out + err)
        rc, out, err = yield self.cli("keys", "-use", new_key)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(load_keyring_file(self.keyring_file).primary_key, base64.b64decode(new_key))
        rc, out, err = yield self.go.serf_cli("keys", "-remove", self.key)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(len(load_keyring_file(self.keyring_file)), 1)
        rc, out, err = yield self.cli("rtt", "py")
        self.assertIn('Could not find a coordinate for node "py"', out + err)
        rc, out, err = yield self.cli("reachability")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("Successfully contacted all live nodes", out)

    @inlineCallbacks
    def test_force_leave_and_leave(self) -> Any:
        extra = yield start_serf_agent(self, reactor, node="extra", extra_args=[f"-encrypt={self.key}"])
        rc, out, err = yield self.cli("join", extra.bind_address)
        self.assertEqual(rc, 0, out + err)
        yield eventually(lambda: len(self.agent.members()) == 3)
        yield extra.kill9()
        yield eventually(lambda: any(m.name == "extra" and m.status.label == "failed" for m in self.agent.members()))
        rc, out, err = yield self.cli("force-leave", "extra")
        self.assertEqual(rc, 0, out + err)
        yield eventually(lambda: any(m.name == "extra" and m.status.label == "left" for m in self.agent.members()))
        rc, out, err = yield self.cli("leave")
        self.assertEqual(rc, 0, out + err)

        @inlineCallbacks
        def go_sees_left() -> Any:
            members = yield self.go.members()
            return any(m["name"] == "py" and m["status"] == "left" for m in members)

        yield eventually(go_sees_left)

    @inlineCallbacks
    def test_serfclient(self) -> Any:
        """PyPI's serfclient, a second RPC client, against our agent."""
        from serfclient import SerfClient
        from twisted.internet.threads import deferToThread

        def calls() -> dict[str, Any]:
            client = SerfClient(host="127.0.0.1", port=self.rpc_port)
            try:
                return {
                    "members": client.members().body,
                    "event": client.event("from-serfclient", "hi", coalesce=False).head,
                    "stats": client.stats().body,
                    "force_leave": client.force_leave("nobody").head,
                }
            finally:
                client.close()

        seen: list[Any] = []
        self.agent.on_user_event("from-serfclient", seen.append)
        result = yield deferToThread(calls)
        self.assertEqual({m["Name"] for m in result["members"]["Members"]}, {"go", "py"})
        self.assertEqual(result["stats"]["agent"], {"name": "py"})
        for head in (result["event"], result["force_leave"]):
            self.assertEqual(head["Error"], "")
        yield eventually(lambda: bool(seen))
        self.assertEqual(seen[0].payload, b"hi")

    @inlineCallbacks
    def test_join_by_host_name_with_node_prefix(self) -> Any:
        """``[name/]host[:port]`` with a host name, resolved when the join runs."""
        late = yield start_serf_agent(self, reactor, node="late", extra_args=[f"-encrypt={self.key}"])
        joined = yield self.agent.join([f"late/localhost:{late.bind_port}"])
        self.assertEqual(joined, 1)
        yield eventually(lambda: any(m.name == "late" and m.status.label == "alive" for m in self.agent.members()))
