"""The SWIM + Lifeguard state machine, as memberlist 0.2.2 runs it (serf-wire §2.3–2.10).

:class:`Memberlist` owns the node table, the probe, gossip and push/pull
loops, and the alive/suspect/dead rules.  It never touches a socket: it is
handed an :class:`~flyteserf.memberlist.delegates.IMemberlistTransport` and
an ``IReactorTime``, so it runs unchanged over UDP/TCP and in virtual time.
"""

from __future__ import annotations

import collections
import random
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from flyteserf.memberlist.awareness import Awareness
from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.memberlist.delegates import (
    Address,
    IConflictDelegate,
    IDelegate,
    IEventDelegate,
    IMemberlistTransport,
    IPingDelegate,
    NullConflicts,
    NullDelegate,
    NullPings,
)
from flyteserf.memberlist.queue import NamedBroadcast, TransmitLimitedQueue
from flyteserf.memberlist.state import Node
from flyteserf.memberlist.suspicion import Suspicion
from flyteserf.wire import crypto
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.framing import make_compounds
from flyteserf.wire.keyring import Keyring
from flyteserf.wire.messages import (
    DEFAULT_VSN,
    AckResp,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    Message,
    MessageType,
    NackResp,
    NodeState,
    Ping,
    PushNodeState,
    Suspect,
    decode_message,
    ip_from_wire,
    ip_to_wire,
    vsn_is_valid,
)
from flyteserf.wire.packet import decode_packet, encode_packet
from flyteserf.wire.stream import (
    NOT_ENCRYPTED,
    PushPullStream,
    RemoteNotEncrypted,
    StreamMessage,
    StreamReader,
    UserStream,
    encode_push_pull,
    encode_stream,
)

#: memberlist's MetaMaxSize.
META_MAX_SIZE = 512
#: Bytes a compound charges per part, and for its own header.
COMPOUND_OVERHEAD = 2
COMPOUND_HEADER_OVERHEAD = 2
#: The 0x08 byte in front of each delegate broadcast.
USER_MSG_OVERHEAD = 1


class JoinError(Exception):
    """No address of a join answered a push/pull."""


class ProtocolMismatch(Exception):
    """verifyProtocol refused a push/pull merge."""


class _AckHandler:
    __slots__ = ("on_ack", "on_nack", "timer")

    def __init__(
        self,
        on_ack: Callable[[bytes, float], None],
        on_nack: Callable[[], None] | None,
        timer: IDelayedCall,
    ) -> None:
        self.on_ack, self.on_nack, self.timer = on_ack, on_nack, timer


class _WireTextLogger(Logger):
    """A Logger that escapes undecodable wire bytes before observers see them.

    Node names come off the wire decoded with ``surrogateescape`` (lossless,
    like Go's byte strings); a lone surrogate in a log field makes UTF-8
    observers (trial's log file, ``twist`` on stdout) raise
    ``UnicodeEncodeError``.  Such bytes are logged as ``\\xNN`` instead.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if isinstance(value, str) and not value.isascii():
                try:
                    raw = value.encode("utf-8", "surrogateescape")
                except UnicodeEncodeError:
                    raw = value.encode("utf-8", "backslashreplace")
                kwargs[key] = raw.decode("utf-8", "backslashreplace")
        super().emit(level, format, **kwargs)


class Memberlist:
    """One memberlist node."""

    log = _WireTextLogger()

    def __init__(
        self,
        name: str,
        *,
        reactor: IReactorTime,
        transport: IMemberlistTransport,
        advertise: Address,
        config: MemberlistConfig | None = None,
        keyring: Keyring | None = None,
        delegate: IDelegate | None = None,
        events: IEventDelegate | None = None,
        conflicts: IConflictDelegate | None = None,
        pings: IPingDelegate | None = None,
        vsn: bytes = DEFAULT_VSN,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.reactor = reactor
        self.transport = transport
        self.advertise = advertise
        self.config = config or MemberlistConfig.lan()
        self.keyring = keyring
        self.delegate: IDelegate = delegate or NullDelegate()
        self.events = events
        self.conflicts: IConflictDelegate = conflicts or NullConflicts()
        self.pings: IPingDelegate = pings or NullPings()
        self.vsn = vsn
        self.rng = rng or random.Random()
        self.counters: collections.Counter[str] = collections.Counter()

        self.nodes: dict[str, Node] = {}
        self._probe_order: list[Node] = []
        self._probe_index = 0
        self._num_nodes = 0
        self._seq = 0
        self._incarnation = 0
        self._acks: dict[int, _AckHandler] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self.awareness = Awareness(self.config.awareness_max_multiplier)
        self.broadcasts = TransmitLimitedQueue(lambda: self._num_nodes, self.config.retransmit_mult)
        self._timers: dict[str, IDelayedCall] = {}
        #: Stream exchanges under way (push/pull, TCP pings), cancelled at shutdown.
        self._exchanges: set[Deferred[Any]] = set()
        self._running = False
        self.leaving = False
        self._leave_waiter: Deferred[None] | None = None

    # --- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Announce ourselves in our own table and start the loops."""
        self._running = True
        self._set_alive()
        self._schedule("probe", self.config.probe_interval, self._probe_tick)
        if self.config.gossip_interval > 0:
            self._schedule("gossip", self.config.gossip_interval, self._gossip_tick)
        if self.config.push_pull_interval > 0:
            # Go waits a random stagger, then starts its ticker: the first
            # periodic push/pull comes one interval after the stagger.
            interval = self.config.push_pull_interval
            self._schedule("push_pull", self.rng.random() * interval + interval, self._push_pull_tick)

    def shutdown(self) -> Deferred[None]:
        """Stop every loop and the transport (no leave)."""
        self._running = False
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        for handler in self._acks.values():
            if handler.timer.active():
                handler.timer.cancel()
        self._acks.clear()
        for s in self._suspicions.values():
            s.cancel()
        self._suspicions.clear()
        for d in list(self._exchanges):
            d.cancel()
        return self.transport.stop()

    def _schedule(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            self._timers.pop(name, None)
            if self._running:
                fn()

        self._timers[name] = self.reactor.callLater(delay, run)

    # --- counts and lookups --------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] += n

    @property
    def local_node(self) -> Node:
        return self.nodes[self.name]

    def num_members(self) -> int:
        """Nodes that are neither dead nor left (self included): Go's NumMembers."""
        return sum(1 for n in self.nodes.values() if not n.is_dead_or_left())

    def estimated_num_nodes(self) -> int:
        return self._num_nodes

    def members(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.is_dead_or_left()]

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _next_incarnation(self) -> int:
        # A uint32 on the wire: wrap as Go's atomic.AddUint32 does.
        self._incarnation = (self._incarnation + 1) & 0xFFFFFFFF
        return self._incarnation

    def skip_incarnation(self, offset: int) -> int:
        """Jump ahead, so a restarted node's alive beats its old record."""
        self._incarnation += offset
        return self._incarnation

    @property
    def _encrypting(self) -> bool:
        return bool(self.keyring and self.keyring.primary_key)

    def _keys(self) -> Sequence[bytes]:
        return self.keyring.keys if self.keyring else ()

    # --- sending ------------------------------------------------------------------

    def _raw_send(self, addr: Address, msg: bytes, node: Node | None = None) -> None:
        """compress → CRC (peers with PMax >= 5) → encrypt → datagram."""
        if not self._running:
            # A timer that outlived shutdown (e.g. a probe's indirect phase).
            self.count("dropped_sends_stopped")
            return
        key = self.keyring.primary_key if self.keyring else None
        packet = encode_packet(
            msg,
            crc=node is not None and node.pmax >= 5,
            compress=self.config.enable_compression,
            key=key,
        )
        self.transport.send_packet(packet, addr)

    def _send_with_piggyback(self, addr: Address, msg: bytes) -> None:
        """Send a ping/ack/nack/indirect ping, filling the spare room with broadcasts."""
        avail = self.config.udp_buffer_size - len(msg) - COMPOUND_HEADER_OVERHEAD
        if self._encrypting:
            avail -= crypto.ENCRYPT_OVERHEAD_V1
        extra = self.get_broadcasts(COMPOUND_OVERHEAD, avail)
        if not extra:
            self._raw_send(addr, msg)
            return
        for packet in make_compounds([msg, *extra]):
            self._raw_send(addr, packet)

    def send_user_packet(self, addr: Address, payload: bytes) -> None:
        """A user message (``0x08`` + payload) straight to *addr* (serf's SendToAddress)."""
        self._raw_send(addr, bytes((MessageType.USER,)) + payload)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """memberlist's own queue first, then the delegate's, framed as user messages."""
        out = self.broadcasts.get_broadcasts(overhead, limit)
        used = sum(len(m) + overhead for m in out)
        avail = limit - used
        if avail > overhead + USER_MSG_OVERHEAD:
            for m in self.delegate.get_broadcasts(overhead + USER_MSG_OVERHEAD, avail):
                out.append(bytes((MessageType.USER,)) + m)
        return out

    def _broadcast(self, node: str, msg: Message, notify: Deferred[None] | None = None) -> None:
        self.broadcasts.queue_broadcast(NamedBroadcast(node, msg.encode(), notify))

    # --- receiving packets ----------------------------------------------------------

    def ingest_packet(self, data: bytes, addr: Address) -> None:
        """One datagram from *addr*: never raises, counts what it drops."""
        try:
            contents = decode_packet(data, self._keys())
        except DecodeError as e:
            self.count("dropped_packets_malformed")
            self.log.debug("Dropped packet from {addr}: {reason}", addr=addr, reason=str(e))
            return
        if contents.errors:
            self.count("dropped_parts_malformed", len(contents.errors))
        for msg in contents.messages:
            try:
                self._handle_message(msg, addr)
            except DecodeError as e:
                self.count("dropped_messages_malformed")
                self.log.debug("Dropped message from {addr}: {reason}", addr=addr, reason=str(e))
            except Exception:
                self.count("dropped_messages_handler_error")
                self.log.failure("Handling a message from {addr} failed", addr=addr)

    def _handle_message(self, msg: bytes, addr: Address) -> None:
        kind = msg[0]
        if kind == MessageType.USER:
            if len(msg) > 1:
                self.delegate.notify_msg(msg[1:])
            return
        message = decode_message(msg)
        if isinstance(message, Ping):
            self._on_ping(message, addr)
        elif isinstance(message, IndirectPingReq):
            self._on_indirect_ping(message, addr)
        elif isinstance(message, AckResp):
            self._on_ack(message.seq_no, message.payload)
        elif isinstance(message, NackResp):
            self._on_nack(message.seq_no)
        elif isinstance(message, Alive):
            self.alive_node(message)
        elif isinstance(message, Suspect):
            self.suspect_node(message)
        elif isinstance(message, Dead):
            self.dead_node(message)
        else:
            self.count("dropped_messages_unexpected_type")

    def _reply_address(self, addr: Address, source_addr: bytes, source_port: int) -> Address:
        if source_addr and source_port:
            return (str(ip_from_wire(source_addr)), source_port)
        return addr

    def _on_ping(self, ping: Ping, addr: Address) -> None:
        if ping.node and ping.node != self.name:
            self.count("dropped_pings_wrong_node")
            return
        ack = AckResp(seq_no=ping.seq_no, payload=self.pings.ack_payload())
        self._send_with_piggyback(self._reply_address(addr, ping.source_addr, ping.source_port), ack.encode())

    def _on_indirect_ping(self, req: IndirectPingReq, addr: Address) -> None:
        """Probe the target on the requester's behalf; ack back, or nack on timeout."""
        try:
            target = (str(ip_from_wire(req.target)), req.port or self.advertise[1])
        except DecodeError:
            self.count("dropped_messages_malformed")
            return
        reply_to = self._reply_address(addr, req.source_addr, req.source_port)
        seq = self._next_seq()

        def acked(payload: bytes, rtt: float) -> None:
            self._send_with_piggyback(reply_to, AckResp(seq_no=req.seq_no).encode())

        def timed_out() -> None:
            if req.nack:
                self._send_with_piggyback(reply_to, NackResp(seq_no=req.seq_no).encode())

        self._set_ack_handler(seq, acked, None, self.config.probe_timeout, timed_out)
        self._send_with_piggyback(target, self._ping(seq, req.node).encode())

    def _ping(self, seq: int, node: str) -> Ping:
        return Ping(
            seq_no=seq,
            node=node,
            source_addr=ip_to_wire(self.advertise[0]),
            source_port=self.advertise[1],
            source_node=self.name,
        )

    def _set_ack_handler(
        self,
        seq: int,
        on_ack: Callable[[bytes, float], None],
        on_nack: Callable[[], None] | None,
        timeout: float,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        def expire() -> None:
            if self._acks.pop(seq, None) is not None and on_timeout is not None:
                on_timeout()

        self._acks[seq] = _AckHandler(on_ack, on_nack, self.reactor.callLater(timeout, expire))

    def _on_ack(self, seq: int, payload: bytes) -> None:
        handler = self._acks.pop(seq, None)
        if handler is None:
            self.count("acks_unmatched")
            return
        handler.timer.cancel()
        handler.on_ack(payload, self.reactor.seconds())

    def _on_nack(self, seq: int) -> None:
        handler = self._acks.get(seq)
        if handler is not None and handler.on_nack is not None:
            handler.on_nack()

    # --- receiving streams ------------------------------------------------------------

    def new_stream_reader(self) -> StreamReader:
        return StreamReader(self._keys())

    def encode_stream(self, msg: bytes) -> bytes:
        key = self.keyring.primary_key if self.keyring else None
        return encode_stream(msg, compress=self.config.enable_compression, key=key)

    def stream_error_reply(self, reason: DecodeError) -> bytes:
        """The errResp memberlist sends before closing a bad stream."""
        text = NOT_ENCRYPTED if isinstance(reason, RemoteNotEncrypted) else str(reason)
        return self.encode_stream(ErrResp(error=text).encode())

    def handle_stream(self, message: StreamMessage, peer: Address) -> bytes | None:
        """An inbound stream: answer push/pull and TCP ping, take user messages."""
        if isinstance(message, PushPullStream):
            self.count("push_pull_in")
            reply = self.encode_stream(self._local_push_pull(message.join))
            try:
                self.merge_remote_state(message)
            except ProtocolMismatch as e:
                self.log.warn("Push/pull from {peer} refused: {reason}", peer=peer, reason=str(e))
            return reply
        if isinstance(message, Ping):
            if message.node and message.node != self.name:
                return None
            return self.encode_stream(AckResp(seq_no=message.seq_no).encode())
        if isinstance(message, UserStream):
            if message.payload:
                self.delegate.notify_msg(message.payload)
            return None
        self.count("dropped_streams_unexpected_type")
        return None

    # --- push/pull ------------------------------------------------------------------

    def _local_push_pull(self, join: bool) -> bytes:
        states = [
            PushNodeState(
                name=n.name,
                addr=ip_to_wire(n.addr),
                port=n.port,
                meta=n.meta,
                incarnation=n.incarnation,
                state=int(n.state),
                vsn=n.vsn,
            )
            for n in self.nodes.values()
        ]
        return encode_push_pull(join, states, self.delegate.local_state(join))

    def push_pull(self, addr: Address, join: bool) -> Deferred[None]:
        """Exchange full state with *addr* and merge its answer."""
        self.count("push_pull_out")
        data = self.encode_stream(self._local_push_pull(join))
        d = self._exchange(addr, data, self.config.tcp_timeout)

        def merge(reply: StreamMessage | None) -> None:
            if isinstance(reply, ErrResp):
                raise JoinError(f"remote error: {reply.error}")
            if not isinstance(reply, PushPullStream):
                raise JoinError(f"unexpected push/pull reply from {addr[0]}:{addr[1]}")
            self.merge_remote_state(reply)

        return d.addCallback(merge)

    def _exchange(self, addr: Address, data: bytes, timeout: float) -> Deferred[StreamMessage | None]:
        """A stream exchange that :meth:`shutdown` cancels if it is still under way."""
        d = self.transport.stream_exchange(addr, data, self.new_stream_reader(), timeout)
        self._exchanges.add(d)

        def done(result: Any) -> Any:
            self._exchanges.discard(d)
            return result

        return d.addBoth(done)

    def merge_remote_state(self, remote: PushPullStream) -> None:
        self._verify_protocol(remote.states)
        self._merge_states(remote.states)
        if remote.user_state:
            self.delegate.merge_remote_state(remote.user_state, remote.join)

    def _verify_protocol(self, remote: Iterable[PushNodeState]) -> None:
        """Refuse a merge when the versions in use do not overlap (Go's verifyProtocol)."""
        remote = [r for r in remote if r.state == NodeState.ALIVE and len(r.vsn) == 6]
        local = [n for n in self.nodes.values() if n.state == NodeState.ALIVE and len(n.vsn) == 6]
        vsns = [(r.name, r.vsn) for r in remote] + [(n.name, n.vsn) for n in local]
        if not vsns:
            return
        max_pmin = max(v[0] for _, v in vsns)
        min_pmax = min(v[1] for _, v in vsns)
        max_dmin = max(v[3] for _, v in vsns)
        min_dmax = min(v[4] for _, v in vsns)
        for name, v in vsns:
            if not max_pmin <= v[2] <= min_pmax:
                raise ProtocolMismatch(
                    f"Node '{name}' protocol version ({v[2]}) is incompatible: [{max_pmin}, {min_pmax}]"
                )
            if not max_dmin <= v[5] <= min_dmax:
                raise ProtocolMismatch(
                    f"Node '{name}' delegate protocol version ({v[5]}) is incompatible: [{max_dmin}, {min_dmax}]"
                )

    def _merge_states(self, remote: Iterable[PushNodeState]) -> None:
        for r in remote:
            if r.state == NodeState.ALIVE:
                self.alive_node(
                    Alive(incarnation=r.incarnation, node=r.name, addr=r.addr, port=r.port, meta=r.meta, vsn=r.vsn)
                )
            elif r.state == NodeState.LEFT:
                self.dead_node(Dead(incarnation=r.incarnation, node=r.name, from_=r.name))
            else:
                # A remote "dead" is only ever a suspicion here.
                self.suspect_node(Suspect(incarnation=r.incarnation, node=r.name, from_=self.name))

    def _push_pull_tick(self) -> None:
        interval = self.config.push_pull_interval_for(self.estimated_num_nodes())
        self._schedule("push_pull", interval, self._push_pull_tick)
        peers = self._random_nodes(1, lambda n: n.state != NodeState.ALIVE)
        if peers:
            self.push_pull(peers[0].address, False).addErrback(
                lambda f: self.log.debug("Push/pull with {peer} failed: {f}", peer=peers[0].name, f=f.getErrorMessage())
            )

    # --- join and leave ---------------------------------------------------------------

    def join(self, addresses: Sequence[Address]) -> Deferred[int]:
        """Push/pull with every address; fires with how many answered.

        Fails with :class:`JoinError` (listing each error) when none did.
        """
        errors: list[str] = []

        def one(addr: Address) -> Deferred[bool]:
            d = self.push_pull(addr, True)

            def failed(f: Failure) -> bool:
                errors.append(f"Failed to join {addr[0]}: {f.getErrorMessage()}")
                return False

            return d.addCallbacks(lambda _: True, failed)

        results = DeferredList([one(a) for a in addresses])

        def tally(outcomes: list[tuple[bool, Any]]) -> int:
            joined = sum(1 for _, ok in outcomes if ok)
            if joined == 0:
                lines = "".join(f"\t* {e}\n" for e in errors)
                raise JoinError(f"{len(errors)} error{'s' if len(errors) != 1 else ''} occurred:\n{lines}\n")
            return joined

        return results.addCallback(tally)

    def leave(self, timeout: float) -> Deferred[None]:
        """Broadcast dead(self) and wait until it has been sent its full count.

        Fires after *timeout* at the latest; immediately if nobody else is alive.
        """
        if self.leaving:
            return succeed(None)
        self.leaving = True
        me = self.local_node
        waiter: Deferred[None] = Deferred()
        self._leave_waiter = waiter
        self.dead_node(Dead(incarnation=me.incarnation, node=self.name, from_=self.name))
        if not any(n.state == NodeState.ALIVE and n.name != self.name for n in self.nodes.values()):
            if not waiter.called:
                waiter.callback(None)
            return waiter
        return waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda *_: None)

    def update_node(self, notify: Deferred[None] | None = None) -> None:
        """Re-announce ourselves with fresh meta (serf: tags changed).

        *notify* fires once the new alive has left the broadcast queue.
        """
        me = self.local_node
        inc = self._next_incarnation()
        meta = self._node_meta()
        self.alive_node(
            Alive(incarnation=inc, node=self.name, addr=ip_to_wire(me.addr), port=me.port, meta=meta, vsn=self.vsn),
            notify,
            bootstrap=True,
        )

    def _node_meta(self) -> bytes:
        meta = self.delegate.node_meta(META_MAX_SIZE)
        if len(meta) > META_MAX_SIZE:
            raise ValueError("Node meta data provided is longer than the limit")
        return meta

    def _set_alive(self) -> None:
        self.alive_node(
            Alive(
                incarnation=self._next_incarnation(),
                node=self.name,
                addr=ip_to_wire(self.advertise[0]),
                port=self.advertise[1],
                meta=self._node_meta(),
                vsn=self.vsn,
            ),
            bootstrap=True,
        )

    # --- probing ------------------------------------------------------------------------

    def _probe_tick(self) -> None:
        start = self.reactor.seconds()
        d = self._probe()

        def next_round(_: Any) -> None:
            elapsed = self.reactor.seconds() - start
            self._schedule("probe", max(0.0, self.config.probe_interval - elapsed), self._probe_tick)

        d.addBoth(next_round)

    def _probe(self) -> Deferred[None]:
        """Probe the next node of the shuffled round-robin list."""
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._reset_probe_order()
                if not self._probe_order:
                    return succeed(None)
            node = self._probe_order[self._probe_index]
            self._probe_index += 1
            if node.name == self.name or node.is_dead_or_left():
                continue
            return self._probe_node(node)
        return succeed(None)

    def _reset_probe_order(self) -> None:
        """At each wrap: purge long-dead nodes, reshuffle."""
        now = self.reactor.seconds()
        for name, node in list(self.nodes.items()):
            if node.state == NodeState.DEAD and now - node.state_change > self.config.gossip_to_the_dead_time:
                del self.nodes[name]
                self._num_nodes -= 1
        self._probe_order = list(self.nodes.values())
        self.rng.shuffle(self._probe_order)
        self._probe_index = 0

    def _probe_node(self, node: Node) -> Deferred[None]:
        cfg = self.config
        interval = self.awareness.scale_timeout(cfg.probe_interval)
        seq = self._next_seq()
        sent = self.reactor.seconds()
        done: Deferred[None] = Deferred()
        direct_phase = [True]
        nacks: list[int] = []
        expected_nacks = 0
        tcp_result: list[bool] = []
        timers: list[IDelayedCall] = []

        def finish(delta: int) -> None:
            if done.called:
                return
            for t in timers:
                if t.active():
                    t.cancel()
            self.awareness.apply_delta(delta)
            done.callback(None)

        def on_ack(payload: bytes, when: float) -> None:
            if direct_phase:
                self.pings.notify_ping_complete(node, when - sent, payload)
            finish(-1)

        def on_nack() -> None:
            nacks.append(1)

        def handler_expired() -> None:
            # The probe interval ran out without an ack (direct or indirect).
            if tcp_result and tcp_result[0]:
                self.log.warn(
                    "Was able to connect to {node} but other probes failed, network may be misconfigured",
                    node=node.name,
                )
                finish(-1)
                return
            if tcp_pending:
                tcp_pending[0].addBoth(lambda _: handler_expired())
                tcp_pending.clear()
                return
            delta = (expected_nacks - len(nacks)) if expected_nacks > 0 else 1
            finish(max(0, delta))
            if node.state == NodeState.ALIVE or node.state == NodeState.SUSPECT:
                self.log.info("Suspect {node} has failed, no acks received", node=node.name)
                self.suspect_node(Suspect(incarnation=node.incarnation, node=node.name, from_=self.name))

        tcp_pending: list[Deferred[Any]] = []

        def direct_timed_out() -> None:
            nonlocal expected_nacks
            if done.called:
                return
            direct_phase.clear()
            peers = self._random_nodes(
                cfg.indirect_checks, lambda n: n.name == node.name or n.state != NodeState.ALIVE
            )
            for peer in peers:
                want_nack = peer.pmax >= 4
                if want_nack:
                    expected_nacks += 1
                req = IndirectPingReq(
                    seq_no=seq,
                    target=ip_to_wire(node.addr),
                    port=node.port,
                    node=node.name,
                    nack=want_nack,
                    source_addr=ip_to_wire(self.advertise[0]),
                    source_port=self.advertise[1],
                    source_node=self.name,
                )
                self._send_with_piggyback(peer.address, req.encode())
            if not cfg.disable_tcp_pings and node.pmax >= 3:
                remaining = max(0.001, sent + interval - self.reactor.seconds())
                d = self._exchange(node.address, self.encode_stream(self._ping(seq, node.name).encode()), remaining)

                def tcp_done(reply: Any) -> None:
                    tcp_result.append(isinstance(reply, AckResp) and reply.seq_no == seq)

                d.addCallbacks(tcp_done, lambda f: tcp_result.append(False))
                tcp_pending.append(d)
                d.addBoth(lambda _: tcp_pending.remove(d) if d in tcp_pending else None)

        self._set_ack_handler(seq, on_ack, on_nack, interval, handler_expired)
        direct = self.reactor.callLater(cfg.probe_timeout, direct_timed_out)
        timers.append(direct)
        self._timers[f"probe-{seq}"] = direct
        ping = self._ping(seq, node.name).encode()
        if node.state == NodeState.ALIVE:
            self._send_with_piggyback(node.address, ping)
        else:
            suspect = Suspect(incarnation=node.incarnation, node=node.name, from_=self.name).encode()
            for packet in make_compounds([ping, suspect]):
                self._raw_send(node.address, packet, node)

        def cleanup(result: Any) -> Any:
            self._timers.pop(f"probe-{seq}", None)
            handler = self._acks.pop(seq, None)
            if handler is not None and handler.timer.active():
                handler.timer.cancel()
            return result

        return done.addBoth(cleanup)

    def _random_nodes(self, k: int, exclude: Callable[[Node], bool]) -> list[Node]:
        """Up to *k* random nodes, never self, skipping what *exclude* says.

        Random picks with rejection, as Go's kRandomNodes, so a big table costs
        O(k) per call; when that finds fewer than *k* (a small or mostly dead
        table) the search becomes exhaustive, as memberlist's 2026 fix does.
        """
        nodes = list(self.nodes.values())
        n = len(nodes)
        chosen: list[Node] = []
        randbelow = self.rng.randrange
        for _ in range(3 * n):
            if len(chosen) >= k:
                return chosen
            node = nodes[randbelow(n)]
            if node.name == self.name or node in chosen or exclude(node):
                continue
            chosen.append(node)
        if len(chosen) < k:
            rest = [x for x in nodes if x.name != self.name and x not in chosen and not exclude(x)]
            self.rng.shuffle(rest)
            chosen.extend(rest[: k - len(chosen)])
        return chosen

    # --- gossip ---------------------------------------------------------------------

    def _gossip_tick(self) -> None:
        self._schedule("gossip", self.config.gossip_interval, self._gossip_tick)
        if not self.broadcasts.num_queued() and not self.delegate.pending_broadcasts():
            return  # Go would pick targets and find nothing to send them
        now = self.reactor.seconds()
        dead_time = self.config.gossip_to_the_dead_time

        def exclude(n: Node) -> bool:
            if n.state == NodeState.LEFT:
                return True
            return n.state == NodeState.DEAD and now - n.state_change > dead_time

        avail = self.config.udp_buffer_size - COMPOUND_HEADER_OVERHEAD
        if self._encrypting:
            avail -= crypto.ENCRYPT_OVERHEAD_V1
        # Targets first, as Go does: with nobody to tell, broadcasts stay queued.
        for node in self._random_nodes(self.config.gossip_nodes, exclude):
            msgs = self.get_broadcasts(COMPOUND_OVERHEAD, avail)
            if not msgs:
                return
            for packet in make_compounds(msgs):
                self._raw_send(node.address, packet, node)

    # --- the state rules ------------------------------------------------------------

    def alive_node(self, a: Alive, notify: Deferred[None] | None = None, bootstrap: bool = False) -> None:
        """memberlist's aliveNode (serf-wire §2.8)."""
        if self.leaving and a.node == self.name:
            return
        if not vsn_is_valid(a.vsn):
            self.count("dropped_alive_bad_vsn")
            return
        try:
            host = str(ip_from_wire(a.addr))
        except DecodeError:
            self.count("dropped_alive_bad_addr")
            return
        port = a.port or self.advertise[1]
        now = self.reactor.seconds()
        updates_addr = False
        state = self.nodes.get(a.node)
        if state is None:
            state = Node(name=a.node, addr=host, port=port, meta=a.meta, vsn=a.vsn, state=NodeState.DEAD, state_change=now)
            self.nodes[a.node] = state
            pos = self.rng.randint(0, len(self._probe_order))
            self._probe_order.insert(pos, state)
            self._num_nodes += 1
        elif (state.addr, state.port) != (host, port):
            reclaim = self.config.dead_node_reclaim_time
            can_reclaim = state.state == NodeState.LEFT or (
                state.state == NodeState.DEAD and reclaim > 0 and now - state.state_change > reclaim
            )
            if can_reclaim:
                self.log.info(
                    "Updating address for left or failed node {node} from {old} to {new}",
                    node=a.node, old=f"{state.addr}:{state.port}", new=f"{host}:{port}",
                )
            else:
                self.log.error(
                    "Conflicting address for {node}. Mine: {mine} Theirs: {theirs} Old state: {old}",
                    node=a.node, mine=f"{state.addr}:{state.port}", theirs=f"{host}:{port}", old=state.state.name,
                )
                other = Node(name=a.node, addr=host, port=port, meta=a.meta, vsn=a.vsn, incarnation=a.incarnation)
                self.conflicts.notify_conflict(state, other)
                return
            updates_addr = True

        is_local = a.node == self.name
        if not is_local and a.incarnation <= state.incarnation and not updates_addr:
            return
        if is_local and a.incarnation < state.incarnation:
            return
        self._cancel_suspicion(a.node)
        old_state, old_meta = state.state, state.meta
        if not bootstrap and is_local:
            if a.incarnation == state.incarnation and a.meta == state.meta and a.vsn == state.vsn:
                return
            self._refute(state, a.incarnation)
            self.log.warn("Refuting an alive message for '{node}'", node=a.node)
            return
        self._broadcast(a.node, a, notify)
        state.incarnation = a.incarnation
        state.meta = a.meta
        state.addr, state.port = host, port
        if a.vsn:
            state.vsn = a.vsn
        if state.state != NodeState.ALIVE:
            state.state = NodeState.ALIVE
            state.state_change = now
        if self.events is not None:
            if old_state in (NodeState.DEAD, NodeState.LEFT):
                self.events.notify_join(state)
            elif old_meta != state.meta:
                self.events.notify_update(state)

    def suspect_node(self, s: Suspect) -> None:
        """memberlist's suspectNode (serf-wire §2.8)."""
        state = self.nodes.get(s.node)
        if state is None or s.incarnation < state.incarnation:
            return
        timer = self._suspicions.get(s.node)
        if timer is not None:
            if timer.confirm(s.from_):
                self._broadcast(s.node, s)
            return
        if state.state != NodeState.ALIVE:
            return
        if s.node == self.name:
            self._refute(state, s.incarnation)
            self.log.warn("Refuting a suspect message (from: {accuser})", accuser=s.from_)
            return
        self._broadcast(s.node, s)
        now = self.reactor.seconds()
        state.incarnation = s.incarnation
        state.state = NodeState.SUSPECT
        state.state_change = now
        change_time = now
        n = self.estimated_num_nodes()
        k = self.config.suspicion_k(n)
        lo, hi = self.config.suspicion_bounds(n)

        def expired(confirmations: int) -> None:
            self._suspicions.pop(s.node, None)
            current = self.nodes.get(s.node)
            if current is None or current.state != NodeState.SUSPECT or current.state_change != change_time:
                return
            self.log.info(
                "Marking {node} as failed, suspect timeout reached ({n} peer confirmations)",
                node=s.node, n=confirmations,
            )
            self.dead_node(Dead(incarnation=current.incarnation, node=s.node, from_=self.name))

        self._suspicions[s.node] = Suspicion(self.reactor, s.from_, k, lo, hi, expired)

    def dead_node(self, d: Dead) -> None:
        """memberlist's deadNode (serf-wire §2.8)."""
        state = self.nodes.get(d.node)
        if state is None or d.incarnation < state.incarnation:
            return
        self._cancel_suspicion(d.node)
        if state.is_dead_or_left():
            return
        notify: Deferred[None] | None = None
        if d.node == self.name:
            if not self.leaving:
                self._refute(state, d.incarnation)
                self.log.warn("Refuting a dead message (from: {accuser})", accuser=d.from_)
                return
            notify = self._leave_waiter
        self._broadcast(d.node, d, notify)
        state.incarnation = d.incarnation
        state.state = NodeState.LEFT if d.node == d.from_ else NodeState.DEAD
        state.state_change = self.reactor.seconds()
        if self.events is not None:
            self.events.notify_leave(state)

    def _cancel_suspicion(self, node: str) -> None:
        timer = self._suspicions.pop(node, None)
        if timer is not None:
            timer.cancel()

    def _refute(self, me: Node, accused: int) -> None:
        inc = self._next_incarnation()
        if accused >= inc:
            # uint32 like Go: refuting an accusation at 0xFFFFFFFF wraps to 0
            # instead of storing (and gossiping) an unencodable 2**32.
            self._incarnation = inc = (accused + 1) & 0xFFFFFFFF
        me.incarnation = inc
        self.awareness.apply_delta(1)
        alive = Alive(
            incarnation=inc,
            node=self.name,
            addr=ip_to_wire(me.addr),
            port=me.port,
            meta=me.meta,
            vsn=me.vsn,
        )
        self._broadcast(self.name, alive)

