# -*- test-case-name: tests.test_http_h2client -*-
"""
HTTP/2 to endpoints: one multiplexed connection per endpoint, opened on
demand and shared by every request to it (Twisted has no HTTP/2 client;
this one is written on C{h2}, as its Twisted examples and Scrapy's are).

Between proxies this is the connection HTTP/1 requests are upgraded onto
(over mTLS, through L{meshproxy.endpoint.MeshConnector}); towards an
application it is h2c with prior knowledge, for requests that arrived as
HTTP/2 (gRPC).  Each request is a L{_Stream}, the upstream of one
L{meshproxy.http.exchange.Exchange}.

Flow control is tied to the consumer in both directions:

  - Response bodies: received data is acknowledged (so the peer may send
    more) as soon as it was handed to the exchange, unless the exchange
    said its client cannot take more (C{pauseReading}); then the stream's
    credit is withheld until C{resumeReading}.  What the proxy holds is
    bounded by the stream window.  The connection's credit goes back at
    once all the same (as grpc-go does): the connection is shared by the
    streams of every client, and one client that stops reading sixteen
    streams would otherwise spend its window and stall all the others.
  - Request bodies: a stream sends within the peer's windows and queues
    the rest (L{meshproxy.http.h2.StreamSender}), telling the exchange to
    stop its client (C{upstreamThrottled}); so does a full transport,
    for every stream of the connection.

A connection that goes quiet is probed with a PING every C{keepAlive}
seconds; one that does not answer by the next probe is closed, failing its
streams, rather than left to swallow requests.  A C{GOAWAY} from the peer
takes the connection out of the pool at once: the streams it did not
accept fail as refused (and are retried by their exchanges), the others
run to their end.  Our side does the same, without the frame, to the
connection of an endpoint that no service lists any more
(L{H2Pool.retain}): no new streams, and a close once the last one ends.
Streams beyond the peer's concurrency limit wait in order for a slot.
"""

from __future__ import annotations

from collections import deque

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import Endpoint
from ..endpoint import IConnector
from ..metrics import TCPMetrics
from .client import ConnectionFactory
from .h1 import DATA, END, HEAD, INFORMATIONAL, ProtocolError, RequestHead
from .h2 import StreamSender, newConnection, requestHeaders, responseFromHeaders

__all__ = ["H2ClientConnection", "H2Pool", "StreamError"]

# Why a stream's request body is held back (bits).
_WINDOW = 1  # the stream waits for window, or for a slot to open in
_TRANSPORT = 2  # the connection's transport buffer is full


class StreamError(Exception):
    """
    A stream ended without its response: reset by the peer (C{errorCode}),
    refused by its C{GOAWAY}, or lost with the connection.
    """

    def __init__(self, errorCode: int, message: str) -> None:
        super().__init__(message)
        self.errorCode = errorCode


class _Stream:
    """
    One request on an L{H2ClientConnection}: the upstream of one exchange
    (see L{meshproxy.http.exchange}).

    @ivar _owner: the exchange, or L{None} once it is done with the stream.
    @ivar _sender: sends the request body within the peer's windows.
    @ivar _headers: the request's header list, until the stream opens.
    @ivar _endWithHeaders: whether the request has no body.
    @ivar _throttled: why the request body is held back (C{_WINDOW} ...).
    @ivar _paused: whether the owner's client cannot take more response.
    @ivar _unacked: response bytes received while paused, to acknowledge
        when the client can take more.
    @ivar _trailers: the response trailers, until the stream ends.
    """

    _throttled = 0
    _paused = False
    _unacked = 0
    _trailers = None
    _headers = None
    _endWithHeaders = False

    def __init__(self, connection: H2ClientConnection) -> None:
        self._connection = connection
        self._owner = None
        self._sender = StreamSender(connection.h2)

    @property
    def streamId(self) -> int:
        return self._sender.streamId

    # The upstream, for the exchange.

    def attach(self, owner, head: RequestHead, target: bytes, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """
        Open the stream with the request head (or wait for a slot).

        @param end: whether the request is complete with its head.
        """
        self._owner = owner
        self._headers = requestHeaders(head, target, headers)
        self._endWithHeaders = end or (not head.chunked and not head.contentLength)
        self._connection._open(self)

    def sendData(self, data: bytes) -> None:
        if not self._sender.send(data):
            # Until a window update drains it, the owner's client waits.
            self._connection._waiting.add(self)
            self._throttle(_WINDOW, True)
        self._connection._flush()

    def sendEnd(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        sender = self._sender
        if not sender.closed and not self._endWithHeaders:
            sender.end(trailers)
            self._connection._flush()

    def pauseReading(self) -> None:
        self._paused = True

    def resumeReading(self) -> None:
        self._paused = False
        self._acknowledge()

    def abandon(self) -> None:
        """
        The exchange ended before the stream did: reset it (C{CANCEL}), so
        the peer, and the application behind it, stops working on it.
        """
        self._owner = None
        self._acknowledge()
        self._close(ErrorCodes.CANCEL)

    def finish(self, keep: bool) -> None:
        """
        The response is complete: the stream is over, and a request body
        still being sent is given up as in L{abandon}.  There is nothing
        to keep: the connection carries the next request either way.
        """
        self.abandon()

    # Inside the connection.

    def _start(self, streamId: int) -> None:
        """
        A slot is open: send the head, and what waited for it.
        """
        sender = self._sender
        sender.streamId = streamId
        headers, self._headers = self._headers, None
        self._connection.h2.send_headers(streamId, headers, end_stream=self._endWithHeaders)
        if self._endWithHeaders:
            sender.closed = True
        if sender.flush():
            self._throttle(_WINDOW, False)

    def _throttle(self, reason: int, throttled: bool) -> None:
        before = self._throttled
        after = before | reason if throttled else before & ~reason
        self._throttled = after
        owner = self._owner
        if owner is not None and bool(before) != bool(after):
            owner.upstreamThrottled(bool(after))

    def _received(self, data: bytes, size: int) -> None:
        """
        Response body: to the owner, acknowledged unless its client is full
        (and then on the connection only).  An empty piece (a legal DATA
        frame) is not passed on: to an HTTP/1 client it would be the last
        chunk, and the rest of the body a response of its own.
        """
        owner = self._owner
        if self._paused and owner is not None:
            self._unacked += size
            if size:
                self._connection.h2.increment_flow_control_window(size)
        else:
            self._connection.h2.acknowledge_received_data(size, self.streamId)
        if owner is not None and data:
            owner.responseEvents[DATA](data)

    def _acknowledge(self) -> None:
        unacked, self._unacked = self._unacked, 0
        if unacked:
            self._connection.h2.acknowledge_received_data(unacked, self.streamId)
            self._connection._flush()

    def _close(self, code: int) -> None:
        """
        Reset the stream unless both ends are closed, and forget it.
        """
        connection = self._connection
        if connection._forget(self) and self.streamId:
            try:
                connection.h2.reset_stream(self.streamId, code)
            except StreamClosedError:
                pass
            connection._flush()

    def _failed(self, reason: Failure) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.upstreamLost(reason)


@implementer(IPushProducer)
class H2ClientConnection(Protocol):
    """
    One HTTP/2 connection to an endpoint, multiplexing the requests of any
    number of exchanges.

    @ivar endpoint: where it is connected.
    @ivar metrics: the L{TCPMetrics} it is counted in (C{peer="dst"}).
    @ivar h2: the C{h2} connection state.
    @ivar draining: whether it takes no new streams (a C{GOAWAY} came, its
        endpoint left every service, or it is closing).
    @ivar _streams: the open streams, by id.
    @ivar _queued: streams waiting for the peer's concurrency limit.
    @ivar _waiting: streams whose body waits for window.
    @ivar _full: whether the transport's write buffer is full.
    @ivar _heard: whether anything came from the peer since the last
        keep-alive tick.
    @ivar _pinged: whether a PING is unanswered.
    @ivar _keepAliveCall: the next keep-alive tick.
    """

    _log = Logger()
    draining = False
    _full = False
    _heard = True
    _pinged = False
    _keepAliveCall = None

    def __init__(self, pool: H2Pool, endpoint: Endpoint, metrics: TCPMetrics) -> None:
        self._pool = pool
        self.endpoint = endpoint
        self.metrics = metrics
        self.h2 = newConnection(clientSide=True)
        self._streams: dict[int, _Stream] = {}
        self._queued: deque[_Stream] = deque()
        self._waiting: set[_Stream] = set()
        self._handlers = {
            ResponseReceived: self._responseReceived,
            DataReceived: self._dataReceived,
            TrailersReceived: self._trailersReceived,
            StreamEnded: self._streamEnded,
            StreamReset: self._streamReset,
            InformationalResponseReceived: self._informationalReceived,
            WindowUpdated: self._windowUpdated,
            RemoteSettingsChanged: self._settingsChanged,
            ConnectionTerminated: self._terminated,
            PingAckReceived: self._pingAcknowledged,
        }

    def stream(self) -> _Stream:
        """
        A new stream for one request; it opens when it is attached.
        """
        return _Stream(self)

    def connectionMade(self) -> None:
        self.metrics.opened()
        self.transport.registerProducer(self, True)
        self._flush()
        self._keepAliveCall = self._pool.clock.callLater(self._pool.keepAlive, self._keepAlive)

    def dataReceived(self, data: bytes) -> None:
        self.metrics.read(len(data))
        self._heard = True
        try:
            events = self.h2.receive_data(data)
        except H2ProtocolError as e:
            self._log.info("HTTP/2 error from {endpoint}: {error}", endpoint=str(self.endpoint.address), error=e)
            self._flush()
            self.transport.loseConnection()
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.draining = True
        self._pool._forget(self)
        if self._keepAliveCall is not None:
            self._keepAliveCall.cancel()
            self._keepAliveCall = None
        self.metrics.closed(reason.check(ConnectionDone) is not None)
        streams = [*self._streams.values(), *self._queued]
        self._streams.clear()
        self._queued.clear()
        failure = Failure(StreamError(ErrorCodes.CANCEL, f"connection lost: {reason.getErrorMessage()}"))
        for stream in streams:
            stream._failed(failure)

    # IPushProducer, for the transport to the endpoint.

    def pauseProducing(self) -> None:
        self._full = True
        for stream in self._streams.values():
            stream._throttle(_TRANSPORT, True)

    def resumeProducing(self) -> None:
        self._full = False
        for stream in list(self._streams.values()):
            stream._throttle(_TRANSPORT, False)

    def stopProducing(self) -> None:
        """
        The connection is closing; L{connectionLost} follows.
        """

    # Streams.

    def _open(self, stream: _Stream) -> None:
        """
        Open C{stream} now, or queue it behind the peer's concurrency limit.
        A connection that began to close meanwhile refuses it on the next
        reactor turn, once the exchange is done attaching.
        """
        if self.draining:
            refused = Failure(StreamError(ErrorCodes.REFUSED_STREAM, "the connection is closing"))
            self._pool.clock.callLater(0, stream._failed, refused)
            return
        # Our own count: h2's walks every stream on each call.
        if self._queued or len(self._streams) >= self.h2.remote_settings.max_concurrent_streams:
            self._queued.append(stream)
            stream._throttle(_WINDOW, True)
            return
        self._start(stream)
        self._flush()

    def _openQueued(self) -> None:
        queued = self._queued
        maxStreams = self.h2.remote_settings.max_concurrent_streams
        while queued and len(self._streams) < maxStreams:
            self._start(queued.popleft())

    def _start(self, stream: _Stream) -> None:
        """
        Give C{stream} the next stream id and send its head, throttled like
        the open streams if the transport is full.
        """
        streamId = self.h2.get_next_available_stream_id()
        self._streams[streamId] = stream
        if self._full:
            stream._throttle(_TRANSPORT, True)
        stream._start(streamId)
        if stream._sender.waiting:
            self._waiting.add(stream)

    def _forget(self, stream: _Stream) -> bool:
        """
        Forget C{stream}; whether it was open (and may need a reset).
        """
        self._waiting.discard(stream)
        if self._streams.pop(stream.streamId, None) is not None:
            self._openQueued()
            self._closeIfDone()
            return True
        if stream in self._queued:
            self._queued.remove(stream)
        return False

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.metrics.wrote(len(data))
            self.transport.write(data)

    # Events.

    def _responseReceived(self, event: ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream._owner is None:
            return
        try:
            head = responseFromHeaders(event.headers, event.stream_ended is not None)
        except ProtocolError as e:
            owner = stream._owner
            stream._close(ErrorCodes.PROTOCOL_ERROR)
            owner.responseFailed(e)
            return
        stream._owner.responseEvents[HEAD](head)

    def _informationalReceived(self, event: InformationalResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None and stream._owner is not None:
            stream._owner.responseEvents[INFORMATIONAL](responseFromHeaders(event.headers, False))

    def _dataReceived(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            # Data for a stream given up: the connection's window still
            # counts it.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        else:
            stream._received(event.data, event.flow_controlled_length)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._trailers = event.headers

    def _streamEnded(self, event: StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        owner = stream._owner
        if owner is None:
            stream._close(ErrorCodes.CANCEL)
        else:
            owner.responseEvents[END](stream._trailers)

    def _streamReset(self, event: StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            self._forget(stream)
            stream._failed(Failure(StreamError(event.error_code, f"stream reset by the endpoint ({event.error_code!r})")))

    def _windowUpdated(self, event: WindowUpdated) -> None:
        if event.stream_id:
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream in self._waiting:
                self._drain(stream)
        else:
            for stream in list(self._waiting):
                self._drain(stream)

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        # A larger initial window or concurrency limit may let streams on.
        self._openQueued()
        for stream in list(self._waiting):
            self._drain(stream)

    def _drain(self, stream: _Stream) -> None:
        if stream._sender.flush():
            self._waiting.discard(stream)
            stream._throttle(_WINDOW, False)

    def _terminated(self, event: ConnectionTerminated) -> None:
        """
        A C{GOAWAY}: no new streams here; those above its last stream id
        were not processed and fail as refused, so their exchanges may try
        again elsewhere.
        """
        self.draining = True
        self._pool._forget(self)
        refused = Failure(StreamError(ErrorCodes.REFUSED_STREAM, "stream refused by GOAWAY"))
        last = event.last_stream_id or 0
        for streamId, stream in list(self._streams.items()):
            if streamId > last:
                self._forget(stream)
                stream._failed(refused)
        queued = list(self._queued)
        self._queued.clear()
        for stream in queued:
            stream._failed(refused)
        self._closeIfDone()

    def retire(self) -> None:
        """
        The endpoint left every service: out of the pool, so that no new
        stream comes, and closed once the streams in progress end, so that
        none of them is cut short.
        """
        self.draining = True
        self._pool._forget(self)
        self._closeIfDone()

    def _closeIfDone(self) -> None:
        if self.draining and not self._streams and not self._queued:
            self.transport.loseConnection()

    # Keep-alive.

    def _pingAcknowledged(self, event: PingAckReceived) -> None:
        self._pinged = False

    def _keepAlive(self) -> None:
        """
        Probe a quiet connection with a PING; close one whose last PING is
        still unanswered.
        """
        pool = self._pool
        if self._pinged:
            self._keepAliveCall = None
            self._log.info(
                "No PING answer from {endpoint} within {interval}s: closing",
                endpoint=str(self.endpoint.address),
                interval=pool.keepAlive,
            )
            self.transport.abortConnection()
            return
        if not self._heard:
            self._pinged = True
            self.h2.ping(b"meshprxy")
            self._flush()
        self._heard = False
        self._keepAliveCall = pool.clock.callLater(pool.keepAlive, self._keepAlive)


class H2Pool:
    """
    The HTTP/2 connection of each endpoint, shared by every route of a
    proxy: at most one per endpoint, opened when the first request needs
    it; requests that come while it opens wait for that one attempt.

    The same interface as L{meshproxy.http.client.ConnectionPool}: C{idle}
    gives an upstream at once if it can, C{connect} one when there is a
    connection.

    @ivar clock: times the keep-alive.
    @ivar keepAlive: seconds between PING probes of a quiet connection.
    @ivar _connections: the usable connection of each endpoint.
    @ivar _connecting: the requests waiting for each endpoint's attempt.
    @ivar _retained: the endpoints whose connections are kept, or L{None}
        for all of them: set by L{retain}.
    """

    def __init__(self, connector: IConnector, clock: IReactorTime, keepAlive: float = 10.0) -> None:
        self._connector = connector
        self.clock = clock
        self.keepAlive = keepAlive
        self._connections: dict[Endpoint, H2ClientConnection] = {}
        self._connecting: dict[Endpoint, list[Deferred]] = {}
        self._retained: frozenset[Endpoint] | None = None

    def idle(self, endpoint: Endpoint) -> _Stream | None:
        """
        A stream on the endpoint's connection, if it has one.
        """
        connection = self._connections.get(endpoint)
        return None if connection is None else connection.stream()

    def connect(self, endpoint: Endpoint, metrics: TCPMetrics) -> Deferred[_Stream]:
        """
        A stream once the endpoint has a connection; opens one if none is
        being opened.

        @param metrics: where a new connection is counted.
        """
        connection = self._connections.get(endpoint)
        if connection is not None:
            return succeed(connection.stream())
        waiters = self._connecting.get(endpoint)
        if waiters is None:
            waiters = self._connecting[endpoint] = []
            attempt = self._connector.connect(endpoint, ConnectionFactory(H2ClientConnection, self, endpoint, metrics))
            attempt.addCallbacks(self._connected, self._failed, (endpoint,), None, (endpoint,))
        waiter: Deferred[_Stream] = Deferred(waiters.remove)
        waiters.append(waiter)
        return waiter

    def retain(self, endpoints: frozenset[Endpoint]) -> None:
        """
        Keep connections to C{endpoints} only: the connection of any other
        endpoint is retired (L{H2ClientConnection.retire}), and so is one
        still being opened, once the requests waiting for it have their
        streams.

        @param endpoints: every endpoint some route may still send to.
        """
        self._retained = endpoints
        for endpoint in self._connections.keys() - endpoints:
            self._connections[endpoint].retire()

    def _connected(self, connection: H2ClientConnection, endpoint: Endpoint) -> None:
        waiters = self._connecting.pop(endpoint)
        retained = self._retained
        kept = retained is None or endpoint in retained
        if kept and not connection.draining:
            self._connections[endpoint] = connection
        for waiter in waiters:
            # The exchange opens its stream before this returns.
            waiter.callback(connection.stream())
        if not kept:
            connection.retire()

    def _failed(self, reason: Failure, endpoint: Endpoint) -> None:
        for waiter in self._connecting.pop(endpoint):
            waiter.errback(reason)

    def _forget(self, connection: H2ClientConnection) -> None:
        """
        C{connection} takes no new streams.
        """
        if self._connections.get(connection.endpoint) is connection:
            del self._connections[connection.endpoint]
