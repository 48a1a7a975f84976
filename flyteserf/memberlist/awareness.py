"""Lifeguard's local health score.

A node that misses nacks or has to refute suspicions is probably the slow
one; it then probes less often (by scaling the probe interval) instead of
wrongly accusing healthy peers.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """A score in ``[0, max_multiplier − 1]``; 0 is healthy."""

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(
                f"awareness: max_multiplier must be >= 1, got {max_multiplier!r}"
            )
        self.max_multiplier = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        """The current health score (higher is less healthy)."""
        return self._score

    def apply_delta(self, delta: int) -> bool:
        """Move the score by ``delta``, pinned at both ends.

        Returns whether the score changed (memberlist only reports the
        gauge then).
        """
        before = self._score
        self._score = min(max(before + delta, 0), self.max_multiplier - 1)
        return self._score != before

    def scale_timeout(self, timeout: float) -> float:
        """``timeout × (score + 1)``: the probe interval for this health."""
        return timeout * (self._score + 1)
