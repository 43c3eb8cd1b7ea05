# -*- test-case-name: tests.test_http_server -*-
"""
The HTTP/1.1 server side of the proxy: the protocol an accepted connection
is handed to once detection saw an HTTP/1 request line.

Each request is routed, balanced and sent on its own: the route comes from
its authority, the endpoint from the route's balancer, the connection from
the pool of that endpoint.  One request is served at a time per client
connection, which is what makes pipelining safe: the next request's events
wait in a queue (and the client is paused) until the response before it is
complete, so responses leave in order and a slow response never has
another's bytes interleaved with it.

Flow control, in both directions, is done by pausing transports, never by
buffering:

  - Request bodies: the connection to the endpoint is its transport's
    producer for life and tells the server when its write buffer fills, and
    the server then stops reading the client.  Until a connection exists,
    at most one read of body is held.
  - Response bodies: the server is its client transport's producer and
    pauses the endpoint's connection while the client's buffer is full.
  - Queued requests: while a response is pending, data from the client is
    parsed once and then the client is paused, so a pipelining client can
    make the proxy hold one read, not an unbounded queue.

The per-request path allocates no L{Deferred}, sets no timer and looks up
no metric labels: the balancer is asked directly (its L{Waiter} only when
it has no usable endpoint), an idle connection is taken synchronously,
responses arrive by method call from L{UpstreamConnection}, one lazy timer
per connection watches the response timeout, and the route carries its
metric children.

Responses the proxy makes itself carry C{meshproxy-proxy-error}: 400, 414
and 431 for requests that must not be forwarded, 404 for an authority no
service claims, 503 when no endpoint became usable within the failfast
time, 502 when no endpoint could be reached or one broke the exchange, 504
when an endpoint gave no response head within the response timeout.

Such a response keeps the connection open when the client can tell where
its next request starts: the request was read whole, or it has no body, or
a body of at most L{DISCARD_LIMIT} bytes that the server then reads and
drops.  A larger or chunked body, a body the client holds back until it
hears C{100 Continue}, a C{CONNECT} or an upgrade request closes the
connection instead (with C{Connection: close}): reading a large body only
to drop it costs more than a new connection, and a body that may never
come cannot be told from the next request.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus

from attrs import field, frozen
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..metrics import HTTPMetrics, ProxyMetrics, TCPMetrics
from .client import ConnectionPool, UpstreamConnection
from .h1 import (
    END,
    ERROR,
    LAST_CHUNK,
    UPGRADE,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    chunk,
    requestHead,
    responseHead,
)
from .router import splitTarget
from .tunnel import tunnel

__all__ = ["DISCARD_LIMIT", "HTTPServerProtocol", "ServerContext", "errorResponse"]

#: The largest request body read and dropped after an early error response
#: to keep the connection; a larger one closes it.
DISCARD_LIMIT = 65536

# Why the client's transport is paused, as bits: the server reads again
# only when none is left.
_WAITING = 1  # requests are queued behind the one being answered
_THROTTLED = 2  # the endpoint's connection cannot take more body yet
_CONNECTING = 4  # body arrived before there was a connection to send it on

_NOTHING = frozenset()
_BODILESS_STATUSES = frozenset({204, 304})


@frozen
class ServerContext:
    """
    What every connection of one listener shares.

    @ivar router: gives the L{meshproxy.http.router.Route} of an authority
        (L{None}: no route, 404).
    @ivar pool: the proxy's connections to endpoints.
    @ivar clock: times responses (latency, response timeout).
    @ivar metrics: where connections are counted.
    @ivar direction: the C{direction} label, C{"outbound"} or C{"inbound"}.
    @ivar tls: the C{tls} label of this listener's connections.
    @ivar target: the C{target} label of the accepted connections: the
        service of an upstream listener, empty for the outbound listener,
        whose connections carry requests for any service.
    @ivar responseTimeout: seconds an endpoint has, once the whole request
        was sent to it, to start its response; 0 waits forever.
    @ivar attempts: how many endpoints a request tries to connect to
        before it fails with 502.
    @ivar connections: the TCP metrics of the accepted connections.
    @ivar unrouted: the HTTP metrics of requests that have no route (404,
        and requests refused before their authority was known), under an
        empty C{authority}: the authority a client names is not a label,
        or any client could grow the metrics without bound.
    """

    router: object
    pool: ConnectionPool
    clock: IReactorTime
    metrics: ProxyMetrics
    direction: str = "outbound"
    tls: str = "no_identity"
    target: str = ""
    responseTimeout: float = 30.0
    attempts: int = 3
    connections: TCPMetrics = field(init=False)
    unrouted: HTTPMetrics = field(init=False)

    @connections.default
    def _connections(self) -> TCPMetrics:
        return self.metrics.tcp(self.direction, "src", self.target, self.tls)

    @unrouted.default
    def _unrouted(self) -> HTTPMetrics:
        return self.metrics.http(self.direction, "", self.tls)


def errorResponse(status: int, reason: str, close: bool) -> bytes:
    """
    A whole response the proxy makes itself: the status, the reason in
    C{meshproxy-proxy-error} and as a one-line body.
    """
    body = reason.encode() + b"\n"
    headers = [
        (b"meshproxy-proxy-error", reason.encode()),
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    extra = b"Connection: close\r\n" if close else b""
    return responseHead(status, HTTPStatus(status).phrase.encode(), headers, extra) + body


def _awaitsContinue(head: RequestHead) -> bool:
    """
    Whether the client holds its body back until it hears C{100 Continue}.
    """
    return any(name.lower() == b"expect" and value.lower() == b"100-continue" for name, value in head.headers)


@implementer(IHalfCloseableProtocol, IPushProducer)
class HTTPServerProtocol(Protocol):
    """
    Serves the HTTP/1 requests of one accepted connection.

    Connection state (the immutable defaults are class attributes):

    @ivar _context: what the listener's connections share.
    @ivar _src: the TCP metrics of the connection.
    @ivar _reader: parses the client's requests.
    @ivar _queue: events parsed but not yet acted on (pipelined requests).
    @ivar _requestEvents: the handlers of request events, by event kind.
    @ivar responseEvents: the handlers of response events, by event kind,
        for L{UpstreamConnection}.
    @ivar _draining: whether L{_drain} is running; it is re-entered by
        responses the proxy makes at once, and must loop rather than recurse.
    @ivar _paused: why the client transport is paused (C{_WAITING} ...).
    @ivar _clientFull: whether the client transport's write buffer is full.
    @ivar _readDone: whether the client shut down its sending side.
    @ivar _closing: whether the connection is being closed; nothing more is
        read or answered.
    @ivar _skip: whether the rest of a request answered early is read and
        dropped.
    @ivar _next: the relay that took the connection over after an upgrade.
    @ivar _held: the raw bytes after an upgrade request, until its response
        says whether they are the tunnel's or more HTTP.
    @ivar _timer: the response timer, or L{None}.  It is set once and left
        to run, not set and cancelled per request: when it fires it looks at
        C{_deadline} and waits again for what is left, or lapses.

    State of the exchange in progress, reset by L{_reset}:

    @ivar _head: the request, or L{None} between requests.
    @ivar _route: its route.
    @ivar _metrics: the HTTP metrics it is counted in, once counted.
    @ivar _out: the request head as sent to endpoints (kept for a retry).
    @ivar _pending: body pieces received before the connection was ready.
    @ivar _pick: the balancer's pick, until told how the exchange went.
    @ivar _tried: endpoints a connection attempt failed on.
    @ivar _error: why the last connection attempt failed.
    @ivar _connecting: the L{Deferred} of a wait for an endpoint or of a
        connection attempt.
    @ivar _upstream: the connection to the endpoint.
    @ivar _reused: whether it came from the pool.
    @ivar _bodySent: whether any body byte went to the endpoint.
    @ivar _retried: whether the request was already retried.
    @ivar _requestDone: whether the whole request was read.
    @ivar _status: the status of the final response, 0 before its head.
    @ivar _keepUpstream: whether the endpoint keeps its connection open.
    @ivar _untilClose: whether the response body ends when the endpoint
        closes the connection.
    @ivar _chunkedOut: whether the response body is chunked to the client.
    @ivar _closeAfter: whether to close the client connection after the
        response.
    @ivar _deadline: when the endpoint must have started its response, or
        0 when no response is awaited.
    @ivar _started: when the request head arrived.
    """

    _log = Logger()
    _draining = False
    _paused = 0
    _clientFull = False
    _readDone = False
    _closing = False
    _skip = False
    _next = None
    _held: list[bytes] | None = None
    _timer = None

    def __init__(self, context: ServerContext) -> None:
        self._context = context
        self._src = context.connections
        self._reader = RequestReader()
        self._queue: deque = deque()
        self._requestEvents = (
            self._requestHead,
            self._requestData,
            self._requestEnd,
            self._requestUpgraded,
            None,
            self._malformed,
        )
        self.responseEvents = (
            self.responseHead,
            self.responseData,
            self.responseEnd,
            self.responseUpgraded,
            self.responseInformational,
            self.responseFailed,
        )
        self._reset()

    def _reset(self) -> None:
        self._head: RequestHead | None = None
        self._route = None
        self._metrics: HTTPMetrics | None = None
        self._out = b""
        self._pending: list[bytes] | None = None
        self._pick = None
        self._tried = _NOTHING
        self._error = ""
        self._connecting = None
        self._upstream: UpstreamConnection | None = None
        self._reused = False
        self._bodySent = False
        self._retried = False
        self._requestDone = False
        self._status = 0
        self._keepUpstream = False
        self._untilClose = False
        self._chunkedOut = False
        self._closeAfter = False
        self._deadline = 0.0
        self._started = 0.0

    # The client connection.

    def connectionMade(self) -> None:
        self._src.opened()
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        if self._held is not None:
            # Counted by the relay if they turn out to be the tunnel's.
            self._held.append(data)
            self._setPaused(_WAITING, True)
            return
        if self._closing:
            return
        self._parse(data)
        self._drain()
        if self._queue and self._requestDone:
            self._setPaused(_WAITING, True)

    def readConnectionLost(self) -> None:
        if self._next is not None:
            self._next.readConnectionLost()
            return
        self._readDone = True
        if self._head is None:
            self._close()
        elif not self._requestDone and self._held is None:
            # The request was cut short: it can neither be completed nor
            # answered.
            self._abandon(True)
            self._close()

    def writeConnectionLost(self) -> None:
        if self._next is not None:
            self._next.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        self._closing = True
        self._abandon(True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._src.closed(reason.check(ConnectionDone) is not None)

    # IPushProducer, for the client transport.

    def pauseProducing(self) -> None:
        self._clientFull = True
        if self._upstream is not None:
            self._upstream.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._clientFull = False
        if self._upstream is not None:
            self._upstream.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client connection is closing; L{connectionLost} follows.
        """

    # Requests.

    def _parse(self, data: bytes) -> None:
        """
        Parse bytes from the client into the queue, counting them.
        """
        events = self._reader.feed(data)
        size = len(data)
        if events:
            kind, value = events[-1]
            if kind is ERROR:
                # llhttp reports a broken body after the head it belongs to
                # when both came in one read: drop that head, so that no
                # part of a refused request reaches an endpoint.
                start = len(events) - 1
                while start and events[start - 1][0] is not END:
                    start -= 1
                del events[start:-1]
            elif kind is UPGRADE:
                # What follows an upgrade is the relay's to count.
                size -= len(value)
        self._src.read(size)
        self._queue.extend(events)

    def _drain(self) -> None:
        """
        Act on queued events until a request is complete and waits for its
        response.
        """
        if self._draining:
            return
        self._draining = True
        queue = self._queue
        handlers = self._requestEvents
        try:
            while queue and not self._closing and self._next is None and self._held is None:
                kind = queue[0][0]
                if self._skip:
                    kind, value = queue.popleft()
                    if kind is END:
                        self._skip = False
                    elif kind is ERROR:
                        self._malformed(value)
                    continue
                if self._requestDone and kind is not UPGRADE:
                    break
                handlers[kind](queue.popleft()[1])
        finally:
            self._draining = False

    def _requestHead(self, head: RequestHead) -> None:
        context = self._context
        self._head = head
        self._started = context.clock.seconds()
        try:
            authority, target = splitTarget(head.method, head.target)
        except ProtocolError as e:
            self._malformed(e)
            return
        headers = head.headers
        if authority is None:
            authority = head.host
        elif head.method != b"CONNECT":
            # The authority of an absolute-form target replaces Host (RFC
            # 9112, section 3.2.2).
            headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            headers.append((b"Host", authority))
        route = self._route = context.router.route(authority)
        if route is None:
            self._respondError(404, f"no service for authority {(authority or b'').decode('latin-1')!r}")
            return
        metrics = self._metrics = route.metrics
        metrics.request()
        if head.method == b"CONNECT":
            # The connection is made once the whole request is read (the
            # UPGRADE event), so that the bytes after it are in hand.
            return
        if authority is None:
            # An HTTP/1.0 request may come without Host; the endpoints speak
            # HTTP/1.1, which requires it.
            headers = [*headers, (b"Host", route.authority.encode())]
        extra = b""
        if head.chunked:
            extra = b"Transfer-Encoding: chunked\r\n"
        if head.upgrade is not None:
            extra += b"Connection: Upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"
        self._out = requestHead(head.method, target, headers, extra)
        self._dispatch(False)

    def _requestData(self, data: bytes) -> None:
        pieces = chunk(data) if self._head.chunked else (data,)
        upstream = self._upstream
        if upstream is None:
            if self._pending is None:
                self._pending = []
            self._pending.extend(pieces)
            self._setPaused(_CONNECTING, True)
        else:
            upstream.writeSequence(pieces)
            self._bodySent = True

    def _requestEnd(self, _: None) -> None:
        self._requestDone = True
        if self._head.chunked:
            # An empty chunk is the last chunk and an empty trailer section.
            self._requestData(b"")
        if self._upstream is not None:
            self._awaitResponse()

    def _requestUpgraded(self, data: bytes) -> None:
        """
        The request asked to leave HTTP; the bytes after it are held until
        the response says whether it did.
        """
        self._held = [data] if data else []
        self._reader = RequestReader()
        if self._head.method == b"CONNECT":
            self._dispatch(True)

    def _malformed(self, error: ProtocolError) -> None:
        """
        The client sent what must not be forwarded: answer and close, since
        where its next request would start is unknown.
        """
        self._log.info(
            "Malformed request from {peer}: {status} {reason}",
            peer=self.transport.getPeer(),
            status=error.status,
            reason=error.reason,
        )
        # The client broke the exchange, not the endpoint.
        self._abandon(True)
        if self._status:
            self._close()
            return
        self._closeAfter = True
        self._respondError(error.status, error.reason)

    # Endpoints.

    def _dispatch(self, fresh: bool) -> None:
        """
        Pick an endpoint and send the request on an idle connection to it,
        or on a new one.  With no usable endpoint the request waits, up to
        the failfast time, in the route's L{Waiter}; after a failed
        connection attempt it does not: the error is the answer.

        @param fresh: whether a new connection is required (a retry, a
            C{CONNECT}).
        """
        route = self._route
        pick = route.balancer.pick(self._tried)
        if pick is not None:
            self._send(pick, fresh)
        elif self._tried:
            self._respondError(502, self._error)
        else:
            waiting = self._connecting = route.waiter.pick()
            waiting.addCallbacks(self._picked, self._notPicked, (fresh,))

    def _picked(self, pick, fresh: bool) -> None:
        self._connecting = None
        self._send(pick, fresh)

    def _notPicked(self, reason: Failure) -> None:
        self._connecting = None
        if not reason.check(CancelledError):
            # NoEndpointsReady: "no endpoints ready".
            self._respondError(503, str(reason.value))

    def _send(self, pick, fresh: bool) -> None:
        """
        Send the request to C{pick}'s endpoint.
        """
        self._pick = pick
        endpoint = pick.endpoint
        context = self._context
        if not fresh:
            connection = context.pool.idle(endpoint)
            if connection is not None:
                self._attach(connection, True)
                return
        # Endpoints with an identity are reached over mTLS (see
        # meshproxy.endpoint.MeshConnector); others carry what the client
        # sent.
        metrics = context.metrics.tcp(
            context.direction,
            "dst",
            self._route.service,
            "true" if endpoint.identity else context.tls,
            "",
            endpoint.identity or "",
        )
        self._connecting = context.pool.connect(endpoint, metrics)
        self._connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        self._setPaused(_CONNECTING, False)
        if self._head.method == b"CONNECT":
            self._pick.responded()
            self._status = 200
            self._write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._account(200)
            self._splice(connection, b"", "connect")
        else:
            self._attach(connection, False)

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        pick, self._pick = self._pick, None
        if pick is None:
            # Cancelled by _abandon, which settled the pick.
            return
        pick.finished(False, reason.check(ConnectionRefusedError) is not None)
        self._tried = self._tried | {pick.endpoint}
        self._error = f"connect to {pick.endpoint.address}: {reason.getErrorMessage()}"
        if len(self._tried) < self._context.attempts:
            self._dispatch(True)
        else:
            self._respondError(502, self._error)

    def _attach(self, connection: UpstreamConnection, reused: bool) -> None:
        self._upstream = connection
        self._reused = reused
        connection.attach(self, self._head.method == b"HEAD")
        pending = self._pending
        if pending:
            self._pending = None
            pending.insert(0, self._out)
            connection.writeSequence(pending)
            self._bodySent = True
        else:
            connection.write(self._out)
        if self._clientFull:
            connection.transport.pauseProducing()
        if self._requestDone:
            self._awaitResponse()

    def _awaitResponse(self) -> None:
        """
        The whole request went to the endpoint: start the response timeout.
        """
        timeout = self._context.responseTimeout
        if timeout and not self._status:
            clock = self._context.clock
            self._deadline = clock.seconds() + timeout
            if self._timer is None:
                self._timer = clock.callLater(timeout, self._checkDeadline)

    def _checkDeadline(self) -> None:
        """
        The response timer fired: answer 504 if the deadline passed, wait
        for the rest if a later request moved it, or lapse if no response
        is awaited.
        """
        self._timer = None
        deadline = self._deadline
        if not deadline:
            return
        clock = self._context.clock
        left = deadline - clock.seconds()
        if left > 0:
            self._timer = clock.callLater(left, self._checkDeadline)
            return
        timeout = self._context.responseTimeout
        self._log.info("No response from {endpoint} within {timeout}s", endpoint=str(self._pick.endpoint.address), timeout=timeout)
        self._abandon(False)
        self._respondError(504, f"no response within {timeout:g}s")

    def _abandon(self, success: bool) -> None:
        """
        Drop the exchange's wait, connection attempt or connection, which
        can carry no other request, and settle the pick.

        @param success: what the balancer is told: C{True} when the client,
            not the endpoint, ended the exchange.
        """
        self._deadline = 0.0
        pick, self._pick = self._pick, None
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.detach()
            upstream.transport.loseConnection()
        if pick is not None:
            pick.finished(success)

    # Responses, called by UpstreamConnection.

    def upstreamThrottled(self, throttled: bool) -> None:
        self._setPaused(_THROTTLED, throttled)

    def responseInformational(self, head: ResponseHead) -> None:
        """
        A 1xx before the final response, such as 100 Continue: passed on,
        except to HTTP/1.0 clients, who do not know the class.
        """
        if self._head.version == b"1.1":
            self._write(responseHead(head.status, head.reason, head.headers))

    def responseHead(self, head: ResponseHead) -> None:
        self._deadline = 0.0
        self._pick.responded()
        request = self._head
        status = self._status = head.status
        self._keepUpstream = head.keepAlive
        self._untilClose = head.contentLength is None and not head.chunked
        if status == 101:
            if request.upgrade is None or head.upgrade is None:
                self.responseFailed(ProtocolError(502, "101 to a request that asked for no upgrade"))
                return
            extra = b"Connection: Upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"
            self._write(responseHead(status, head.reason, head.headers, extra))
            return
        extra = b""
        if request.method == b"HEAD" or status in _BODILESS_STATUSES:
            self._untilClose = False
        elif head.contentLength is not None:
            pass
        elif request.version == b"1.1":
            extra = b"Transfer-Encoding: chunked\r\n"
            self._chunkedOut = True
        else:
            # An HTTP/1.0 client knows no chunks: the close ends the body.
            self._closeAfter = True
        if self._closeAfter or not request.keepAlive or not self._requestDone:
            self._closeAfter = True
            extra += b"Connection: close\r\n"
        elif request.version == b"1.0":
            extra += b"Connection: keep-alive\r\n"
        self._write(responseHead(status, head.reason, head.headers, extra))

    def responseData(self, data: bytes) -> None:
        if self._chunkedOut:
            pieces = chunk(data)
            self._src.wrote(len(data) + len(pieces[0]) + 2)
            self.transport.writeSequence(pieces)
        else:
            self._write(data)

    def responseEnd(self, _: None = None) -> None:
        if self._chunkedOut:
            self._write(LAST_CHUNK)
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            if self._keepUpstream and self._requestDone:
                if self._clientFull:
                    upstream.transport.resumeProducing()
                self._context.pool.release(upstream)
            else:
                upstream.detach()
                upstream.transport.loseConnection()
        pick, self._pick = self._pick, None
        pick.finished(True)
        self._account(self._status)
        self._exchangeDone()

    def responseUpgraded(self, data: bytes) -> None:
        """
        The endpoint switched protocols: relay both connections as bytes
        from here on.

        @param data: what the endpoint sent after its 101.
        """
        upstream, self._upstream = self._upstream, None
        self._account(101)
        self._splice(upstream, data, "upgrade")

    def responseFailed(self, error: ProtocolError) -> None:
        """
        The endpoint's response cannot be forwarded.
        """
        self._log.info(
            "Bad response from {endpoint}: {reason}", endpoint=str(self._pick.endpoint.address), reason=error.reason
        )
        status = self._status
        self._abandon(False)
        if status:
            self._close()
        else:
            self._closeAfter = True
            self._respondError(502, f"bad response: {error.reason}")

    def upstreamLost(self, reason: Failure) -> None:
        """
        The connection to the endpoint closed during the exchange.

        A response running to the close ends here.  A request that met a
        reused connection closing before it sent any body and before any
        response byte is sent again, once, on a new connection: that is an
        application closing an idle connection as the request was written,
        which the request must not pay for.
        """
        self._upstream = None
        self._deadline = 0.0
        status = self._status
        if status and self._untilClose:
            self.responseEnd()
        elif status:
            # The response was cut short: cut the client off too, so that
            # it sees the truncation.
            self._abandon(False)
            self._close()
        elif self._reused and not self._bodySent and not self._retried:
            self._retried = True
            pick, self._pick = self._pick, None
            pick.finished(True)
            self._dispatch(True)
        else:
            self._abandon(False)
            self._respondError(502, f"connection closed by {self._route.service} endpoint")

    def _splice(self, upstream: UpstreamConnection, data: bytes, protocol: str) -> None:
        """
        Hand both connections to a relay, with the bytes each side sent
        after the HTTP exchange.
        """
        context = self._context
        held, self._held = self._held or [], None
        pick, self._pick = self._pick, None
        self.transport.unregisterProducer()
        relay = self._next = tunnel(
            upstream, pick, self._route.service, context.direction, context.tls, self._src, context.clock, protocol
        )
        relay.makeConnection(self.transport)
        if held:
            relay.dataReceived(b"".join(held))
        if data:
            upstream.dataReceived(data)
        if self._readDone:
            relay.readConnectionLost()

    # Both.

    def _write(self, data: bytes) -> None:
        self._src.wrote(len(data))
        self.transport.write(data)

    def _account(self, status: int) -> None:
        self._metrics.responded(status, (self._context.clock.seconds() - self._started) * 1000)

    def _respondError(self, status: int, reason: str) -> None:
        """
        Answer the current request with a response of the proxy's own, and
        keep the connection if the client can tell where its next request
        starts (see the module docstring).
        """
        head = self._head
        close = self._closeAfter or head is None or not head.keepAlive
        if not close and not self._requestDone:
            close = (
                head.chunked
                or head.upgrade is not None
                or head.method == b"CONNECT"
                or (head.contentLength or 0) > DISCARD_LIMIT
                or (bool(head.contentLength) and _awaitsContinue(head))
            )
            self._skip = not close
        self._closeAfter = close
        self._write(errorResponse(status, reason, close))
        if self._metrics is None:
            # Refused before it was routed.
            self._metrics = self._context.unrouted
            self._metrics.request()
        self._account(status)
        self._exchangeDone()

    def _exchangeDone(self) -> None:
        """
        The response is complete: go on with the next request, or close.
        """
        close = self._closeAfter
        held, self._held = self._held, None
        self._reset()
        if close:
            self._close()
            return
        if held:
            # The upgrade was declined: what followed is more HTTP.
            self._parse(b"".join(held))
        # Whatever paused the client belonged to the exchange now over.
        paused, self._paused = self._paused, 0
        self._drain()
        if self._queue and self._requestDone:
            self._setPaused(_WAITING, True)
        if self._head is None and self._readDone and not self._queue:
            self._close()
        elif paused and not self._paused:
            self.transport.resumeProducing()

    def _close(self) -> None:
        self._closing = True
        self.transport.loseConnection()

    def _setPaused(self, reason: int, paused: bool) -> None:
        before = self._paused
        after = before | reason if paused else before & ~reason
        self._paused = after
        if before and not after:
            self.transport.resumeProducing()
        elif after and not before:
            self.transport.pauseProducing()
