"""The embedding API: a Serf agent as a Twisted service.

:class:`Agent` is what a Twisted program puts in its ``MultiService``: it
runs one serf node, delivers its events to handlers registered by name at
run time (and to event scripts and RPC streams), and offers ``join``,
``leave``, ``event``, ``query``, tags and key management.  It is also what
the RPC server serves, so the stock ``serf`` CLI drives it.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher

from flyteserf import __version__
from flyteserf.addresses import format_host_port
from flyteserf.agent.filters import handler_keys
from flyteserf.agent.handlers import HandlerRegistry, MemberHandler, QueryHandler, Registration, UserHandler
from flyteserf.agent.logring import LogRing
from flyteserf.agent.scripts import ScriptEventSink
from flyteserf.memberlist.config import PROFILES, MemberlistConfig
from flyteserf.memberlist.delegates import Address
from flyteserf.serf.config import SerfConfig
from flyteserf.serf.errors import SerfError
from flyteserf.serf.internal_query import INTERNAL_QUERY_PREFIX
from flyteserf.serf.events import Member
from flyteserf.serf.keymanager import KeyResponse
from flyteserf.serf.query import QueryParam, QueryResponse
from flyteserf.serf.serf import Serf
from flyteserf.wire.keyring import Keyring


@attrs.frozen
class AgentConfig:
    """Everything an :class:`Agent` needs to know; the defaults are ``serf agent``'s."""

    node_name: str = "flyte-serf"
    bind: Address = ("0.0.0.0", 7946)
    #: None: the bound address (a wildcard bind needs an explicit one).
    advertise: Address | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    keyring: Keyring | None = attrs.field(default=None, eq=False)
    #: Rewritten after every key change when set.
    keyring_file: str | None = None
    profile: str = "lan"
    snapshot_path: str | None = None
    rejoin_after_leave: bool = False
    #: Deliver user events the cluster had before we joined.
    replay_on_join: bool = False
    #: Joined at start; the start fails if none answers.
    start_join: tuple[str, ...] = ()
    #: Joined in the background, again every ``retry_interval`` until one answers.
    retry_join: tuple[str, ...] = ()
    retry_interval: float = 30.0
    #: 0 = retry for ever.
    retry_max: int = 0
    user_event_size_limit: int = 512
    #: ``[filter=]script`` specs, as ``serf agent -event-handler``.
    event_handlers: tuple[str, ...] = ()
    #: Agent-level coalescing of member events and ``coalesce=True`` user
    #: events (3 s / 1 s, as ``serf agent``); False delivers everything at once.
    coalesce: bool = True
    #: Leave gracefully when the service stops (False: just stop; peers see a failure).
    leave_on_stop: bool = True
    #: Upper bound for the graceful leave at stop.
    leave_timeout: float = 10.0

    def serf_config(self) -> SerfConfig:
        timing: MemberlistConfig = PROFILES[self.profile]
        config = SerfConfig(
            node_name=self.node_name,
            tags=dict(self.tags),
            memberlist=timing,
            keyring=self.keyring,
            keyring_file=self.keyring_file,
            user_event_size_limit=self.user_event_size_limit,
            snapshot_path=self.snapshot_path,
            rejoin_after_leave=self.rejoin_after_leave,
        )
        if not self.coalesce:
            config = attrs.evolve(
                config, coalesce_period=0, quiescent_period=0, user_coalesce_period=0, user_quiescent_period=0
            )
        return config


class Agent(service.MultiService):
    """One serf node, its handlers and scripts, as a Twisted service.

    It offers what :class:`flyteserf.rpc.interfaces.IRPCAgent` asks, so an
    :class:`flyteserf.rpc.service.RPCService` can be :meth:`attach`-ed to
    serve the ``serf`` CLI.
    """

    log = Logger()

    def __init__(self, config: AgentConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.handlers = HandlerRegistry()
        self.log_ring = LogRing()
        self.serf: Serf | None = None
        self.scripts: ScriptEventSink | None = None
        self._subscribers: dict[int, Callable[[Any], object]] = {}
        self._next_subscriber = 0
        self._attached: list[service.IService] = []
        self._retry: LoopingCall | None = None
        self._stopped: Deferred[None] | None = None
        #: After an RPC ``leave`` stop the reactor (``twist flyteserf``), not just this service.
        self.exit_on_leave = False

    # --- service life cycle ------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self.config.node_name

    def startService(self) -> Deferred[Any]:
        """Bind, start gossiping, open RPC, then run the start joins.

        The Deferred fails (and the node stays up) if no start join answered:
        ``twist flyteserf`` turns that into exit status 1.
        """
        super().startService()
        globalLogPublisher.addObserver(self.log_ring)
        cfg = self.config
        if cfg.event_handlers:
            self.scripts = ScriptEventSink(self.reactor, cfg.event_handlers, cfg.node_name, lambda: self.tags)
        self.serf = Serf.create(cfg.serf_config(), self.reactor, cfg.bind, cfg.advertise, on_event=self._on_event)
        self.serf.start()
        host, port = self.serf.advertise
        self.log.info(
            "flyteserf agent {node} gossiping on {address} (encrypted: {encrypted})",
            node=cfg.node_name, address=format_host_port(host, port), encrypted=self.serf.encryption_enabled(),
        )
        for child in self._attached:
            child.startService()
        if cfg.retry_join:
            self._start_retry_join()
        if not cfg.start_join:
            return succeed(None)
        return self.join(cfg.start_join, replay=cfg.replay_on_join)

    def stopService(self) -> Deferred[None]:
        """Leave (bounded by ``leave_timeout``) unless told not to, then stop everything."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = Deferred.fromCoroutine(self._stop())
        return self._stopped

    async def _stop(self) -> None:
        await maybeDeferred(super().stopService)
        if self._retry is not None and self._retry.running:
            self._retry.stop()
        serf = self.serf
        if serf is not None and self.config.leave_on_stop and serf.state.name == "ALIVE":
            try:
                await serf.leave().addTimeout(self.config.leave_timeout, self.reactor)
            except Exception as e:
                self.log.warn("Graceful leave did not finish: {error}", error=str(e) or type(e).__name__)
        for child in reversed(self._attached):
            if child.running:
                await maybeDeferred(child.stopService)
        if serf is not None:
            await serf.shutdown()
        globalLogPublisher.removeObserver(self.log_ring)

    def attach(self, child: service.IService) -> None:
        """Run *child* with the node: started once the node gossips (before the
        start joins), stopped before it leaves the network.  The RPC listener
        is attached this way."""
        self._attached.append(child)
        if self.serf is not None and self.running:
            child.startService()

    @property
    def attached(self) -> tuple[service.IService, ...]:
        return tuple(self._attached)

    def stop_agent(self) -> None:
        """After an RPC ``leave``: stop this service, or the program when it is ours."""
        if self.exit_on_leave:
            self.reactor.callLater(0, self.reactor.stop)
        else:
            self.reactor.callLater(0, self.stopService)

    def _start_retry_join(self) -> None:
        attempts = [0]

        def attempt() -> Deferred[Any] | None:
            attempts[0] += 1
            d = self.join(self.config.retry_join, replay=self.config.replay_on_join)

            def joined(n: int) -> None:
                self.log.info("Retry join succeeded ({n} node(s))", n=n)
                if self._retry is not None and self._retry.running:
                    self._retry.stop()

            def failed(f: Any) -> None:
                limit = self.config.retry_max
                self.log.warn(
                    "Retry join attempt {n} failed: {error}", n=attempts[0], error=" ".join(f.getErrorMessage().split())
                )
                if limit and attempts[0] >= limit and self._retry is not None and self._retry.running:
                    self.log.error("Retry join gave up after {n} attempts", n=attempts[0])
                    self._retry.stop()

            d.addCallbacks(joined, failed)
            return None

        self._retry = LoopingCall(attempt)
        self._retry.clock = self.reactor
        self._retry.start(self.config.retry_interval, now=True)

    # --- events --------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        """Every event serf delivers: scripts, handlers, RPC streams; never raises."""
        self.log.info("Received event: {event}", event=str(event))
        if self.scripts is not None:
            self.scripts.handle(event)
        self.handlers.dispatch(event)
        for token, callback in list(self._subscribers.items()):
            try:
                callback(event)
            except Exception:
                self._subscribers.pop(token, None)
                self.log.failure("Event subscriber failed; unsubscribed")

    def on_member(self, kind: str, handler: MemberHandler) -> Registration:
        """Call *handler* on member events: ``join``, ``leave``, ``failed``, ``update``, ``reap`` or ``*``."""
        return self.handlers.add_member_handler(kind, handler)

    def on_user_event(self, name: str, handler: UserHandler) -> Registration:
        """Call *handler* for user events called *name* (``*``: all)."""
        return self.handlers.add_user_handler(name, handler)

    def on_query(self, name: str, handler: QueryHandler) -> Registration:
        """Answer queries called *name* (``*``: all): return bytes, a Deferred of bytes, or None."""
        return self.handlers.add_query_handler(name, handler)

    def subscribe_events(self, callback: Callable[[Any], object]) -> Callable[[], None]:
        token = self._next_subscriber
        self._next_subscriber += 1
        self._subscribers[token] = callback
        return lambda: self._subscribers.pop(token, None) and None

    # --- the cluster ---------------------------------------------------------------------

    def _node(self) -> Serf:
        if self.serf is None:
            raise RuntimeError("the agent is not running: start it first")
        return self.serf

    def join(self, addresses: Sequence[str] | str, replay: bool = False) -> Deferred[int]:
        """Join through ``[name/]host[:port]`` addresses; fires with how many answered."""
        if isinstance(addresses, str):
            addresses = [addresses]
        return self._node().join(list(addresses), ignore_old=not replay)

    def leave(self) -> Deferred[None]:
        """Leave the cluster gracefully; the node stays up but no longer gossips."""
        return self._node().leave()

    def force_leave(self, node: str, prune: bool = False) -> Deferred[None]:
        return self._node().force_leave(node, prune)

    def event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Send a user event (raises with Serf's text when it is too large)."""
        self._node().user_event(name, payload, coalesce)

    def query(
        self,
        name: str,
        payload: bytes = b"",
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout: float = 0.0,
        finish_when_all_responded: bool = False,
    ) -> QueryResponse:
        """Start a query; the result yields acks and responses as they come, and
        ``when_done()`` fires at the deadline (or once everyone answered, if asked).

        Names starting ``_serf_`` are serf's own, refused as ``serf agent``
        refuses them (except ``_serf_ping`` with no payload: ``serf reachability``).
        """
        if name.startswith(INTERNAL_QUERY_PREFIX) and (name != INTERNAL_QUERY_PREFIX + "ping" or payload):
            raise SerfError(f"Queries cannot contain the '{INTERNAL_QUERY_PREFIX}' prefix")
        params = QueryParam(
            filter_nodes=tuple(filter_nodes),
            filter_tags=dict(filter_tags or {}),
            request_ack=request_ack,
            relay_factor=relay_factor,
            timeout=timeout,
            finish_when_all_responded=finish_when_all_responded,
        )
        return self._node().query(name, payload, params)

    def members(self) -> list[Member]:
        return self._node().members()

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.serf.tags) if self.serf is not None else dict(self.config.tags)

    def set_tags(self, tags: Mapping[str, str], delete: Sequence[str] = ()) -> Deferred[None]:
        """New tags = current minus *delete*, plus *tags*; announced to the cluster."""
        new = {k: v for k, v in self.tags.items() if k not in set(delete)}
        new.update(tags)
        return self._node().set_tags(new)

    def delete_tags(self, names: Sequence[str]) -> Deferred[None]:
        return self.set_tags({}, names)

    def install_key(self, key: str) -> Deferred[KeyResponse]:
        return self._node().key_manager().install_key(key)

    def use_key(self, key: str) -> Deferred[KeyResponse]:
        return self._node().key_manager().use_key(key)

    def remove_key(self, key: str) -> Deferred[KeyResponse]:
        return self._node().key_manager().remove_key(key)

    def list_keys(self) -> Deferred[KeyResponse]:
        return self._node().key_manager().list_keys()

    def get_coordinate(self, node: str) -> Any:
        """Coordinates are not computed (serf-wire §3.11): always None."""
        return None

    def stats(self) -> dict[str, dict[str, str]]:
        serf = self._node()
        handlers: dict[str, str] = {}
        if self.scripts is not None:
            for h in self.scripts.handlers:
                for key in handler_keys(h.filter):
                    handlers[key] = h.script
        return {
            "agent": {"name": self.node_name},
            "runtime": {
                "os": sys.platform,
                "arch": platform.machine(),
                "version": f"python{platform.python_version()} flyteserf{__version__}",
                "max_procs": "1",
                "goroutines": "1",
                "cpu_count": str(os.cpu_count() or 1),
            },
            "serf": dict(serf.stats()),
            "tags": dict(serf.tags),
            "event_handlers": handlers,
        }
