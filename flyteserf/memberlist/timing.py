"""Cluster-size scaling of memberlist's timers and retransmit counts.

These reproduce memberlist 0.2.2's integer ``time.Duration`` arithmetic
(nanoseconds) so that a Python node times out, retransmits and pushes/pulls
exactly when a Go node in the same cluster would.
"""

from __future__ import annotations

import math
import random

__all__ = [
    "PUSH_PULL_SCALE_THRESHOLD",
    "push_pull_scale",
    "random_stagger",
    "retransmit_limit",
    "suspicion_k",
    "suspicion_timeout",
    "suspicion_timeout_bounds",
]

#: Cluster size above which the push/pull interval starts to grow.
PUSH_PULL_SCALE_THRESHOLD = 32

_NS = 1_000_000_000


def _to_ns(seconds: float) -> int:
    """Seconds as integer nanoseconds, the unit Go computes in."""
    return round(seconds * _NS)


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each broadcast is sent: ``mult × ceil(log10(n + 1))``.

    ``n = 0`` gives 0, which the queue treats as "send once, then drop".
    """
    node_scale = math.ceil(math.log10(max(n, 0) + 1))
    return retransmit_mult * node_scale


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """The minimum suspicion timeout, ``mult × max(1, log10(max(1, n))) × interval``.

    Go truncates the node scale to thousandths and then divides a nanosecond
    product by 1000 with integer division; so do we.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    scale_milli = int(node_scale * 1000)
    timeout_ns = suspicion_mult * scale_milli * _to_ns(interval) // 1000
    return timeout_ns / _NS


def suspicion_timeout_bounds(
    suspicion_mult: int, max_timeout_mult: int, n: int, interval: float
) -> tuple[float, float]:
    """``(min, max)`` for a Lifeguard suspicion timer in an ``n``-node cluster."""
    min_ns = _to_ns(suspicion_timeout(suspicion_mult, n, interval))
    return min_ns / _NS, (max_timeout_mult * min_ns) / _NS


def suspicion_k(suspicion_mult: int, n: int) -> int:
    """Independent confirmations wanted before the timer reaches its minimum.

    ``mult − 2``, or 0 when the cluster minus ourselves and the suspect is
    too small to supply them.
    """
    k = suspicion_mult - 2
    if n - 2 < k:
        return 0
    return k


def push_pull_scale(interval: float, n: int) -> float:
    """The push/pull interval, stretched once the cluster exceeds 32 nodes.

    The 33rd node doubles it, the 65th triples it, keeping full-state syncs
    from saturating the network.
    """
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return (multiplier * _to_ns(interval)) / _NS


def random_stagger(rng: random.Random, interval: float) -> float:
    """A uniform delay in ``[0, interval)`` so that periodic loops started at
    the same moment on many nodes do not fire in lockstep."""
    interval_ns = _to_ns(interval)
    if interval_ns <= 0:
        return 0.0
    return rng.randrange(interval_ns) / _NS
