"""memberlist's timing profiles (``serf agent -profile lan|wan|local``).

The values are memberlist 0.2.2's ``DefaultLANConfig``, ``DefaultWANConfig``
and ``DefaultLocalConfig``; every duration is in float seconds. A node with
different values still interoperates, but detects failures and converges at
a different pace than the Go nodes around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from flyteserf.memberlist.timing import (
    push_pull_scale,
    random_stagger,
    retransmit_limit,
    suspicion_k,
    suspicion_timeout,
    suspicion_timeout_bounds,
)

__all__ = [
    "PROFILES",
    "MemberlistConfig",
    "Profile",
    "push_pull_scale",
    "random_stagger",
    "retransmit_limit",
    "suspicion_k",
    "suspicion_timeout",
    "suspicion_timeout_bounds",
]


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Reject negative counts and durations with one clear line."""
    if value < 0:
        raise ValueError(
            f"memberlist config: {attribute.name} must be >= 0, got {value!r}"
        )


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Reject values that would make a loop spin or a timer never start."""
    if value <= 0:
        raise ValueError(
            f"memberlist config: {attribute.name} must be > 0, got {value!r}"
        )


@attrs.frozen
class MemberlistConfig:
    """The memberlist tunables of one node; the defaults are the LAN profile.

    Frozen so one instance can be shared between the probe, gossip and
    push/pull loops; derive variants with :meth:`evolve`.
    """

    probe_interval: float = attrs.field(default=1.0, converter=float, validator=_positive)
    probe_timeout: float = attrs.field(default=0.5, converter=float, validator=_positive)
    #: 0 disables the gossip loop (piggybacking on probes still happens).
    gossip_interval: float = attrs.field(default=0.2, converter=float, validator=_non_negative)
    gossip_nodes: int = attrs.field(default=3, validator=_non_negative)
    suspicion_mult: int = attrs.field(default=4, validator=_positive)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_positive)
    retransmit_mult: int = attrs.field(default=4, validator=_positive)
    #: 0 disables periodic push/pull.
    push_pull_interval: float = attrs.field(default=30.0, converter=float, validator=_non_negative)
    tcp_timeout: float = attrs.field(default=10.0, converter=float, validator=_positive)
    indirect_checks: int = attrs.field(default=3, validator=_non_negative)
    awareness_max_multiplier: int = attrs.field(default=8, validator=_positive)
    gossip_to_the_dead_time: float = attrs.field(
        default=30.0, converter=float, validator=_non_negative
    )
    #: 0 means a dead node's address can never be taken over by another node.
    dead_node_reclaim_time: float = attrs.field(
        default=0.0, converter=float, validator=_non_negative
    )
    disable_tcp_pings: bool = False
    udp_buffer_size: int = attrs.field(default=1400, validator=_positive)
    handoff_queue_depth: int = attrs.field(default=1024, validator=_positive)
    enable_compression: bool = True
    #: The memberlist protocol version spoken (min 1, max 5 understood).
    protocol_version: int = 2

    @classmethod
    def lan(cls) -> MemberlistConfig:
        """The default profile, for nodes on one local network."""
        return cls()

    @classmethod
    def wan(cls) -> MemberlistConfig:
        """Slower, more forgiving timers for nodes across the internet."""
        return cls(
            probe_interval=5.0,
            probe_timeout=3.0,
            gossip_interval=0.5,
            gossip_nodes=4,
            suspicion_mult=6,
            push_pull_interval=60.0,
            tcp_timeout=30.0,
            gossip_to_the_dead_time=60.0,
        )

    @classmethod
    def local(cls) -> MemberlistConfig:
        """Fast timers for nodes on one host (loopback)."""
        return cls(
            probe_timeout=0.2,
            gossip_interval=0.1,
            suspicion_mult=3,
            retransmit_mult=2,
            push_pull_interval=15.0,
            tcp_timeout=1.0,
            indirect_checks=1,
            gossip_to_the_dead_time=15.0,
        )

    def evolve(self, **changes: Any) -> MemberlistConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    # Derived values, so callers need not thread the multipliers around.

    def retransmit_limit(self, n: int) -> int:
        """Transmissions per broadcast in an ``n``-node cluster."""
        return retransmit_limit(self.retransmit_mult, n)

    def suspicion_bounds(self, n: int) -> tuple[float, float]:
        """``(min, max)`` suspicion timeout in an ``n``-node cluster."""
        return suspicion_timeout_bounds(
            self.suspicion_mult, self.suspicion_max_timeout_mult, n, self.probe_interval
        )

    def suspicion_k(self, n: int) -> int:
        """Confirmations wanted before the suspicion timer bottoms out."""
        return suspicion_k(self.suspicion_mult, n)

    def push_pull_interval_for(self, n: int) -> float:
        """The push/pull period, scaled for an ``n``-node cluster."""
        return push_pull_scale(self.push_pull_interval, n)


#: The spec and the CLI call a set of timings a profile.
Profile = MemberlistConfig

#: ``serf agent -profile`` names; ``lan`` is the default. Read-only.
PROFILES: Mapping[str, MemberlistConfig] = MappingProxyType(
    {
        "lan": MemberlistConfig.lan(),
        "wan": MemberlistConfig.wan(),
        "local": MemberlistConfig.local(),
    }
)
