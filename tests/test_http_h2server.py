"""
Tests for L{meshproxy.http.h2server}, the HTTP/2 server side of the proxy,
driven in memory: raw C{h2} connections play the client and the
application, L{StringTransport}s carry the bytes, the test completes the
connection attempts, and a L{Clock} runs the timers.
"""

from __future__ import annotations

from random import Random

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import Frame, PingFrame
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balance import RoundRobin, Waiter
from meshproxy.config import Address, Endpoint
from meshproxy.http import AuthorityRouter, ConnectionPool, OneRoute, Route, ServerContext
from meshproxy.http.h2 import STREAM_WINDOW
from meshproxy.http.h2client import H2Pool
from meshproxy.http.h2server import H2ServerProtocol
from meshproxy.limits import REQUESTS, Limits
from meshproxy.metrics import ProxyMetrics

from .test_http_server import Connector

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/a")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/up")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Peer:
    """
    A raw C{h2} connection at the far end of a protocol's transport: the
    client of the proxy's server, or the application behind its client.
    """

    def __init__(self, clientSide: bool) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=clientSide, header_encoding=None))
        self.h2.initiate_connection()
        self.events: list = []

    def pump(self, protocol) -> list:
        """
        Send what this side has to C{protocol}, and read what it wrote
        until both are quiet; return the events read.
        """
        events = []
        while True:
            data = self.h2.data_to_send()
            if data:
                protocol.dataReceived(data)
            out = protocol.transport.value()
            protocol.transport.clear()
            if not data and not out:
                break
            if out:
                events += self.h2.receive_data(out)
        self.events += events
        return events

    def of(self, kind, streamId=None) -> list:
        return [e for e in self.events if isinstance(e, kind) and (streamId is None or e.stream_id == streamId)]


class Harness:
    """
    One proxy listener in memory serving HTTP/2: a balancer over one
    endpoint (meshed if C{identity}), the pools and their connector, and an
    accepted client connection.
    """

    def __init__(
        self,
        direction="outbound",
        identity=None,
        router=None,
        clientId="",
        responseTimeout=30.0,
        headerTimeout=10.0,
        transport=None,
        keepAlive=0.0,
        limits=None,
    ) -> None:
        self.clock = Clock()
        self.limits = limits or Limits()
        self.endpoint = Endpoint(Address("10.0.0.1", 80), identity)
        self.balancer = RoundRobin([self.endpoint], self.clock, Random(0))
        self.metrics = ProxyMetrics()
        self.route = Route(
            "web", "web", self.balancer, Waiter(self.balancer, self.clock), self.metrics.http(direction, "web", "true")
        )
        self.connector = Connector()
        self.h2 = H2Pool(self.connector, self.clock)
        self.context = ServerContext(
            router or OneRoute(self.route),
            ConnectionPool(self.connector, self.clock),
            self.clock,
            self.metrics,
            direction=direction,
            tls="true",
            target="web",
            responseTimeout=responseTimeout,
            headerTimeout=headerTimeout,
            h2=self.h2,
            clientId=clientId,
            limits=self.limits,
        )
        # The client here answers only when pumped: no keep-alive PINGs
        # unless a test asks for them.
        self.server = H2ServerProtocol(self.context, keepAlive)
        self.server.makeConnection(transport or StringTransport())
        self.client = Peer(clientSide=True)
        self.client.pump(self.server)

    def request(self, headers, body=b"", end=True) -> int:
        streamId = self.client.h2.get_next_available_stream_id()
        self.client.h2.send_headers(streamId, headers, end_stream=end and not body)
        if body:
            self.send(streamId, body, end)
        self.client.pump(self.server)
        return streamId

    def send(self, streamId: int, body: bytes, end: bool = False) -> None:
        """
        Send C{body} from the client in frames of 16 KiB.
        """
        for start in range(0, len(body), 16384):
            last = start + 16384 >= len(body)
            self.client.h2.send_data(streamId, body[start : start + 16384], end_stream=end and last)

    def connect(self):
        """
        Complete the oldest connection attempt: the upstream's protocol.
        """
        endpoint, factory, d = self.connector.attempts.pop(0)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d.callback(protocol)
        return protocol

    def upstreamReceived(self, protocol) -> bytes:
        data = protocol.transport.value()
        protocol.transport.clear()
        return data

    def samples(self):
        from prometheus_client import generate_latest

        from .realprocess import Samples

        return Samples(generate_latest(self.metrics.registry).decode())


class LimitTests(SynchronousTestCase):
    def test_requestsInProgress(self):
        """
        A stream over C{max_requests} is answered 503; a stream stops
        counting when its response is complete or the client resets it (a
        soak once found streams that never stopped counting, until every
        request got 503).
        """
        h = Harness(limits=Limits(maxRequests=1))
        h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        refused = h.request(GET)
        (response,) = h.client.of(ResponseReceived, refused)
        self.assertEqual(dict(response.headers)[b":status"], b"503")
        self.assertEqual(h.limits.exceeded[REQUESTS], 1)
        (request,) = app.of(RequestReceived)
        app.h2.send_headers(request.stream_id, [(b":status", b"204")], end_stream=True)
        app.pump(upstream)
        h.client.pump(h.server)
        self.assertEqual(h.limits.requests, 0)
        reset = h.request(GET)
        self.assertEqual(h.limits.requests, 1)
        h.client.h2.reset_stream(reset)
        h.client.pump(h.server)
        self.assertEqual(h.limits.requests, 0)


class ProxyingTests(SynchronousTestCase):
    def test_http2ToHTTP2(self):
        """
        A request that arrived as HTTP/2 goes to the endpoint as HTTP/2,
        unmarked, and the response comes back with its body and trailers.
        """
        h = Harness()
        streamId = h.request(GET + [(b"te", b"trailers")])
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        self.assertEqual(dict(request.headers)[b":authority"], b"web")
        self.assertEqual(dict(request.headers)[b"te"], b"trailers")
        self.assertNotIn(b"meshproxy-orig-proto", dict(request.headers))
        app.h2.send_headers(request.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        app.h2.send_data(request.stream_id, b"hello")
        app.h2.send_headers(request.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        app.pump(upstream)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, streamId)
        self.assertEqual(dict(response.headers)[b":status"], b"200")
        self.assertEqual(b"".join(e.data for e in h.client.of(DataReceived, streamId)), b"hello")
        (trailers,) = h.client.of(TrailersReceived, streamId)
        self.assertEqual(trailers.headers, [(b"grpc-status", b"0")])
        self.assertEqual(len(h.client.of(StreamEnded, streamId)), 1)
        sample = h.samples()
        self.assertEqual(sample("response_total", direction="outbound", authority="web", tls="true", status_code="200", classification="success"), 1)

    def test_trailersOnly(self):
        """
        A response whose stream ends with its headers (gRPC trailers-only)
        stays one HEADERS frame.
        """
        h = Harness()
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        app.h2.send_headers(request.stream_id, [(b":status", b"200"), (b"grpc-status", b"5")], end_stream=True)
        app.pump(upstream)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, streamId)
        self.assertIsNotNone(response.stream_ended)
        self.assertEqual(h.client.of(DataReceived), [])

    def test_downgrade(self):
        """
        On the inbound side a request a peer proxy upgraded goes to the
        application as HTTP/1.1, with the client's verified identity in
        C{meshproxy-client-id} (a forged one dropped); the response goes
        back marked as from HTTP/1.1.
        """
        h = Harness(direction="inbound", clientId="app.mesh.local")
        streamId = h.request(GET + [(b"meshproxy-orig-proto", b"HTTP/1.1"), (b"meshproxy-client-id", b"forged")])
        upstream = h.connect()
        self.assertEqual(
            h.upstreamReceived(upstream),
            b"GET /a HTTP/1.1\r\nhost: web\r\nmeshproxy-client-id: app.mesh.local\r\n\r\n",
        )
        upstream.dataReceived(OK)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, streamId)
        self.assertEqual(dict(response.headers)[b"meshproxy-orig-proto"], b"HTTP/1.1")
        self.assertEqual(b"".join(e.data for e in h.client.of(DataReceived, streamId)), b"ok")

    def test_http1ToMeshedEndpoint(self):
        """
        An inbound HTTP/2 request without C{meshproxy-orig-proto} reaches
        the application as h2c.
        """
        h = Harness(direction="inbound")
        h.request(GET)
        app = Peer(clientSide=False)
        app.pump(h.connect())
        (request,) = app.of(RequestReceived)
        self.assertNotIn(b"meshproxy-client-id", dict(request.headers))

    def test_noRoute(self):
        """
        A request for an authority no service claims gets the proxy's own
        404, with the reason.
        """
        h = Harness(router=AuthorityRouter({}))
        streamId = h.request(GET)
        (response,) = h.client.of(ResponseReceived, streamId)
        headers = dict(response.headers)
        self.assertEqual(headers[b":status"], b"404")
        self.assertEqual(headers[b"meshproxy-proxy-error"], b"no service for authority 'web'")
        self.assertEqual(len(h.client.of(StreamEnded, streamId)), 1)

    def test_responseTimeout(self):
        """
        An endpoint that does not start its response within the timeout
        gets the stream a 504 and is reset.
        """
        h = Harness(responseTimeout=5.0)
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        h.clock.advance(5)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, streamId)
        self.assertEqual(dict(response.headers)[b":status"], b"504")
        app.pump(upstream)
        self.assertEqual([e.error_code for e in app.of(StreamReset)], [ErrorCodes.CANCEL])

    def test_cancel(self):
        """
        A client resetting its stream resets the upstream stream, so a
        gRPC cancellation reaches the application.
        """
        h = Harness()
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        h.client.h2.reset_stream(streamId, ErrorCodes.CANCEL)
        h.client.pump(h.server)
        app.pump(upstream)
        self.assertEqual([e.error_code for e in app.of(StreamReset)], [ErrorCodes.CANCEL])


class FlowControlTests(SynchronousTestCase):
    def test_requestBodyWaitsForUpstream(self):
        """
        Request body received before there is an upstream, or while the
        upstream's transport is full, is not acknowledged: the client gets
        no new window for the stream until the upstream took the bytes.
        """
        h = Harness(direction="inbound")
        headers = POST + [(b"content-length", b"400000"), (b"meshproxy-orig-proto", b"HTTP/1.1")]
        streamId = h.request(headers, b"x" * 200000, end=False)
        window = h.client.h2.local_flow_control_window
        self.assertEqual(window(streamId), STREAM_WINDOW - 200000)
        upstream = h.connect()
        self.assertTrue(h.upstreamReceived(upstream).endswith(b"\r\n\r\n" + b"x" * 200000))
        h.client.pump(h.server)
        self.assertEqual(window(streamId), STREAM_WINDOW)

        upstream.pauseProducing()
        h.send(streamId, b"y" * 200000)
        h.client.pump(h.server)
        self.assertEqual(window(streamId), STREAM_WINDOW - 200000)
        upstream.resumeProducing()
        h.client.pump(h.server)
        self.assertEqual(window(streamId), STREAM_WINDOW)

    def test_responseBodyWaitsForWindow(self):
        """
        A response body larger than the client's window is sent up to the
        window while the upstream is paused; the client's window update
        lets the rest go and the upstream read again.
        """
        h = Harness(direction="inbound")
        streamId = h.request(GET + [(b"meshproxy-orig-proto", b"HTTP/1.1")])
        upstream = h.connect()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 70000)
        h.client.pump(h.server)
        self.assertEqual(sum(len(e.data) for e in h.client.of(DataReceived, streamId)), 65535)
        self.assertEqual(upstream.transport.producerState, "paused")
        h.client.h2.acknowledge_received_data(65535, streamId)
        h.client.pump(h.server)
        self.assertEqual(upstream.transport.producerState, "producing")
        upstream.dataReceived(b"z" * 30000)
        h.client.pump(h.server)
        self.assertEqual(sum(len(e.data) for e in h.client.of(DataReceived, streamId)), 100000)
        self.assertEqual(len(h.client.of(StreamEnded, streamId)), 1)
        self.assertEqual(upstream.transport.producerState, "producing")

    def test_clientFull(self):
        """
        While the client's transport is full, HTTP/2 upstreams get no
        acknowledgement of their response data.
        """
        h = Harness()
        # A client with windows large enough for the whole response.
        h.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        h.client.h2.increment_flow_control_window(1 << 22)
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        h.server.pauseProducing()
        app.h2.send_headers(request.stream_id, [(b":status", b"200")])
        for _ in range(10):
            app.h2.send_data(request.stream_id, b"d" * 16384)
        app.pump(upstream)
        self.assertEqual(app.h2.local_flow_control_window(request.stream_id), STREAM_WINDOW - 163840)
        h.server.resumeProducing()
        app.pump(upstream)
        self.assertEqual(app.h2.local_flow_control_window(request.stream_id), STREAM_WINDOW)
        h.client.pump(h.server)
        self.assertEqual(sum(len(e.data) for e in h.client.of(DataReceived, streamId)), 163840)


class AbuseTests(SynchronousTestCase):
    def test_rapidReset(self):
        """
        A client that opens and resets streams past the budget is sent
        C{GOAWAY ENHANCE_YOUR_CALM} and disconnected.
        """
        h = Harness(router=AuthorityRouter({}))
        h.connector = None
        for _ in range(201):
            streamId = h.client.h2.get_next_available_stream_id()
            h.client.h2.send_headers(streamId, POST)
            h.client.h2.reset_stream(streamId, ErrorCodes.CANCEL)
            h.server.dataReceived(h.client.h2.data_to_send())
        h.client.pump(h.server)
        (goaway,) = h.client.of(ConnectionTerminated)
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(h.server.transport.disconnecting)

    def test_protocolError(self):
        """
        Bytes that are not HTTP/2 close the connection with a GOAWAY.
        """
        h = Harness()
        h.server.dataReceived(b"\x00\x00\x01\x09\x00\x00\x00\x00\x01x")
        self.assertTrue(h.server.transport.disconnecting)


class KeepAliveTests(SynchronousTestCase):
    def pings(self, h: Harness) -> list:
        return [f for f in frames(h.server.transport.value()) if isinstance(f, PingFrame) and "ACK" not in f.flags]

    def test_ping(self):
        """
        A client quiet for a whole interval is sent a PING; one that
        answers keeps its connection.
        """
        h = Harness(keepAlive=10)
        h.server.transport.clear()
        h.clock.advance(10)
        self.assertEqual(self.pings(h), [])
        h.clock.advance(10)
        self.assertEqual(len(self.pings(h)), 1)
        for _ in range(5):
            h.client.pump(h.server)
            h.clock.advance(10)
            h.clock.advance(10)
        self.assertFalse(h.server.transport.disconnecting)

    def test_noAnswer(self):
        """
        A client that does not answer the PING by the next interval is
        gone: its connection is aborted.
        """
        h = Harness(keepAlive=10)
        h.clock.pump([10, 10])
        self.assertFalse(h.server.transport.disconnecting)
        h.clock.advance(10)
        self.assertTrue(h.server.transport.disconnected)

    def test_notWhileNotRead(self):
        """
        While the server does not read the client (its transport is full),
        the client's answer could not come: it is not judged.
        """
        h = Harness(keepAlive=10)
        h.clock.pump([10, 10])
        h.server.pauseProducing()
        h.clock.pump([10, 10, 10])
        self.assertFalse(h.server.transport.disconnecting)
        h.server.resumeProducing()
        h.clock.advance(10)
        self.assertTrue(h.server.transport.disconnected)


class DrainTests(SynchronousTestCase):
    def test_goAway(self):
        """
        Draining sends C{GOAWAY} with the last stream received, refuses
        later streams, and closes once the streams before are done.
        """
        h = Harness(direction="inbound")
        first = h.request(GET + [(b"meshproxy-orig-proto", b"HTTP/1.1")])
        upstream = h.connect()
        h.server.drain()
        h.clock.advance(0)
        h.client.pump(h.server)
        (goaway,) = h.client.of(ConnectionTerminated)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (ErrorCodes.NO_ERROR, first))
        self.assertFalse(h.server.transport.disconnecting)
        # h2 receives nothing after a GOAWAY: read the frames as such.
        h.server.transport.clear()
        upstream.dataReceived(OK)
        kinds = [(type(frame).__name__, frame.stream_id, "END_STREAM" in frame.flags) for frame in frames(h.server.transport.value())]
        self.assertEqual(kinds[:2], [("HeadersFrame", first, False), ("DataFrame", first, False)])
        self.assertIn(("DataFrame", first, True), kinds)
        self.assertEqual(kinds[-1][0], "GoAwayFrame")
        self.assertTrue(h.server.transport.disconnecting)


def frames(data: bytes) -> list:
    """
    The HTTP/2 frames in C{data}.
    """
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found
