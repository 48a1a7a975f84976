"""The Serf and memberlist wire formats: bytes in, typed messages out.

Nothing here does I/O or keeps time; everything that arrives from the
network and is malformed raises :class:`~flyteserf.wire.errors.DecodeError`.
"""
