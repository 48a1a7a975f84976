"""A Serf node: memberlist plus members, intents, user events, queries and keys (spec §3).

:class:`Serf` is serf 0.9.4's ``Serf`` on Twisted.  It owns a
:class:`~flyteserf.memberlist.memberlist.Memberlist` (plugged in through the
delegates of :mod:`flyteserf.serf.delegate`), the three Lamport clocks, the
member table, the three broadcast queues, the user-event and query rings,
the optional snapshot, and the coalescers in front of the event sink.

Everything runs on the reactor thread and every timer is a ``callLater`` or
``LoopingCall`` on the injected reactor, so a cluster of Serf nodes runs in
virtual time over :class:`~flyteserf.testing.network.MemoryNetwork`.

Events reach the layer above through ``on_event`` (one callable taking a
:data:`~flyteserf.serf.events.Event`): member events and user events (through
the coalescers when their periods are positive) and queries
(:class:`~flyteserf.serf.query.IncomingQuery`, never the internal ``_serf_``
ones).
"""

from __future__ import annotations

import enum
import math
import random
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.error import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from flyteserf.addresses import AddressError, parse_host_port
from flyteserf.memberlist.delegates import Address
from flyteserf.memberlist.memberlist import Memberlist
from flyteserf.memberlist.build import build_memberlist
from flyteserf.memberlist.state import Node
from flyteserf.serf.buffers import EventBuffer, QueryBuffer, too_old
from flyteserf.serf.clock import LamportClock
from flyteserf.serf.coalesce import MemberEventCoalescer, UserEventCoalescer
from flyteserf.serf.config import USER_EVENT_SIZE_LIMIT, SerfConfig, encode_node_meta
from flyteserf.serf.delegate import SerfConflictDelegate, SerfDelegate, SerfEventDelegate
from flyteserf.serf.errors import SerfError
from flyteserf.serf.events import Event, Member, MemberEvent, UserEvent
from flyteserf.serf.interfaces import IInternalQueryHost, IKeyQueryHost, IQueryResponder
from flyteserf.serf.internal_query import CONFLICT_QUERY, InternalQueries, internal_query_name
from flyteserf.serf.keymanager import KeyManager
from flyteserf.serf.members import IntentType, MemberTable
from flyteserf.serf.query import IncomingQuery, NodeResponse, QueryParam, QueryResponse, should_process
from flyteserf.serf.queues import SerfQueues
from flyteserf.serf.snapshot import SnapshotError, Snapshotter
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.keyring import Keyring, save_keyring_file
from flyteserf.wire.messages import ip_from_wire, ip_to_wire
from flyteserf.wire.serf_messages import (
    QUERY_FLAG_ACK,
    Join,
    Leave,
    Member as ConflictMember,
    MemberStatus,
    PushPull,
    Query,
    QueryResponse as QueryResponseMessage,
    RelayHeader,
    SerfMessageType,
    UDPAddr,
    UserEvent as UserEventMessage,
    decode_conflict_response,
    decode_relay,
    decode_serf_message,
    encode_relay,
)

__all__ = ["EventSink", "MemberlistFactory", "Serf", "SerfState"]

#: What the layer above hands in to receive events.
EventSink = Callable[[Event], object]
#: Builds the memberlist node for a Serf: called with the keyword arguments
#: ``config, keyring, delegate, events, conflicts, vsn, rng``.
MemberlistFactory = Callable[..., Memberlist]

#: How often the snapshot checks the member clock (Go's clockUpdateInterval).
SNAPSHOT_CLOCK_INTERVAL = 0.5


#: Serf message types that travel as gossip (push/pull state and the key and
#: conflict payloads only ever appear nested, so as gossip they are unknown).
_GOSSIPED_TYPES = frozenset(
    {
        SerfMessageType.LEAVE,
        SerfMessageType.JOIN,
        SerfMessageType.USER_EVENT,
        SerfMessageType.QUERY,
        SerfMessageType.QUERY_RESPONSE,
    }
)


class SerfState(enum.Enum):
    ALIVE = "alive"
    LEAVING = "leaving"
    LEFT = "left"
    SHUTDOWN = "shutdown"


@implementer(IQueryResponder, IInternalQueryHost, IKeyQueryHost)
class Serf:
    """One serf node.  Build it with :meth:`create`, then :meth:`start` it."""

    log = Logger()

    def __init__(
        self,
        config: SerfConfig,
        *,
        reactor: IReactorTime,
        memberlist_factory: MemberlistFactory,
        on_event: EventSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Set up the node without starting it.

        *memberlist_factory* builds (and binds) the memberlist node; use
        :meth:`create` for the usual UDP+TCP one.  With a snapshot path the
        snapshot is replayed here, so its clocks are in place before any
        message is handled.

        :raises SerfError: The snapshot cannot be opened.
        """
        self.config = config
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.on_event = on_event
        self.state = SerfState.ALIVE
        self._tags = dict(config.tags)

        self.clock = LamportClock()
        self.event_clock = LamportClock()
        self.query_clock = LamportClock()

        self.members_table = MemberTable(
            reactor, self._emit, prune_delay=config.broadcast_timeout + config.leave_propagate_delay
        )
        self.queues = SerfQueues(lambda: len(self.members_table), config.memberlist.retransmit_mult)
        self.event_buffer = EventBuffer(config.event_buffer)
        self.query_buffer = QueryBuffer(config.query_buffer)
        self._query_responses: dict[int, QueryResponse] = {}
        self._join_ignore = 0
        self._resolving_conflict = False
        self._internal = InternalQueries(self)
        self._key_manager = KeyManager(self)
        self._loops: list[LoopingCall] = []
        #: Fires with True/False once the snapshot rejoin has been tried.
        self.rejoined: Deferred[bool] | None = None

        # Delivery: user-event coalescer, then member-event coalescer, then the sink.
        self._member_coalescer = MemberEventCoalescer(
            reactor, config.coalesce_period, config.quiescent_period, self._deliver
        )
        self._user_coalescer = UserEventCoalescer(
            reactor, config.user_coalesce_period, config.user_quiescent_period, self._member_coalescer.push
        )

        self.snapshotter: Snapshotter | None = None
        self._previous: list[tuple[str, str]] = []
        old_clock = old_event_clock = old_query_clock = 0
        if config.snapshot_path:
            defer_to_thread = None
            if IReactorThreads.providedBy(reactor):
                # Compactions rewrite and fsync the file: keep them off the reactor thread.
                defer_to_thread = partial(deferToThreadPool, reactor, reactor.getThreadPool())
            snapshotter = Snapshotter(
                config.snapshot_path,
                reactor,
                rejoin_after_leave=config.rejoin_after_leave,
                rng=self.rng,
                defer_to_thread=defer_to_thread,
            )
            try:
                state = snapshotter.open()
            except SnapshotError as e:
                raise SerfError(f"Failed to setup snapshot: {e}") from None
            self.snapshotter = snapshotter
            self._previous = snapshotter.previous_alive_nodes()
            old_clock, old_event_clock, old_query_clock = (
                state.last_clock,
                state.last_event_clock,
                state.last_query_clock,
            )
            self.event_buffer.min_time = old_event_clock + 1
            self.query_buffer.min_time = old_query_clock + 1

        # At least 1, so that a join LTime of 0 never looks new; then the snapshot's.
        for clock, old in ((self.clock, old_clock), (self.event_clock, old_event_clock), (self.query_clock, old_query_clock)):
            clock.increment()
            clock.witness(old)

        try:
            self.memberlist: Memberlist = memberlist_factory(
                config=config.memberlist,
                keyring=config.keyring,
                delegate=SerfDelegate(self),
                events=SerfEventDelegate(self),
                conflicts=SerfConflictDelegate(self),
                vsn=config.vsn,
                rng=self.rng,
            )
        except BaseException:
            if self.snapshotter is not None:
                self.snapshotter.close()  # e.g. the port is taken: do not leak the file
            raise

    @classmethod
    def create(
        cls,
        config: SerfConfig,
        reactor: Any,
        bind: Address = ("0.0.0.0", 7946),
        advertise: Address | None = None,
        *,
        on_event: EventSink | None = None,
        rng: random.Random | None = None,
    ) -> Serf:
        """A node gossiping over UDP and TCP on *bind* (port 0 picks a free one).

        *reactor* must provide ``IReactorTime``, ``IReactorUDP`` and
        ``IReactorTCP`` (a real reactor, or a ``MemoryNetwork`` host).  The
        sockets are bound here; call :meth:`start` to begin gossiping.
        """

        def factory(**kwargs: Any) -> Memberlist:
            return build_memberlist(reactor, config.node_name, bind, advertise=advertise, **kwargs)

        return cls(config, reactor=reactor, memberlist_factory=factory, on_event=on_event, rng=rng)

    # --- identity ---------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self.config.node_name

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @property
    def keyring(self) -> Keyring | None:
        return self.memberlist.keyring

    @property
    def query_response_size_limit(self) -> int:
        return self.config.query_response_size_limit

    @property
    def advertise(self) -> Address:
        return self.memberlist.advertise

    def seconds(self) -> float:
        return self.reactor.seconds()

    def node_meta(self) -> bytes:
        return encode_node_meta(self._tags, self.config.protocol)

    def encryption_enabled(self) -> bool:
        return bool(self.keyring)

    def num_members(self) -> int:
        """memberlist's count of nodes neither dead nor left (self included)."""
        return self.memberlist.num_members()

    def key_manager(self) -> KeyManager:
        return self._key_manager

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Announce ourselves, start the background loops, rejoin from the snapshot."""
        if self.config.incarnation_from_clock:
            # A restarted node's old record (dead, incarnation N) only yields to
            # an alive with a higher incarnation; wall-clock seconds outgrow any
            # incarnation of an earlier run that did not refute once a second.
            self.memberlist.skip_incarnation(int(self.reactor.seconds()))
        self.memberlist.start()
        cfg = self.config
        self._loop(cfg.reap_interval, self._reap)
        self._loop(cfg.reconnect_interval, self._reconnect)
        self._loop(cfg.queue_check_interval, self._check_queues)
        if self.snapshotter is not None:
            self._loop(SNAPSHOT_CLOCK_INTERVAL, self._snapshot_clock)
        if self._previous:
            self.rejoined = Deferred.fromCoroutine(self._rejoin(self._previous))

    def _loop(self, interval: float, fn: Callable[[], None]) -> None:
        if interval <= 0:
            return
        loop = LoopingCall(self._guarded, fn)
        loop.clock = self.reactor
        loop.start(interval, now=False).addErrback(self._loop_failed)
        self._loops.append(loop)

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.log.failure("serf background task {task} failed", task=getattr(fn, "__name__", fn))

    def _loop_failed(self, failure: Failure) -> None:
        self.log.failure("serf background loop stopped", failure)

    def shutdown(self) -> Deferred[None]:
        """Stop everything at once, without leaving (peers will see us fail)."""
        if self.state == SerfState.SHUTDOWN:
            return succeed(None)
        if self.state != SerfState.LEFT:
            self.log.warn("Shutdown without a Leave")
        self.state = SerfState.SHUTDOWN
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        self.members_table.cancel_timers()
        for response in list(self._query_responses.values()):
            response.close()
        self._user_coalescer.stop()
        self._member_coalescer.stop()
        waits: list[Deferred[Any]] = [self.memberlist.shutdown()]
        if self.snapshotter is not None:
            self._snapshot_clock()
            waits.append(self.snapshotter.close())
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def join(self, addresses: Iterable[str | Address], ignore_old: bool = True) -> Deferred[int]:
        """Join the cluster through *addresses*; fires with how many answered.

        Addresses are ``host``, ``host:port``, ``name/host:port`` or
        ``(host, port)``.  With *ignore_old*, user events the peers buffered
        before we joined are not delivered (``serf join`` without ``-replay``).
        Fails with memberlist's JoinError (Go's multierror text) if none answered.
        """
        if self.state != SerfState.ALIVE:
            return fail(SerfError("Serf can't Join after Leave or Shutdown"))
        try:
            targets = [self._parse_address(a) for a in addresses]
        except AddressError as e:
            return fail(SerfError(str(e)))
        if ignore_old:
            self._join_ignore += 1
        d = self.memberlist.join(targets)

        def joined(num: int) -> int:
            if num > 0 and self.state == SerfState.ALIVE:
                self._broadcast_join(self.clock.time())
            return num

        def done(result: Any) -> Any:
            if ignore_old:
                self._join_ignore -= 1
            return result

        return d.addCallback(joined).addBoth(done)

    def _parse_address(self, address: str | Address) -> Address:
        if not isinstance(address, str):
            return (address[0], int(address[1]))
        _, _, hostport = address.rpartition("/")
        return parse_host_port(hostport, self.memberlist.transport.local_address[1])

    def leave(self) -> Deferred[None]:
        """Leave gracefully: leave intent, then memberlist's dead(self), then wait (spec §3.5)."""
        if self.state == SerfState.LEFT:
            return succeed(None)
        if self.state == SerfState.LEAVING:
            return fail(SerfError("Leave already in progress"))
        if self.state == SerfState.SHUTDOWN:
            return fail(SerfError("Leave called after Shutdown"))
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        self.state = SerfState.LEAVING
        if self.snapshotter is not None:
            self.snapshotter.record_leave()
        msg = Leave(ltime=self.clock.time(), node=self.node_name)
        self.clock.increment()
        self._handle_leave_intent(msg)
        if self.members_table.has_alive_others(self.node_name):
            sent: Deferred[None] = Deferred()
            self.queues.queue(self.queues.intents, msg.encode(), sent)
            try:
                await sent.addTimeout(self.config.broadcast_timeout, self.reactor)
            except DeferredTimeout:
                # Go 0.9.4 gives up here; later releases go on, and so do we:
                # memberlist's dead(self) still tells the cluster.
                self.log.warn("timeout while waiting for graceful leave")
        await self.memberlist.leave(self.config.broadcast_timeout)
        await deferLater(self.reactor, self.config.leave_propagate_delay, lambda: None)
        if self.state != SerfState.SHUTDOWN:
            self.state = SerfState.LEFT

    def force_leave(self, node: str, prune: bool = False) -> Deferred[None]:
        """Tell the cluster *node* left (``serf force-leave``); *prune* erases it at once.

        An unknown name is not an error.
        """
        msg = Leave(ltime=self.clock.time(), node=node, prune=prune)
        self.clock.increment()
        self._handle_leave_intent(msg)
        if not self.members_table.has_alive_others(self.node_name):
            return succeed(None)
        sent: Deferred[None] = Deferred()
        self.queues.queue(self.queues.intents, msg.encode(), sent)
        return self._within(sent, self.config.broadcast_timeout, "timed out broadcasting node removal")

    def set_tags(self, tags: dict[str, str]) -> Deferred[None]:
        """Replace our tags and announce them (peers see member-update)."""
        try:
            encode_node_meta(tags, self.config.protocol)
        except SerfError as e:
            return fail(e)
        self._tags = dict(tags)
        sent: Deferred[None] = Deferred()
        self.memberlist.update_node(sent)
        if not any(
            not n.is_dead_or_left() and n.name != self.node_name for n in self.memberlist.nodes.values()
        ):
            return succeed(None)
        return self._within(sent, self.config.broadcast_timeout, "timeout waiting for update broadcast")

    def _within(self, d: Deferred[None], timeout: float, text: str) -> Deferred[None]:
        def timed_out(f: Failure) -> None:
            f.trap(DeferredTimeout)
            raise SerfError(text)

        return d.addTimeout(timeout, self.reactor).addErrback(timed_out)

    # --- members ----------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member serf knows, failed and left ones included until reaped."""
        return self.members_table.snapshot()

    def local_member(self) -> Member:
        member = self.members_table.get(self.node_name)
        if member is None:
            raise SerfError("the local member is not known yet: call start() first")
        return member.member()

    def stats(self) -> dict[str, str]:
        """Serf's ``Stats()``: every value a string, as the RPC ``stats`` sends it."""
        table = self.members_table
        return {
            "members": str(len(table)),
            "failed": str(len(table.failed)),
            "left": str(len(table.left)),
            "health_score": str(self.memberlist.awareness.score),
            "member_time": str(self.clock.time()),
            "event_time": str(self.event_clock.time()),
            "query_time": str(self.query_clock.time()),
            "intent_queue": str(self.queues.intents.num_queued()),
            "event_queue": str(self.queues.events.num_queued()),
            "query_queue": str(self.queues.queries.num_queued()),
            "encrypted": "true" if self.encryption_enabled() else "false",
        }

    # --- user events ----------------------------------------------------------------

    def user_event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Send a user event to the cluster (and deliver it here).

        :raises SerfError: It is too large, with Serf's texts.
        """
        limit = self.config.user_event_size_limit
        size = len(name.encode("utf-8", "surrogateescape")) + len(payload)
        if size > limit:
            raise SerfError(f"user event exceeds configured limit of {limit} bytes before encoding")
        if size > USER_EVENT_SIZE_LIMIT:
            raise SerfError(f"user event exceeds sane limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding")
        msg = UserEventMessage(ltime=self.event_clock.time(), name=name, payload=payload, cc=coalesce)
        raw = msg.encode()
        if len(raw) > limit:
            raise SerfError(f"encoded user event exceeds configured limit of {limit} bytes after encoding")
        if len(raw) > USER_EVENT_SIZE_LIMIT:
            raise SerfError(
                f"encoded user event exceeds sane limit of {USER_EVENT_SIZE_LIMIT} bytes before encoding"
            )
        self.event_clock.increment()
        self._handle_user_event(msg)
        self.queues.queue(self.queues.events, raw)

    # --- queries ------------------------------------------------------------------------

    def default_query_timeout(self) -> float:
        """``GossipInterval × QueryTimeoutMult × ceil(log10(N + 1))`` seconds."""
        n = self.memberlist.num_members()
        mult = math.ceil(math.log10(n + 1))
        return self.config.memberlist.gossip_interval * self.config.query_timeout_mult * mult

    def query(self, name: str, payload: bytes = b"", params: QueryParam | None = None) -> QueryResponse:
        """Start a query; acks and responses arrive on the returned collector.

        :raises SerfError: Serf protocol below 4, or the query is too large.
        """
        if self.config.protocol < 4:
            raise SerfError("Feature not supported")
        params = params or QueryParam()
        timeout = params.timeout if params.timeout > 0 else self.default_query_timeout()
        local = self.memberlist.local_node
        msg = Query(
            ltime=self.query_clock.time(),
            id=self.rng.getrandbits(31),
            addr=ip_to_wire(local.addr),
            port=local.port,
            source_node=self.node_name,
            filters=params.encode_filters(),
            flags=QUERY_FLAG_ACK if params.request_ack else 0,
            relay_factor=params.relay_factor,
            timeout=int(round(timeout * 1e9)),
            name=name,
            payload=payload,
        )
        raw = msg.encode()
        limit = self.config.query_size_limit
        if len(raw) > limit:
            raise SerfError(f"query exceeds limit of {limit} bytes")
        response = QueryResponse(
            self.reactor,
            name=name,
            ltime=msg.ltime,
            query_id=msg.id,
            timeout=timeout,
            request_ack=params.request_ack,
            expected=self.memberlist.num_members(),
            finish_when_all_responded=params.finish_when_all_responded,
        )
        self._register_query(response)
        self._handle_query(msg)
        self.queues.queue(self.queues.queries, raw)
        return response

    def _register_query(self, response: QueryResponse) -> None:
        ltime = response.ltime
        self._query_responses[ltime] = response

        def forget() -> None:
            if self._query_responses.get(ltime) is response:
                del self._query_responses[ltime]

        response.add_close_hook(forget)

    def send_query_response(self, query: IncomingQuery, raw: bytes, message: QueryResponseMessage) -> None:
        """Answer *query*: straight to its origin, then through relays (QueryResponder)."""
        dest = self._query_origin(query.addr, query.port)
        if dest is None:
            raise SerfError(f"query {query.name!r} has an invalid origin address")
        self.memberlist.send_user_packet(dest, raw)
        self._relay_response(query.relay_factor, query.addr, query.port, query.source_node, message)

    @staticmethod
    def _query_origin(addr: bytes, port: int) -> Address | None:
        try:
            return (str(ip_from_wire(addr)), port)
        except DecodeError:
            return None

    def _relay_response(
        self, relay_factor: int, addr: bytes, port: int, dest_name: str, message: QueryResponseMessage
    ) -> None:
        """Send copies through up to *relay_factor* other alive members (spec §3.7)."""
        if relay_factor == 0:
            return
        members = list(self.members_table)
        if len(members) < relay_factor + 1:
            return
        raw = encode_relay(RelayHeader(dest_addr=UDPAddr(ip=addr, port=port), dest_name=dest_name), message)
        limit = self.config.query_response_size_limit
        if len(raw) > limit:
            raise SerfError(f"relayed response exceeds limit of {limit} bytes")
        candidates = [
            m
            for m in members
            if m.status == MemberStatus.ALIVE and m.protocol_max >= 5 and m.name != self.node_name
        ]
        for m in self.rng.sample(candidates, min(relay_factor, len(candidates))):
            self.memberlist.send_user_packet((m.addr, m.port), raw)

    # --- the memberlist delegate's work ----------------------------------------------

    def handle_message(self, buf: bytes) -> None:
        """A serf message from a memberlist user message (NotifyMsg)."""
        if not buf:
            return
        kind = buf[0]
        rebroadcast = False
        queue = self.queues.intents
        try:
            if kind == SerfMessageType.RELAY:
                self._handle_relay(buf)
                return
            if kind not in _GOSSIPED_TYPES:
                self.log.warn("Received message of unknown type: {kind}", kind=kind)
                return
            message = decode_serf_message(buf)
        except DecodeError as e:
            self.log.error("Error decoding serf message of type {kind}: {e}", kind=kind, e=str(e))
            return
        self.log.debug("serf message {message}", message=message)
        if isinstance(message, Leave):
            rebroadcast = self._handle_leave_intent(message)
        elif isinstance(message, Join):
            rebroadcast = self._handle_join_intent(message)
        elif isinstance(message, UserEventMessage):
            rebroadcast = self._handle_user_event(message)
            queue = self.queues.events
        elif isinstance(message, Query):
            rebroadcast = self._handle_query(message)
            queue = self.queues.queries
        elif isinstance(message, QueryResponseMessage):
            self._handle_query_response(message)
        if rebroadcast:
            # The exact bytes received, so every node gossips the same message.
            self.queues.queue(queue, buf)

    def _handle_relay(self, buf: bytes) -> None:
        header, rest = decode_relay(buf)
        dest = self._query_origin(header.dest_addr.ip, header.dest_addr.port)
        if dest is None:
            self.log.error("Relay header has an invalid destination address")
            return
        self.log.debug("Relaying response to addr: {host}:{port}", host=dest[0], port=dest[1])
        self.memberlist.send_user_packet(dest, rest)

    def local_state(self, join: bool) -> bytes:
        """Our push/pull user state (spec §3.9)."""
        table = self.members_table
        return PushPull(
            ltime=self.clock.time(),
            status_ltimes=table.status_ltimes(),
            left_members=tuple(table.left_names()),
            event_ltime=self.event_clock.time(),
            events=self.event_buffer.slots(),
            query_ltime=self.query_clock.time(),
        ).encode()

    def merge_remote_state(self, buf: bytes, join: bool) -> None:
        """A peer's push/pull user state: clocks, intents, buffered user events."""
        if not buf:
            self.log.error("Remote state is zero bytes")
            return
        if buf[0] != SerfMessageType.PUSH_PULL:
            self.log.error("Remote state has bad type prefix: {kind}", kind=buf[0])
            return
        try:
            pp = decode_serf_message(buf)
        except DecodeError as e:
            self.log.error("Failed to decode remote state: {e}", e=str(e))
            return
        assert isinstance(pp, PushPull)
        # Witness one less: no message with the peer's current time exists yet.
        for clock, value in ((self.clock, pp.ltime), (self.event_clock, pp.event_ltime), (self.query_clock, pp.query_ltime)):
            if value > 0:
                clock.witness(value - 1)
        left = set(pp.left_members)
        for name in pp.left_members:
            # The leave came after the member's last status time.
            self._handle_leave_intent(Leave(ltime=pp.status_ltimes.get(name, 0) + 1, node=name))
        for name, ltime in pp.status_ltimes.items():
            if name not in left:
                self._handle_join_intent(Join(ltime=ltime, node=name))
        if join and self._join_ignore:
            self.event_buffer.min_time = max(self.event_buffer.min_time, pp.event_ltime)
        for slot in pp.events:
            if slot is None:
                continue
            for entry in slot.events:
                self._handle_user_event(UserEventMessage(ltime=slot.ltime, name=entry.name, payload=entry.payload))

    def handle_node_conflict(self, existing: Node, other: Node) -> None:
        """memberlist saw two addresses for one name (spec §3.10)."""
        if existing.name != self.node_name:
            self.log.warn(
                "Name conflict for '{name}' both {a}:{ap} and {b}:{bp} are claiming",
                name=existing.name, a=existing.addr, ap=existing.port, b=other.addr, bp=other.port,
            )
            return
        self.log.error(
            "Node name conflicts with another node at {addr}:{port}. Names must be unique! "
            "(Resolution enabled: {enabled})",
            addr=other.addr, port=other.port, enabled=self.config.enable_name_conflict_resolution,
        )
        if self.config.enable_name_conflict_resolution and not self._resolving_conflict:
            self._resolve_node_conflict()

    def _resolve_node_conflict(self) -> None:
        """Ask the cluster where our name lives; shut down if we are the minority."""
        local = self.memberlist.local_node
        try:
            running = self.query(internal_query_name(CONFLICT_QUERY), self.node_name.encode("utf-8", "surrogateescape"))
        except SerfError as e:
            self.log.error("Failed to start name resolution query: {e}", e=str(e))
            return
        self._resolving_conflict = True
        votes = {"responses": 0, "matching": 0}
        mine = ip_from_wire(ip_to_wire(local.addr))

        def count(r: NodeResponse) -> None:
            if not r.payload or r.payload[0] != SerfMessageType.CONFLICT_RESPONSE:
                self.log.error("Invalid conflict query response type: {payload!r}", payload=r.payload)
                return
            try:
                member = decode_conflict_response(r.payload)
            except DecodeError as e:
                self.log.error("Failed to decode conflict query response: {e}", e=str(e))
                return
            votes["responses"] += 1
            if member is None:
                return
            try:
                same_addr = ip_from_wire(member.addr) == mine
            except DecodeError:
                same_addr = False
            if same_addr and member.port == local.port:
                votes["matching"] += 1

        def decide(_: object) -> None:
            self._resolving_conflict = False
            responses, matching = votes["responses"], votes["matching"]
            if matching >= responses // 2 + 1:
                self.log.info(
                    "majority in name conflict resolution [{matching} / {responses}]",
                    matching=matching, responses=responses,
                )
                return
            self.log.warn(
                "minority in name conflict resolution, quiting [{matching} / {responses}]",
                matching=matching, responses=responses,
            )
            self.shutdown()

        running.on_response(count)
        running.when_done().addCallback(decide)

    # --- InternalQueryHost ---------------------------------------------------------------

    def conflict_member(self, name: str) -> ConflictMember | None:
        member = self.members_table.get(name)
        if member is None:
            return None
        # Same fields as the member event's Member; only the wire types differ.
        fields = attrs.asdict(member.member(), recurse=False)
        fields.update(addr=ip_to_wire(member.addr), status=int(member.status))
        return ConflictMember(**fields)

    def write_keyring_file(self) -> None:
        path, keyring = self.config.keyring_file, self.keyring
        if path and keyring:
            save_keyring_file(path, keyring)

    # --- message handlers -----------------------------------------------------------------

    def _broadcast_join(self, ltime: int) -> None:
        msg = Join(ltime=ltime, node=self.node_name)
        self.clock.witness(ltime)
        self._handle_join_intent(msg)
        self.queues.queue(self.queues.intents, msg.encode())

    def _handle_join_intent(self, msg: Join) -> bool:
        self.clock.witness(msg.ltime)
        member = self.members_table.get(msg.node)
        if member is None:
            return self.members_table.upsert_intent(msg.node, IntentType.JOIN, msg.ltime)
        return self.members_table.apply_join(member, msg.ltime)

    def _handle_leave_intent(self, msg: Leave) -> bool:
        self.clock.witness(msg.ltime)
        member = self.members_table.get(msg.node)
        if member is None:
            return self.members_table.upsert_intent(msg.node, IntentType.LEAVE, msg.ltime)
        if msg.ltime <= member.status_ltime:
            return False
        if msg.node == self.node_name and self.state == SerfState.ALIVE:
            self.log.debug("Refuting an older leave intent")
            self._broadcast_join(self.clock.time())
            return False
        return self.members_table.apply_leave(member, msg.ltime, msg.prune)

    def _handle_user_event(self, msg: UserEventMessage) -> bool:
        self.event_clock.witness(msg.ltime)
        now = self.event_clock.time()
        if msg.ltime >= self.event_buffer.min_time and too_old(msg.ltime, now, self.event_buffer.size):
            self.log.warn(
                "received old event {name} from time {ltime} (current: {now})",
                name=msg.name, ltime=msg.ltime, now=now,
            )
            return False
        if not self.event_buffer.add(msg.ltime, msg.name, msg.payload, now):
            return False
        self._emit(UserEvent(ltime=msg.ltime, name=msg.name, payload=msg.payload, coalesce=msg.cc))
        return True

    def _handle_query(self, msg: Query) -> bool:
        self.query_clock.witness(msg.ltime)
        now = self.query_clock.time()
        if msg.ltime >= self.query_buffer.min_time and too_old(msg.ltime, now, self.query_buffer.size):
            self.log.warn(
                "received old query {name} from time {ltime} (current: {now})",
                name=msg.name, ltime=msg.ltime, now=now,
            )
            return False
        if not self.query_buffer.add(msg.ltime, msg.id, now):
            return False
        rebroadcast = not msg.no_broadcast
        if not should_process(msg.filters, self.node_name, self._tags):
            return rebroadcast
        if msg.ack:
            ack = QueryResponseMessage(ltime=msg.ltime, id=msg.id, from_=self.node_name, flags=QUERY_FLAG_ACK)
            dest = self._query_origin(msg.addr, msg.port)
            if dest is None:
                self.log.error("failed to send ack: invalid query origin address")
            else:
                self.memberlist.send_user_packet(dest, ack.encode())
                try:
                    self._relay_response(msg.relay_factor, msg.addr, msg.port, msg.source_node, ack)
                except SerfError as e:
                    self.log.error("failed to relay ack: {e}", e=str(e))
        self._emit(
            IncomingQuery(
                ltime=msg.ltime,
                name=msg.name,
                payload=msg.payload,
                id=msg.id,
                addr=msg.addr,
                port=msg.port,
                source_node=msg.source_node,
                relay_factor=msg.relay_factor,
                deadline=self.reactor.seconds() + msg.timeout / 1e9,
                responder=self,
            )
        )
        return rebroadcast

    def _handle_query_response(self, msg: QueryResponseMessage) -> None:
        query = self._query_responses.get(msg.ltime)
        if query is None:
            self.log.warn(
                "reply for non-running query (LTime: {ltime}, ID: {id}) From: {from_}",
                ltime=msg.ltime, id=msg.id, from_=msg.from_,
            )
            return
        if query.id != msg.id:
            self.log.warn("query reply ID mismatch (Local: {local}, Response: {remote})", local=query.id, remote=msg.id)
            return
        if msg.ack:
            query.add_ack(msg.from_)
        else:
            query.add_response(msg.from_, msg.payload)

    # --- events out --------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        """Every event serf produces: snapshot, internal queries, coalescers, sink."""
        snapshotter = self.snapshotter
        if snapshotter is not None:
            if isinstance(event, MemberEvent):
                snapshotter.record_member_event(event)
                self._snapshot_clock()
            elif isinstance(event, UserEvent):
                snapshotter.record_event_clock(event.ltime)
            elif isinstance(event, IncomingQuery):
                snapshotter.record_query_clock(event.ltime)
        if isinstance(event, IncomingQuery) and self._internal.is_internal(event):
            try:
                self._internal.handle(event)
            except Exception:
                self.log.failure("internal query {name} failed", name=event.name)
            return
        self._user_coalescer.push(event)

    def _deliver(self, event: Event) -> None:
        sink = self.on_event
        if sink is None:
            return
        try:
            sink(event)
        except Exception:
            self.log.failure("event handler failed on {event}", event=event)

    # --- background tasks ----------------------------------------------------------------------

    def _reap(self) -> None:
        cfg = self.config
        self.members_table.reap(cfg.reconnect_timeout, cfg.tombstone_timeout, cfg.recent_intent_timeout)

    def _reconnect(self) -> None:
        member = self.members_table.reconnect_candidate(self.rng)
        if member is None:
            return
        self.log.info("attempting reconnect to {name} {addr}:{port}", name=member.name, addr=member.addr, port=member.port)
        self.memberlist.join([(member.addr, member.port)]).addErrback(
            lambda f: self.log.debug("reconnect to {name} failed: {e}", name=member.name, e=f.getErrorMessage())
        )

    def _check_queues(self) -> None:
        cfg = self.config
        limit = cfg.max_queue_depth
        if cfg.min_queue_depth > 0:
            limit = max(cfg.min_queue_depth, 2 * len(self.members_table))
        self.queues.check_depth(cfg.queue_depth_warning, limit)

    def _snapshot_clock(self) -> None:
        if self.snapshotter is not None:
            self.snapshotter.record_clock(self.clock.time() - 1)

    async def _rejoin(self, previous: Sequence[tuple[str, str]]) -> bool:
        port = self.memberlist.transport.local_address[1]
        for name, addr in previous:
            if name == self.node_name:
                continue
            self.log.info("Attempting re-join to previously known node: {name}: {addr}", name=name, addr=addr)
            try:
                await self.memberlist.join([parse_host_port(addr, port)])
            except Exception as e:
                self.log.debug("re-join to {name} failed: {e}", name=name, e=str(e))
                continue
            self.log.info("Re-joined to previously known node: {name}: {addr}", name=name, addr=addr)
            return True
        self.log.warn("Failed to re-join any previously known node")
        return False
