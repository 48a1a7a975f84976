"""A memberlist node as a Twisted service: bind, start, join, and stop.

This is the gossip layer on its own (tags in node meta, no serf state), for
``twist flyteserf`` until the serf layer takes over, and for tests that
want a bare SWIM node next to real agents.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.memberlist.delegates import Address, CallbackEvents, IDelegate, NullDelegate
from flyteserf.memberlist.memberlist import Memberlist
from flyteserf.memberlist.state import Node
from flyteserf.memberlist.transport import NetTransport
from flyteserf.wire.keyring import Keyring
from flyteserf.wire.tags import encode_tags


@implementer(IDelegate)
class TagsDelegate(NullDelegate):
    """Serf-style tags as node meta, and nothing else."""

    def __init__(self, tags: Mapping[str, str]) -> None:
        self.meta = encode_tags(tags)

    def node_meta(self, limit: int) -> bytes:
        return self.meta


def build_memberlist(
    reactor: Any,
    name: str,
    bind: Address,
    *,
    advertise: Address | None = None,
    config: MemberlistConfig | None = None,
    keyring: Keyring | None = None,
    delegate: IDelegate | None = None,
    rng: random.Random | None = None,
    **delegates: Any,
) -> Memberlist:
    """Bind UDP and TCP on *bind* and return a memberlist node ready to ``start()``.

    With port 0 a free port is chosen; the advertised address defaults to
    the bound one.
    """
    config = config or MemberlistConfig.lan()
    transport = NetTransport(reactor, bind[0], bind[1], tcp_timeout=config.tcp_timeout)
    node = Memberlist(
        name,
        reactor=reactor,
        transport=transport,
        advertise=advertise or bind,
        config=config,
        keyring=keyring,
        delegate=delegate,
        rng=rng,
        **delegates,
    )
    bound = transport.start(node)
    if advertise is None:
        host = bound[0]
        if host in ("", "0.0.0.0", "::"):
            raise ValueError(f"cannot advertise the wildcard address {host!r}: give an advertise address")
        node.advertise = bound
    elif advertise[1] == 0:
        node.advertise = (advertise[0], bound[1])
    return node


class MemberlistService(service.Service):
    """Runs one memberlist node; ``startService`` fails if the join fails."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        name: str,
        bind: Address,
        *,
        advertise: Address | None = None,
        join: Sequence[Address] = (),
        tags: Mapping[str, str] | None = None,
        config: MemberlistConfig | None = None,
        keyring: Keyring | None = None,
        leave_timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.node_name = name
        self.bind = bind
        self.advertise = advertise
        self.join_addresses = list(join)
        self.tags = dict(tags or {})
        self.config = config
        self.keyring = keyring
        self.leave_timeout = leave_timeout
        self.memberlist: Memberlist | None = None

    def startService(self) -> Deferred[Any]:
        super().startService()
        node = build_memberlist(
            self.reactor,
            self.node_name,
            self.bind,
            advertise=self.advertise,
            config=self.config,
            keyring=self.keyring,
            delegate=TagsDelegate(self.tags),
            events=CallbackEvents(self._joined, self._left, self._updated),
        )
        self.memberlist = node
        node.start()
        host, port = node.advertise
        self.log.info(
            "Node {node} gossiping on {host}:{port} (encrypted: {encrypted})",
            node=self.node_name, host=host, port=port, encrypted=bool(self.keyring),
        )
        if not self.join_addresses:
            return succeed(None)
        d = node.join(self.join_addresses)
        d.addCallback(lambda n: self.log.info("Joined {n} node(s)", n=n))
        return d

    def stopService(self) -> Deferred[None]:
        super().stopService()
        node, self.memberlist = self.memberlist, None
        if node is None:
            return succeed(None)
        return node.shutdown()

    def _joined(self, node: Node) -> None:
        self.log.info("Member joined: {name} {addr}:{port}", name=node.name, addr=node.addr, port=node.port)

    def _left(self, node: Node) -> None:
        self.log.info("Member {how}: {name}", how="left" if node.state.name == "LEFT" else "failed", name=node.name)

    def _updated(self, node: Node) -> None:
        self.log.info("Member updated: {name}", name=node.name)
