"""Serf's Lamport clocks (serf-wire §3.4).

Serf orders membership intents, user events and queries with three
independent logical clocks, so that a message can be judged newer or older
than what a node already knows without trusting anyone's wall clock.
"""

from __future__ import annotations

__all__ = ["LamportClock"]

#: Lamport times are Go ``uint64``.
_UINT64 = 2**64


class LamportClock:
    """A uint64 counter with Serf's ``Witness`` rule.

    Twisted runs everything on one thread, so no locking is needed.
    """

    __slots__ = ("_time",)

    def __init__(self, start: int = 0) -> None:
        self._time = start % _UINT64

    def time(self) -> int:
        """The current value."""
        return self._time

    def increment(self) -> int:
        """Add one and return the new value."""
        self._time = (self._time + 1) % _UINT64
        return self._time

    def witness(self, other: int) -> None:
        """Move past *other* if it is not behind us: ``v >= now`` gives ``now = v + 1``."""
        if other >= self._time:
            self._time = (other + 1) % _UINT64

    def __repr__(self) -> str:
        return f"<LamportClock {self._time}>"
