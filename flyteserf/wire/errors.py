"""The one exception the wire layer raises for bad input."""


class DecodeError(ValueError):
    """Bytes from the network could not be decoded.

    Every decoder in :mod:`flyteserf.wire` turns malformed input into this
    exception and nothing else, so a caller can drop and count the packet
    with a single ``except`` clause.
    """
