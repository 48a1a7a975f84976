"""The seams between memberlist and what runs over it.

memberlist calls *down* into a transport (datagrams and stream exchanges)
and *up* into delegates (serf): node meta, user messages, broadcasts,
push/pull state, membership events, conflicts and ping payloads.  Each seam
is a zope interface with a do-nothing default, so a bare memberlist node
runs with no serf layer at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from flyteserf.memberlist.state import Node
    from flyteserf.wire.stream import StreamMessage, StreamReader

Address = tuple[str, int]


class IDelegate(Interface):
    """What serf plugs into memberlist (Go's ``memberlist.Delegate``)."""

    def node_meta(limit: int) -> bytes:
        """This node's metadata (serf: its tags), at most *limit* bytes."""

    def notify_msg(msg: bytes) -> None:
        """A user message (``0x08`` payload) arrived."""

    def get_broadcasts(overhead: int, limit: int) -> list[bytes]:
        """Messages to piggyback, each charged *overhead*, within *limit* bytes."""

    def pending_broadcasts() -> int:
        """How many messages are queued (0 lets an idle gossip round do nothing)."""

    def local_state(join: bool) -> bytes:
        """The user state sent in a push/pull."""

    def merge_remote_state(buf: bytes, join: bool) -> None:
        """The user state received in a push/pull."""


class IEventDelegate(Interface):
    """Membership changes as memberlist sees them."""

    def notify_join(node: Node) -> None:
        """A node became alive (new, or back from dead/left)."""

    def notify_leave(node: Node) -> None:
        """A node is dead or left."""

    def notify_update(node: Node) -> None:
        """An alive node changed its meta."""


class IConflictDelegate(Interface):
    def notify_conflict(existing: Node, other: Node) -> None:
        """Two addresses claim the same node name."""


class IPingDelegate(Interface):
    def ack_payload() -> bytes:
        """What to carry in an ack we send (serf: a coordinate); may be empty."""

    def notify_ping_complete(node: Node, rtt: float, payload: bytes) -> None:
        """A direct probe of *node* was acked after *rtt* seconds."""


class IMemberlistTransport(Interface):
    """Datagrams and stream exchanges, over real sockets or a test network."""

    local_address = Attribute("The (host, port) bound for both UDP and TCP.")

    def send_packet(data: bytes, addr: Address) -> None:
        """Send one datagram; errors are counted, never raised."""

    def stream_exchange(
        addr: Address, data: bytes, reader: StreamReader, timeout: float
    ) -> Deferred[StreamMessage | None]:
        """Connect, send *data*, read one reply with *reader* (None when no
        reply is expected and the peer closed), then close."""

    def stop() -> Deferred[None]:
        """Stop listening."""


@implementer(IDelegate)
class NullDelegate:
    def node_meta(self, limit: int) -> bytes:
        return b""

    def notify_msg(self, msg: bytes) -> None:
        pass

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return []

    def pending_broadcasts(self) -> int:
        return 0

    def local_state(self, join: bool) -> bytes:
        return b""

    def merge_remote_state(self, buf: bytes, join: bool) -> None:
        pass


@implementer(IEventDelegate)
class CallbackEvents:
    """Membership events delivered to plain callables (any may be omitted)."""

    def __init__(
        self,
        on_join: Callable[[Node], Any] | None = None,
        on_leave: Callable[[Node], Any] | None = None,
        on_update: Callable[[Node], Any] | None = None,
    ) -> None:
        self._join, self._leave, self._update = on_join, on_leave, on_update

    def notify_join(self, node: Node) -> None:
        if self._join:
            self._join(node)

    def notify_leave(self, node: Node) -> None:
        if self._leave:
            self._leave(node)

    def notify_update(self, node: Node) -> None:
        if self._update:
            self._update(node)


@implementer(IConflictDelegate)
class NullConflicts:
    def notify_conflict(self, existing: Node, other: Node) -> None:
        pass


@implementer(IPingDelegate)
class NullPings:
    def ack_payload(self) -> bytes:
        return b""

    def notify_ping_complete(self, node: Node, rtt: float, payload: bytes) -> None:
        pass
