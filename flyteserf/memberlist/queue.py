"""The broadcast queue: what to piggyback on the next packet, and how often.

A faithful port of memberlist 0.2.2's ``TransmitLimitedQueue``: messages
are handed out freshest first (fewest transmits), largest first within a
tier, newest first among equals, and each one is dropped after
``retransmit_mult × ceil(log10(n + 1))`` sends. Matching the order matters:
it decides which updates reach a crowded cluster first.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from typing import ClassVar

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from flyteserf.memberlist.interfaces import IBroadcast, IUniqueBroadcast
from flyteserf.memberlist.timing import retransmit_limit

__all__ = ["NamedBroadcast", "TransmitLimitedQueue", "UniqueBroadcast"]


def _fire(notify: Deferred[None] | None) -> None:
    """Fire an optional completion Deferred exactly once."""
    if notify is not None and not notify.called:
        notify.callback(None)


@implementer(IBroadcast)
@attrs.define(eq=False)
class NamedBroadcast:
    """A memberlist alive/suspect/dead message, named by the node it is about.

    A newer message about the same node replaces a queued one, so the
    cluster never spends bandwidth on a superseded state. ``notify`` fires
    when the message leaves the queue (leave waits on it).
    """

    name: str
    msg: bytes
    notify: Deferred[None] | None = None

    def message(self) -> bytes:
        return self.msg

    def invalidates(self, other: IBroadcast) -> bool:
        return getattr(other, "name", None) == self.name

    def finished(self) -> None:
        _fire(self.notify)


@implementer(IUniqueBroadcast)
@attrs.define(eq=False)
class UniqueBroadcast:
    """A serf message (event, query, intent): never replaces another."""

    name: ClassVar[None] = None

    msg: bytes
    notify: Deferred[None] | None = None

    def message(self) -> bytes:
        return self.msg

    def invalidates(self, other: IBroadcast) -> bool:
        return False

    def finished(self) -> None:
        _fire(self.notify)


@attrs.define(eq=False)
class _Entry:
    """A queued broadcast with its place in the order."""

    transmits: int
    msg: bytes
    id: int
    b: IBroadcast
    name: str | None
    unique: bool

    @property
    def key(self) -> tuple[int, int]:
        """Sort key inside one transmit tier: longest, then newest, first."""
        return (-len(self.msg), -self.id)


class TransmitLimitedQueue:
    """Broadcasts waiting to be piggybacked, each sent a limited number of times.

    Entries live in one sorted list per transmit count (a "tier"), keyed by
    ``(-length, -id)``; taking the largest message that fits is one bisect,
    so :meth:`get_broadcasts` stays cheap for the 4096-deep queues serf
    allows. The retransmit limit is computed from ``num_nodes()`` on every
    call, as the cluster grows or shrinks.

    :meth:`IBroadcast.finished` is called after the queue's own bookkeeping
    is done, so a completion callback may safely queue a new broadcast.
    """

    def __init__(self, num_nodes: Callable[[], int], retransmit_mult: int) -> None:
        self.num_nodes = num_nodes
        self.retransmit_mult = retransmit_mult
        self._tiers: dict[int, list[tuple[int, int]]] = {}
        self._entries: dict[int, _Entry] = {}
        self._named: dict[str, _Entry] = {}
        self._id_gen = 0

    # -- bookkeeping ------------------------------------------------------

    def _add(self, entry: _Entry) -> None:
        self._entries[entry.id] = entry
        insort(self._tiers.setdefault(entry.transmits, []), entry.key)
        if entry.name:
            self._named[entry.name] = entry

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry.id]
        tier = self._tiers[entry.transmits]
        del tier[bisect_left(tier, entry.key)]
        if not tier:
            del self._tiers[entry.transmits]
        if entry.name and self._named.get(entry.name) is entry:
            del self._named[entry.name]

    def _walk(self) -> Iterator[_Entry]:
        """Entries in transmit order (a snapshot)."""
        for transmits in sorted(self._tiers):
            for _, neg_id in list(self._tiers[transmits]):
                yield self._entries[-neg_id]

    # -- public API -------------------------------------------------------

    def queue_broadcast(self, b: IBroadcast, *, initial_transmits: int = 0) -> None:
        """Queue ``b``, dropping the queued broadcasts it supersedes.

        A named broadcast replaces the one with the same name; a unique one
        replaces nothing; any other asks each queued plain broadcast
        ``b.invalidates(old)``. ``initial_transmits`` exists for tests.
        """
        self._id_gen += 1
        name = getattr(b, "name", None) or None
        unique = name is None and IUniqueBroadcast.providedBy(b)
        entry = _Entry(
            transmits=initial_transmits,
            msg=b.message(),
            id=self._id_gen,
            b=b,
            name=name,
            unique=unique,
        )
        dropped: list[_Entry] = []
        if name is not None:
            old = self._named.get(name)
            if old is not None:
                dropped.append(old)
        elif not unique:
            # Slow path: only plain broadcasts can invalidate each other.
            dropped = [
                cur
                for cur in self._walk()
                if cur.name is None and not cur.unique and b.invalidates(cur.b)
            ]
        for old in dropped:
            self._remove(old)
        self._add(entry)
        for old in dropped:
            old.b.finished()

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        """Messages to fill at most ``limit`` bytes, ``overhead`` bytes each extra.

        Walks the tiers from the fewest transmits up, each time taking the
        largest message that fits in ``limit − used − overhead``; every
        message taken is counted as sent once more and is dropped (with
        ``finished()``) when it reaches the retransmit limit.
        """
        if not self._entries:
            return []
        transmit_limit = retransmit_limit(self.retransmit_mult, self.num_nodes())
        used = 0
        to_send: list[bytes] = []
        reinsert: list[_Entry] = []
        done: list[_Entry] = []
        for transmits in sorted(self._tiers):
            while True:
                free = limit - used - overhead
                if free <= 0:
                    break
                tier = self._tiers.get(transmits)
                if not tier:
                    break
                # Keys are (-len, -id): the first key >= (-free,) is the
                # longest (then newest) message with len <= free.
                i = bisect_left(tier, (-free,))
                if i == len(tier):
                    break
                entry = self._entries[-tier[i][1]]
                self._remove(entry)
                used += overhead + len(entry.msg)
                to_send.append(entry.msg)
                if entry.transmits + 1 >= transmit_limit:
                    done.append(entry)
                else:
                    # Bumped entries rejoin only after the walk, or the
                    # next tier would offer them a second time.
                    entry.transmits += 1
                    reinsert.append(entry)
            if limit - used - overhead <= 0:
                break
        for entry in reinsert:
            self._add(entry)
        for entry in done:
            entry.b.finished()
        return to_send

    def num_queued(self) -> int:
        """How many broadcasts are waiting."""
        return len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def ordered_view(self) -> list[tuple[int, bytes]]:
        """``(transmits, message)`` in hand-out order, for tests and debugging."""
        return [(e.transmits, e.msg) for e in self._walk()]

    def reset(self) -> None:
        """Drop everything, calling ``finished()`` on each broadcast in order."""
        entries = list(self._walk())
        self._tiers.clear()
        self._entries.clear()
        self._named.clear()
        self._id_gen = 0
        for entry in entries:
            entry.b.finished()

    def prune(self, max_retain: int) -> None:
        """Keep at most ``max_retain`` broadcasts, dropping from the far end of
        the order: most transmitted first, then shortest, then oldest."""
        dropped: list[_Entry] = []
        while len(self._entries) > max(max_retain, 0):
            tier = self._tiers[max(self._tiers)]
            entry = self._entries[-tier[-1][1]]
            self._remove(entry)
            dropped.append(entry)
        for entry in dropped:
            entry.b.finished()
