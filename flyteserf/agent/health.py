"""The health endpoint the Go ``flyte-serf`` pack served (flyte-pack spec §4.6).

Any path, any method, answers ``200`` with ``Content-Type:
application/json`` and the Go pack's exact body::

    {"DefaultCheck":{"healthy":true,"status":"Pack is running."}}

so container health checks written for the Go pack keep working.
:class:`HealthResource` is the twisted.web resource; :func:`health_service`
wraps it in a service listening on a TCP port, as ``twist flyteserf
--health-port`` runs it.  Requests are logged at debug level only: a probe
every few seconds must not flood the log.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.http import Request
from twisted.web.server import Site

from flyteserf.addresses import format_host_port

__all__ = ["HEALTHY_BODY", "HealthResource", "HealthService", "health_service"]

#: The Go pack's answer, byte for byte.
HEALTHY_BODY = b'{"DefaultCheck":{"healthy":true,"status":"Pack is running."}}'


class HealthResource(Resource):
    """Answers every request, whatever its path or method, with :data:`HEALTHY_BODY`."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return HEALTHY_BODY


class _QuietSite(Site):
    """A :class:`Site` whose access log lines are debug-level events."""

    noisy = False
    _log = Logger()

    def log(self, request: Request) -> None:
        self._log.debug(
            "health check {method} {path} from {client}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            client=getattr(request.getClientAddress(), "host", "?"),
        )


class HealthService(service.Service):
    """Serves :class:`HealthResource` on ``interface:port`` while running.

    Port 0 picks a free port; :attr:`address` then says which.  Starting
    raises :class:`twisted.internet.error.CannotListenError` when the port
    is taken.
    """

    log = Logger()

    def __init__(self, reactor: Any, port: int, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.site = _QuietSite(HealthResource())
        self.listening: IListeningPort | None = None
        self.setName("health")

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port listened on, or ``None`` when not listening."""
        if self.listening is None:
            return None
        bound = self.listening.getHost()
        return (getattr(bound, "host", self.interface), int(getattr(bound, "port", self.port)))

    def startService(self) -> None:
        self.listening = self.reactor.listenTCP(self.port, self.site, interface=self.interface)
        super().startService()
        address = self.address
        assert address is not None
        self.log.info(
            "Health check listening on {address}",
            address=format_host_port(address[0] or "0.0.0.0", address[1]),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self.listening = self.listening, None
        if listening is None:
            return succeed(None)
        stopped: Deferred[Any] = maybeDeferred(listening.stopListening)
        return stopped.addCallback(lambda _: None)


def health_service(reactor: Any, port: int, interface: str = "") -> HealthService:
    """A service answering health checks on TCP ``interface:port`` (``""``: every interface)."""
    return HealthService(reactor, port, interface)
