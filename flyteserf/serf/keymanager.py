"""Cluster-wide keyring changes: ``serf keys -install/-use/-remove/-list`` (spec §3.8).

Each operation is one internal query; every node applies it to its own
keyring and answers with a ``nodeKeyResponse``.  The :class:`KeyManager`
tallies the answers as Serf's ``KeyManager`` does and fails with Serf's
``"%d/%d nodes reported failure"`` texts; the tally is kept on the error,
because the RPC layer sends it back even when the operation failed.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, DeferredLock, fail
from twisted.logger import Logger

from flyteserf.serf.errors import SerfError
from flyteserf.serf.interfaces import IKeyQueryHost
from flyteserf.serf.internal_query import (
    INSTALL_KEY_QUERY,
    LIST_KEYS_QUERY,
    REMOVE_KEY_QUERY,
    USE_KEY_QUERY,
    internal_query_name,
)
from flyteserf.serf.query import NodeResponse, QueryParam
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.keyring import KeyringError, decode_base64
from flyteserf.wire.serf_messages import KeyRequest, KeyResponse as KeyResponseMessage, SerfMessageType

__all__ = ["KeyManager", "KeyQueryError", "KeyResponse"]


@attrs.define
class KeyResponse:
    """The tally of one key operation (Go's ``KeyResponse``)."""

    #: node name -> the node's message (errors, truncation notices).
    messages: dict[str, str] = attrs.field(factory=dict)
    #: memberlist's member count when the query started.
    num_nodes: int = 0
    num_resp: int = 0
    num_err: int = 0
    #: base64 key -> how many nodes hold it (list-keys only).
    keys: dict[str, int] = attrs.field(factory=dict)
    #: base64 key -> how many nodes use it as primary (list-keys only).
    primary_keys: dict[str, int] = attrs.field(factory=dict)


class KeyQueryError(SerfError):
    """A key operation failed; :attr:`response` holds the tally so far."""

    def __init__(self, message: str, response: KeyResponse) -> None:
        super().__init__(message)
        self.response = response


class KeyManager:
    """Runs key queries one at a time, like Go's key manager lock."""

    log = Logger()

    def __init__(self, host: IKeyQueryHost) -> None:
        self.host = host
        self._lock = DeferredLock()

    def install_key(self, key: str, relay_factor: int = 0) -> Deferred[KeyResponse]:
        """Add a (base64) key on every node; it is not used for sending yet."""
        return self._run(key, INSTALL_KEY_QUERY, relay_factor)

    def use_key(self, key: str, relay_factor: int = 0) -> Deferred[KeyResponse]:
        """Make an installed key the primary on every node."""
        return self._run(key, USE_KEY_QUERY, relay_factor)

    def remove_key(self, key: str, relay_factor: int = 0) -> Deferred[KeyResponse]:
        """Remove a key, never the primary, from every node."""
        return self._run(key, REMOVE_KEY_QUERY, relay_factor)

    def list_keys(self, relay_factor: int = 0) -> Deferred[KeyResponse]:
        """Which keys the nodes hold, and how many nodes hold each."""
        return self._run("", LIST_KEYS_QUERY, relay_factor)

    def _run(self, key: str, query: str, relay_factor: int) -> Deferred[KeyResponse]:
        response = KeyResponse()
        try:
            raw_key = decode_base64(key)
        except KeyringError as e:
            return fail(KeyQueryError(str(e), response))
        return self._lock.run(self._request, raw_key, query, relay_factor, response)

    def _request(self, raw_key: bytes, query: str, relay_factor: int, response: KeyResponse) -> Deferred[KeyResponse]:
        payload = KeyRequest(key=raw_key).encode()
        try:
            running = self.host.query(
                internal_query_name(query), payload, QueryParam(relay_factor=relay_factor)
            )
        except SerfError as e:
            return fail(KeyQueryError(str(e), response))
        response.num_nodes = self.host.num_members()

        def tally(r: NodeResponse) -> None:
            self._count(response, r)
            if response.num_resp == response.num_nodes:
                running.close()  # everyone answered: no need to wait for the deadline

        running.on_response(tally)

        def verdict(_: object) -> KeyResponse:
            if response.num_err:
                raise KeyQueryError(f"{response.num_err}/{response.num_nodes} nodes reported failure", response)
            if response.num_resp != response.num_nodes:
                raise KeyQueryError(f"{response.num_resp}/{response.num_nodes} nodes reported success", response)
            return response

        return running.when_done().addCallback(verdict)

    @staticmethod
    def _count(response: KeyResponse, r: NodeResponse) -> None:
        response.num_resp += 1
        if not r.payload or r.payload[0] != SerfMessageType.KEY_RESPONSE:
            response.messages[r.from_] = f"Invalid key query response type: {list(r.payload)}"
            response.num_err += 1
            return
        try:
            node = KeyResponseMessage.unpack(r.payload[1:])
        except DecodeError:
            response.messages[r.from_] = f"Failed to decode key query response: {list(r.payload)}"
            response.num_err += 1
            return
        if not node.result:
            response.messages[r.from_] = node.message
            response.num_err += 1
        elif node.message:
            response.messages[r.from_] = node.message
        for key in node.keys:
            response.keys[key] = response.keys.get(key, 0) + 1
        if node.primary_key:
            response.primary_keys[node.primary_key] = response.primary_keys.get(node.primary_key, 0) + 1
