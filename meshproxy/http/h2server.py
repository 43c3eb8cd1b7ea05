# -*- test-case-name: tests.test_http_h2server -*-
"""
The HTTP/2 server side of the proxy: the protocol an accepted connection is
handed to once detection saw the HTTP/2 preface (h2c from applications,
gRPC among them; HTTP/2 from peer proxies inside mTLS).

Every stream is an L{H2Exchange}, routed, balanced and sent on its own
like an HTTP/1 request (the steps are L{meshproxy.http.exchange}'s), so one
client connection spreads its requests over every endpoint.  Unlike HTTP/1
the streams of a connection run at once, each with its own flow control:

  - Request bodies: received data is acknowledged (handing the client new
    window) only once the upstream took it; while the upstream is being
    connected or cannot take more (its transport buffer or its own HTTP/2
    window is full) the credit is withheld, so the client stops sending on
    that stream, not on the whole connection.  What the proxy holds is
    bounded by the stream window.
  - Response bodies: sent within the client's windows; what does not fit
    waits in the stream's L{StreamSender} and the upstream's response is
    paused until a C{WINDOW_UPDATE} drains it.  A full client transport
    pauses every stream's upstream.

Denial of service: the concurrent streams, the header list size and the
frame size are capped in the settings (L{meshproxy.http.h2}); C{h2} refuses
peers that exceed them, and CONTINUATION floods.  Streams the client
resets are counted (L{ResetBudget}): past the budget the connection ends
with C{GOAWAY ENHANCE_YOUR_CALM}, the defence against Rapid Reset.

Graceful shutdown (L{drain}): a C{GOAWAY} naming the last stream received;
streams after it are refused, the others run to their end, and then the
connection closes.  C{h2} would refuse to send anything more after its own
C{GOAWAY}, so this first one is written as a raw frame.

Responses the proxy makes itself are the HTTP/1 server's (404, 502, 503,
504 and 400 for a request HTTP/1 could not carry), as HTTP/2 responses
with C{meshproxy-proxy-error}.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..drain import IDrainable
from .exchange import CLIENT_FULL, Exchange
from .h1 import ProtocolError, ResponseHead
from .h2 import ResetBudget, StreamSender, newConnection, origProtoOf, requestFromHeaders, responseHeaders

__all__ = ["H2Exchange", "H2ServerProtocol"]

# Why a stream's response is held back, besides CLIENT_FULL.
_WINDOW = 2  # the client's window for it is spent


class H2Exchange(Exchange):
    """
    One stream of an L{H2ServerProtocol}: its request, routed and sent on
    (see L{Exchange}), and its response, written within the client's
    flow-control windows.

    @ivar responseEvents: the handlers of response events, by event kind,
        for the upstream.
    @ivar _server: the connection.
    @ivar _streamId: the stream.
    @ivar _sender: sends the response body within the windows.
    @ivar _paused: why the request body is held back (C{CONNECTING} ...).
    @ivar _unacked: request bytes received while held back, acknowledged
        when nothing holds it any more.
    @ivar _origProto: the C{meshproxy-orig-proto} to put on the response,
        for a request a peer proxy upgraded from HTTP/1.
    @ivar _resetCode: the error code a response cut short is reset with.
    @ivar _done: whether the exchange is over (answered, reset or lost).
    """

    _paused = 0
    _unacked = 0
    _origProto = None
    _resetCode = ErrorCodes.INTERNAL_ERROR
    _done = False

    def __init__(self, server: H2ServerProtocol, streamId: int) -> None:
        self._server = server
        self._context = server._context
        self._streamId = streamId
        self._sender = StreamSender(server.h2, streamId)
        if server._clientFull:
            self._responsePaused = CLIENT_FULL
        self.responseEvents = self._responseHandlers()
        self._reset()

    # The request, from H2ServerProtocol.

    def begin(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        """
        The request's headers came; C{ended} if it has no body.
        """
        self._started = self._context.clock.seconds()
        try:
            head = requestFromHeaders(headers, ended, self._context.direction == "inbound")
        except ProtocolError as e:
            self._respondError(e.status, e.reason)
            return
        self._head = head
        self._origProto = origProtoOf(head)
        if self._routeTo(head.host):
            self._forward(head.target, head.headers)

    def data(self, data: bytes, size: int) -> None:
        """
        A piece of request body, C{size} bytes of window (padding counts).
        """
        if not self._done:
            self._requestData(data)
            if self._paused:
                self._unacked += size
                return
        self._server.h2.acknowledge_received_data(size, self._streamId)

    def end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """
        The request is complete.
        """
        if not self._done:
            self._requestEnd(trailers)

    def cancel(self) -> None:
        """
        The client reset the stream, or the connection was lost: the
        upstream stream is reset too (a gRPC cancellation reaches the
        application).
        """
        if not self._done:
            self._done = True
            self._server._watched.discard(self)
            self._abandon(True)

    def _setPaused(self, reason: int, paused: bool) -> None:
        before = self._paused
        after = before | reason if paused else before & ~reason
        self._paused = after
        if before and not after and self._unacked:
            unacked, self._unacked = self._unacked, 0
            self._server.h2.acknowledge_received_data(unacked, self._streamId)
            self._server._flush()

    # Responses, called by the upstream.

    def _writable(self) -> bool:
        """
        Whether the stream can still carry the response: the client may
        have reset it in the very bytes whose events are being dispatched,
        before its reset event (which ends the exchange) is reached.
        """
        stream = self._server.h2.streams.get(self._streamId)
        return stream is not None and not stream.closed

    def responseInformational(self, head: ResponseHead) -> None:
        if self._writable():
            self._server.h2.send_headers(self._streamId, responseHeaders(head))
            self._server._flush()

    def responseHead(self, head: ResponseHead) -> None:
        self._responseStarted(head)
        if head.status == 101:
            self.responseFailed(ProtocolError(502, "101 to an HTTP/2 request"))
            return
        if not self._writable():
            return
        self._server.h2.send_headers(self._streamId, responseHeaders(head, self._origProto), end_stream=head.final)
        if head.final:
            # A gRPC trailers-only response stays one HEADERS frame.
            self._sender.closed = True
        self._server._flush()

    def responseData(self, data: bytes) -> None:
        if not self._writable():
            return
        if not self._sender.send(data):
            self._server._waiting.add(self)
            self._pauseResponse(_WINDOW, True)
        self._server._flush()

    def responseEnd(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        The response is complete; its end (and trailers) follows the body
        still waiting for window, if any.
        """
        sender = self._sender
        if not sender.closed and self._writable():
            sender.end(trailers)
        self._responseComplete()

    def responseUpgraded(self, data: bytes) -> None:
        """
        Never called: an HTTP/2 request asks for no upgrade, and a 101 to
        it fails in L{responseHead}.
        """

    def upstreamLost(self, reason: Failure) -> None:
        self._resetCode = getattr(reason.value, "errorCode", ErrorCodes.INTERNAL_ERROR)
        super().upstreamLost(reason)

    def drainSender(self) -> bool:
        """
        Send the response body waiting for window, now that there may be
        some; whether nothing waits any more.
        """
        if self._sender.flush():
            self._pauseResponse(_WINDOW, False)
            return True
        return False

    # What Exchange asks of its protocol.

    def _watch(self, timeout: float) -> None:
        self._server._watch(self, timeout)

    def _respondError(self, status: int, reason: str) -> None:
        body = reason.encode() + b"\n"
        headers = [
            (b":status", b"%d" % status),
            (b"meshproxy-proxy-error", reason.encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body)),
        ]
        if self._writable():
            self._server.h2.send_headers(self._streamId, headers)
            self._sender.send(body)
            self._sender.end(None)
        self._accountError(status)
        self._exchangeDone()

    def _exchangeDone(self) -> None:
        """
        The response is complete (or waits only for window): the stream
        leaves the connection's exchanges.  A request still being sent is
        refused the rest with C{NO_ERROR} (RFC 9113, section 8.1), once the
        response is out.
        """
        self._done = True
        server = self._server
        server._streams.pop(self._streamId, None)
        server._watched.discard(self)
        if self._sender.waiting:
            server._waiting.add(self)
        elif not self._requestDone:
            server._reset(self._streamId, ErrorCodes.NO_ERROR)
        self._setPaused(self._paused, False)
        server._flush()
        server._closeIfDone()

    def _cutShort(self) -> None:
        """
        A response that started cannot be completed: reset the stream.
        """
        self._done = True
        server = self._server
        server._streams.pop(self._streamId, None)
        server._watched.discard(self)
        server._waiting.discard(self)
        server._reset(self._streamId, self._resetCode)
        server._closeIfDone()


@implementer(IPushProducer, IDrainable)
class H2ServerProtocol(Protocol):
    """
    Serves the HTTP/2 streams of one accepted connection.

    @ivar h2: the C{h2} connection state.
    @ivar _context: what the listener's connections share.
    @ivar _src: the TCP metrics of the connection.
    @ivar _streams: the exchanges in progress, by stream id.
    @ivar _waiting: exchanges whose response body waits for window.
    @ivar _watched: exchanges whose response is awaited, for the one
        response timer of the connection.
    @ivar _timer: that timer, set once and left to run rather than set and
        cancelled per stream.
    @ivar _resets: the client's Rapid Reset budget.
    @ivar _trailers: request trailers by stream, until the stream's end
        (C{h2} reports them just before it).
    @ivar _clientFull: whether the client transport's write buffer is full.
    @ivar _receiving: whether events are being dispatched; writes wait for
        the end of the batch, so that one read costs one write.
    @ivar _lastStream: after L{drain}, the last stream served; L{None}
        before.
    @ivar _closed: whether the connection is closing.
    """

    _log = Logger()
    _timer = None
    _clientFull = False
    _receiving = False
    _lastStream: int | None = None
    _closed = False

    def __init__(self, context) -> None:
        self._context = context
        self._src = context.connections
        self.h2 = newConnection(clientSide=False)
        self._streams: dict[int, H2Exchange] = {}
        self._waiting: set[H2Exchange] = set()
        self._watched: set[H2Exchange] = set()
        self._resets = ResetBudget()
        self._handlers = {
            RequestReceived: self._requestReceived,
            DataReceived: self._dataReceived,
            TrailersReceived: self._trailersReceived,
            StreamEnded: self._streamEnded,
            StreamReset: self._streamReset,
            WindowUpdated: self._windowUpdated,
            RemoteSettingsChanged: self._settingsChanged,
            ConnectionTerminated: self._terminated,
        }
        self._trailers: dict[int, list] = {}

    def connectionMade(self) -> None:
        self._src.opened()
        self.transport.registerProducer(self, True)
        self._context.registry.add(self)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        self._src.read(len(data))
        self._receiving = True
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError as e:
            # h2 queued the GOAWAY that says why.
            self._log.info("HTTP/2 error from {peer}: {error}", peer=self.transport.getPeer(), error=e)
            self._close()
            return
        handlers = self._handlers
        try:
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(event)
        finally:
            self._receiving = False
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._context.registry.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        streams = list(self._streams.values())
        self._streams.clear()
        for exchange in streams:
            exchange.cancel()
        self._src.closed(reason.check(ConnectionDone) is not None)

    # IPushProducer, for the client transport.

    def pauseProducing(self) -> None:
        self._clientFull = True
        for exchange in self._streams.values():
            exchange._pauseResponse(CLIENT_FULL, True)

    def resumeProducing(self) -> None:
        self._clientFull = False
        for exchange in list(self._streams.values()):
            exchange._pauseResponse(CLIENT_FULL, False)

    def stopProducing(self) -> None:
        """
        The connection is closing; L{connectionLost} follows.
        """

    # IDrainable.

    def drain(self) -> None:
        """
        On the next reactor turn (the client's first streams may still be
        in the bytes detection read), send C{GOAWAY} with the last stream
        received; close once the streams up to it are done.
        """
        self._context.clock.callLater(0, self._goAway)

    def _goAway(self) -> None:
        if self._lastStream is not None or self._closed:
            return
        last = self._lastStream = self.h2.highest_inbound_stream_id
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = ErrorCodes.NO_ERROR
        data = frame.serialize()
        self._src.wrote(len(data))
        self.transport.write(data)
        self._closeIfDone()

    # Events.

    def _requestReceived(self, event: RequestReceived) -> None:
        streamId = event.stream_id
        if self._lastStream is not None and streamId > self._lastStream:
            self._reset(streamId, ErrorCodes.REFUSED_STREAM)
            return
        exchange = self._streams[streamId] = H2Exchange(self, streamId)
        exchange.begin(event.headers, event.stream_ended is not None)

    def _dataReceived(self, event: DataReceived) -> None:
        exchange = self._streams.get(event.stream_id)
        if exchange is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        else:
            exchange.data(event.data, event.flow_controlled_length)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        self._trailers[event.stream_id] = event.headers

    def _streamEnded(self, event: StreamEnded) -> None:
        trailers = self._trailers.pop(event.stream_id, None)
        exchange = self._streams.get(event.stream_id)
        if exchange is not None:
            exchange.end(trailers)

    def _streamReset(self, event: StreamReset) -> None:
        self._trailers.pop(event.stream_id, None)
        exchange = self._streams.pop(event.stream_id, None)
        if exchange is not None:
            self._waiting.discard(exchange)
            exchange.cancel()
        if event.remote_reset and self._resets.reset(self._context.clock.seconds()):
            self._log.warn(
                "Closing the HTTP/2 connection from {peer}: too many streams reset (Rapid Reset)",
                peer=self.transport.getPeer(),
            )
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            self._close()
        else:
            self._closeIfDone()

    def _windowUpdated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            for exchange in self._waiting:
                if exchange._streamId == event.stream_id:
                    self._drainExchange(exchange)
                    break
        else:
            for exchange in list(self._waiting):
                self._drainExchange(exchange)

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        # A larger initial window may let waiting bodies go.
        for exchange in list(self._waiting):
            self._drainExchange(exchange)

    def _drainExchange(self, exchange: H2Exchange) -> None:
        try:
            drained = exchange.drainSender()
        except StreamClosedError:
            drained = True
        if drained:
            self._waiting.discard(exchange)
            if exchange._done:
                self._closeIfDone()

    def _terminated(self, event: ConnectionTerminated) -> None:
        """
        The client sent C{GOAWAY}, after which C{h2} sends nothing more:
        the streams still open are given up with the connection.
        """
        self._close()

    # For the exchanges.

    def _flush(self) -> None:
        if self._receiving:
            return
        data = self.h2.data_to_send()
        if data:
            self._src.wrote(len(data))
            self.transport.write(data)

    def _reset(self, streamId: int, code: int) -> None:
        try:
            self.h2.reset_stream(streamId, code)
        except StreamClosedError:
            pass
        self._flush()

    def _watch(self, exchange: H2Exchange, timeout: float) -> None:
        """
        Call C{exchange}'s L{Exchange._checkDeadline} when its response
        deadline passes.
        """
        self._watched.add(exchange)
        if self._timer is None:
            self._timer = self._context.clock.callLater(timeout, self._timerFired)

    def _timerFired(self) -> None:
        """
        Answer 504 on every stream whose deadline passed; wait again for
        the nearest one still ahead.
        """
        self._timer = None
        nearest = 0.0
        for exchange in list(self._watched):
            left = exchange._checkDeadline()
            if left:
                nearest = left if not nearest else min(nearest, left)
            else:
                self._watched.discard(exchange)
        self._flush()
        if nearest:
            self._timer = self._context.clock.callLater(nearest, self._timerFired)

    def _closeIfDone(self) -> None:
        if self._lastStream is not None and not self._streams and not self._waiting and not self._closed:
            self.h2.close_connection(last_stream_id=self._lastStream)
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._receiving = False
        self._flush()
        self.transport.loseConnection()
