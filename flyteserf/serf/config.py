"""What one serf node is configured with (serf 0.9.4 ``Config`` plus the agent's choices).

Defaults are the ``serf agent`` ones (spec §5.2), not the Go library's: the
agent speaks serf protocol 5 and coalesces events for 3 s / 1 s.  A library
user who wants every event at once sets the four coalesce periods to 0.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from flyteserf.memberlist.config import MemberlistConfig
from flyteserf.serf.errors import SerfError
from flyteserf.wire.keyring import Keyring
from flyteserf.wire.tags import TagsTooLarge, encode_tags

__all__ = [
    "PROTOCOL_VERSION_MAX",
    "PROTOCOL_VERSION_MIN",
    "USER_EVENT_SIZE_LIMIT",
    "SerfConfig",
    "encode_node_meta",
    "vsn_for",
]

#: The serf (delegate) protocol versions 0.9.4 understands.
PROTOCOL_VERSION_MIN = 2
PROTOCOL_VERSION_MAX = 5
#: The hard ceiling on ``user_event_size_limit`` (Go's ``UserEventSizeLimit``).
USER_EVENT_SIZE_LIMIT = 9 * 1024
#: memberlist 1..5, speaking 2, whatever serf protocol is chosen (Go's ProtocolVersionMap).
_MEMBERLIST_VSN = (1, 5, 2)

DAY = 24 * 3600.0


def encode_node_meta(tags: Mapping[str, str], protocol: int) -> bytes:
    """Tags as memberlist meta: ``0xFF + msgpack`` from protocol 3, a bare role before.

    Raises :class:`SerfError` with Serf's text when they do not fit 512 bytes.
    """
    if protocol < 3:
        meta = tags.get("role", "").encode("utf-8", "surrogateescape")
        if len(meta) > 512:
            raise SerfError("Encoded length of tags exceeds limit of 512 bytes")
        return meta
    try:
        return encode_tags(tags)
    except TagsTooLarge as e:
        raise SerfError(str(e)) from None


def vsn_for(protocol: int) -> bytes:
    """memberlist's 6-byte Vsn for a node speaking serf *protocol*."""
    return bytes((*_MEMBERLIST_VSN, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX, protocol))


def _tags(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


@attrs.frozen
class SerfConfig:
    """One node's serf settings; durations are float seconds.

    Frozen, so a running :class:`~flyteserf.serf.serf.Serf` can share it;
    derive variants with :meth:`evolve`.  Invalid values raise
    :class:`SerfError` with Serf's own wording.
    """

    node_name: str
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=_tags)
    #: Serf protocol spoken (2..5).  Below 4 this node cannot start queries.
    protocol: int = PROTOCOL_VERSION_MAX
    memberlist: MemberlistConfig = attrs.field(factory=MemberlistConfig.lan)
    #: The encryption keyring (shared with memberlist); None = no encryption.
    keyring: Keyring | None = attrs.field(default=None, eq=False)
    #: Rewritten after every successful key query when set (spec §3.13).
    keyring_file: str | None = None

    user_event_size_limit: int = 512
    query_size_limit: int = 1024
    query_response_size_limit: int = 1024
    event_buffer: int = 512
    query_buffer: int = 512
    query_timeout_mult: int = 16

    broadcast_timeout: float = 5.0
    leave_propagate_delay: float = 1.0
    reap_interval: float = 15.0
    reconnect_interval: float = 30.0
    reconnect_timeout: float = DAY
    tombstone_timeout: float = DAY
    recent_intent_timeout: float = 300.0
    queue_check_interval: float = 30.0
    queue_depth_warning: int = 128
    max_queue_depth: int = 4096
    #: When > 0 the queue limit is ``max(min_queue_depth, 2 × members)``.
    min_queue_depth: int = 0

    #: Member-event coalescing window (0 = deliver at once).
    coalesce_period: float = 3.0
    quiescent_period: float = 1.0
    #: User-event coalescing window, for events sent with ``coalesce=True``.
    user_coalesce_period: float = 3.0
    user_quiescent_period: float = 1.0

    snapshot_path: str | None = None
    rejoin_after_leave: bool = False
    enable_name_conflict_resolution: bool = True
    #: Start memberlist's incarnation at the reactor's clock (whole seconds),
    #: so a restarted node's alive beats the record of its previous run.
    incarnation_from_clock: bool = True

    def __attrs_post_init__(self) -> None:
        if self.protocol < PROTOCOL_VERSION_MIN:
            raise SerfError(
                f"Protocol version '{self.protocol}' too low. Must be in range: "
                f"[{PROTOCOL_VERSION_MIN}, {PROTOCOL_VERSION_MAX}]"
            )
        if self.protocol > PROTOCOL_VERSION_MAX:
            raise SerfError(
                f"Protocol version '{self.protocol}' too high. Must be in range: "
                f"[{PROTOCOL_VERSION_MIN}, {PROTOCOL_VERSION_MAX}]"
            )
        if self.user_event_size_limit > USER_EVENT_SIZE_LIMIT:
            raise SerfError(f"user event size limit exceeds limit of {USER_EVENT_SIZE_LIMIT} bytes")
        if not self.node_name:
            raise SerfError("node name must not be empty: give every node a unique name")
        encode_node_meta(self.tags, self.protocol)

    def evolve(self, **changes: Any) -> SerfConfig:
        """A copy with *changes* applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    @property
    def vsn(self) -> bytes:
        return vsn_for(self.protocol)

    def node_meta(self) -> bytes:
        return encode_node_meta(self.tags, self.protocol)
