"""The rings that make gossip idempotent: user events and query IDs (spec §3.6, §3.7).

Gossip delivers every message several times and in any order.  Serf keeps
the last ``EventBuffer`` (512) Lamport times of user events and of queries
in rings indexed by ``LTime % size``; a message already in its slot is a
duplicate, one older than the ring is too old to judge and is dropped.
"""

from __future__ import annotations

from flyteserf.wire.serf_messages import EventEntry, UserEvents

__all__ = ["EventBuffer", "QueryBuffer", "too_old"]


def too_old(ltime: int, now: int, size: int) -> bool:
    """Older than the ring reaches back (Go's "received old event/query")."""
    return now > size and ltime < now - size


class EventBuffer:
    """The user-event ring; its slots also travel in push/pull (spec §3.9)."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._slots: list[UserEvents | None] = [None] * size
        #: Events below this Lamport time are ignored (snapshot, join without replay).
        self.min_time = 0

    def add(self, ltime: int, name: str, payload: bytes, now: int) -> bool:
        """Record an event; False if it is old, too old or a duplicate.

        *now* is the event clock after witnessing *ltime*.
        """
        if ltime < self.min_time or too_old(ltime, now, self.size):
            return False
        idx = ltime % self.size
        slot = self._slots[idx]
        entry = EventEntry(name=name, payload=payload)
        if slot is not None and slot.ltime == ltime:
            if entry in slot.events:
                return False
            self._slots[idx] = UserEvents(ltime=ltime, events=(*slot.events, entry))
        else:
            self._slots[idx] = UserEvents(ltime=ltime, events=(entry,))
        return True

    def slots(self) -> tuple[UserEvents | None, ...]:
        """Every slot, empty ones as None, as Go sends ``[]*userEvents``."""
        return tuple(self._slots)


class QueryBuffer:
    """The query-ID ring: one slot per Lamport time, holding the IDs seen."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._slots: list[tuple[int, list[int]] | None] = [None] * size
        #: Queries below this Lamport time are ignored (snapshot).
        self.min_time = 0

    def add(self, ltime: int, query_id: int, now: int) -> bool:
        """Record a query; False if it is old, too old or already seen."""
        if ltime < self.min_time or too_old(ltime, now, self.size):
            return False
        idx = ltime % self.size
        slot = self._slots[idx]
        if slot is not None and slot[0] == ltime:
            if query_id in slot[1]:
                return False
            slot[1].append(query_id)
        else:
            self._slots[idx] = (ltime, [query_id])
        return True
