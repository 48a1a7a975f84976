"""What the RPC server needs from the agent it serves (spec §4.2).

:class:`IRPCAgent` is the one seam between :mod:`flyteserf.rpc.server` and
the agent: every RPC command maps onto one of its members.  Methods that
wait on the network return a :class:`~twisted.internet.defer.Deferred`; the
server also accepts a plain value (or a raised exception) from any of them,
so a synchronous implementation is fine.  Failures are reported to the
client as ``str(exception)``, so exceptions must carry Serf's texts (the
``serf`` CLI prints them verbatim): :class:`flyteserf.serf.errors.SerfError`
and friends already do.

The values the agent hands back are duck-typed; the :class:`typing.Protocol`
classes below say what the server reads from them, and the serf layer's own
types (:class:`flyteserf.serf.query.QueryResponse`,
:class:`flyteserf.serf.keymanager.KeyResponse`,
:class:`flyteserf.wire.serf_messages.Coordinate`,
:class:`flyteserf.serf.query.IncomingQuery`) fit them as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

__all__ = [
    "IRPCAgent",
    "KeyResponseLike",
    "NodeResponseLike",
    "QueryHandle",
]


class NodeResponseLike(Protocol):
    """One answer to our query (:class:`flyteserf.serf.query.NodeResponse`)."""

    @property
    def from_(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


class QueryHandle(Protocol):
    """A running query (:class:`flyteserf.serf.query.QueryResponse`)."""

    def on_ack(self, listener: Callable[[str], object]) -> None:
        """Call *listener* with each acking node's name, past ones first."""

    def on_response(self, listener: Callable[[Any], object]) -> None:
        """Call *listener* with each :class:`NodeResponseLike`, past ones first."""

    def when_done(self) -> Deferred[Any]:
        """Fires once the query is over (its deadline, or closed early)."""


class KeyResponseLike(Protocol):
    """The tally of a key operation (:class:`flyteserf.serf.keymanager.KeyResponse`).

    A failed operation's exception carries the tally so far as
    ``.response`` (:class:`flyteserf.serf.keymanager.KeyQueryError`); the
    RPC response body is sent from it.
    """

    messages: dict[str, str]
    num_nodes: int
    num_resp: int
    num_err: int
    keys: dict[str, int]


class IRPCAgent(Interface):
    """The agent as the RPC server sees it."""

    node_name = Attribute("This node's name (str).")

    log_ring = Attribute(
        "The agent's flyteserf.agent.logring.LogRing (last 512 log lines), "
        "replayed then streamed by the `monitor` command."
    )

    def members() -> Sequence[Any]:
        """Every known member (flyteserf.serf.events.Member), failed and left ones included until reaped."""

    def event(name: str, payload: bytes, coalesce: bool) -> Deferred[None] | None:
        """Send a user event; raise (or fail) with Serf's text, e.g. the size-limit errors."""

    def force_leave(node: str, prune: bool) -> Deferred[None] | None:
        """Force *node* into the left state (``prune``: erase it now); an unknown node is not an error."""

    def join(addresses: Sequence[str], replay: bool) -> Deferred[int]:
        """Join through *addresses*; fires with how many answered.

        On failure the exception's text is Go's multierror text
        (``"1 error occurred:\\n\\t* Failed to join …\\n\\n"``); an optional
        ``num`` attribute on it is sent as ``Num`` (default 0).  *replay*
        false means old user events are not delivered.
        """

    def leave() -> Deferred[None]:
        """Leave the cluster gracefully (the ``leave`` command, before :meth:`stop_agent`)."""

    def stop_agent() -> None:
        """Shut the agent down after a ``leave``.

        Called right after the response has been written: let pending writes
        flush (stop listening, ``loseConnection``), do not abort connections.
        """

    def set_tags(tags: Mapping[str, str], delete: Sequence[str]) -> Deferred[None] | None:
        """New tags = current tags minus *delete*, plus *tags*; then announce them (and save the tags file)."""

    def query(
        name: str,
        payload: bytes,
        filter_nodes: Sequence[str],
        filter_tags: Mapping[str, str],
        request_ack: bool,
        relay_factor: int,
        timeout: float,
    ) -> QueryHandle:
        """Start a query (*timeout* in seconds, 0 = Serf's default); raise with Serf's text if refused."""

    def install_key(key: str) -> Deferred[Any]:
        """``install-key`` on every node; *key* is base64 (already checked to decode)."""

    def use_key(key: str) -> Deferred[Any]:
        """``use-key`` on every node."""

    def remove_key(key: str) -> Deferred[Any]:
        """``remove-key`` on every node."""

    def list_keys() -> Deferred[Any]:
        """``list-keys``: which keys the nodes hold, and how many nodes hold each.

        The key commands fire with a :class:`KeyResponseLike`; their failures
        carry one as ``.response``.
        """

    def stats() -> Mapping[str, Mapping[str, str]]:
        """Serf's stats: ``agent``, ``runtime``, ``serf``, ``tags``, ``event_handlers``; every value a string."""

    def get_coordinate(node: str) -> Any:
        """The cached Vivaldi coordinate of *node* (``vec``, ``error``, ``adjustment``, ``height``), or None."""

    def subscribe_events(callback: Callable[[Any], object]) -> Callable[[], None]:
        """Deliver every event to *callback* until the returned function is called.

        Events are member events after the agent's coalescing
        (flyteserf.serf.events.MemberEvent), user events (UserEvent) and
        queries (flyteserf.serf.query.IncomingQuery, answered with
        ``.respond(bytes)``; ``.pending()`` says whether it still can be).
        """
