"""
Tests for L{meshproxy.http.h2}: the mapping between HTTP/2 header lists
and HTTP/1 heads, the stream sender and the Rapid Reset budget.
"""

from __future__ import annotations

from h2.connection import H2Connection
from h2.config import H2Configuration
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.h1 import ProtocolError, RequestHead, ResponseHead
from meshproxy.http.h2 import (
    MAX_CONCURRENT_STREAMS,
    STREAM_WINDOW,
    ResetBudget,
    StreamSender,
    newConnection,
    origProtoOf,
    requestFromHeaders,
    requestHeaders,
    responseFromHeaders,
    responseHeaders,
)

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"web"), (b":path", b"/a?b")]


class RequestMappingTests(SynchronousTestCase):
    def test_fromHeaders(self):
        """
        Pseudo-headers become the method, target and authority, kept as a
        C{host} field; a request whose stream ended with its headers has no
        body, one that did not and gives no length is chunked.
        """
        head = requestFromHeaders(GET + [(b"accept", b"*/*")], True, False)
        self.assertEqual((head.method, head.target, head.version, head.host), (b"GET", b"/a?b", b"2", b"web"))
        self.assertEqual(head.headers, [(b"accept", b"*/*"), (b"host", b"web")])
        self.assertFalse(head.chunked)
        post = requestFromHeaders(GET + [(b"content-length", b"5")], False, False)
        self.assertEqual((post.contentLength, post.chunked), (5, False))
        self.assertTrue(requestFromHeaders(GET, False, False).chunked)

    def test_hostAndAuthority(self):
        """
        C{:authority} wins over C{host}; C{host} alone will do; neither is
        a 400.
        """
        head = requestFromHeaders(GET + [(b"host", b"other")], True, False)
        self.assertEqual((head.host, head.headers), (b"web", [(b"host", b"web")]))
        withoutAuthority = [field for field in GET if field[0] != b":authority"]
        self.assertEqual(requestFromHeaders(withoutAuthority + [(b"host", b"h")], True, False).host, b"h")
        error = self.assertRaises(ProtocolError, requestFromHeaders, withoutAuthority, True, False)
        self.assertEqual(error.status, 400)

    def test_origProto(self):
        """
        C{meshproxy-orig-proto} gives an upgraded request its HTTP/1
        version back only where it is honoured (the inbound side), and is
        dropped either way; C{te} goes to HTTP/2 only.
        """
        headers = GET + [(b"meshproxy-orig-proto", b"HTTP/1.0"), (b"te", b"trailers")]
        inbound = requestFromHeaders(headers, True, True)
        self.assertEqual((inbound.version, inbound.headers), (b"1.0", [(b"host", b"web")]))
        self.assertEqual(origProtoOf(inbound), b"HTTP/1.0")
        outbound = requestFromHeaders(headers, True, False)
        self.assertEqual((outbound.version, outbound.headers), (b"2", [(b"host", b"web"), (b"te", b"trailers")]))
        self.assertIsNone(origProtoOf(outbound))
        error = self.assertRaises(ProtocolError, requestFromHeaders, GET + [(b"meshproxy-orig-proto", b"HTTP/3")], True, True)
        self.assertEqual(error.status, 400)

    def test_refused(self):
        """
        CONNECT and extended CONNECT are not carried (501); a length that
        is not a number is a 400.
        """
        connect = [(b":method", b"CONNECT"), (b":authority", b"web:443")]
        self.assertEqual(self.assertRaises(ProtocolError, requestFromHeaders, connect, False, False).status, 501)
        websocket = GET + [(b":protocol", b"websocket")]
        self.assertEqual(self.assertRaises(ProtocolError, requestFromHeaders, websocket, False, False).status, 501)
        bad = GET + [(b"content-length", b"-1")]
        self.assertEqual(self.assertRaises(ProtocolError, requestFromHeaders, bad, False, False).status, 400)

    def test_toHeaders(self):
        """
        An HTTP/1 request becomes a header list with lower-case names, its
        C{Host} as C{:authority} and its version in
        C{meshproxy-orig-proto}; an HTTP/2 one carries no such header.
        """
        head = RequestHead(b"POST", b"/x", b"1.1", [(b"Host", b"web"), (b"Content-Type", b"a/b")], b"web")
        self.assertEqual(
            requestHeaders(head, b"/x", head.headers),
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"web"),
                (b":path", b"/x"),
                (b"content-type", b"a/b"),
                (b"meshproxy-orig-proto", b"HTTP/1.1"),
            ],
        )
        native = requestFromHeaders(GET, True, False)
        self.assertEqual(requestHeaders(native, native.target, native.headers), GET)


class ResponseMappingTests(SynchronousTestCase):
    def test_fromHeaders(self):
        """
        C{:status} gives the status and an HTTP/1 reason; the body runs to
        the end of the stream unless a length is given; C{final} says the
        stream ended with the headers; C{meshproxy-orig-proto} is dropped.
        """
        head = responseFromHeaders([(b":status", b"404"), (b"meshproxy-orig-proto", b"HTTP/1.1"), (b"a", b"b")], True)
        self.assertEqual((head.status, head.reason, head.headers), (404, b"Not Found", [(b"a", b"b")]))
        self.assertTrue(head.final)
        self.assertTrue(head.chunked)
        sized = responseFromHeaders([(b":status", b"200"), (b"content-length", b"3")], False)
        self.assertEqual((sized.contentLength, sized.chunked, sized.final), (3, False, False))
        error = self.assertRaises(ProtocolError, responseFromHeaders, [(b"a", b"b")], False)
        self.assertEqual(error.status, 502)

    def test_toHeaders(self):
        """
        An HTTP/1 response becomes a header list, marked with the request's
        original protocol when a peer proxy upgraded it.
        """
        head = ResponseHead(200, b"OK", [(b"Content-Length", b"2")])
        self.assertEqual(responseHeaders(head), [(b":status", b"200"), (b"content-length", b"2")])
        self.assertEqual(
            responseHeaders(head, b"HTTP/1.1")[-1], (b"meshproxy-orig-proto", b"HTTP/1.1")
        )


def pair() -> tuple[H2Connection, H2Connection]:
    """
    A proxy-configured client connection and a plain server, settings
    exchanged.
    """
    client = newConnection(clientSide=True)
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


class StreamSenderTests(SynchronousTestCase):
    def test_withinWindow(self):
        """
        What the peer's window allows goes out in frames of the peer's
        size; the rest, and the end after it, wait for L{StreamSender.flush}
        after the peer grew the window.
        """
        client, server = pair()
        client.send_headers(1, GET)
        sender = StreamSender(client, 1)
        self.assertFalse(sender.send(b"x" * 70000))
        sender.end([(b"grpc-status", b"0")])
        self.assertTrue(sender.waiting)
        events = server.receive_data(client.data_to_send())
        self.assertEqual(sum(len(e.data) for e in events if hasattr(e, "data") and e.data), 65535)
        self.assertFalse(sender.flush())
        server.acknowledge_received_data(65535, 1)
        client.receive_data(server.data_to_send())
        self.assertTrue(sender.flush())
        self.assertTrue(sender.closed)
        events = server.receive_data(client.data_to_send())
        self.assertEqual([type(e).__name__ for e in events][-2:], ["TrailersReceived", "StreamEnded"])

    def test_notOpen(self):
        """
        A sender of a stream not open yet keeps everything.
        """
        client, _ = pair()
        sender = StreamSender(client)
        self.assertFalse(sender.send(b"x"))
        self.assertFalse(sender.flush())
        self.assertEqual(client.data_to_send(), b"")


class ConfigurationTests(SynchronousTestCase):
    def test_settings(self):
        """
        The proxy's windows, frame size and header list limit are in force
        from the start, for the peer and for C{h2}.
        """
        client, server = pair()
        self.assertEqual(server.remote_settings.initial_window_size, STREAM_WINDOW)
        self.assertEqual(server.remote_settings.max_frame_size, 65536)
        self.assertEqual(client.max_inbound_frame_size, 65536)
        self.assertEqual(server.outbound_flow_control_window, 4 * 1024 * 1024)


    def test_closedStreamsBounded(self):
        """
        A long-lived connection remembers a bounded number of closed
        streams (C{h2} alone keeps 65,536: 10 MB per connection between
        two proxies), and a frame in flight on a recently reset stream is
        still a stream error, not a connection error.
        """
        client, server = pair()
        for streamId in range(1, 2 * 4000, 2):
            client.send_headers(streamId, GET, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(streamId, [(b":status", b"204")], end_stream=True)
            client.receive_data(server.data_to_send())
        self.assertLessEqual(len(client._closed_streams), 4 * MAX_CONCURRENT_STREAMS)
        client.send_headers(8001, GET, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(8001, [(b":status", b"200")])
        client.reset_stream(8001)
        client.data_to_send()
        # The server's response crossed the reset: a stream error (at most
        # a RST_STREAM, frame type 3), not GOAWAY; the connection goes on.
        self.assertEqual(client.receive_data(server.data_to_send()), [])
        self.assertIn(client.data_to_send()[3:4], (b"", b"\x03"))
        client.send_headers(8003, GET, end_stream=True)


class ResetBudgetTests(SynchronousTestCase):
    def test_budget(self):
        """
        More than C{limit} resets in one window are over budget; a new
        window starts afresh.
        """
        budget = ResetBudget(limit=2, window=10.0)
        self.assertEqual([budget.reset(1.0), budget.reset(2.0), budget.reset(3.0)], [False, False, True])
        self.assertFalse(budget.reset(11.5))
