"""Tests for :mod:`flyteserf.agent.health`, the Go pack's health endpoint."""

from __future__ import annotations

import json

import treq
from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from flyteserf.agent.health import HEALTHY_BODY, HealthResource, HealthService, health_service

EXPECTED = {"DefaultCheck": {"healthy": True, "status": "Pack is running."}}


def render(path: bytes, method: bytes = b"GET") -> DummyRequest:
    resource = HealthResource()
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    result = resource.render(request)
    assert result is not NOT_DONE_YET
    assert isinstance(result, bytes)
    request.write(result)
    request.finish()
    return request


class HealthResourceTests(SynchronousTestCase):
    def test_body_is_the_go_packs(self) -> None:
        """Byte for byte what the Go flyte-serf pack answered."""
        self.assertEqual(
            HEALTHY_BODY, b'{"DefaultCheck":{"healthy":true,"status":"Pack is running."}}'
        )
        self.assertEqual(json.loads(HEALTHY_BODY), EXPECTED)

    def test_any_path_any_method(self) -> None:
        for path in (b"/", b"/health", b"/a/b/c", b"/v1/packs?x=1"):
            for method in (b"GET", b"POST", b"PUT", b"DELETE"):
                request = render(path, method)
                self.assertEqual(request.responseCode, 200, (path, method))
                self.assertEqual(
                    request.responseHeaders.getRawHeaders(b"content-type"),
                    [b"application/json"],
                )
                self.assertEqual(b"".join(request.written), HEALTHY_BODY)

    def test_leaf(self) -> None:
        """Children are never looked up: the resource itself answers every path."""
        self.assertTrue(HealthResource.isLeaf)


class HealthServiceTests(TestCase):
    def make(self, port: int = 0) -> HealthService:
        from twisted.internet import reactor

        svc = health_service(reactor, port, "127.0.0.1")
        self.assertTrue(IService.providedBy(svc))
        return svc

    async def test_loopback(self) -> None:
        """A real listener answers the JSON on any path; stopping closes it."""
        svc = self.make()
        self.assertIsNone(svc.address)
        svc.startService()
        self.addCleanup(svc.stopService)
        address = svc.address
        assert address is not None
        host, port = address
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        for path in ("/", "/anything/at/all", "/health?verbose=1"):
            response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
            self.assertEqual(response.code, 200)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
            self.assertEqual(await response.content(), HEALTHY_BODY)
        response = await treq.post(f"http://127.0.0.1:{port}/x", data=b"{}", persistent=False)
        self.assertEqual(await response.json(), EXPECTED)
        await svc.stopService()
        self.assertIsNone(svc.address)
        self.assertFalse(svc.running)

    async def test_port_taken(self) -> None:
        """Starting on a port in use raises CannotListenError (the tap reports it)."""
        first = self.make()
        first.startService()
        self.addCleanup(first.stopService)
        assert first.address is not None
        second = self.make(first.address[1])
        self.assertRaises(CannotListenError, second.startService)
        self.assertFalse(second.running)
        await second.stopService()

    async def test_requests_logged_at_debug(self) -> None:
        """A probe every few seconds must not flood the log at INFO."""
        from twisted.logger import LogLevel, capturedLogs

        svc = self.make()
        svc.startService()
        self.addCleanup(svc.stopService)
        assert svc.address is not None
        with capturedLogs() as events:
            response = await treq.get(f"http://127.0.0.1:{svc.address[1]}/probe", persistent=False)
            await response.content()
        probes = [e for e in events if "health check" in e.get("log_format", "")]
        self.assertEqual(len(probes), 1)
        self.assertEqual(probes[0]["log_level"], LogLevel.debug)
        self.assertEqual(probes[0]["path"], "/probe")
