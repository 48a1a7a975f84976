"""What memberlist knows about one node."""

from __future__ import annotations

import attrs

from flyteserf.wire.messages import NodeState


@attrs.define(eq=False)
class Node:
    """One entry of the node table; mutated in place as gossip arrives."""

    name: str
    addr: str  # IP, textual; v4-mapped v6 already normalised to v4
    port: int
    meta: bytes = b""
    vsn: bytes = b""
    incarnation: int = 0
    state: NodeState = NodeState.DEAD
    state_change: float = 0.0

    @property
    def address(self) -> tuple[str, int]:
        return (self.addr, self.port)

    @property
    def pmin(self) -> int:
        return self.vsn[0] if len(self.vsn) == 6 else 0

    @property
    def pmax(self) -> int:
        """Highest memberlist protocol the node understands (decides CRC, nacks, TCP pings)."""
        return self.vsn[1] if len(self.vsn) == 6 else 0

    @property
    def pcur(self) -> int:
        return self.vsn[2] if len(self.vsn) == 6 else 0

    @property
    def dmin(self) -> int:
        return self.vsn[3] if len(self.vsn) == 6 else 0

    @property
    def dmax(self) -> int:
        return self.vsn[4] if len(self.vsn) == 6 else 0

    @property
    def dcur(self) -> int:
        return self.vsn[5] if len(self.vsn) == 6 else 0

    def is_dead_or_left(self) -> bool:
        return self.state in (NodeState.DEAD, NodeState.LEFT)
