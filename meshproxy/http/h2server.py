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
peers that exceed them, and a header block is bounded in bytes as it grows
(CONTINUATION floods).  Abuse ends the connection with C{GOAWAY
ENHANCE_YOUR_CALM} and a warning naming the client:

  - streams the client resets are counted (L{ResetBudget}), the defence
    against Rapid Reset;
  - what the client sends is weighed against the requests and responses
    it moves (L{FloodBudget}): floods of PING, SETTINGS, empty DATA,
    PRIORITY, WINDOW_UPDATE or unknown frames run out of budget;
  - the connection preface and each header block must be complete within
    the listener's header timeout, like an HTTP/1 request head.

A client that sends without reading is not read either while its
transport is full, so what C{h2} answers by itself (PING and SETTINGS
acknowledgements) cannot pile up; a stalled stream pauses its upstream.

A client that goes quiet is probed with a PING every C{keepAlive} seconds,
and its connection aborted if the PING is still unanswered at the next:
a client gone without a FIN (a crashed host, a dropped NAT entry) would
otherwise hold its streams, their upstreams and buffers until TCP notices,
hours later.

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
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..drain import IDrainable
from ..limits import HEADER_BYTES
from .exchange import CLIENT_FULL, Exchange
from .h1 import ProtocolError, ResponseHead
from .h2 import FloodBudget, ResetBudget, StreamSender, newConnection, origProtoOf, requestFromHeaders, responseHeaders

__all__ = ["H2Exchange", "H2ServerProtocol"]

# Why a stream's response is held back, besides CLIENT_FULL.
_WINDOW = 2  # the client's window for it is spent

#: What a SETTINGS frame costs in L{FloodBudget} bytes beyond its own:
#: C{h2} walks every stream for a new initial window, and so do we.
_SETTINGS_COST = 1024


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
        An empty one (a legal DATA frame) is not passed on: as an HTTP/1
        chunk it would be the last one, and what follows it a new request
        on the application's connection (request smuggling).
        """
        if data and not self._done:
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
        server = self._server
        server._budget.earn(len(data))
        if not self._sender.send(data):
            server._wait(self)
            self._pauseResponse(_WINDOW, True)
        server._flush()

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

    def _leave(self) -> H2ServerProtocol:
        """
        The exchange is over, however it ended: it stops counting against
        C{[proxy] max_requests} and leaves the connection's exchanges and
        timers.

        @return: the connection, for what the caller does next.
        """
        self._done = True
        if self._admitted:
            self._release()
        server = self._server
        server._streams.pop(self._streamId, None)
        server._watched.discard(self)
        return server

    def _exchangeDone(self) -> None:
        """
        The response is complete (or waits only for window): the stream
        leaves the connection's exchanges.  A request still being sent is
        refused the rest with C{NO_ERROR} (RFC 9113, section 8.1), once the
        response is out.
        """
        server = self._leave()
        if self._sender.waiting:
            server._wait(self)
        elif not self._requestDone:
            server._reset(self._streamId, ErrorCodes.NO_ERROR)
        self._setPaused(self._paused, False)
        server._flush()
        server._closeIfDone()

    def _cutShort(self) -> None:
        """
        A response that started cannot be completed: reset the stream.
        """
        server = self._leave()
        server._unwait(self._streamId)
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
    @ivar _waiting: exchanges whose response body waits for window, by
        stream id: a stream's C{WINDOW_UPDATE} finds its own at once.
    @ivar _starved: those of them that have stream window but wait for
        the connection's, in the order they get it: a connection
        C{WINDOW_UPDATE} serves them in turn until it is spent, rather
        than trying every waiting stream (a flood of 1-byte updates would
        cost a pass over all of them each).
    @ivar _watched: exchanges whose response is awaited, for the one
        response timer of the connection.
    @ivar _timer: that timer, set once and left to run rather than set and
        cancelled per stream.
    @ivar _resets: the client's Rapid Reset budget.
    @ivar _budget: the client's budget of frames that carry no request or
        response (L{FloodBudget}).
    @ivar _preface: whether the client's connection preface is still
        incomplete (its first SETTINGS frame not received).
    @ivar _headSince: when the preface or the header block in progress
        began, for the header timeout; L{None} while neither is pending.
    @ivar _headTimer: the header timer, set once and left to run, like
        L{_timer}.
    @ivar _trailers: request trailers by stream, until the stream's end
        (C{h2} reports them just before it).
    @ivar _clientFull: whether the client transport's write buffer is
        full; the client is not read meanwhile, or the answers C{h2}
        writes by itself (PING and SETTINGS acknowledgements, resets)
        would pile up in it without bound when the client sends and never
        reads.
    @ivar _receiving: whether events are being dispatched; writes wait for
        the end of the batch, so that one read costs one write.
    @ivar _lastStream: after L{drain}, the last stream served; L{None}
        before.
    @ivar _keepAlive: seconds between PING probes of a quiet client; 0
        sends none.
    @ivar _heard: whether anything came from the client since the last
        keep-alive tick.
    @ivar _pinged: whether our PING is unanswered.
    @ivar _keepAliveCall: the next keep-alive tick.
    @ivar _closed: whether the connection is closing.
    """

    _log = Logger()
    _timer = None
    _headTimer = None
    _headSince: float | None = None
    _preface = True
    _clientFull = False
    _receiving = False
    _lastStream: int | None = None
    _closed = False
    _heard = True
    _pinged = False
    _keepAliveCall = None

    def __init__(self, context, keepAlive: float = 10.0) -> None:
        self._context = context
        self._keepAlive = keepAlive
        self._src = context.connections
        self.h2 = newConnection(clientSide=False, maxHeaderList=self._context.limits.maxHeaderBytes)
        self._streams: dict[int, H2Exchange] = {}
        self._waiting: dict[int, H2Exchange] = {}
        self._starved: dict[int, H2Exchange] = {}
        self._watched: set[H2Exchange] = set()
        self._resets = ResetBudget()
        self._budget = FloodBudget()
        self._handlers = {
            RequestReceived: self._requestReceived,
            DataReceived: self._dataReceived,
            TrailersReceived: self._trailersReceived,
            StreamEnded: self._streamEnded,
            StreamReset: self._streamReset,
            WindowUpdated: self._windowUpdated,
            RemoteSettingsChanged: self._settingsChanged,
            ConnectionTerminated: self._terminated,
            PingAckReceived: self._pingAcknowledged,
        }
        self._trailers: dict[int, list] = {}

    def connectionMade(self) -> None:
        self._src.opened()
        self.transport.registerProducer(self, True)
        self._context.registry.add(self)
        self._headCheck()
        self._flush()
        if self._keepAlive:
            self._keepAliveCall = self._context.clock.callLater(self._keepAlive, self._keepAliveTick)

    def dataReceived(self, data: bytes) -> None:
        self._src.read(len(data))
        self._heard = True
        self._receiving = True
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError as e:
            # h2 queued the GOAWAY that says why.
            self._log.info("HTTP/2 error from {peer}: {error}", peer=self.transport.getPeer(), error=e)
            if isinstance(e, DenialOfServiceError):
                # h2 raises it only for a header block or list over the
                # limit: the HTTP/2 431.
                self._context.limits.refused(HEADER_BYTES)
                self._refused("header_bytes")
            else:
                self._refused("protocol_error")
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
        if self._budget.spend(len(data), self._context.clock.seconds()) and not self._closed:
            self._calm("flood", "too many frames without requests or responses (flood)")
            return
        self._headCheck()
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._context.registry.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._headTimer is not None:
            self._headTimer.cancel()
            self._headTimer = None
        if self._keepAliveCall is not None:
            self._keepAliveCall.cancel()
            self._keepAliveCall = None
        streams = list(self._streams.values())
        self._streams.clear()
        for exchange in streams:
            exchange.cancel()
        self._src.closed(reason.check(ConnectionDone) is not None)

    # IPushProducer, for the client transport.

    def pauseProducing(self) -> None:
        self._clientFull = True
        self.transport.pauseProducing()
        for exchange in self._streams.values():
            exchange._pauseResponse(CLIENT_FULL, True)

    def resumeProducing(self) -> None:
        self._clientFull = False
        self.transport.resumeProducing()
        if self._headSince is not None:
            # The client could not go on while it was not read.
            self._headSince = self._context.clock.seconds()
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
        headers = event.headers
        self._budget.earn(sum(len(name) + len(value) for name, value in headers))
        exchange = self._streams[streamId] = H2Exchange(self, streamId)
        exchange.begin(headers, event.stream_ended is not None)

    def _dataReceived(self, event: DataReceived) -> None:
        self._budget.earn(event.flow_controlled_length)
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
        self._unwait(event.stream_id)
        exchange = self._streams.pop(event.stream_id, None)
        if exchange is not None:
            exchange.cancel()
        if event.remote_reset and self._resets.reset(self._context.clock.seconds()):
            self._calm("rapid_reset", "too many streams reset (Rapid Reset)")
        else:
            self._closeIfDone()

    def _windowUpdated(self, event: WindowUpdated) -> None:
        streamId = event.stream_id
        if streamId:
            # One waiting for the connection's window gains nothing.
            exchange = self._waiting.get(streamId)
            if exchange is not None and streamId not in self._starved:
                self._drainExchange(exchange)
        else:
            h2 = self.h2
            for exchange in list(self._starved.values()):
                if h2.outbound_flow_control_window <= 0:
                    break
                self._drainExchange(exchange)

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        self._preface = False
        self._budget.charge(_SETTINGS_COST)
        # A larger initial window may let waiting bodies go.
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for exchange in list(self._waiting.values()):
                self._drainExchange(exchange)

    def _wait(self, exchange: H2Exchange) -> None:
        """
        C{exchange}'s response body waits for window: its stream's, or
        the connection's, after the others that wait for it.
        """
        streamId = exchange._streamId
        self._waiting[streamId] = exchange
        starved = self._starved
        starved.pop(streamId, None)
        stream = self.h2.streams.get(streamId)
        if stream is not None and stream.outbound_flow_control_window > 0:
            starved[streamId] = exchange

    def _unwait(self, streamId: int) -> None:
        """
        Nothing waits for window on C{streamId} any more.
        """
        self._waiting.pop(streamId, None)
        self._starved.pop(streamId, None)

    def _drainExchange(self, exchange: H2Exchange) -> None:
        try:
            drained = exchange.drainSender()
        except StreamClosedError:
            drained = True
        if drained:
            self._unwait(exchange._streamId)
            if exchange._done:
                self._closeIfDone()
        else:
            self._wait(exchange)

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

    def _headCheck(self) -> None:
        """
        Time the client's connection preface and header blocks, as the
        HTTP/1 server times a request head: until the block ends the
        connection can carry nothing else, and a client trickling it
        (slowloris) would hold the connection and its buffers for ever.
        A connection between requests is not timed here.
        """
        if self._preface or self.h2.incoming_buffer.headerPending:
            if self._headSince is None:
                clock, timeout = self._context.clock, self._context.headerTimeout
                self._headSince = clock.seconds()
                if self._headTimer is None and timeout:
                    self._headTimer = clock.callLater(timeout, self._headTimerFired)
        else:
            self._headSince = None

    def _headTimerFired(self) -> None:
        """
        Close the connection if the preface or header block in progress
        took too long; wait again if it has time left, or if it is we who
        do not read (L{_clientFull}: the client has the whole timeout again
        once we do); lapse if none is in progress.

        A header block cannot be given up by resetting its stream: the
        connection's HPACK state needs it whole, and nothing else may
        come before its end.  So the connection goes, with C{GOAWAY}.
        """
        self._headTimer = None
        if self._headSince is None or self._closed:
            return
        clock, timeout = self._context.clock, self._context.headerTimeout
        left = self._headSince + timeout - clock.seconds()
        if left > 0 or self._clientFull:
            self._headTimer = clock.callLater(left if left > 0 else timeout, self._headTimerFired)
            return
        what = "connection preface" if self._preface else "header block"
        self._log.info("HTTP/2 {what} from {peer} not complete in {timeout}s", what=what, peer=self.transport.getPeer(), timeout=timeout)
        self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR if self._preface else ErrorCodes.ENHANCE_YOUR_CALM)
        self._refused("header_timeout")
        self._close()

    def _pingAcknowledged(self, event: PingAckReceived) -> None:
        self._pinged = False

    def _keepAliveTick(self) -> None:
        """
        Probe a quiet client with a PING; abort the connection of one whose
        PING is still unanswered.  While the client is not read
        (L{_clientFull}) its answer could not arrive: it is not judged.
        """
        self._keepAliveCall = None
        if self._closed:
            return
        if self._pinged and not self._clientFull:
            self._log.info(
                "No PING answer from {peer} within {interval}s: closing", peer=self.transport.getPeer(), interval=self._keepAlive
            )
            self._refused("keepalive")
            self.transport.abortConnection()
            return
        if not self._heard and not self._pinged:
            self._pinged = True
            self.h2.ping(b"meshprxy")
            self._flush()
        self._heard = False
        self._keepAliveCall = self._context.clock.callLater(self._keepAlive, self._keepAliveTick)

    def _calm(self, kind: str, reason: str) -> None:
        """
        Close the connection of an abusive client, with C{GOAWAY
        ENHANCE_YOUR_CALM}, and say who and why.

        @param kind: the C{reason} label it is counted under.
        @param reason: what the log says.
        """
        self._log.warn("Closing the HTTP/2 connection from {peer}: {reason}", peer=self.transport.getPeer(), reason=reason)
        self._refused(kind)
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._close()

    def _refused(self, reason: str) -> None:
        """
        Count the connection in C{http2_connections_refused_total}.
        """
        context = self._context
        context.metrics.http2Refused.labels(context.direction, reason).inc()

    def _closeIfDone(self) -> None:
        if self._lastStream is not None and not self._streams and not self._waiting and not self._closed:
            self.h2.close_connection(last_stream_id=self._lastStream)
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._receiving = False
        self._flush()
        self.transport.loseConnection()
