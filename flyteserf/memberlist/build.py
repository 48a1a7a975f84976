"""Building a memberlist node on real (or in-memory) sockets.

:func:`build_memberlist` binds UDP and TCP and wires a :class:`Memberlist`
to them; serf uses it, and so do tests that want a bare SWIM node (with
:class:`TagsDelegate` for serf-style tags) next to real agents.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

from zope.interface import implementer

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.memberlist.delegates import Address, IDelegate, NullDelegate
from flyteserf.memberlist.memberlist import Memberlist
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
