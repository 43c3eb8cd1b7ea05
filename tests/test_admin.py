"""
Tests for L{meshproxy.readiness} and L{meshproxy.admin}.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.registry import Collector
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from meshproxy.admin import adminSite, isLocal
from meshproxy.limits import Limits, LimitsCollector
from meshproxy.metrics import ProxyMetrics
from meshproxy.readiness import Readiness

from .realprocess import run, tool

_TEXT = [b"text/plain; charset=utf-8"]
#: What C{promtool check metrics} says of linkerd2-proxy's histogram name.
LATENCY_LINT = (
    b"response_latency_ms metric names should not contain abbreviated units\n"
    b"response_latency_ms_created metric names should not contain abbreviated units\n"
)


class ReadinessTests(SynchronousTestCase):
    """
    Tests for L{Readiness}.
    """

    def test_nothingRequired(self) -> None:
        """
        With no conditions the proxy is ready: it has nothing to wait for.
        """
        readiness = Readiness()
        self.assertTrue(readiness.ready)
        self.assertEqual(readiness.pending, [])

    def test_pendingInOrderRequired(self) -> None:
        """
        The conditions not yet met are pending, in the order they were
        required, and the proxy is ready once the last one is met.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        certificate = readiness.require("identity certificate")
        discovery = readiness.require("discovery web")
        self.assertFalse(readiness.ready)
        self.assertEqual(
            readiness.pending, ["listener tcp:4143", "identity certificate", "discovery web"]
        )
        certificate()
        self.assertEqual(readiness.pending, ["listener tcp:4143", "discovery web"])
        discovery()
        listener()
        self.assertTrue(readiness.ready)
        self.assertEqual(readiness.pending, [])

    def test_metIdempotent(self) -> None:
        """
        Marking a condition met a second time changes nothing, and in
        particular does not mark any other condition met.
        """
        readiness = Readiness()
        certificate = readiness.require("identity certificate")
        readiness.require("listener tcp:4143")
        certificate()
        certificate()
        self.assertEqual(readiness.pending, ["listener tcp:4143"])

    def test_duplicateName(self) -> None:
        """
        Requiring a name twice is an error, even once it is met.
        """
        readiness = Readiness()
        readiness.require("listener tcp:4143")()
        self.assertRaises(ValueError, readiness.require, "listener tcp:4143")

    def test_requireAfterReady(self) -> None:
        """
        A condition required once the proxy is ready makes it unready
        until it is met.
        """
        readiness = Readiness()
        readiness.require("listener tcp:4143")()
        discovery = readiness.require("discovery web")
        self.assertFalse(readiness.ready)
        self.assertEqual(readiness.pending, ["discovery web"])
        discovery()
        self.assertTrue(readiness.ready)

    def test_drain(self) -> None:
        """
        A draining proxy is not ready, for good, and says so first.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        readiness.drain()
        self.assertFalse(readiness.ready)
        self.assertEqual(readiness.pending, ["draining", "listener tcp:4143"])
        listener()
        self.assertFalse(readiness.ready)
        self.assertEqual(readiness.pending, ["draining"])

    def test_drainReady(self) -> None:
        """
        A ready proxy that drains stops being ready.
        """
        readiness = Readiness()
        readiness.drain()
        self.assertFalse(readiness.ready)
        self.assertEqual(readiness.pending, [Readiness.DRAINING])

    def test_whenReadyAlready(self) -> None:
        """
        L{Readiness.whenReady} has fired already if the proxy is ready.
        """
        self.assertIsNone(self.successResultOf(Readiness().whenReady()))

    def test_whenReadyLastCondition(self) -> None:
        """
        L{Readiness.whenReady} fires when the last condition is met, and
        only then.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        certificate = readiness.require("identity certificate")
        first, second = readiness.whenReady(), readiness.whenReady()
        listener()
        self.assertNoResult(first)
        certificate()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))

    def test_whenReadyOnce(self) -> None:
        """
        A L{Deferred} from L{Readiness.whenReady} fires once, even if a later
        condition makes the proxy unready and ready again.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        waiting = readiness.whenReady()
        listener()
        readiness.require("discovery web")()
        self.assertIsNone(self.successResultOf(waiting))

    def test_whenReadyReentrant(self) -> None:
        """
        A callback of L{Readiness.whenReady} may wait again: that new wait
        is answered at once, since the proxy is ready.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        again: list[Deferred[None]] = []
        readiness.whenReady().addCallback(lambda _: again.append(readiness.whenReady()))
        listener()
        self.assertIsNone(self.successResultOf(again[0]))

    def test_whenReadyCancel(self) -> None:
        """
        Cancelling L{Readiness.whenReady} stops the wait: it fails with
        L{CancelledError} and readiness later does not fire it again.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        waiting = readiness.whenReady()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        listener()
        self.assertTrue(readiness.ready)

    def test_whenReadyDraining(self) -> None:
        """
        A proxy that drains before it is ready never fires
        L{Readiness.whenReady}, whether the wait began before or after.
        """
        readiness = Readiness()
        listener = readiness.require("listener tcp:4143")
        before = readiness.whenReady()
        readiness.drain()
        after = readiness.whenReady()
        listener()
        self.assertNoResult(before)
        self.assertNoResult(after)


@dataclass
class _Response:
    """
    An HTTP response as the admin server wrote it.
    """

    code: int
    headers: Headers
    body: bytes


def _request(site, method: bytes, path: bytes, peer: str = "127.0.0.1") -> _Response:
    """
    Send one HTTP/1.1 request to C{site} over an in-memory connection from
    C{peer} and parse the response that twisted.web wrote.
    """
    channel = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 54321))
    channel.makeConnection(transport)
    channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:4191\r\n\r\n")
    channel.connectionLost(Failure(ConnectionDone()))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    status, *fields = head.split(b"\r\n")
    headers = Headers()
    for field in fields:
        name, _, value = field.partition(b":")
        headers.addRawHeader(name, value.strip())
    return _Response(int(status.split(b" ")[1]), headers, body)


class _BrokenCollector(Collector):
    """
    A metrics collector with a bug.
    """

    def collect(self):
        raise RuntimeError("broken collector")


class AdminSiteTests(SynchronousTestCase):
    """
    Tests for L{adminSite}, through twisted.web's real HTTP/1.1 handling.
    """

    def setUp(self) -> None:
        self.metrics = ProxyMetrics()
        self.readiness = Readiness()
        self.reactor = MemoryReactorClock()
        self.site = adminSite(self.metrics, self.readiness, self.reactor)

    def request(self, method: bytes, path: bytes) -> _Response:
        return _request(self.site, method, path)

    def assertAdminHeaders(self, response: _Response, contentType: list[bytes] = _TEXT) -> None:
        """
        C{response} has the headers every admin response has, and no
        C{Server} header giving away the Twisted version.
        """
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), contentType)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIsNone(response.headers.getRawHeaders(b"server"))

    def test_live(self) -> None:
        """
        C{GET /live} is 200 C{live}.
        """
        response = self.request(b"GET", b"/live")
        self.assertEqual((response.code, response.body), (200, b"live\n"))
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"5"])
        self.assertAdminHeaders(response)

    def test_liveHead(self) -> None:
        """
        C{HEAD /live} has the headers of C{GET /live} and no body.
        """
        response = self.request(b"HEAD", b"/live")
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"5"])
        self.assertAdminHeaders(response)

    def test_readyNotReady(self) -> None:
        """
        C{GET /ready} is 503 C{not ready} followed by the pending
        conditions, one per line.
        """
        self.readiness.require("listener tcp:4143")
        self.readiness.require("identity certificate")
        response = self.request(b"GET", b"/ready")
        self.assertEqual(
            (response.code, response.body),
            (503, b"not ready\nlistener tcp:4143\nidentity certificate\n"),
        )
        self.assertAdminHeaders(response)

    def test_readyTransitions(self) -> None:
        """
        C{/ready} follows the L{Readiness}: 503 while a condition is
        pending, 200 C{ready} once all are met, 503 again when draining.
        """
        listener = self.readiness.require("listener tcp:4143")
        self.assertEqual(self.request(b"GET", b"/ready").code, 503)
        listener()
        response = self.request(b"GET", b"/ready")
        self.assertEqual((response.code, response.body), (200, b"ready\n"))
        self.assertAdminHeaders(response)
        self.readiness.drain()
        response = self.request(b"GET", b"/ready")
        self.assertEqual((response.code, response.body), (503, b"not ready\ndraining\n"))

    def test_readyHead(self) -> None:
        """
        C{HEAD /ready} has the status of C{GET /ready} and no body.
        """
        self.readiness.require("identity certificate")
        response = self.request(b"HEAD", b"/ready")
        self.assertEqual((response.code, response.body), (503, b""))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-length"),
            [b"%d" % len(b"not ready\nidentity certificate\n")],
        )

    def test_metrics(self) -> None:
        """
        C{GET /metrics} is the registry in the Prometheus text format 0.0.4.
        """
        self.metrics.detected("http1")
        response = self.request(b"GET", b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertAdminHeaders(response, [b"text/plain; version=0.0.4; charset=utf-8"])
        self.assertEqual(response.body, generate_latest(self.metrics.registry))
        self.assertIn(b'\ndetect_total{result="http1"} 1.0\n', response.body)
        self.assertNotIn(b"# EOF", response.body)

    def test_metricsHead(self) -> None:
        """
        C{HEAD /metrics} is 200 with no body.
        """
        response = self.request(b"HEAD", b"/metrics")
        self.assertEqual((response.code, response.body), (200, b""))
        self.assertAdminHeaders(response, [b"text/plain; version=0.0.4; charset=utf-8"])

    def test_metricsBroken(self) -> None:
        """
        If a collector fails, C{/metrics} is a plain 500 and the failure is
        logged.
        """
        self.metrics.registry.register(_BrokenCollector())
        response = self.request(b"GET", b"/metrics")
        self.assertEqual((response.code, response.body), (500, b"internal server error\n"))
        self.assertAdminHeaders(response)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_wrongMethod(self) -> None:
        """
        Other methods than C{GET} and C{HEAD} are 405 with an C{Allow}
        header, on every path.
        """
        for path in [b"/live", b"/ready", b"/metrics"]:
            for method in [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"BREW"]:
                with self.subTest(method=method, path=path):
                    response = self.request(method, path)
                    self.assertEqual((response.code, response.body), (405, b"method not allowed\n"))
                    self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
                    self.assertAdminHeaders(response)

    def test_notFound(self) -> None:
        """
        Any other path is a plain 404, whatever the method, including the
        root and paths below or beside the admin paths.
        """
        for path in [b"/", b"/metrics/x", b"/live/", b"//live", b"/shutdown", b"/favicon.ico"]:
            for method in [b"GET", b"POST"]:
                with self.subTest(method=method, path=path):
                    response = self.request(method, path)
                    self.assertEqual((response.code, response.body), (404, b"not found\n"))
                    self.assertAdminHeaders(response)

    def test_notFoundHead(self) -> None:
        """
        C{HEAD} of an unknown path is 404 with no body.
        """
        response = self.request(b"HEAD", b"/metrics/x")
        self.assertEqual((response.code, response.body), (404, b""))

    def test_query(self) -> None:
        """
        A query string does not change the path.
        """
        self.assertEqual(self.request(b"GET", b"/live?verbose=1").body, b"live\n")

    def test_quiet(self) -> None:
        """
        A started site logs nothing about starting, requests or stopping:
        scrapes every few seconds would flood the log.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.site.doStart()
        self.request(b"GET", b"/metrics")
        self.request(b"GET", b"/nope")
        self.site.doStop()
        self.assertEqual(events, [])


class ShutdownTests(SynchronousTestCase):
    """
    C{POST /shutdown}, when enabled, starts a graceful shutdown for local
    clients only.
    """

    def setUp(self) -> None:
        self.calls = 0
        self.site = adminSite(ProxyMetrics(), Readiness(), MemoryReactorClock(), self.shutdown)

    def shutdown(self) -> None:
        self.calls += 1

    def test_accepted(self) -> None:
        """
        A loopback client gets 202 and the shutdown starts.
        """
        response = _request(self.site, b"POST", b"/shutdown")
        self.assertEqual((response.code, response.body), (202, b"shutting down\n"))
        self.assertEqual(self.calls, 1)

    def test_forbidden(self) -> None:
        """
        Any other client gets 403, and nothing happens.
        """
        response = _request(self.site, b"POST", b"/shutdown", peer="10.0.0.7")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.calls, 0)

    def test_postOnly(self) -> None:
        response = _request(self.site, b"GET", b"/shutdown")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertEqual(self.calls, 0)

    def test_disabled(self) -> None:
        """
        Without C{[admin] shutdown = true} the path is not served.
        """
        site = adminSite(ProxyMetrics(), Readiness(), MemoryReactorClock())
        self.assertEqual(_request(site, b"POST", b"/shutdown").code, 404)

    def test_isLocal(self) -> None:
        """
        Loopback addresses of either family, IPv4 loopback mapped into
        IPv6, and UNIX sockets are local; anything else is not.
        """
        for address in (
            IPv4Address("TCP", "127.0.0.1", 1),
            IPv4Address("TCP", "127.8.9.1", 1),
            IPv6Address("TCP", "::1", 1),
            IPv6Address("TCP", "::ffff:127.0.0.1", 1),
            UNIXAddress(b"/run/x.sock"),
        ):
            self.assertTrue(isLocal(address), address)
        for address in (
            IPv4Address("TCP", "10.0.0.1", 1),
            IPv6Address("TCP", "fe80::1%eth0", 1),
            IPv6Address("TCP", "::ffff:10.0.0.1", 1),
            None,
        ):
            self.assertFalse(isLocal(address), address)


class PromtoolTests(TestCase):
    """
    The real C{/metrics}, fetched over loopback by C{curl}, passes
    C{promtool check metrics}: what a Prometheus server scrapes is what
    the lint accepts.
    """

    async def test_promtoolCheckMetrics(self) -> None:
        """
        Every metric of L{ProxyMetrics}, each with samples, passes
        C{promtool check metrics} with no lint problems.
        """
        curl = tool("curl", "curl")
        promtool = tool("promtool", "prometheus")

        metrics = ProxyMetrics()
        for tls in ["no_identity", "true"]:
            src = metrics.tcp("inbound", "src", "127.0.0.1:8080", tls)
            src.opened()
            src.read(517)
            src.wrote(1024)
            src.closed(True)
            src.opened()
            src.closed(False)
        metrics.detected("http1")
        metrics.detected("opaque")
        http = metrics.http("outbound", "web", "no_identity")
        http.request()
        http.responded(200, 3.5)
        http.responded(502, 1200.0)
        metrics.discovered("web", "etcd", 2)
        metrics.http2Refused.labels("inbound", "flood").inc()
        # The caps' metrics, which the proxy registers beside these.
        metrics.registry.register(LimitsCollector(Limits()))
        for family in metrics.registry.collect():
            self.assertTrue(
                family.samples,
                f"{family.name} has no samples: give it some above so promtool checks it",
            )

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            adminSite(metrics, Readiness(), reactor)
        )
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"

        code, body = await run(
            [curl, "--silent", "--show-error", "--fail", "--noproxy", "*"]
            + ["--header", "Connection: close", url]
        )
        self.assertEqual(code, 0, body)
        self.assertIn(b"tcp_open_total{", body)

        # linkerd2-proxy's name, kept so its dashboards work (SPEC section
        # 6), is the one lint promtool reports; it is not a parse error.
        self.assertEqual(await run([promtool, "check", "metrics"], stdin=body), (3, LATENCY_LINT))
