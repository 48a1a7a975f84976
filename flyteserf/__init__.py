"""flyteserf: the Serf gossip protocol on Twisted.

A Serf agent that real ``serf`` agents accept as a peer, a Flyte pack that
bridges a Serf cluster and Flyte flows, and a library to embed both in any
Twisted program.
"""

__version__ = "0.1.0"

from flyteserf.agent.agent import Agent, AgentConfig  # noqa: E402
from flyteserf.agent.handlers import ANY, Registration  # noqa: E402
from flyteserf.serf.events import EventType, Member, MemberEvent, UserEvent  # noqa: E402
from flyteserf.serf.query import IncomingQuery, NodeResponse, QueryResponse  # noqa: E402
from flyteserf.wire.keyring import Keyring  # noqa: E402

__all__ = [
    "ANY",
    "Agent",
    "AgentConfig",
    "EventType",
    "IncomingQuery",
    "Keyring",
    "Member",
    "MemberEvent",
    "NodeResponse",
    "QueryResponse",
    "Registration",
    "UserEvent",
    "__version__",
]
