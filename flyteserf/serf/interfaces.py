"""The seams inside the serf layer, as zope interfaces.

A received query answers, the internal-query handlers and the key manager
each see only the narrow part of :class:`~flyteserf.serf.serf.Serf` they
need, so each can be tested with a small fake and checked with
``verifyObject``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from flyteserf.serf.query import IncomingQuery, QueryParam, QueryResponse
    from flyteserf.wire.serf_messages import Member, QueryResponse as QueryResponseMessage

__all__ = ["IInternalQueryHost", "IKeyQueryHost", "IQueryResponder"]


class IQueryResponder(Interface):
    """What an :class:`~flyteserf.serf.query.IncomingQuery` needs to answer."""

    node_name = Attribute("This node's name (the responses' From).")
    query_response_size_limit = Attribute("The largest type-5 message allowed, in bytes.")

    def seconds() -> float:
        """The reactor's time, against which deadlines are checked."""

    def send_query_response(query: IncomingQuery, raw: bytes, message: QueryResponseMessage) -> None:
        """Send *raw* (a type-5 message) to the query's origin, then relay it."""


class IInternalQueryHost(Interface):
    """What the ``_serf_*`` query handlers need."""

    node_name = Attribute("This node's name.")
    keyring = Attribute("The live Keyring shared with memberlist, or None without encryption.")

    def conflict_member(name: str) -> Member | None:
        """What we know about *name*, in the conflict-response form."""

    def write_keyring_file() -> None:
        """Persist the keyring if a keyring file is configured; raise on failure."""


class IKeyQueryHost(Interface):
    """What the key manager needs."""

    def query(name: str, payload: bytes = b"", params: QueryParam | None = None) -> QueryResponse:
        """Start a query."""

    def num_members() -> int:
        """memberlist's count of members neither dead nor left."""
