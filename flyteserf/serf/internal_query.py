"""Serf's own queries, named ``_serf_*`` (spec §3.8).

They ride the ordinary query machinery (gossip, dedup, acks, relays) but
are answered here and never reach the event sink: reachability pings, name
conflict resolution and the four keyring operations ``serf keys`` runs.
"""

from __future__ import annotations

from twisted.logger import Logger

from flyteserf.serf.errors import SerfError
from flyteserf.serf.interfaces import IInternalQueryHost
from flyteserf.serf.query import IncomingQuery
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.keyring import KeyringError, encode_key
from flyteserf.wire.serf_messages import (
    KeyRequest,
    KeyResponse,
    SerfMessageType,
    encode_conflict_response,
)

__all__ = [
    "CONFLICT_QUERY",
    "INSTALL_KEY_QUERY",
    "INTERNAL_QUERY_PREFIX",
    "LIST_KEYS_QUERY",
    "MIN_ENCODED_KEY_LENGTH",
    "PING_QUERY",
    "REMOVE_KEY_QUERY",
    "USE_KEY_QUERY",
    "InternalQueries",
    "internal_query_name",
]

INTERNAL_QUERY_PREFIX = "_serf_"
PING_QUERY = "ping"
CONFLICT_QUERY = "conflict"
INSTALL_KEY_QUERY = "install-key"
USE_KEY_QUERY = "use-key"
REMOVE_KEY_QUERY = "remove-key"
LIST_KEYS_QUERY = "list-keys"
#: Serf's estimate of the smallest encoded key, bounding a list-keys answer.
MIN_ENCODED_KEY_LENGTH = 25

_NO_KEYRING = "No keyring to modify (encryption not enabled)"
_EMPTY_KEYRING = "Keyring is empty (encryption not enabled)"


def internal_query_name(name: str) -> str:
    return INTERNAL_QUERY_PREFIX + name


class InternalQueries:
    """Answers ``_serf_*`` queries for one node."""

    log = Logger()

    def __init__(self, host: IInternalQueryHost) -> None:
        self.host = host

    @staticmethod
    def is_internal(query: IncomingQuery) -> bool:
        return query.name.startswith(INTERNAL_QUERY_PREFIX)

    def handle(self, query: IncomingQuery) -> None:
        name = query.name[len(INTERNAL_QUERY_PREFIX):]
        if name == PING_QUERY:
            return  # the ack, if asked for, was already sent
        handler = {
            CONFLICT_QUERY: self._conflict,
            INSTALL_KEY_QUERY: self._install_key,
            USE_KEY_QUERY: self._use_key,
            REMOVE_KEY_QUERY: self._remove_key,
            LIST_KEYS_QUERY: self._list_keys,
        }.get(name)
        if handler is None:
            self.log.warn("Unhandled internal query '{name}'", name=name)
            return
        handler(query)

    # --- name conflicts -----------------------------------------------------

    def _conflict(self, query: IncomingQuery) -> None:
        node = query.payload.decode("utf-8", "surrogateescape")
        if node == self.host.node_name:
            return  # never vote about ourselves
        self.log.debug("Got conflict resolution query for '{node}'", node=node)
        try:
            query.respond(encode_conflict_response(self.host.conflict_member(node)))
        except SerfError as e:
            self.log.error("Failed to respond to conflict query: {e}", e=str(e))

    # --- keys -----------------------------------------------------------------------

    def _key_request(self, query: IncomingQuery) -> KeyRequest | None:
        try:
            return KeyRequest.unpack(query.payload[1:])
        except DecodeError as e:
            self.log.error("Failed to decode key request: {e}", e=str(e))
            return None

    def _modify(self, query: IncomingQuery, what: str) -> None:
        response = KeyResponse(result=False)
        request = self._key_request(query)
        keyring = self.host.keyring
        if request is None:
            pass
        elif not keyring:
            response = KeyResponse(result=False, message=_NO_KEYRING)
            self.log.error(_NO_KEYRING)
        else:
            self.log.info("Received {what} query", what=what)
            try:
                if what == INSTALL_KEY_QUERY:
                    keyring.add_key(request.key)
                elif what == USE_KEY_QUERY:
                    keyring.use_key(request.key)
                else:
                    keyring.remove_key(request.key)
                self.host.write_keyring_file()
            except (KeyringError, SerfError) as e:
                response = KeyResponse(result=False, message=str(e))
                self.log.error("Failed to handle {what} query: {e}", what=what, e=str(e))
            else:
                response = KeyResponse(result=True)
        self._send(query, response.encode())

    def _install_key(self, query: IncomingQuery) -> None:
        self._modify(query, INSTALL_KEY_QUERY)

    def _use_key(self, query: IncomingQuery) -> None:
        self._modify(query, USE_KEY_QUERY)

    def _remove_key(self, query: IncomingQuery) -> None:
        self._modify(query, REMOVE_KEY_QUERY)

    def _list_keys(self, query: IncomingQuery) -> None:
        keyring = self.host.keyring
        if not keyring:
            self.log.error(_EMPTY_KEYRING)
            self._send(query, KeyResponse(result=False, message=_EMPTY_KEYRING).encode())
            return
        self.log.info("Received list-keys query")
        keys = [encode_key(k) for k in keyring.keys]
        primary = encode_key(keyring.primary_key) if keyring.primary_key else ""
        response = KeyResponse(result=True, keys=tuple(keys), primary_key=primary)
        # Trim the list until the whole type-5 message fits the response limit.
        limit = query.response_size_limit
        actual = len(keys)
        for i in range(limit // MIN_ENCODED_KEY_LENGTH, -1, -1):
            message = query.create_response(response.encode())
            raw = message.encode()
            if len(raw) > limit:
                response = KeyResponse(
                    result=True,
                    keys=tuple(keys[:i]),
                    primary_key=primary,
                    message=f"truncated key list response, showing first {i} of {actual} keys",
                )
                continue
            if actual > i:
                self.log.warn("{message}", message=response.message)
            try:
                query.respond_with(raw, message)
            except SerfError as e:
                self.log.error("Failed to respond to key query: {e}", e=str(e))
            return
        self.log.error("Failed to truncate response so that it fits into message")

    def _send(self, query: IncomingQuery, payload: bytes) -> None:
        assert payload[0] == SerfMessageType.KEY_RESPONSE
        try:
            query.respond(payload)
        except SerfError as e:
            self.log.error("Failed to respond to key query: {e}", e=str(e))
