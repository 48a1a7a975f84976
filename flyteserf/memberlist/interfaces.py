"""The seams of the memberlist layer, as zope interfaces."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IBroadcast(Interface):
    """A message to piggyback on gossip a bounded number of times.

    The broadcast queue only sees bytes and these three hooks, so memberlist's
    own alive/suspect/dead messages and serf's events share one queue type.
    """

    name = Attribute(
        "A str for a named broadcast (a newer one with the same name replaces "
        "the queued one, as memberlist does for node state), or None."
    )

    def message() -> bytes:
        """Return the encoded message; its length must not change."""

    def invalidates(other: IBroadcast) -> bool:
        """Whether queueing this broadcast makes ``other`` obsolete.

        Only consulted for broadcasts that are neither named nor unique.
        """

    def finished() -> None:
        """Called once, when the queue drops the message for good.

        That happens on invalidation, on reaching the retransmit limit, on
        prune and on reset.
        """


class IUniqueBroadcast(IBroadcast):
    """Marker: every message is distinct, so the queue never scans for
    duplicates (serf's events, queries and intents)."""
