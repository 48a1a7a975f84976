"""The RPC listener as a service to attach to an agent (``Agent.attach``)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from flyteserf.addresses import format_host_port
from flyteserf.rpc.server import RPCFactory


class RPCService(service.Service):
    """Serves the Serf RPC protocol for *agent* on *address* (``serf -rpc-addr``)."""

    log = Logger()

    def __init__(self, reactor: Any, agent: Any, address: tuple[str, int], auth: str = "") -> None:
        """*agent* provides :class:`~flyteserf.rpc.interfaces.IRPCAgent` (the Agent does)."""
        self.reactor = reactor
        self.agent = agent
        self.address = address
        self.auth = auth
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        host, port = self.address
        self.port = self.reactor.listenTCP(port, RPCFactory(self.reactor, self.agent, self.auth), interface=host)
        super().startService()
        self.log.info("RPC listening on {address}", address=format_host_port(host, port))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)
