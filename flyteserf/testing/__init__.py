"""Public helpers for testing code that uses flyteserf, and flyteserf itself.

Like ``treq.testing``, this package ships with flyteserf so that programs
embedding it can test their own handlers the same way its own suite does.

:mod:`flyteserf.testing.network`
    An in-memory datagram and stream network in virtual time: fake
    reactors for many simulated hosts on one shared clock, with loss,
    delay, duplication, partitions and killed hosts, so a test can run a
    hundred gossiping nodes deterministically and without sockets.

:mod:`flyteserf.testing.serf_binary`
    Run real ``serf agent`` processes on free loopback ports from a Twisted
    test or benchmark: start, wait for log lines, drive them with the stock
    ``serf`` CLI (``members``, ``join``, ``event``, ...), and stop or kill
    them, with every process cleaned up when the test ends.  Interop tests
    use it to check flyteserf against the real agent.

Nothing here imports the global reactor: pass yours in.
"""
