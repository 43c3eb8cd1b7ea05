"""
The proxy's HTTP/2 server under attack, in memory: raw frames built with
C{hyperframe} (and C{h2} client connections where the client plays by the
rules) against L{meshproxy.http.h2server.H2ServerProtocol}, a transport
that fills up like a real socket's, and a L{Clock}.

Each attack is one that has an advisory against some HTTP/2 server: PING,
SETTINGS, empty frame, PRIORITY and WINDOW_UPDATE floods (CVE-2019-9512
to -9518), CONTINUATION floods (CVE-2024-27316 and kin), slow headers,
and clients that stop reading or give no window.  The bound each test
checks is what the proxy buffers or how far it reads, so that the figures
in the assertions say what an attacker gets.
"""

from __future__ import annotations

import socket
import threading

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hyperframe.frame import Frame
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.http import AuthorityRouter
from meshproxy.http.h2 import MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, STREAM_WINDOW
from meshproxy.http.h2server import H2ServerProtocol
from meshproxy.limits import HEADER_BYTES, Limits

from .realprocess import Proxy, freePort, run, serve, tool, upstreamConfig
from .test_http_h2server import GET, POST, Harness, Peer, frames

#: How much a socket transport buffers before it asks its producer to
#: pause (L{twisted.internet.abstract.FileDescriptor.bufferSize}).
BUFFER = 65536

#: The most a socket read hands the protocol at once.
READ = 65536

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

ORIG = [(b"meshproxy-orig-proto", b"HTTP/1.1")]


class SocketTransport(StringTransport):
    """
    A L{StringTransport} that fills up as a socket's transport does: past
    L{BUFFER} unread bytes it pauses its producer, and L{read} (the client
    reading) resumes it.  Its C{producerState} says whether the protocol
    lets it read.
    """

    _full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self._full and len(self.io.getvalue()) > BUFFER and self.producer is not None:
            self._full = True
            self.producer.pauseProducing()

    def read(self) -> bytes:
        data = self.value()
        self.clear()
        if self._full:
            self._full = False
            self.producer.resumeProducing()
        return data


def flood(harness: Harness, frame, limit: int = 4 << 20) -> int:
    """
    Send C{frame} again and again, in reads of L{READ} bytes, while the
    server reads and stays connected, up to C{limit} bytes.

    @return: how many bytes the server read.
    """
    unit = frame.serialize()
    chunk = unit * (READ // len(unit))
    sent = 0
    server = harness.server
    while sent < limit and not server.transport.disconnecting and server.transport.producerState == "producing":
        server.dataReceived(chunk)
        sent += len(chunk)
    return sent


def goAway(transport: StringTransport) -> GoAwayFrame:
    """
    The GOAWAY frame the server ended with.
    """
    frame = frames(transport.value())[-1]
    assert isinstance(frame, GoAwayFrame), frame
    return frame


def refused(h: Harness, reason: str) -> float | None:
    """
    The connections counted in C{http2_connections_refused_total} for
    C{reason}.
    """
    return h.metrics.registry.get_sample_value("http2_connections_refused_total", {"direction": h.server._context.direction, "reason": reason})


class FloodTests(SynchronousTestCase):
    """
    Frames that carry no request or response, sent without end: the
    connection is closed with C{GOAWAY ENHANCE_YOUR_CALM} after a few
    hundred KiB, where before the proxy answered them all (100,000 PINGs:
    1.7 MB of PING ACKs written, 1.3 s of CPU).
    """

    def assertCalmed(self, h: Harness, sent: int) -> None:
        self.assertTrue(h.server.transport.disconnecting)
        self.assertEqual(goAway(h.server.transport).error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertLess(sent, 320 * 1024)
        self.assertEqual(refused(h, "flood"), 1)

    def test_ping(self):
        frame = PingFrame(0)
        frame.opaque_data = b"12345678"
        h = Harness()
        self.assertCalmed(h, flood(h, frame))

    def test_settings(self):
        """
        SETTINGS frames cost more than their bytes: each walks every
        stream.
        """
        frame = SettingsFrame(0)
        frame.settings = {SettingCodes.INITIAL_WINDOW_SIZE: 65535}
        h = Harness()
        sent = flood(h, frame)
        self.assertCalmed(h, sent)
        self.assertLessEqual(sent, READ)

    def test_emptyData(self):
        h = Harness(direction="inbound")
        streamId = h.request(POST + ORIG, end=False)
        frame = DataFrame(streamId)
        self.assertCalmed(h, flood(h, frame))

    def test_windowUpdate(self):
        frame = WindowUpdateFrame(0)
        frame.window_increment = 1
        h = Harness()
        self.assertCalmed(h, flood(h, frame))

    def test_priority(self):
        frame = PriorityFrame(1)
        frame.depends_on = 0
        frame.stream_weight = 16
        h = Harness()
        self.assertCalmed(h, flood(h, frame))

    def test_unknownFrames(self):
        frame = ExtensionFrame(0xEE, 0)
        frame.body = b"x" * 16
        h = Harness()
        self.assertCalmed(h, flood(h, frame))

    def test_resetStream(self):
        """
        DATA frames on a stream the client reset, which C{h2} answers with
        C{RST_STREAM} each.
        """
        h = Harness(direction="inbound")
        streamId = h.request(POST + ORIG, end=False)
        h.client.h2.reset_stream(streamId)
        h.client.pump(h.server)
        frame = DataFrame(streamId)
        frame.data = b"x"
        self.assertCalmed(h, flood(h, frame))


class FairUseTests(SynchronousTestCase):
    """
    What clients do every day is not a flood.
    """

    def test_download(self):
        """
        A 4 MiB download whose client acknowledges every DATA frame, on
        the stream and the connection, is served to its end.
        """
        h = Harness(direction="inbound")
        streamId = h.request(GET + ORIG)
        upstream = h.connect()
        size = 4 << 20
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        received = 0
        while received < size:
            if upstream.transport.producerState == "producing":
                upstream.dataReceived(b"z" * min(READ, size - received))
            events = h.client.pump(h.server)
            for event in events:
                if isinstance(event, DataReceived):
                    received += len(event.data)
                    if event.flow_controlled_length:
                        h.client.h2.acknowledge_received_data(event.flow_controlled_length, streamId)
                        h.client.h2.increment_flow_control_window(event.flow_controlled_length)
        h.client.pump(h.server)
        self.assertEqual(len(h.client.of(StreamEnded, streamId)), 1)
        self.assertEqual(h.client.of(ConnectionTerminated), [])

    def test_manyRequests(self):
        """
        Requests with 4 KiB of headers, too large for the HPACK table, and
        no answer but a short 404 each, far beyond the budget's ceiling.
        """
        h = Harness(router=AuthorityRouter({}))
        headers = GET + [(b"cookie", b"c" * 4000)]
        for _ in range(300):
            h.request(headers)
        self.assertFalse(h.server.transport.disconnecting)
        self.assertEqual(h.client.of(ConnectionTerminated), [])

    def test_keepAlive(self):
        """
        A PING a second on a quiet connection, for five hours: more bytes
        than the budget, but time pays for them.
        """
        h = Harness()
        for _ in range(18000):
            h.clock.advance(1)
            h.client.h2.ping(b"12345678")
            h.client.pump(h.server)
        self.assertFalse(h.server.transport.disconnecting)


class NotReadingTests(SynchronousTestCase):
    """
    A client that sends and never reads.
    """

    def test_pingFlood(self):
        """
        Before: every PING's ACK was buffered (a 4 MiB flood: 4 MiB
        buffered, and on).  Now the client is not read while its transport
        is full: what waits is the socket's buffer and one read more.
        """
        frame = PingFrame(0)
        frame.opaque_data = b"12345678"
        h = Harness(transport=SocketTransport())
        sent = flood(h, frame)
        transport = h.server.transport
        self.assertEqual(transport.producerState, "paused")
        self.assertLessEqual(len(transport.value()), BUFFER + READ)
        self.assertLessEqual(sent, BUFFER + READ)
        self.assertFalse(transport.disconnecting)
        # The client reads: the server reads again.
        transport.read()
        self.assertEqual(transport.producerState, "producing")

    def test_notTimedWhileNotRead(self):
        """
        A header block the server stopped reading is not the client's
        delay: the header timeout starts again when it reads again.
        """
        h = Harness(transport=SocketTransport())
        h.server.pauseProducing()
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)[:5]
        h.server.dataReceived(block.serialize())
        h.clock.advance(35)
        self.assertFalse(h.server.transport.disconnecting)
        h.server.resumeProducing()
        h.clock.advance(9.9)
        self.assertFalse(h.server.transport.disconnecting)
        h.clock.advance(0.1)
        self.assertTrue(h.server.transport.disconnecting)


class EmptyDataTests(SynchronousTestCase):
    """
    Empty DATA frames are legal in HTTP/2; turned into an HTTP/1 chunk, an
    empty piece of body would be the last chunk, and what follows it a new
    message on the application's connection (request smuggling).
    """

    def test_request(self):
        """
        An empty DATA frame in a request body that goes to the application
        as HTTP/1 chunks is dropped.  Before: the body ended with it, and
        the rest went as a second, unframed message.
        """
        h = Harness(direction="inbound")
        streamId = h.request(POST + ORIG, end=False)
        upstream = h.connect()
        h.upstreamReceived(upstream)
        for data, end in ((b"", False), (b"abc", False), (b"", True)):
            h.client.h2.send_data(streamId, data, end_stream=end)
            h.client.pump(h.server)
        self.assertEqual(h.upstreamReceived(upstream), b"3\r\nabc\r\n0\r\n\r\n")

    def test_response(self):
        """
        An empty DATA frame in a response from an HTTP/2 application is
        not passed on: the HTTP/1 server writes every piece of body as a
        chunk, so an HTTP/1 client would have read it as the end of the
        body.  Before: it was passed on (here, to an HTTP/2 client).
        """
        h = Harness(direction="inbound")
        streamId = h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        (request,) = app.of(RequestReceived)
        app.h2.send_headers(request.stream_id, [(b":status", b"200")])
        app.h2.send_data(request.stream_id, b"")
        app.h2.send_data(request.stream_id, b"abc", end_stream=True)
        app.pump(upstream)
        h.client.pump(h.server)
        # The last frame, the end of the stream, is empty.
        self.assertEqual([e.data for e in h.client.of(DataReceived, streamId) if e.stream_ended is None], [b"abc"])


class HeaderBlockTests(SynchronousTestCase):
    """
    Header blocks of many CONTINUATION frames.
    """

    def test_flood(self):
        """
        Before: 64 CONTINUATION frames of 64 KiB, 4 MiB, were held and
        then decoded.  Now a block is refused once it passes the header
        list size, 64 KiB.
        """
        h = Harness()
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)
        h.server.dataReceived(block.serialize())
        continuation = ContinuationFrame(1)
        continuation.data = b"\x00" * 60000
        sent = 0
        while not h.server.transport.disconnecting and sent < 64:
            h.server.dataReceived(continuation.serialize())
            sent += 1
        self.assertEqual(sent, 2)
        self.assertTrue(h.server.transport.disconnecting)
        self.assertEqual(goAway(h.server.transport).error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        pending = sum(len(f.data) for f in h.server.h2.incoming_buffer._headers_buffer)
        self.assertLessEqual(pending, MAX_HEADER_LIST_SIZE)
        self.assertEqual(h.limits.exceeded[HEADER_BYTES], 1)
        self.assertEqual(refused(h, "header_bytes"), 1)

    def test_headerListTooLarge(self):
        """
        A header list over C{max_header_bytes} once decoded (an HPACK bomb,
        or just many fields) ends the connection, counted as the HTTP/2
        431.
        """
        h = Harness(limits=Limits(maxHeaderBytes=2048))
        h.client.h2.send_headers(1, GET + [(b"x-big", b"v" * 4096)], end_stream=True)
        h.client.pump(h.server)
        self.assertTrue(h.server.transport.disconnecting)
        (terminated,) = h.client.of(ConnectionTerminated)
        self.assertEqual(terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(h.limits.exceeded[HEADER_BYTES], 1)
        self.assertEqual(h.connector.attempts, [])

    def test_emptyFrames(self):
        """
        Empty CONTINUATION frames are bounded by C{h2}'s limit of 64.
        """
        h = Harness()
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)
        h.server.dataReceived(block.serialize())
        sent = flood(h, ContinuationFrame(1))
        self.assertTrue(h.server.transport.disconnecting)
        self.assertEqual(goAway(h.server.transport).error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertLessEqual(sent, READ)

    def test_largeBlock(self):
        """
        A block of several frames within the limit is a request like any
        other.
        """
        h = Harness()
        headers = GET + [(b"x-%d" % i, b"v" * 1000) for i in range(40)]
        h.client.h2.max_outbound_frame_size = 16384
        h.client.h2.send_headers(1, headers, end_stream=True)
        data = h.client.h2.data_to_send()
        self.assertGreater(len([f for f in frames(data) if isinstance(f, ContinuationFrame)]), 1)
        h.server.dataReceived(data)
        self.assertFalse(h.server.transport.disconnecting)
        self.assertEqual(len(h.connector.attempts), 1)


class HeaderTimeoutTests(SynchronousTestCase):
    """
    The HTTP/2 side of the listener's header timeout (10 s here).
    """

    def test_preface(self):
        """
        A connection whose preface has no SETTINGS frame after it is closed
        once the timeout passes.
        """
        h = Harness()
        server = H2ServerProtocol(h.context, keepAlive=0)
        server.makeConnection(StringTransport())
        server.dataReceived(PREFACE)
        h.clock.advance(9.9)
        self.assertFalse(server.transport.disconnecting)
        h.clock.advance(0.1)
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(goAway(server.transport).error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_trickledBlock(self):
        """
        A header block trickled one CONTINUATION frame every 3 s is cut
        10 s after it began.
        """
        h = Harness()
        h.clock.advance(100)
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)
        h.server.dataReceived(block.serialize())
        for _ in range(3):
            h.clock.advance(3)
            continuation = ContinuationFrame(1)
            continuation.data = b"\x82"
            h.server.dataReceived(continuation.serialize())
        self.assertFalse(h.server.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.server.transport.disconnecting)
        self.assertEqual(goAway(h.server.transport).error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(refused(h, "header_timeout"), 1)

    def test_partialFrame(self):
        """
        Half a HEADERS frame is a header block in progress too.
        """
        h = Harness()
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)
        block.flags.add("END_HEADERS")
        h.server.dataReceived(block.serialize()[:12])
        h.clock.advance(10)
        self.assertTrue(h.server.transport.disconnecting)

    def test_inTime(self):
        """
        A block completed within the timeout is served, and a connection
        with no block in progress is not timed, however long it idles.
        """
        h = Harness()
        block = HeadersFrame(1)
        block.data = Encoder().encode(GET)
        h.server.dataReceived(block.serialize())
        h.clock.advance(9)
        continuation = ContinuationFrame(1)
        continuation.flags.add("END_HEADERS")
        h.server.dataReceived(continuation.serialize())
        self.assertEqual(len(h.connector.attempts), 1)
        h.clock.advance(3600)
        self.assertFalse(h.server.transport.disconnecting)

    def test_noTimeout(self):
        """
        A header timeout of 0 waits for ever, as for HTTP/1.
        """
        h = Harness(headerTimeout=0)
        server = H2ServerProtocol(h.context, keepAlive=0)
        server.makeConnection(StringTransport())
        server.dataReceived(PREFACE)
        h.clock.advance(3600)
        self.assertFalse(server.transport.disconnecting)


class StallTests(SynchronousTestCase):
    """
    Clients that give the proxy no window for the responses they asked for.
    """

    def stalled(self, h: Harness, count: int) -> list:
        """
        C{count} requests whose upstreams each have 1 MB to send and
        offer 64 KiB at once: the upstreams' protocols.
        """
        upstreams = []
        for _ in range(count):
            h.request(GET + ORIG)
            upstream = h.connect()
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"z" * READ)
            upstreams.append(upstream)
        h.client.pump(h.server)
        return upstreams

    def queued(self, h: Harness) -> int:
        return sum(len(piece) for exchange in h.server._waiting.values() for piece in exchange._sender._queue)

    def test_zeroWindow(self):
        """
        With no window, a response's upstream is paused after its first
        read; what the proxy holds is that read.  Another stream given
        window is answered meanwhile.
        """
        h = Harness(direction="inbound")
        h.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        h.client.pump(h.server)
        (stalled,) = self.stalled(h, 1)
        self.assertEqual(stalled.transport.producerState, "paused")
        self.assertEqual(self.queued(h), READ)
        other = h.request(GET + ORIG)
        upstream = h.connect()
        upstream.dataReceived(OK)
        h.client.h2.increment_flow_control_window(2, other)
        h.client.pump(h.server)
        self.assertEqual(b"".join(e.data for e in h.client.of(DataReceived, other)), b"ok")
        self.assertEqual(stalled.transport.producerState, "paused")

    def test_manyStalled(self):
        """
        Every stream the client may open, stalled: each holds one read of
        its upstream, and no more arrives.
        """
        h = Harness(direction="inbound")
        h.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        h.client.pump(h.server)
        upstreams = self.stalled(h, MAX_CONCURRENT_STREAMS)
        self.assertEqual({u.transport.producerState for u in upstreams}, {"paused"})
        self.assertEqual(self.queued(h), MAX_CONCURRENT_STREAMS * READ)

    def test_windowUpdatesCost(self):
        """
        Connection WINDOW_UPDATEs try only the streams that wait for the
        connection's window.  Before: each 1-byte update tried all 200
        stalled streams (10,000 updates: 2,000,000 tries, 2.3 s of CPU).
        """
        h = Harness(direction="inbound")
        h.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        h.client.pump(h.server)
        self.stalled(h, 200)
        tries = []
        for exchange in h.server._waiting.values():
            exchange.drainSender = (lambda drain: lambda: tries.append(1) or drain())(exchange.drainSender)
        update = WindowUpdateFrame(0)
        update.window_increment = 1
        h.server.dataReceived(update.serialize() * 10000)
        self.assertEqual(tries, [])

    def test_sharedUpstream(self):
        """
        One client that stalls twenty gRPC streams to an application does
        not stall another client's stream on the same HTTP/2 connection to
        it: the stalled streams hold their stream windows, 256 KiB each,
        and the connection's window goes back.  Before: they spent the
        connection's 4 MiB and the other client's stream got no window.
        """
        h = Harness(direction="inbound")
        h.client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        h.client.pump(h.server)
        for _ in range(20):
            h.request(GET)
        upstream = h.connect()
        app = Peer(clientSide=False)
        app.pump(upstream)
        streams = [event.stream_id for event in app.of(RequestReceived)]
        for streamId in streams:
            app.h2.send_headers(streamId, [(b":status", b"200")])
        sent = progress = 0
        while progress or not sent:
            progress = 0
            for streamId in streams:
                window = min(app.h2.local_flow_control_window(streamId), app.h2.max_outbound_frame_size)
                if window:
                    app.h2.send_data(streamId, b"z" * window)
                    progress += window
            app.pump(upstream)
            sent += progress
        self.assertEqual(sent, 20 * STREAM_WINDOW)

        other = H2ServerProtocol(h.context, keepAlive=0)
        other.makeConnection(StringTransport())
        client = Peer(clientSide=True)
        client.pump(other)
        streamId = client.h2.get_next_available_stream_id()
        client.h2.send_headers(streamId, GET, end_stream=True)
        client.pump(other)
        app.pump(upstream)
        request = app.of(RequestReceived)[-1]
        app.h2.send_headers(request.stream_id, [(b":status", b"200")])
        app.h2.send_data(request.stream_id, b"ok", end_stream=True)
        app.pump(upstream)
        client.pump(other)
        self.assertEqual(b"".join(e.data for e in client.of(DataReceived, streamId)), b"ok")

    def test_connectionWindowShared(self):
        """
        Streams waiting for the connection's window get it in turn, and
        each is served to its end.
        """
        h = Harness(direction="inbound")
        upstreams = self.stalled(h, 8)
        for upstream in upstreams:
            upstream.dataReceived(b"z" * (1000000 - READ))
        done = set()
        events = h.client.events
        for _ in range(2000):
            for event in events:
                if isinstance(event, DataReceived):
                    h.client.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    done.add(event.stream_id)
            if len(done) == 8:
                break
            events = h.client.pump(h.server)
        self.assertEqual(len(done), 8)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def rss(pid: int) -> int:
    """
    The resident memory of process C{pid}, in bytes.
    """
    for line in FilePath(f"/proc/{pid}/status").getContent().decode().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pings(size: int) -> bytes:
    """
    About C{size} bytes of PING frames.
    """
    frame = PingFrame(0)
    frame.opaque_data = b"12345678"
    unit = frame.serialize()
    return unit * (size // len(unit))


def floodNotReading(port: int, limit: int) -> tuple[socket.socket, int]:
    """
    Connect, and send PINGs and never read, until the proxy stops taking
    them (a send blocks for 2 s), closes the connection, or C{limit} bytes
    went.  Run in a thread.

    @return: the socket, and how many bytes were sent.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(2)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    chunk = pings(READ)
    sent = 0
    try:
        while sent < limit:
            sent += sock.send(chunk)
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass
    return sock, sent


def floodReading(port: int, stop: threading.Event) -> list[tuple[int, int | None]]:
    """
    Connect, send PINGs and read their answers, 16 KiB at a time, until
    the proxy closes the connection; again and again until C{stop} is set.
    Run in a thread.

    @return: for each connection, the bytes sent and the error code of the
        proxy's GOAWAY (L{None} without one).
    """
    chunk = pings(16384)
    connections = []
    while not stop.is_set():
        received = bytearray()
        sent = 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            sock.sendall(PREFACE + SettingsFrame(0).serialize())
            try:
                while True:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    # Each PING's answer is as long as the PING.
                    while len(received) < sent:
                        data = sock.recv(1 << 20)
                        if not data:
                            raise ConnectionResetError
                        received += data
            except OSError:
                pass
        connections.append((sent, goAwayCode(bytes(received))))
    return connections


def goAwayCode(data: bytes) -> int | None:
    """
    The error code of the first GOAWAY frame in C{data}, if any.
    """
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if isinstance(frame, GoAwayFrame) and len(data) >= 9 + length:
            frame.parse_body(memoryview(data[9 : 9 + length]))
            return frame.error_code
        data = data[9 + length :]
    return None


class FloodIntegrationTests(TestCase):
    """
    A real C{twistd meshproxy} in front of C{nghttpd}, flooded by raw
    sockets while C{nghttp} asks for a page through it.
    """

    timeout = 120

    async def test_floodsWhileServing(self):
        """
        A client that floods PINGs and never reads is not read past the
        socket buffers; clients that flood and read are sent GOAWAY
        ENHANCE_YOUR_CALM; meanwhile another client is answered every
        time, and the proxy's memory stays where it was.
        """
        docroot = FilePath(self.mktemp())
        docroot.makedirs()
        docroot.child("small").setContent(b"small\n")
        app = freePort()
        await serve(self, [tool("nghttpd", "nghttp2-server"), "--no-tls", "-d", docroot.path, str(app)], app)
        listen = freePort()
        proxy = await Proxy(self, upstreamConfig(listen, app)).start()
        url = f"http://127.0.0.1:{listen}/small"
        nghttp = tool("nghttp", "nghttp2-client")
        code, output = await run([nghttp, url])
        self.assertEqual((code, output), (0, b"small\n"))
        before = rss(proxy.process.pid)

        sock, sent = await deferToThread(floodNotReading, listen, 256 << 20)
        self.addCleanup(sock.close)
        self.assertLess(sent, 64 << 20)
        stop = threading.Event()
        flooding = deferToThread(floodReading, listen, stop)
        try:
            for _ in range(20):
                code, output = await run([nghttp, url])
                self.assertEqual((code, output), (0, b"small\n"))
        finally:
            stop.set()
            connections = await flooding
        after = rss(proxy.process.pid)

        self.assertGreater(len(connections), 0)
        for floodSent, error in connections:
            self.assertEqual(error, ErrorCodes.ENHANCE_YOUR_CALM)
            self.assertLess(floodSent, 1 << 20)
        self.assertLess(after - before, 16 << 20, (before, after, sent))
        self.assertIn("too many frames without requests or responses", proxy.output)
