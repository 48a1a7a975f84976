"""Smoke test of the wire codecs alone against a real ``serf agent``.

No memberlist state machine is involved: the test hand-builds a join
push/pull for a fake node ``smoke`` with the codecs in :mod:`flyteserf.wire`,
sends it over a plain TCP connection to a real agent's gossip port and
decodes the agent's reply into typed objects (serf-wire §2.4–2.7, §3.9,
§3.14).

What the Debian agent (serf 0.9.4, memberlist 0.2.2) does, as these tests
pin down:

* it answers **before** merging what it received (memberlist's
  ``handleConn``: ``readRemoteState``, ``sendLocalState``, then
  ``mergeRemoteState``), so its reply to our first push/pull lists only
  itself, and its serf ``StatusLTimes`` only its own name; a second
  push/pull made after the merge lists ``smoke`` too;
* its reply header echoes our ``Join`` flag, ``true`` or ``false``;
* it always LZW-compresses its reply, whether or not our request was
  compressed (and, with ``-encrypt``, encrypts it);
* a fresh agent's three Lamport clocks are 1; one ``serf event`` moves the
  event clock to 2 and fills ring slot 1 of the 512-slot event ring;
* a plaintext push/pull to an encrypting agent gets an encrypted (and
  compressed) errResp, ``Encryption is configured but remote state is not
  encrypted``, and the agent logs ``memberlist: failed to receive: …``.

The fake node's UDP port is never served, so the agent will eventually mark
``smoke`` failed; the test only needs it to appear.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorProcess, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from flyteserf.testing.serf_binary import SerfAgentProcess, find_free_port, start_serf_agent
from flyteserf.wire import crypto
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.messages import (
    DEFAULT_VSN,
    ErrResp,
    MessageType,
    NodeState,
    PushNodeState,
    ip_from_wire,
    ip_to_wire,
)
from flyteserf.wire.serf_messages import EventEntry, PushPull, UserEvents, decode_serf_message
from flyteserf.wire.stream import (
    NOT_ENCRYPTED,
    PushPullStream,
    StreamMessage,
    StreamReader,
    encode_push_pull,
    encode_stream,
)
from flyteserf.wire.tags import decode_tags, encode_tags

_process_reactor = cast(IReactorProcess, _reactor)
_tcp_reactor = cast(IReactorTCP, _reactor)
_clock = cast(IReactorTime, _reactor)

T = TypeVar("T")

#: What the agent's own node carries in its meta.
AGENT_TAGS = {"role": "web", "dc": "smoke-dc"}
AGENT_TAG_ARGS = [arg for k, v in AGENT_TAGS.items() for arg in ("-tag", f"{k}={v}")]
#: The fake node we push.
FAKE_NAME = "smoke"
FAKE_TAGS = {"role": "smoke"}
#: Slots in serf's user-event ring buffer.
EVENT_RING = 512
#: How long to wait for one exchange, and for ``serf members`` to show us.
REPLY_TIMEOUT = 10.0
MEMBERS_TIMEOUT = 15.0


class PushPullClient(Protocol):
    """Send one stream message, then parse the reply with a StreamReader.

    :attr:`reply` fires with the decoded reply, or fails with the
    :class:`DecodeError` the reader raised, or with an :class:`AssertionError`
    if the agent closed the connection before a whole message arrived.
    """

    def __init__(self, request: bytes, keys: Sequence[bytes]) -> None:
        self.request = request
        self.reader = StreamReader(keys)
        self.received = bytearray()
        self.reply: Deferred[StreamMessage] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.reply.called:
            return
        self.received += data
        try:
            message = self.reader.feed(data)
        except DecodeError:
            self._finish(Failure())
            return
        if message is not None:
            self._finish(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.reply.called:
            self.reply.errback(
                AssertionError(
                    f"the agent closed the stream after {len(self.received)} bytes, before a "
                    f"whole reply: {bytes(self.received[:64]).hex()} ({reason.value!r})"
                )
            )

    def _finish(self, result: StreamMessage | Failure) -> None:
        if isinstance(result, Failure):
            self.reply.errback(result)
        else:
            self.reply.callback(result)
        if self.transport is not None:
            self.transport.loseConnection()


async def exchange(
    agent: SerfAgentProcess, request: bytes, keys: Sequence[bytes] = ()
) -> tuple[StreamMessage, bytes]:
    """Send *request* to the agent's gossip port; the decoded reply and its raw bytes."""
    endpoint = TCP4ClientEndpoint(_tcp_reactor, agent.host, agent.bind_port, timeout=5)
    client = await connectProtocol(endpoint, PushPullClient(request, keys))
    client.reply.addTimeout(REPLY_TIMEOUT, _clock)
    reply = await client.reply
    return reply, bytes(client.received)


def fake_state(port: int, incarnation: int = 1) -> PushNodeState:
    """The fake node ``smoke`` as it pushes itself."""
    return PushNodeState(
        name=FAKE_NAME,
        addr=ip_to_wire("127.0.0.1"),
        port=port,
        meta=encode_tags(FAKE_TAGS),
        incarnation=incarnation,
        state=NodeState.ALIVE,
        vsn=DEFAULT_VSN,
    )


def fake_user_state() -> bytes:
    """A joiner's serf user state: clocks at 1, itself with status LTime 0."""
    return PushPull(
        ltime=1,
        status_ltimes={FAKE_NAME: 0},
        left_members=(),
        event_ltime=1,
        events=(),
        query_ltime=1,
    ).encode()


def push_pull_request(
    udp_port: int,
    *,
    join: bool = True,
    compress: bool = True,
    key: bytes | None = None,
) -> bytes:
    plain = encode_push_pull(join, [fake_state(udp_port)], fake_user_state())
    return encode_stream(plain, compress=compress, key=key)


def wire_plaintext(raw: bytes, key: bytes | None) -> bytes:
    """The reply's plaintext as it was on the wire (decrypted, not decompressed)."""
    if key is None:
        return raw  # an unencrypted stream has no framing of its own
    header = raw[: crypto.STREAM_HEADER_SIZE]
    length = crypto.stream_header_length(header)
    body = raw[crypto.STREAM_HEADER_SIZE : crypto.STREAM_HEADER_SIZE + length]
    return crypto.decrypt_stream([key], header, body)


async def poll(check: Callable[[], Deferred[T | None]], timeout: float, what: str) -> T:
    """Call *check* until it fires with something other than ``None``."""
    deadline = _clock.seconds() + timeout
    while True:
        result = await check()
        if result is not None:
            return result
        if _clock.seconds() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        await deferLater(_clock, 0.1)


class WireSmokeTests(TestCase):
    """Hand-built push/pulls against a real agent, decoded with our codecs."""

    timeout = 120

    def assert_agent_node(self, reply: PushPullStream, agent: SerfAgentProcess) -> PushNodeState:
        (own,) = [s for s in reply.states if s.name == agent.node]
        self.assertEqual(str(ip_from_wire(own.addr)), "127.0.0.1")
        self.assertEqual(len(own.addr), 4)  # bound to one IPv4 address: 4 bytes
        self.assertEqual(own.port, agent.bind_port)
        self.assertEqual(own.state, NodeState.ALIVE)
        self.assertEqual(own.vsn, bytes.fromhex("010502020505"))
        self.assertEqual(decode_tags(own.meta), AGENT_TAGS)
        self.assertEqual(own.incarnation, 1)  # a fresh agent's first incarnation
        return own

    def assert_serf_state(self, reply: PushPullStream, agent: SerfAgentProcess) -> PushPull:
        self.assertEqual(reply.user_state[:1], b"\x02")
        serf = decode_serf_message(reply.user_state)
        assert isinstance(serf, PushPull), serf
        self.assertEqual(len(serf.events), EVENT_RING)
        self.assertIn(agent.node, serf.status_ltimes)
        self.assertEqual(serf.left_members, ())
        for clock in (serf.ltime, serf.event_ltime, serf.query_ltime):
            self.assertGreaterEqual(clock, 1)
        return serf

    async def wait_for_fake_member(self, agent: SerfAgentProcess, udp_port: int) -> str:
        async def look() -> str | None:
            for member in await agent.members():
                if member["name"] == FAKE_NAME:
                    self.assertEqual(member["addr"], f"127.0.0.1:{udp_port}")
                    self.assertEqual(member["tags"], FAKE_TAGS)
                    status: str = member["status"]
                    return status
            return None

        status = await poll(
            lambda: Deferred.fromCoroutine(look()), MEMBERS_TIMEOUT, "smoke in serf members"
        )
        # Nobody answers smoke's pings, so it turns failed after a while.
        self.assertIn(status, ("alive", "failed"))
        return status

    async def join_and_check(
        self, agent: SerfAgentProcess, *, compress: bool, key: bytes | None
    ) -> PushPullStream:
        """The first push/pull: the reply lists only the agent itself."""
        udp_port = find_free_port()
        keys = [key] if key is not None else []
        reply, raw = await exchange(
            agent, push_pull_request(udp_port, compress=compress, key=key), keys
        )
        assert isinstance(reply, PushPullStream), reply
        if key is not None:
            self.assertEqual(raw[0], MessageType.ENCRYPT)
        # The agent compresses its reply whether or not we compressed ours.
        self.assertEqual(wire_plaintext(raw, key)[0], MessageType.COMPRESS)
        self.assertIs(reply.join, True)
        self.assert_agent_node(reply, agent)
        # The agent answers before it merges: smoke is not in its reply yet.
        self.assertEqual([s.name for s in reply.states], [agent.node])
        serf = self.assert_serf_state(reply, agent)
        self.assertEqual(serf.status_ltimes, {agent.node: 0})
        self.assertNotIn(FAKE_NAME, serf.status_ltimes)
        await self.wait_for_fake_member(agent, udp_port)
        return reply

    async def test_plaintext_compressed(self) -> None:
        """A compressed plaintext join, then a second (non-join) push/pull
        that shows the merged fake node; a user event fills one ring slot."""
        agent = await start_serf_agent(
            self, _process_reactor, node="smoke-agent", extra_args=AGENT_TAG_ARGS
        )
        code, out, err = await agent.serf_cli("event", "deploy", "v1.2.3")
        self.assertEqual(code, 0, out + err)

        udp_port = find_free_port()
        reply, raw = await exchange(agent, push_pull_request(udp_port))
        assert isinstance(reply, PushPullStream), reply
        self.assertEqual(raw[0], MessageType.COMPRESS)
        self.assertIs(reply.join, True)
        self.assert_agent_node(reply, agent)
        self.assertEqual([s.name for s in reply.states], [agent.node])
        serf = self.assert_serf_state(reply, agent)
        self.assertEqual(serf.status_ltimes, {agent.node: 0})
        # Fresh clocks are 1; the one event took LTime 1 and moved the clock to 2.
        self.assertEqual((serf.ltime, serf.event_ltime, serf.query_ltime), (1, 2, 1))
        self.assertEqual(
            serf.events[1], UserEvents(ltime=1, events=(EventEntry("deploy", b"v1.2.3"),))
        )
        self.assertEqual(sum(slot is not None for slot in serf.events), 1)

        await self.wait_for_fake_member(agent, udp_port)
        await agent.wait_for_log("EventMemberJoin: smoke 127.0.0.1")

        # After the merge the agent knows smoke; Join=false is echoed as false.
        again, _ = await exchange(agent, push_pull_request(udp_port, join=False))
        assert isinstance(again, PushPullStream), again
        self.assertIs(again.join, False)
        self.assert_agent_node(again, agent)
        (smoke,) = [s for s in again.states if s.name == FAKE_NAME]
        self.assertEqual(str(ip_from_wire(smoke.addr)), "127.0.0.1")
        self.assertEqual(smoke.port, udp_port)
        self.assertEqual(smoke.incarnation, 1)
        self.assertEqual(smoke.vsn, DEFAULT_VSN)
        self.assertEqual(decode_tags(smoke.meta), FAKE_TAGS)
        # Alive, or already suspect if a probe of the silent port failed
        # (dead takes a suspicion timeout of several seconds).
        self.assertIn(smoke.state, (NodeState.ALIVE, NodeState.SUSPECT))
        again_serf = self.assert_serf_state(again, agent)
        # The merge ran a synthetic join intent with our LTime 0; Witness(0)
        # leaves the agent's clock at 1.
        self.assertEqual(again_serf.status_ltimes, {agent.node: 0, FAKE_NAME: 0})
        self.assertEqual(again_serf.ltime, 1)

    async def test_plaintext_uncompressed(self) -> None:
        agent = await start_serf_agent(
            self, _process_reactor, node="smoke-agent-raw", extra_args=AGENT_TAG_ARGS
        )
        reply = await self.join_and_check(agent, compress=False, key=None)
        serf = decode_serf_message(reply.user_state)
        assert isinstance(serf, PushPull)
        self.assertEqual((serf.ltime, serf.event_ltime, serf.query_ltime), (1, 1, 1))
        self.assertTrue(all(slot is None for slot in serf.events))

    async def test_encrypted_compressed(self) -> None:
        key = os.urandom(32)
        agent = await start_serf_agent(
            self,
            _process_reactor,
            node="smoke-agent-enc",
            extra_args=[f"-encrypt={base64.b64encode(key).decode()}", *AGENT_TAG_ARGS],
        )
        await self.join_and_check(agent, compress=True, key=key)

    async def test_plaintext_to_encrypted_agent(self) -> None:
        """The agent refuses a plaintext stream with an encrypted errResp."""
        key = os.urandom(32)
        agent = await start_serf_agent(
            self,
            _process_reactor,
            node="smoke-agent-strict",
            extra_args=[f"-encrypt={base64.b64encode(key).decode()}"],
        )
        reply, raw = await exchange(agent, push_pull_request(find_free_port()), [key])
        self.assertEqual(raw[0], MessageType.ENCRYPT)
        self.assertEqual(wire_plaintext(raw, key)[0], MessageType.COMPRESS)
        self.assertEqual(reply, ErrResp(error=NOT_ENCRYPTED))
        self.assertEqual(
            cast(ErrResp, reply).error,
            "Encryption is configured but remote state is not encrypted",
        )
        await agent.wait_for_log(f"memberlist: failed to receive: {NOT_ENCRYPTED}")
        members = await agent.members()
        self.assertEqual([m["name"] for m in members], ["smoke-agent-strict"])
