"""
Tests for L{meshproxy.http.h2client}: one multiplexed connection per
endpoint, its concurrency limit, keep-alive and C{GOAWAY}, driven in memory
through the HTTP/2 server's harness.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import DataReceived, PingReceived, RequestReceived, ResponseReceived, StreamEnded
from h2.settings import SettingCodes
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import HTTPServerProtocol

from .test_http_h2server import GET, Harness, Peer


def answer(app: Peer, upstream, request) -> None:
    """
    The application answers C{request} with an empty 200.
    """
    app.h2.send_headers(request.stream_id, [(b":status", b"200")], end_stream=True)
    app.pump(upstream)


class ConnectionTests(SynchronousTestCase):
    def test_oneConnection(self):
        """
        Requests that come while the endpoint's connection is being made
        wait for that one attempt, and then share the connection.
        """
        h = Harness()
        first, second = h.request(GET), h.request(GET)
        self.assertEqual(len(h.connector.attempts), 1)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        self.assertEqual([e.stream_id for e in app.of(RequestReceived)], [1, 3])
        third = h.request(GET)
        app.pump(upstream)
        self.assertEqual(h.connector.attempts, [])
        for request in app.of(RequestReceived):
            answer(app, upstream, request)
        h.client.pump(h.server)
        self.assertEqual([e.stream_id for e in h.client.of(StreamEnded)], [first, second, third])
        sample = h.samples()
        self.assertEqual(sample("tcp_open_total", direction="outbound", peer="dst", target="web", tls="true"), 1)

    def test_concurrencyLimit(self):
        """
        Streams beyond the endpoint's concurrency limit wait, in order, for
        a stream to end.
        """
        h = Harness()
        h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        app.pump(upstream)
        second = h.request(GET)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        answer(app, upstream, request)
        self.assertEqual([e.stream_id for e in app.of(RequestReceived)], [1, 3])
        answer(app, upstream, app.of(RequestReceived)[1])
        h.client.pump(h.server)
        self.assertEqual(len(h.client.of(StreamEnded, second)), 1)

    def test_goAway(self):
        """
        A C{GOAWAY} takes the connection out of the pool; a stream it did
        not accept is sent again on a new connection.
        """
        h = Harness()
        h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        answer(app, upstream, app.of(RequestReceived)[0])
        second = h.request(GET)
        # The application ignores the stream it refuses (h2 reads nothing
        # after its own GOAWAY).
        upstream.transport.clear()
        app.h2.close_connection(last_stream_id=1)
        app.pump(upstream)
        self.assertTrue(upstream.transport.disconnecting)
        replacement = h.connect()
        fresh = Peer(clientSide=False)
        fresh.pump(replacement)
        (request,) = fresh.of(RequestReceived)
        answer(fresh, replacement, request)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, second)
        self.assertEqual(dict(response.headers)[b":status"], b"200")

    def test_streamReset(self):
        """
        An endpoint resetting a stream before its response is a 502.
        """
        h = Harness()
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        app.h2.reset_stream(app.of(RequestReceived)[0].stream_id, ErrorCodes.INTERNAL_ERROR)
        app.pump(upstream)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, streamId)
        self.assertEqual(dict(response.headers)[b":status"], b"502")


class RetainTests(SynchronousTestCase):
    """
    L{H2Pool.retain}: the connection of an endpoint that left every service
    takes no new streams and closes when its streams are done.
    """

    def test_retired(self):
        """
        A stream in progress finishes on the retired connection, which then
        closes; a request meanwhile opens a new connection.
        """
        h = Harness()
        first = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        h.h2.retain(frozenset())
        self.assertFalse(upstream.transport.disconnecting)
        self.assertIsNone(h.h2.idle(h.endpoint))
        h.request(GET)
        self.assertEqual(len(h.connector.attempts), 1)
        answer(app, upstream, app.of(RequestReceived)[0])
        self.assertTrue(upstream.transport.disconnecting)
        h.client.pump(h.server)
        (response,) = h.client.of(ResponseReceived, first)
        self.assertEqual(dict(response.headers)[b":status"], b"200")

    def test_retiredWhileConnecting(self):
        """
        A connection whose endpoint left while it was being opened carries
        the requests that waited for it, is not pooled, and closes after
        them.
        """
        h = Harness()
        first = h.request(GET)
        h.h2.retain(frozenset())
        upstream = h.connect()
        self.assertIsNone(h.h2.idle(h.endpoint))
        self.assertFalse(upstream.transport.disconnecting)
        app = Peer(clientSide=False)
        app.pump(upstream)
        answer(app, upstream, app.of(RequestReceived)[0])
        self.assertTrue(upstream.transport.disconnecting)
        h.client.pump(h.server)
        self.assertEqual(len(h.client.of(StreamEnded, first)), 1)

    def test_retained(self):
        """
        The connection of an endpoint still retained stays in the pool.
        """
        h = Harness()
        h.request(GET)
        upstream = h.connect()
        h.h2.retain(frozenset({h.endpoint}))
        self.assertIsNotNone(h.h2.idle(h.endpoint))
        self.assertFalse(upstream.transport.disconnecting)


class KeepAliveTests(SynchronousTestCase):
    def test_ping(self):
        """
        A connection quiet for a keep-alive interval is sent a PING; one
        that does not answer by the next interval is closed.
        """
        h = Harness()
        h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        h.clock.advance(10)
        app.pump(upstream)
        self.assertEqual(app.of(PingReceived), [])
        h.clock.advance(10)
        app.pump(upstream)
        self.assertEqual(len(app.of(PingReceived)), 1)
        h.clock.advance(10)
        self.assertFalse(upstream.transport.disconnecting)
        h.clock.advance(10)
        upstream.transport.clear()
        h.clock.advance(10)
        self.assertTrue(upstream.transport.disconnected)


class UpgradeTests(SynchronousTestCase):
    """
    HTTP/1 requests to a meshed endpoint, from the HTTP/1 server.
    """

    def serve(self, upgrade: bool):
        h = Harness(identity="web.mesh.local")
        h.route.upgrade = upgrade
        client = HTTPServerProtocol(h.context)
        client.makeConnection(StringTransport())
        client.dataReceived(b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
        return h, client

    def test_upgraded(self):
        """
        The request travels as HTTP/2 marked C{meshproxy-orig-proto}, with
        its stream ended by its headers; the response goes back to the
        client as HTTP/1.1, chunked since HTTP/2 gave no length.
        """
        h, client = self.serve(True)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        self.assertEqual(dict(request.headers)[b"meshproxy-orig-proto"], b"HTTP/1.1")
        self.assertIsNotNone(request.stream_ended)
        app.h2.send_headers(request.stream_id, [(b":status", b"200"), (b"meshproxy-orig-proto", b"HTTP/1.1")])
        app.h2.send_data(request.stream_id, b"hi", end_stream=True)
        app.pump(upstream)
        self.assertEqual(
            client.transport.value(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        )

    def test_notUpgraded(self):
        """
        A service with C{upgrade = "none"} keeps HTTP/1.1 to its meshed
        endpoints.
        """
        h, client = self.serve(False)
        upstream = h.connect()
        self.assertEqual(upstream.transport.value(), b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")


class FlowControlTests(SynchronousTestCase):
    def test_requestBodyBeyondWindow(self):
        """
        A request body larger than the endpoint's window is sent up to the
        window while the client is held back; each window update lets more
        go, until all of it and the end are out.
        """
        h = Harness(identity="web.mesh.local")
        client = HTTPServerProtocol(h.context)
        client.makeConnection(StringTransport())
        client.dataReceived(b"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 200000\r\n\r\n")
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        client.dataReceived(b"b" * 200000)
        app.pump(upstream)
        self.assertEqual(client.transport.producerState, "paused")
        received = lambda: sum(len(e.data) for e in app.of(DataReceived))
        self.assertEqual(received(), 65535)
        while received() < 200000:
            for event in app.of(DataReceived)[-1:]:
                app.h2.acknowledge_received_data(received(), event.stream_id)
            app.h2.increment_flow_control_window(65535)
            app.pump(upstream)
        self.assertEqual(len(app.of(StreamEnded)), 1)
        self.assertEqual(client.transport.producerState, "producing")
