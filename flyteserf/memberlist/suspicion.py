"""Lifeguard's suspicion timer: suspect long, confirm fast.

A suspect node gets ``max`` seconds to refute. Every independent peer that
also suspects it shortens the wait on a log curve towards ``min``, reached
at ``k`` confirmations. This keeps one slow or overloaded prober from
killing healthy nodes while real failures are still declared quickly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Suspicion", "remaining_suspicion_time"]


def remaining_suspicion_time(
    n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Seconds left after ``n`` of ``k`` confirmations, ``elapsed`` seconds in.

    ``max − log(n+1)/log(k+1) × (max − min)``, floored to whole milliseconds
    and never below ``min``, minus ``elapsed``. May be negative: the timer
    is overdue and fires at once.
    """
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = max(math.floor(1000.0 * raw) / 1000.0, min_timeout)
    return timeout - elapsed


class Suspicion:
    """The timer for one suspect node.

    Runs on ``clock.callLater`` only, so it is testable under
    :class:`twisted.internet.task.Clock`. ``timeout_fn`` receives the number
    of confirmations seen when the timer fires (for the "N peer
    confirmations" log line).
    """

    def __init__(
        self,
        clock: IReactorTime,
        from_node: str,
        k: int,
        min_timeout: float,
        max_timeout: float,
        timeout_fn: Callable[[int], None],
    ) -> None:
        self._clock = clock
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self._timeout_fn = timeout_fn
        self._n = 0
        # The accuser is excluded: our own suspect message may be gossiped
        # back to us and must not count as independent evidence.
        self._confirmations: set[str] = {from_node}
        # With no confirmations to wait for, start at the minimum.
        timeout = max_timeout if k >= 1 else min_timeout
        self._call: IDelayedCall = clock.callLater(timeout, self._fire)
        self._start = clock.seconds()

    @property
    def confirmations(self) -> int:
        """Independent confirmations counted so far."""
        return self._n

    def _fire(self) -> None:
        self._timeout_fn(self._n)

    def confirm(self, from_node: str) -> bool:
        """Count ``from_node``'s suspicion; True if it was new evidence.

        Returns False for the original accuser, a repeat, or once ``k``
        confirmations are in (the timer is already at its minimum), so the
        caller only re-gossips suspicions that still matter.
        """
        if self._n >= self.k:
            return False
        if from_node in self._confirmations:
            return False
        self._confirmations.add(from_node)
        self._n += 1
        elapsed = self._clock.seconds() - self._start
        remaining = remaining_suspicion_time(
            self._n, self.k, elapsed, self.min_timeout, self.max_timeout
        )
        if self._call.active():
            # Overdue: fire on the next turn of the reactor, never
            # re-entrantly from inside the caller's message handler.
            self._call.reset(max(remaining, 0.0))
        return True

    def cancel(self) -> None:
        """Stop the timer (the node refuted, died or left some other way)."""
        if self._call.active():
            self._call.cancel()

    def active(self) -> bool:
        """Whether the timer is still pending."""
        return self._call.active()

    def remaining(self) -> float:
        """Seconds until the timer fires; 0 once it has fired or been cancelled."""
        if not self._call.active():
            return 0.0
        return max(self._call.getTime() - self._clock.seconds(), 0.0)
