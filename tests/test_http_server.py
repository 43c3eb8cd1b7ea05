"""
Tests for L{meshproxy.http.server}, the HTTP/1.1 server side of the proxy,
driven in memory: a L{StringTransport} for the client, a connector whose
connections the test completes by hand, and a L{Clock}.
"""

from __future__ import annotations

from random import Random

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from meshproxy.balance import RoundRobin, Waiter
from meshproxy.config import Address, Endpoint
from meshproxy.endpoint import IConnector
from meshproxy.http.server import DISCARD_LIMIT
from meshproxy.http import AuthorityRouter, ConnectionPool, HTTPServerProtocol, OneRoute, Route, ServerContext
from meshproxy.limits import HEADER_BYTES, REQUEST_BODY, REQUESTS, Limits
from meshproxy.metrics import ProxyMetrics

from .realprocess import Samples

GET = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(IConnector)
class Connector:
    """
    Records connection attempts; the test completes or fails each.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Endpoint, object, Deferred]] = []

    def connect(self, endpoint, protocolFactory):
        d = Deferred()
        self.attempts.append((endpoint, protocolFactory, d))
        return d


class Harness:
    """
    One proxy listener in memory: a balancer over C{endpoints}, its pool and
    connector, and one accepted client connection.
    """

    def __init__(self, testCase, endpoints=1, router=None, responseTimeout=30.0, limits=None) -> None:
        self.clock = Clock()
        self.endpoints = [Endpoint(Address("10.0.0.%d" % (i + 1), 80)) for i in range(endpoints)]
        self.balancer = RoundRobin(self.endpoints, self.clock, Random(0))
        self.metrics = ProxyMetrics()
        route = Route("web", "web", self.balancer, Waiter(self.balancer, self.clock), self.metrics.http("outbound", "web", "no_identity"))
        self.connector = Connector()
        self.pool = ConnectionPool(self.connector, self.clock)
        self.limits = limits or Limits()
        self.context = ServerContext(
            router or OneRoute(route),
            self.pool,
            self.clock,
            self.metrics,
            target="web",
            responseTimeout=responseTimeout,
            limits=self.limits,
        )
        self.client = self.accept()

    def accept(self):
        transport = StringTransport()
        server = HTTPServerProtocol(self.context)
        server.makeConnection(transport)
        server.clientTransport = transport
        return server

    def send(self, data: bytes, server=None) -> None:
        (server or self.client).dataReceived(data)

    def received(self, server=None) -> bytes:
        transport = (server or self.client).clientTransport
        data = transport.value()
        transport.clear()
        return data

    def connect(self):
        """
        Complete the oldest pending connection attempt: the endpoint's
        protocol, with its transport.
        """
        endpoint, factory, d = self.connector.attempts.pop(0)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d.callback(protocol)
        return protocol

    def fail(self, reason: Exception) -> None:
        self.connector.attempts.pop(0)[2].errback(Failure(reason))

    def upstreamReceived(self, protocol) -> bytes:
        data = protocol.transport.value()
        protocol.transport.clear()
        return data

    def samples(self) -> Samples:
        from prometheus_client import generate_latest

        return Samples(generate_latest(self.metrics.registry).decode())


def close(protocol, reason=ConnectionDone) -> None:
    """
    Close the connection of C{protocol} (a L{StringTransport} does not).
    """
    protocol.connectionLost(Failure(reason()))


def proxyError(response: bytes) -> bytes:
    head = response.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name == b"meshproxy-proxy-error":
            return value
    raise AssertionError(f"no meshproxy-proxy-error in {response!r}")


class LimitTests(SynchronousTestCase):
    """
    The C{[proxy] max_*} caps: each refusal is a response the client can
    read, counted by its limit; nothing refused reaches an endpoint.
    """

    def test_requestsInProgress(self):
        """
        A request over C{max_requests} is answered 503 at once, without an
        endpoint; one that ends, or whose client goes away, makes room.
        """
        h = Harness(self, limits=Limits(maxRequests=1))
        h.send(GET)
        upstream = h.connect()
        self.assertEqual(h.upstreamReceived(upstream), GET)
        other = h.accept()
        h.send(GET, other)
        response = h.received(other)
        self.assertTrue(response.startswith(b"HTTP/1.1 503 "), response)
        self.assertEqual(proxyError(response), b"too many requests in progress")
        self.assertEqual(h.connector.attempts, [])
        self.assertEqual(h.limits.exceeded[REQUESTS], 1)
        upstream.dataReceived(OK)
        self.assertEqual(h.limits.requests, 0)
        h.send(GET, other)
        self.assertEqual(h.upstreamReceived(upstream), GET)
        close(other)
        self.assertEqual(h.limits.requests, 0)
        samples = h.samples()
        self.assertEqual(
            samples("response_total", direction="outbound", authority="web", tls="no_identity", status_code="503", classification="failure"),
            1,
        )

    def test_declaredBodyTooLarge(self):
        """
        A C{Content-Length} over C{max_request_body} is answered 413 before
        anything is forwarded, and the connection closes (the body is not
        read).
        """
        h = Harness(self, limits=Limits(maxRequestBody=10))
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\n")
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertIn(b"Connection: close\r\n", response)
        self.assertEqual(h.connector.attempts, [])
        self.assertTrue(h.client.clientTransport.disconnecting)
        self.assertEqual((h.limits.exceeded[REQUEST_BODY], h.limits.requests), (1, 0))

    def test_bodyAtTheCap(self):
        """
        A body of exactly C{max_request_body} bytes goes through.
        """
        h = Harness(self, limits=Limits(maxRequestBody=10))
        request = b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n"
        h.send(request)
        upstream = h.connect()
        self.assertIn(b"67890", h.upstreamReceived(upstream))
        upstream.dataReceived(OK)
        self.assertEqual(h.received(), OK)
        self.assertEqual(h.limits.exceeded[REQUEST_BODY], 0)

    def test_chunkedBodyGrowsTooLarge(self):
        """
        A chunked body that grows past C{max_request_body} is cut: 413 to
        the client, the endpoint's connection dropped (it saw a request
        that will never end), the client's closed.
        """
        h = Harness(self, limits=Limits(maxRequestBody=10))
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
        upstream = h.connect()
        h.send(b"8\r\nabcdefgh\r\n")
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertNotIn(b"abcdefgh", h.upstreamReceived(upstream))
        self.assertTrue(upstream.transport.disconnecting)
        self.assertTrue(h.client.clientTransport.disconnecting)
        self.assertEqual((h.limits.exceeded[REQUEST_BODY], h.limits.requests), (1, 0))

    def test_headerBytes(self):
        """
        A header section over C{max_header_bytes} is answered 431 and
        counted.
        """
        h = Harness(self, limits=Limits(maxHeaderBytes=1024))
        h.send(b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 1024 + b"\r\n\r\n")
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 431 "), response)
        self.assertEqual(h.limits.exceeded[HEADER_BYTES], 1)
        self.assertEqual(h.connector.attempts, [])


class ExchangeTests(SynchronousTestCase):
    """
    Requests are forwarded and responses relayed, framed for each hop.
    """

    def test_keepAlive(self):
        """
        A request goes to an endpoint on a new connection; the next one on
        the same client connection reuses the endpoint's connection.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        self.assertEqual(h.upstreamReceived(upstream), GET)
        upstream.dataReceived(OK)
        self.assertEqual(h.received(), OK)
        h.send(b"GET /2 HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n\r\n")
        self.assertEqual(h.connector.attempts, [])
        self.assertEqual(h.upstreamReceived(upstream), b"GET /2 HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n\r\n")
        upstream.dataReceived(OK)
        self.assertEqual(h.received(), OK)
        self.assertFalse(h.client.clientTransport.disconnecting)
        samples = h.samples()
        labels = dict(direction="outbound", authority="web", tls="no_identity")
        self.assertEqual(samples("request_total", **labels), 2)
        self.assertEqual(samples("response_total", status_code="200", classification="success", **labels), 2)
        self.assertEqual(samples("tcp_open_total", direction="outbound", peer="src", target="web", tls="no_identity"), 1)
        self.assertEqual(samples("tcp_open_total", direction="outbound", peer="dst", target="web", tls="no_identity"), 1)
        self.assertEqual(samples("tcp_read_bytes_total", direction="outbound", peer="dst", target="web", tls="no_identity"), 2 * len(OK))

    def test_oneWrite(self):
        """
        A response whose head and body came in one read leaves in one write
        (each costs a system call); one whose body comes later has its head
        written at once, not held back until the body.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        writes = []
        transport = h.client.clientTransport
        self.patch(transport, "write", writes.append)
        upstream.dataReceived(OK)
        self.assertEqual(writes, [OK])
        del writes[:]
        h.send(GET)
        upstream.dataReceived(OK[:-2])
        self.assertEqual(writes, [OK[:-2]])
        upstream.dataReceived(OK[-2:])
        self.assertEqual(writes, [OK[:-2], OK[-2:]])

    def test_pipelining(self):
        """
        Pipelined requests are answered in order, one at a time: the second
        goes to an endpoint only once the first response is complete, and
        the client is not read meanwhile.
        """
        h = Harness(self, endpoints=2)
        h.send(b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
        first = h.connect()
        self.assertEqual(h.connector.attempts, [])
        self.assertEqual(h.client.clientTransport.producerState, "paused")
        self.assertEqual(h.upstreamReceived(first), b"GET /1 HTTP/1.1\r\nHost: web\r\n\r\n")
        first.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        second = h.connect()
        self.assertEqual(h.upstreamReceived(second), b"GET /2 HTTP/1.1\r\nHost: web\r\n\r\n")
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
        )
        self.assertEqual(h.client.clientTransport.producerState, "producing")
        self.assertNotEqual(first.endpoint, second.endpoint)

    def test_chunkedRequest(self):
        """
        A chunked request body is re-framed for the endpoint; chunk
        extensions and trailers are dropped.
        """
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n")
        upstream = h.connect()
        h.send(b"2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
        self.assertEqual(
            h.upstreamReceived(upstream),
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )

    def test_chunkedResponse(self):
        """
        A chunked response is re-framed for the client, its trailers
        dropped; a close-delimited one becomes chunked for an HTTP/1.1
        client, which keeps its connection.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")
        self.assertEqual(h.received(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        h.send(GET)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nuntil")
        upstream.dataReceived(b" close")
        close(upstream)
        self.assertEqual(
            h.received(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nuntil\r\n6\r\n close\r\n0\r\n\r\n"
        )
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_http10(self):
        """
        An HTTP/1.0 request without Host gets the route's authority for the
        endpoint, and a close-delimited response ends with the connection.
        """
        h = Harness(self)
        h.send(b"GET / HTTP/1.0\r\n\r\n")
        upstream = h.connect()
        self.assertEqual(h.upstreamReceived(upstream), b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nbody")
        close(upstream)
        self.assertEqual(h.received(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody")
        self.assertTrue(h.client.clientTransport.disconnecting)

    def test_http10KeepAlive(self):
        """
        An HTTP/1.0 client that asks for keep-alive is told it got it.
        """
        h = Harness(self)
        h.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: web\r\n\r\n")
        h.connect().dataReceived(OK)
        self.assertEqual(h.received(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_bodiless(self):
        """
        Responses to HEAD, and 204 and 304, have no body whatever their
        headers say, and the connections go on.
        """
        h = Harness(self)
        h.send(b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n")
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        self.assertEqual(h.received(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for response in (b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n"):
            h.send(GET)
            upstream.dataReceived(response)
            self.assertEqual(h.received(), response)
        self.assertEqual(h.connector.attempts, [])
        self.assertFalse(upstream.transport.disconnecting)

    def test_continue(self):
        """
        C{Expect: 100-continue} reaches the endpoint and its 100 reaches the
        client, which sends the body only then.
        """
        h = Harness(self)
        h.send(b"PUT / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        upstream = h.connect()
        self.assertIn(b"Expect: 100-continue\r\n", h.upstreamReceived(upstream))
        upstream.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(h.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        h.send(b"abc")
        self.assertEqual(h.upstreamReceived(upstream), b"abc")
        upstream.dataReceived(OK)
        self.assertEqual(h.received(), OK)


class BackpressureTests(SynchronousTestCase):
    """
    A slow side pauses the other; nothing is buffered in between.
    """

    def test_slowClient(self):
        """
        While the client's write buffer is full, the endpoint's connection
        is not read.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        h.client.pauseProducing()
        self.assertEqual(upstream.transport.producerState, "paused")
        h.client.resumeProducing()
        self.assertEqual(upstream.transport.producerState, "producing")

    def test_slowEndpoint(self):
        """
        While the endpoint's connection cannot take more of a request body,
        the client is not read.
        """
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\n")
        upstream = h.connect()
        h.send(b"12345")
        upstream.pauseProducing()
        self.assertEqual(h.client.clientTransport.producerState, "paused")
        upstream.resumeProducing()
        self.assertEqual(h.client.clientTransport.producerState, "producing")

    def test_connecting(self):
        """
        Body that arrives before the connection is made is held, one read,
        with the client paused; it follows the head once connected.
        """
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\n12345")
        self.assertEqual(h.client.clientTransport.producerState, "paused")
        upstream = h.connect()
        self.assertEqual(h.client.clientTransport.producerState, "producing")
        self.assertEqual(
            h.upstreamReceived(upstream), b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\n12345"
        )


class ErrorTests(SynchronousTestCase):
    """
    The responses the proxy makes itself, each with its
    C{meshproxy-proxy-error}, and what they do to the connection.
    """

    def test_refused(self):
        """
        A refused connection ejects the endpoint at once and moves on to
        another; when none is left the answer is 502.
        """
        h = Harness(self, endpoints=2)
        h.send(GET)
        h.fail(ConnectionRefusedError())
        h.fail(ConnectionRefusedError())
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), response)
        self.assertIn(b"connect to 10.0.0.", proxyError(response))
        self.assertEqual([s.ejected for s in h.balancer.snapshots()], [True, True])
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_noEndpoints(self):
        """
        With no usable endpoint a request waits up to the failfast time,
        then gets 503; the connection stays open for the next request.
        """
        h = Harness(self, endpoints=0)
        h.send(GET)
        h.clock.advance(2.9)
        self.assertEqual(h.received(), b"")
        h.clock.advance(0.1)
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), response)
        self.assertEqual(proxyError(response), b"no endpoints ready")
        self.assertFalse(h.client.clientTransport.disconnecting)
        samples = h.samples()
        self.assertEqual(
            samples("response_total", direction="outbound", authority="web", tls="no_identity", status_code="503", classification="failure"),
            1,
        )

    def test_endpointArrives(self):
        """
        A request waiting for an endpoint is sent as soon as one is usable.
        """
        h = Harness(self, endpoints=0)
        h.send(GET)
        h.balancer.update([Endpoint(Address("10.0.0.9", 80))])
        upstream = h.connect()
        self.assertEqual(h.upstreamReceived(upstream), GET)

    def test_clientLeavesWhileWaiting(self):
        """
        A client that closes while its request waits for an endpoint leaves
        nothing behind.
        """
        h = Harness(self, endpoints=0)
        h.send(GET)
        close(h.client)
        h.clock.advance(3)
        self.assertEqual(h.received(), b"")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout(self):
        """
        An endpoint that does not start its response within the response
        timeout gets its connection closed and the client a 504, on a
        connection that stays open.
        """
        h = Harness(self, responseTimeout=5)
        h.send(GET)
        upstream = h.connect()
        h.clock.advance(4.9)
        self.assertEqual(h.received(), b"")
        h.clock.advance(0.1)
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), response)
        self.assertEqual(proxyError(response), b"no response within 5s")
        self.assertTrue(upstream.transport.disconnecting)
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_headerTimeout(self):
        """
        A client that trickles its head (slowloris) gets 408 and its
        connection closed once the header timeout has passed since the
        head began; nothing reaches an endpoint.
        """
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: web\r\n")
        for _ in range(9):
            h.clock.advance(1)
            h.send(b"X: y\r\n")
        self.assertEqual(h.received(), b"")
        h.clock.advance(1)
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 408 "), response)
        self.assertEqual(proxyError(response), b"request header timeout")
        self.assertTrue(h.client.clientTransport.disconnecting)
        self.assertEqual(h.connector.attempts, [])

    def test_headerTimeoutPerHead(self):
        """
        Each head has the whole header timeout, counted from its own first
        byte; a head completed in time lets the timer lapse.
        """
        h = Harness(self)
        h.send(GET[:10])
        h.clock.advance(9)
        h.send(GET[10:])
        upstream = h.connect()
        upstream.dataReceived(OK)
        self.assertTrue(h.received().startswith(b"HTTP/1.1 200 "))
        h.clock.advance(5)
        h.send(GET[:10])
        h.clock.advance(9)
        self.assertEqual(h.received(), b"")
        h.send(GET[10:])
        h.clock.advance(10)
        self.assertEqual(h.received(), b"")
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_timeoutPerRequest(self):
        """
        The response timeout counts from each request: a second request
        sent just before the first's deadline has its own full time.
        """
        h = Harness(self, responseTimeout=5)
        h.send(GET)
        upstream = h.connect()
        h.clock.advance(4)
        upstream.dataReceived(OK)
        h.received()
        h.send(GET)
        h.clock.advance(4)
        self.assertEqual(h.received(), b"")
        h.clock.advance(1)
        self.assertTrue(h.received().startswith(b"HTTP/1.1 504 "))

    def test_unknownAuthority(self):
        """
        A Host no service claims is 404, counted, on a connection that
        stays open; absolute-form targets route by their authority.
        """
        h = Harness(self)
        route = h.context.router.route(None)
        h.context = ServerContext(AuthorityRouter({"web": route}), h.pool, h.clock, h.metrics)
        client = h.accept()
        h.send(b"GET / HTTP/1.1\r\nHost: other\r\n\r\n", client)
        response = h.received(client)
        self.assertTrue(response.startswith(b"HTTP/1.1 404 Not Found\r\n"), response)
        self.assertEqual(proxyError(response), b"no service for authority 'other'")
        h.send(b"GET http://WEB:80/x?y HTTP/1.1\r\nHost: other\r\n\r\n", client)
        self.assertEqual(h.upstreamReceived(h.connect()), b"GET /x?y HTTP/1.1\r\nHost: WEB:80\r\n\r\n")
        samples = h.samples()
        self.assertEqual(
            samples("response_total", direction="outbound", tls="no_identity", status_code="404", classification="success"),
            1,
        )
        self.assertEqual(samples("request_total", direction="outbound", tls="no_identity"), 1)

    def test_errorDiscardsSmallBody(self):
        """
        A request answered before its small body arrived has the body read
        and dropped, and the next request is served.
        """
        h = Harness(self, endpoints=0)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\n")
        h.clock.advance(3)
        self.assertEqual(proxyError(h.received()), b"no endpoints ready")
        h.send(b"12345GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        h.balancer.update([Endpoint(Address("10.0.0.9", 80))])
        h.clock.advance(3)
        self.assertEqual(h.upstreamReceived(h.connect()), GET)
        self.assertFalse(h.client.clientTransport.disconnecting)

    def test_errorCloses(self):
        """
        A request answered before a chunked body arrived, or before a body
        the client holds back for a 100 Continue (and may never send),
        closes the connection, saying so.
        """
        for head in [
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % (DISCARD_LIMIT + 1),
        ]:
            h = Harness(self, endpoints=0)
            h.send(head)
            h.clock.advance(3)
            self.assertIn(b"Connection: close\r\n", h.received(), head)
            self.assertTrue(h.client.clientTransport.disconnecting, head)

    def test_smuggling(self):
        """
        A request whose body breaks the framing in the same read as its
        head is refused with 400 without any of it reaching an endpoint,
        and the connection is closed.
        """
        h = Harness(self)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(h.connector.attempts, [])
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response)
        self.assertTrue(h.client.clientTransport.disconnecting)

    def test_badResponse(self):
        """
        A response that cannot be parsed is a 502, and the endpoint's
        connection is dropped.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), response)
        self.assertTrue(upstream.transport.disconnecting)

    def test_truncatedResponse(self):
        """
        A response cut short by the endpoint cuts the client off, and the
        endpoint is told the exchange failed.
        """
        h = Harness(self)
        h.send(GET)
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        close(upstream, ConnectionLost)
        self.assertTrue(h.client.clientTransport.disconnecting)
        self.assertEqual(h.balancer.snapshots()[0].inFlight, 0)


class RetryTests(SynchronousTestCase):
    """
    A reused connection that the application closed is not the request's
    problem, once.
    """

    def keepOne(self, h):
        h.send(GET)
        upstream = h.connect()
        upstream.dataReceived(OK)
        h.received()
        h.upstreamReceived(upstream)
        return upstream

    def test_staleDiscarded(self):
        """
        An idle connection the application closed (its FIN arrived) leaves
        the pool at once: the next request makes a new one.
        """
        h = Harness(self)
        stale = self.keepOne(h)
        stale.readConnectionLost()
        self.assertTrue(stale.transport.disconnecting)
        h.send(GET)
        self.assertEqual(len(h.connector.attempts), 1)

    def test_retryOnce(self):
        """
        A request whose reused connection closes before any response byte,
        with no body sent, is sent again on a new connection, once; a
        second such loss is 502.
        """
        h = Harness(self)
        stale = self.keepOne(h)
        h.send(GET)
        self.assertEqual(h.upstreamReceived(stale), GET)
        close(stale)
        fresh = h.connect()
        self.assertEqual(h.upstreamReceived(fresh), GET)
        fresh.dataReceived(OK)
        self.assertEqual(h.received(), OK)
        h.send(GET)
        close(fresh)
        again = h.connect()
        close(again)
        self.assertTrue(h.received().startswith(b"HTTP/1.1 502 "))

    def test_noRetryAfterBody(self):
        """
        Once body bytes went out, a lost connection is a 502, not a retry.
        """
        h = Harness(self)
        stale = self.keepOne(h)
        h.send(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
        close(stale)
        self.assertEqual(h.connector.attempts, [])
        response = h.received()
        self.assertTrue(response.startswith(b"HTTP/1.1 502 "), response)
        self.assertEqual(proxyError(response), b"connection closed by web endpoint")

    def test_idleTimeout(self):
        """
        A connection idle for the pool's idle timeout is closed.
        """
        h = Harness(self)
        upstream = self.keepOne(h)
        h.clock.advance(2.9)
        self.assertFalse(upstream.transport.disconnecting)
        h.clock.advance(0.1)
        self.assertTrue(upstream.transport.disconnecting)


class TunnelTests(SynchronousTestCase):
    """
    Upgrade and CONNECT end HTTP: both connections become a byte relay.
    """

    def test_upgrade(self):
        """
        After a 101 the bytes each side sent after its head, and all later
        ones, are relayed as they are.
        """
        h = Harness(self)
        h.send(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly")
        upstream = h.connect()
        self.assertEqual(
            h.upstreamReceived(upstream),
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        upstream.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhello")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello",
        )
        self.assertEqual(h.upstreamReceived(upstream), b"early")
        # A tunnel is a connection, not a request in progress.
        self.assertEqual(h.limits.requests, 0)
        h.send(b"ping")
        self.assertEqual(h.upstreamReceived(upstream), b"ping")
        upstream.dataReceived(b"pong")
        self.assertEqual(h.received(), b"pong")
        close(upstream)
        close(h.client)
        self.assertEqual(h.limits.requests, 0)
        samples = h.samples()
        labels = dict(direction="outbound", target="web", tls="no_identity")
        for peer in ("src", "dst"):
            self.assertEqual(samples("tcp_open_total", peer=peer, **labels), 1)
            self.assertEqual(samples("tcp_open_connections", peer=peer, **labels), 0)
        self.assertEqual(samples("tcp_read_bytes_total", peer="dst", **labels), len(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhellopong"))

    def test_upgradeDeclined(self):
        """
        An upgrade answered with an ordinary response leaves the connection
        HTTP.
        """
        h = Harness(self)
        h.send(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        upstream = h.connect()
        upstream.dataReceived(OK)
        self.assertEqual(h.received(), OK)
        h.send(GET)
        self.assertIn(GET, h.upstreamReceived(upstream))

    def test_connect(self):
        """
        CONNECT is answered 200 once the endpoint's connection is made, and
        then relayed both ways.
        """
        h = Harness(self)
        h.send(b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n\x16\x03")
        upstream = h.connect()
        self.assertEqual(h.received(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(h.upstreamReceived(upstream), b"\x16\x03")
        self.assertEqual(h.limits.requests, 0)
        upstream.dataReceived(b"\x16\x03\x03")
        self.assertEqual(h.received(), b"\x16\x03\x03")
