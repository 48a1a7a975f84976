"""The memberlist delegates through which serf rides on memberlist (spec §3.1).

Three thin adapters: everything they receive is handed to the
:class:`~flyteserf.serf.serf.Serf` that owns them, so memberlist sees only
its own interfaces and serf's logic stays in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from flyteserf.memberlist.delegates import IConflictDelegate, IDelegate, IEventDelegate
from flyteserf.memberlist.state import Node

if TYPE_CHECKING:
    from flyteserf.serf.serf import Serf

__all__ = ["SerfConflictDelegate", "SerfDelegate", "SerfEventDelegate"]


@implementer(IDelegate)
class SerfDelegate:
    """Node meta, user messages, piggybacked broadcasts and push/pull state."""

    def __init__(self, serf: Serf) -> None:
        self.serf = serf

    def node_meta(self, limit: int) -> bytes:
        meta = self.serf.node_meta()
        if len(meta) > limit:
            raise ValueError(f"Node tags {self.serf.tags!r} exceeds length limit of {limit} bytes")
        return meta

    def notify_msg(self, msg: bytes) -> None:
        self.serf.handle_message(msg)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self.serf.queues.get_broadcasts(overhead, limit)

    def pending_broadcasts(self) -> int:
        return self.serf.queues.num_queued()

    def local_state(self, join: bool) -> bytes:
        return self.serf.local_state(join)

    def merge_remote_state(self, buf: bytes, join: bool) -> None:
        self.serf.merge_remote_state(buf, join)


@implementer(IEventDelegate)
class SerfEventDelegate:
    """memberlist's join/leave/update become serf member events."""

    def __init__(self, serf: Serf) -> None:
        self.serf = serf

    def notify_join(self, node: Node) -> None:
        self.serf.members_table.node_join(node)

    def notify_leave(self, node: Node) -> None:
        self.serf.members_table.node_leave(node)

    def notify_update(self, node: Node) -> None:
        self.serf.members_table.node_update(node)


@implementer(IConflictDelegate)
class SerfConflictDelegate:
    """Two addresses claim one name: serf may vote on who keeps it (spec §3.10)."""

    def __init__(self, serf: Serf) -> None:
        self.serf = serf

    def notify_conflict(self, existing: Node, other: Node) -> None:
        self.serf.handle_node_conflict(existing, other)
