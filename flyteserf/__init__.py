"""flyteserf: the Serf gossip protocol on Twisted.

A Serf agent that real ``serf`` agents accept as a peer, a Flyte pack that
bridges a Serf cluster and Flyte flows, and a library to embed both in any
Twisted program.
"""

__version__ = "0.1.0"
