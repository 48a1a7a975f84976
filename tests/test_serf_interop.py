# mypy: disable-error-code="no-untyped-call"
"""Our serf node among real ``serf agent`` processes, driven with the stock ``serf`` CLI.

Everything runs on 127.0.0.1 with free ports; every agent is stopped by PID
in a cleanup, even when a test fails.  Waits poll with generous deadlines and
never assert how long something took.
"""

from __future__ import annotations

from functools import partial

import base64
import json
import os
import stat
from typing import Any, Callable

from twisted.internet import reactor as _reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from flyteserf.testing import polling

from flyteserf.serf.config import SerfConfig
from flyteserf.serf.events import Event, EventType, MemberEvent, UserEvent
from flyteserf.serf.query import IncomingQuery, QueryParam
from flyteserf.serf.serf import Serf, SerfState
from flyteserf.testing.serf_binary import SerfAgentProcess, start_serf_agent
from flyteserf.wire.keyring import Keyring, encode_key, load_keyring_file, save_keyring_file
from tests.test_serf_cluster import record_sent

reactor: Any = _reactor
KEY1 = os.urandom(32)
KEY2 = os.urandom(32)
KEY3 = os.urandom(16)
DEADLINE = 30.0

HANDLER = r"""#!/bin/sh
# Records every event; answers queries with a line naming this agent.
payload=$(cat | tr '\n' ' ' | sed 's/ $//')
if [ "$SERF_EVENT" = "query" ]; then
    echo "go-answer from $SERF_SELF_NAME to $SERF_QUERY_NAME"
    exit 0
fi
echo "$SERF_EVENT|$SERF_USER_EVENT|$payload" >> "{log}"
"""


sleep = partial(polling.sleep, reactor)


poll = partial(polling.poll, reactor)


class InteropMixin:
    """Agents with an event handler, plus our node; plain unless ``encrypt``."""

    encrypt: bytes | None = None
    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.dir)
        self.handler_log = os.path.join(self.dir, "handler.log")
        self.handler = os.path.join(self.dir, "handler.sh")
        with open(self.handler, "w") as f:
            f.write(HANDLER.replace("{log}", self.handler_log))
        os.chmod(self.handler, stat.S_IRWXU)
        self.events: list[Event] = []

    def agent_args(self, name: str) -> list[str]:
        args = [f"-event-handler={self.handler}"]
        if self.encrypt:
            args.append(f"-encrypt={base64.b64encode(self.encrypt).decode()}")
        return args

    @inlineCallbacks
    def start_agents(self, n: int, args: Callable[[str], list[str]] | None = None) -> Any:
        args = args or self.agent_args
        agents = yield gatherResults(
            [start_serf_agent(self, reactor, node=f"go{i}", extra_args=args(f"go{i}")) for i in range(n)]  # type: ignore[arg-type]
        )
        if n > 1:
            rc, out, err = yield agents[0].join(*agents[1:])
            assert rc == 0, (out, err)
        return agents

    def start_ours(self, name: str = "py", port: int = 0, **changes: Any) -> Serf:
        changes.setdefault("tags", {"role": "python"})
        if self.encrypt and "keyring" not in changes:
            changes["keyring"] = Keyring([self.encrypt])
        config = SerfConfig(node_name=name, **changes)
        node = Serf.create(config, reactor, bind=("127.0.0.1", port), on_event=self.on_event)
        node.start()
        self.addCleanup(lambda: node.shutdown())  # type: ignore[attr-defined]
        return node

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, IncomingQuery):
            event.respond(f"py-answer to {event.name}".encode())

    @inlineCallbacks
    def statuses(self, agents: list[SerfAgentProcess], name: str) -> Any:
        lists = yield gatherResults([a.members() for a in agents])
        return [next((m["status"] for m in members if m["name"] == name), None) for members in lists]

    def everywhere(self, agents: list[SerfAgentProcess], name: str, status: str) -> Callable[[], Any]:
        @inlineCallbacks
        def check() -> Any:
            found = yield self.statuses(agents, name)
            return found == [status] * len(agents)

        return check

    @inlineCallbacks
    def cluster(self, n: int = 2, **changes: Any) -> Any:
        agents = yield self.start_agents(n)
        ours = self.start_ours(**changes)
        joined = yield ours.join([agents[0].bind_address])
        assert joined == 1
        yield poll(self.everywhere(agents, "py", "alive"))
        yield poll(lambda: sum(m.status.label == "alive" for m in ours.members()) == n + 1)
        return agents, ours

    def handler_saw(self, prefix: str, containing: str = "") -> int:
        """How many handler lines (``event|user-event-name|payload``) start with
        *prefix* and contain *containing* (member events list their members)."""
        return sum(line.startswith(prefix) and containing in line for line in self.handler_lines())

    def handler_lines(self) -> list[str]:
        try:
            with open(self.handler_log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def user_events(self) -> list[UserEvent]:
        return [e for e in self.events if isinstance(e, UserEvent)]


class SerfInteropTests(InteropMixin, unittest.TestCase):
    @inlineCallbacks
    def test_user_events_both_ways(self) -> Any:
        agents, ours = yield self.cluster(2)
        rc, out, err = yield agents[1].serf_cli("event", "deploy", "v1")
        self.assertEqual(rc, 0, err)
        rc, out, err = yield agents[1].serf_cli("event", "-coalesce=false", "restart", "now")
        self.assertEqual(rc, 0, err)
        yield poll(lambda: {e.name for e in self.user_events()} >= {"deploy", "restart"})
        got = {e.name: (e.payload, e.coalesce) for e in self.user_events()}
        self.assertEqual(got["deploy"], (b"v1", True))
        self.assertEqual(got["restart"], (b"now", False))
        # Ours reaches the agents' event handler scripts (on both agents).
        ours.user_event("from-python", b"hello go", coalesce=False)
        yield poll(lambda: self.handler_lines().count("user|from-python|hello go") == 2)

    @inlineCallbacks
    def test_cli_queries_reach_our_handler(self) -> Any:
        agents, ours = yield self.cluster(2)
        sent = record_sent(ours)
        cli = agents[0].serf_cli
        rc, out, err = yield cli("query", "-timeout=1500ms", "plain", "p")
        self.assertEqual(rc, 0, err)
        self.assertIn("Ack from 'py'", out)
        self.assertIn("Response from 'py': py-answer to plain", out)
        self.assertIn("Response from 'go1': go-answer from go1 to plain", out)
        rc, out, err = yield cli("query", "-timeout=1500ms", "-node=py", "only-py", "p")
        self.assertIn("Ack from 'py'", out)
        self.assertIn("Response from 'py': py-answer to only-py", out)
        self.assertNotIn("go1", out)
        rc, out, err = yield cli("query", "-timeout=1500ms", "-tag", "role=pyth", "by-tag", "p")
        self.assertIn("Response from 'py': py-answer to by-tag", out)
        self.assertNotIn("go1", out)
        rc, out, err = yield cli("query", "-timeout=1500ms", "-tag", "role=^nomatch$", "none", "p")
        self.assertNotIn("'py'", out)
        rc, out, err = yield cli("query", "-timeout=1500ms", "-relay-factor=2", "relayed", "p")
        self.assertIn("Ack from 'py'", out)
        self.assertIn("Response from 'py': py-answer to relayed", out)
        self.assertEqual(out.count("Response from 'py'"), 1)
        self.assertIn(9, [p[0] for p in sent])
        rc, out, err = yield cli("query", "-timeout=1500ms", "-no-ack", "no-ack", "p")
        self.assertNotIn("Ack from", out)
        self.assertIn("Response from 'py': py-answer to no-ack", out)
        self.assertEqual(
            [q.name for q in self.events if isinstance(q, IncomingQuery)],
            ["plain", "only-py", "by-tag", "relayed", "no-ack"],
        )

    @inlineCallbacks
    def test_our_query_answered_by_every_agent(self) -> Any:
        agents, ours = yield self.cluster(3)
        r = ours.query("ask-go", b"?", QueryParam(request_ack=True, relay_factor=1))
        yield r.when_done()
        self.assertEqual(sorted(r.acks), ["go0", "go1", "go2", "py"])
        answers = {x.from_: x.payload for x in r.responses}
        self.assertEqual(answers["py"], b"py-answer to ask-go")
        for name in ("go0", "go1", "go2"):
            self.assertEqual(answers[name].strip(), f"go-answer from {name} to ask-go".encode())
        # The same through a filter: only go1 processes it.
        r = ours.query("ask-go1", b"", QueryParam(filter_nodes=("go1",), request_ack=True, timeout=2))
        yield r.when_done()
        self.assertEqual((r.acks, [x.from_ for x in r.responses]), (["go1"], ["go1"]))

    @inlineCallbacks
    def test_tags_both_ways(self) -> Any:
        agents, ours = yield self.cluster(2)
        rc, out, err = yield agents[1].serf_cli("tags", "-set", "color=blue")
        self.assertEqual(rc, 0, err)

        def updated() -> bool:
            return any(
                isinstance(e, MemberEvent)
                and e.type is EventType.MEMBER_UPDATE
                and any(m.name == "go1" and m.tags.get("color") == "blue" for m in e.members)
                for e in self.events
            )

        yield poll(updated)
        yield ours.set_tags({"role": "python", "zone": "z1"})

        @inlineCallbacks
        def seen_by_agents() -> Any:
            lists = yield gatherResults([a.members() for a in agents])
            return all(
                next(m for m in ms if m["name"] == "py")["tags"] == {"role": "python", "zone": "z1"} for ms in lists
            )

        yield poll(seen_by_agents)
        yield poll(lambda: self.handler_saw("member-update||", "py\t127.0.0.1\tpython\t") >= 2)

    @inlineCallbacks
    def test_graceful_leave_shows_left(self) -> Any:
        agents, ours = yield self.cluster(2)
        yield ours.leave()
        self.assertEqual(ours.state, SerfState.LEFT)
        yield poll(self.everywhere(agents, "py", "left"))
        yield poll(lambda: self.handler_saw("member-leave||", "py\t127.0.0.1") >= 2)
        self.assertEqual(self.handler_saw("member-failed||"), 0)

    @inlineCallbacks
    def test_force_leave_of_stopped_node(self) -> Any:
        agents, ours = yield self.cluster(2)
        yield ours.shutdown()
        yield poll(self.everywhere(agents, "py", "failed"))
        rc, out, err = yield agents[0].serf_cli("force-leave", "py")
        self.assertEqual(rc, 0, err)
        yield poll(self.everywhere(agents, "py", "left"))

    @inlineCallbacks
    def test_restart_with_snapshot(self) -> Any:
        snapshot = os.path.join(self.dir, "py.snapshot")
        agents, ours = yield self.cluster(2, snapshot_path=snapshot)
        rc, out, err = yield agents[1].serf_cli("event", "-coalesce=false", "before", "1")
        yield poll(lambda: any(e.name == "before" for e in self.user_events()))
        yield sleep(1.0)  # the snapshot flushes every 0.5 s
        port = ours.advertise[1]
        yield ours.shutdown()  # no leave: the agents see it fail
        yield poll(self.everywhere(agents, "py", "failed"))
        self.events.clear()
        again = self.start_ours(port=port, snapshot_path=snapshot)
        self.assertTrue((yield again.rejoined))
        yield poll(self.everywhere(agents, "py", "alive"))
        yield poll(lambda: sum(m.status.label == "alive" for m in again.members()) == 3)
        yield sleep(2.0)
        self.assertEqual(self.user_events(), [])
        rc, out, err = yield agents[0].serf_cli("event", "-coalesce=false", "after", "2")
        yield poll(lambda: self.user_events())
        self.assertEqual([e.name for e in self.user_events()], ["after"])

    @inlineCallbacks
    def test_name_conflict_newcomer_loses(self) -> Any:
        """A second node calling itself "py" asks the cluster and shuts itself down."""
        agents, ours = yield self.cluster(2)
        twin = self.start_ours("py")
        twin.join([agents[1].bind_address]).addErrback(lambda f: None)
        yield poll(lambda: twin.state == SerfState.SHUTDOWN)
        self.assertEqual(ours.state, SerfState.ALIVE)
        statuses = yield self.statuses(agents, "py")
        self.assertEqual(statuses, ["alive", "alive"])
        members = yield agents[0].members()
        self.assertEqual(next(m for m in members if m["name"] == "py")["port"], ours.advertise[1])

    @inlineCallbacks
    def test_name_conflict_go_newcomer_loses(self) -> Any:
        """A Go agent calling itself "py" is voted out with our cluster's answers."""
        agents, ours = yield self.cluster(2)
        impostor = yield start_serf_agent(self, reactor, node="py", extra_args=self.agent_args("py"))
        yield impostor.serf_cli("join", agents[1].bind_address)
        yield impostor.wait_for_log("minority in name conflict resolution", timeout=DEADLINE)
        self.assertEqual(ours.state, SerfState.ALIVE)
        members = yield agents[0].members()
        self.assertEqual(next(m for m in members if m["name"] == "py")["port"], ours.advertise[1])


class EncryptedSerfInteropTests(SerfInteropTests):
    encrypt = KEY1


class KeyringInteropTests(InteropMixin, unittest.TestCase):
    """``serf keys`` against keyring files, both directions."""

    encrypt = KEY1

    def agent_args(self, name: str) -> list[str]:
        path = os.path.join(self.dir, f"{name}.keyring")
        save_keyring_file(path, Keyring([KEY1]))
        return [f"-event-handler={self.handler}", f"-keyring-file={path}"]

    def our_file(self) -> list[str]:
        with open(self.our_keyring) as f:
            keys: list[str] = json.load(f)
        return keys

    @inlineCallbacks
    def test_rotation_both_ways(self) -> Any:
        self.our_keyring = os.path.join(self.dir, "py.keyring")
        save_keyring_file(self.our_keyring, Keyring([KEY1]))
        agents, ours = yield self.cluster(
            2, keyring=load_keyring_file(self.our_keyring), keyring_file=self.our_keyring
        )
        k1, k2, k3 = encode_key(KEY1), encode_key(KEY2), encode_key(KEY3)
        cli = agents[0].serf_cli
        rc, out, err = yield cli("keys", "-install", k2)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(ours.keyring.keys, (KEY1, KEY2))
        self.assertEqual(self.our_file(), [k1, k2])
        rc, out, err = yield cli("keys", "-use", k2)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(self.our_file(), [k2, k1])
        rc, out, err = yield cli("keys", "-remove", k1)
        self.assertEqual(rc, 0, out + err)
        self.assertEqual(ours.keyring.keys, (KEY2,))
        self.assertEqual(self.our_file(), [k2])
        rc, out, err = yield cli("keys", "-list")
        self.assertEqual(rc, 0, out + err)
        self.assertIn(f"{k2}  [3/3]", out)
        # A failing operation is reported per node, ours included.
        rc, out, err = yield cli("keys", "-remove", k2)
        self.assertNotEqual(rc, 0)
        self.assertRegex(out + err, r"failed:\s+py\s+Removing the primary key is not allowed")

        # Now from our side.
        km = ours.key_manager()
        response = yield km.install_key(k3)
        self.assertEqual((response.num_nodes, response.num_resp, response.num_err), (3, 3, 0))
        yield km.use_key(k3)
        yield km.remove_key(k2)
        listed = yield km.list_keys()
        self.assertEqual(listed.keys, {k3: 3})
        for agent in agents:
            with open(os.path.join(self.dir, f"{agent.node}.keyring")) as f:
                self.assertEqual(json.load(f), [k3])
            rc, out, err = yield agent.serf_cli("keys", "-list")
            self.assertIn(f"{k3}  [3/3]", out)
        # Gossip still flows under the new key.
        ours.user_event("after-rotation", b"", coalesce=False)
        yield poll(lambda: self.handler_lines().count("user|after-rotation|") == 2)
