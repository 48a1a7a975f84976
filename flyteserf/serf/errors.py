"""Errors the serf layer raises, worded as Serf words them.

The RPC layer passes these texts to the ``serf`` CLI verbatim, so where the
Go agent has a message for the same failure, the message is Serf's.
"""

from __future__ import annotations

__all__ = ["SerfError", "RespondError"]


class SerfError(Exception):
    """A serf operation was refused or failed; ``str()`` is Serf's text."""


class RespondError(SerfError):
    """A query response could not be sent (already sent, too late, too big)."""
