"""Serf's three broadcast queues and how they share each packet (spec §2.9, §3.1).

Intents, queries and user events each have a transmit-limited queue sized by
serf's member count (failed and left members included).  When memberlist
has room to piggyback, intents go first, then queries, then events, each
message charged the per-message overhead, as serf's ``GetBroadcasts`` does.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from flyteserf.memberlist.queue import TransmitLimitedQueue, UniqueBroadcast

__all__ = ["SerfQueues"]


class SerfQueues:
    """The intent, event and query queues of one serf node."""

    log = Logger()

    def __init__(self, num_nodes: Callable[[], int], retransmit_mult: int) -> None:
        self.intents = TransmitLimitedQueue(num_nodes, retransmit_mult)
        self.events = TransmitLimitedQueue(num_nodes, retransmit_mult)
        self.queries = TransmitLimitedQueue(num_nodes, retransmit_mult)

    @staticmethod
    def queue(queue: TransmitLimitedQueue, msg: bytes, notify: Deferred[None] | None = None) -> None:
        queue.queue_broadcast(UniqueBroadcast(bytes(msg), notify))

    def num_queued(self) -> int:
        return self.intents.num_queued() + self.queries.num_queued() + self.events.num_queued()

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out: list[bytes] = []
        used = 0
        for queue in (self.intents, self.queries, self.events):
            msgs = queue.get_broadcasts(overhead, limit - used)
            used += sum(len(m) + overhead for m in msgs)
            out.extend(msgs)
        return out

    def named(self) -> tuple[tuple[str, TransmitLimitedQueue], ...]:
        return (("Intent", self.intents), ("Event", self.events), ("Query", self.queries))

    def check_depth(self, warning: int, limit: int) -> None:
        """Warn about deep queues; prune any beyond *limit* (Go's checkQueueDepth)."""
        for name, queue in self.named():
            depth = queue.num_queued()
            if depth >= warning:
                self.log.warn("{name} queue depth: {depth}", name=name, depth=depth)
            if depth > limit:
                self.log.warn(
                    "{name} queue depth ({depth}) exceeds limit ({limit}), dropping messages!",
                    name=name, depth=depth, limit=limit,
                )
                queue.prune(limit)

    def reset(self) -> None:
        for _, queue in self.named():
            queue.reset()
