"""A memberlist transport that records what it is asked to send, for unit tests."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from flyteserf.memberlist.delegates import Address, IMemberlistTransport
from flyteserf.wire.messages import MessageType, decode_message
from flyteserf.wire.packet import decode_packet
from flyteserf.wire.stream import StreamReader


@implementer(IMemberlistTransport)
class RecordingTransport:
    """Keeps every datagram in :attr:`packets`; stream exchanges are refused.

    Drive a :class:`~flyteserf.memberlist.memberlist.Memberlist` with a
    ``task.Clock`` and this transport, feed it with ``ingest_packet`` and
    read back what it sent with :meth:`messages`.
    """

    def __init__(self, local_address: Address = ("10.0.0.1", 7946)) -> None:
        self.local_address = local_address
        self.packets: list[tuple[bytes, Address]] = []

    def send_packet(self, data: bytes, addr: Address) -> None:
        self.packets.append((data, addr))

    def stream_exchange(self, addr: Address, data: bytes, reader: StreamReader, timeout: float) -> Deferred[Any]:
        return fail(error.ConnectionRefusedError("streams are not recorded"))

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def messages(self, keys: Any = ()) -> list[Any]:
        """Every message sent so far, typed; user messages stay ``0x08 + payload`` bytes."""
        out: list[Any] = []
        for data, _ in self.packets:
            for m in decode_packet(data, keys).messages:
                out.append(m if m[0] == MessageType.USER else decode_message(m))
        return out
