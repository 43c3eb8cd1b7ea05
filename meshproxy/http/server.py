# -*- test-case-name: tests.test_http_server -*-
"""
The HTTP/1.1 server side of the proxy: the protocol an accepted connection
is handed to once detection saw an HTTP/1 request line.

Each request is routed, balanced and sent on its own: the route comes from
its authority, the endpoint from the route's balancer, the upstream from
the pool of that endpoint (an HTTP/1.1 connection, or a stream of the
endpoint's HTTP/2 connection for a meshed endpoint; these steps are
L{meshproxy.http.exchange}'s, shared with the HTTP/2 server).  One request is served at a time per client
connection, which is what makes pipelining safe: the next request's events
wait in a queue (and the client is paused) until the response before it is
complete, so responses leave in order and a slow response never has
another's bytes interleaved with it.

Flow control, in both directions, is done by pausing transports, never by
buffering:

  - Request bodies: the upstream tells the server when it cannot take
    more (its transport's write buffer, or its HTTP/2 window, is full), and
    the server then stops reading the client.  Until a connection exists,
    at most one read of body is held.
  - Response bodies: the server is its client transport's producer and
    pauses the upstream while the client's buffer is full (an HTTP/2
    upstream stops acknowledging, so its window closes).
  - Queued requests: while a response is pending, data from the client is
    parsed once and then the client is paused, so a pipelining client can
    make the proxy hold one read, not an unbounded queue.

The per-request path allocates no L{Deferred}, sets no timer and looks up
no metric labels: the balancer is asked directly (its L{Waiter} only when
it has no usable endpoint), an idle connection is taken synchronously,
responses arrive by method call from the upstream, one lazy timer
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
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..drain import ConnectionRegistry, IDrainable
from ..limits import HEADER_BYTES, Limits
from ..metrics import HTTPMetrics, ProxyMetrics, TCPMetrics
from ..tcp import writeNow
from .client import ConnectionPool, UpstreamConnection
from .exchange import CLIENT_FULL, CONNECTING, Exchange
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
    forwardedResponseHead,
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
# THROTTLED and CONNECTING are the exchange's (meshproxy.http.exchange).

_BODILESS_STATUSES = frozenset({204, 304})


@frozen
class ServerContext:
    """
    What every connection of one listener shares.

    @ivar router: gives the L{meshproxy.http.router.Route} of an authority
        (L{None}: no route, 404).
    @ivar pool: the proxy's HTTP/1.1 connections to endpoints.
    @ivar clock: times responses (latency, response timeout).
    @ivar metrics: where connections are counted.
    @ivar direction: the C{direction} label, C{"outbound"} or C{"inbound"}.
    @ivar tls: the C{tls} label of this listener's connections.
    @ivar target: the C{target} label of the accepted connections: the
        service of an upstream listener, empty for the outbound listener,
        whose connections carry requests for any service.
    @ivar responseTimeout: seconds an endpoint has, once the whole request
        was sent to it, to start its response; 0 waits forever.
    @ivar headerTimeout: seconds a client has, from the first byte of a
        request, to send its whole head; then it gets 408 and the
        connection closes; 0 waits for ever.  A client trickling its
        headers (slowloris) would otherwise hold a connection, and its
        buffers, for ever.
    @ivar attempts: how many endpoints a request tries to connect to
        before it fails with 502.
    @ivar h2: the proxy's L{meshproxy.http.h2client.H2Pool}, the HTTP/2
        connections to endpoints.
    @ivar clientId: the identity an inbound client proved over mTLS, set
        as C{meshproxy-client-id} on its requests; empty for none.
    @ivar registry: the proxy's connections, which tells the server
        protocols to finish when the proxy shuts down gracefully.
    @ivar limits: the proxy's caps on requests, header sections and
        request bodies.
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
    headerTimeout: float = 10.0
    attempts: int = 3
    h2: object = None
    clientId: str = ""
    registry: ConnectionRegistry = field(factory=ConnectionRegistry)
    limits: Limits = field(factory=Limits)
    connections: TCPMetrics = field(init=False)
    unrouted: HTTPMetrics = field(init=False)

    @connections.default
    def _connections(self) -> TCPMetrics:
        return self.metrics.tcp(self.direction, "src", self.target, self.tls, self.clientId)

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


@implementer(IHalfCloseableProtocol, IPushProducer, IDrainable)
class HTTPServerProtocol(Exchange, Protocol):
    """
    Serves the HTTP/1 requests of one accepted connection, one exchange
    at a time: the connection is also the L{Exchange} in progress.

    Connection state (the immutable defaults are class attributes):

    @ivar _context: what the listener's connections share.
    @ivar _src: the TCP metrics of the connection.
    @ivar _reader: parses the client's requests.
    @ivar _queue: events parsed but not yet acted on (pipelined requests).
    @ivar _requestEvents: the handlers of request events, by event kind.
    @ivar responseEvents: the handlers of response events, by event kind,
        for the upstream.
    @ivar _draining: whether L{_drain} is running; it is re-entered by
        responses the proxy makes at once, and must loop rather than recurse.
    @ivar _paused: why the client transport is paused (C{_WAITING} ...).
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
    @ivar _headSince: when the head the client is sending began, while it
        is incomplete; L{None} otherwise.
    @ivar _headTimer: the header timer, or L{None}.  Only a head split
        over several reads starts it, and like the response timer it is
        left to run and looks at C{_headSince} when it fires.

    @ivar _chunkedOut: whether the response body is chunked to the client
        (reset with the exchange).
    @ivar _heldHead: the head of a response that came whole, held back
        until its body (or end) so that both leave in one write.
    """

    _log = Logger()
    _draining = False
    _paused = 0
    _readDone = False
    _closing = False
    _skip = False
    _next = None
    _held: list[bytes] | None = None
    _timer = None
    _headSince: float | None = None
    _headTimer = None

    def __init__(self, context: ServerContext) -> None:
        self._context = context
        self._src = context.connections
        self._reader = RequestReader(maxHead=context.limits.maxHeaderBytes)
        self._queue: deque = deque()
        self._requestEvents = (
            self._requestHead,
            self._requestData,
            self._requestEnd,
            self._requestUpgraded,
            None,
            self._malformed,
        )
        self.responseEvents = self._responseHandlers()
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._chunkedOut = False
        self._heldHead = None

    # The client connection.

    def connectionMade(self) -> None:
        self._src.opened()
        self.transport.registerProducer(self, True)
        self._context.registry.add(self)

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
        if self._reader.inHead and self._headSince is None:
            self._headBegan()
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
        self._context.registry.remove(self)
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        self._closing = True
        self._abandon(True)
        for timer in (self._timer, self._headTimer):
            if timer is not None:
                timer.cancel()
        self._timer = self._headTimer = None
        self._src.closed(reason.check(ConnectionDone) is not None)

    # IDrainable, for the proxy's graceful shutdown.

    def drain(self) -> None:
        """
        Make the exchange in progress the last, its response carrying
        C{Connection: close}; if there is none, close on the next reactor
        turn unless a request arrived by then (the bytes read during
        detection are delivered after C{connectionMade}).  A tunnel runs to
        its end, as any opaque connection does.
        """
        if self._closing or self._next is not None:
            return
        self._closeAfter = True
        if self._head is None:
            self._context.clock.callLater(0, self._closeIfIdle)

    def _closeIfIdle(self) -> None:
        if self._head is None and not self._closing and self._next is None:
            self._close()

    # IPushProducer, for the client transport.

    def pauseProducing(self) -> None:
        self._pauseResponse(CLIENT_FULL, True)

    def resumeProducing(self) -> None:
        self._pauseResponse(CLIENT_FULL, False)

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

    def _headBegan(self) -> None:
        """
        A head is arriving over several reads: time it.
        """
        clock, timeout = self._context.clock, self._context.headerTimeout
        self._headSince = clock.seconds()
        if self._headTimer is None and timeout:
            self._headTimer = clock.callLater(timeout, self._headTimerFired)

    def _headTimerFired(self) -> None:
        """
        Answer 408 if the head in progress took too long; wait again if it
        has time left, or if an earlier request's response comes first;
        lapse if no head is in progress.
        """
        self._headTimer = None
        if self._headSince is None or self._closing:
            return
        clock, timeout = self._context.clock, self._context.headerTimeout
        left = self._headSince + timeout - clock.seconds()
        if self._head is not None or left > 0:
            self._headTimer = clock.callLater(left if left > 0 else timeout, self._headTimerFired)
            return
        self._log.info("Request head from {peer} not complete in {timeout}s", peer=self.transport.getPeer(), timeout=timeout)
        self._refuse(408, "request header timeout")

    def _requestHead(self, head: RequestHead) -> None:
        self._headSince = None
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
        if not self._routeTo(authority):
            return
        if head.method == b"CONNECT":
            # The connection is made once the whole request is read (the
            # UPGRADE event), so that the bytes after it are in hand.
            return
        if authority is None:
            # An HTTP/1.0 request may come without Host; the endpoints speak
            # HTTP/1.1, which requires it.
            headers = [*headers, (b"Host", self._route.authority.encode())]
        self._forward(target, headers)

    def _requestUpgraded(self, data: bytes) -> None:
        """
        The request asked to leave HTTP; the bytes after it are held until
        the response says whether it did.
        """
        self._held = [data] if data else []
        self._reader = RequestReader(maxHead=self._context.limits.maxHeaderBytes)
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
        if error.status == 431:
            self._context.limits.refused(HEADER_BYTES)
        self._refuse(error.status, error.reason)

    def _refuse(self, status: int, reason: str) -> None:
        """
        Answer a client that broke HTTP with C{status} and close, or just
        close if a response to it has begun.
        """
        # The client broke the exchange, not the endpoint.
        self._abandon(True)
        if self._status:
            self._close()
            return
        self._closeAfter = True
        self._respondError(status, reason)

    # Endpoints.

    def _connected(self, connection: UpstreamConnection) -> None:
        if self._head.method != b"CONNECT":
            super()._connected(connection)
            return
        self._connecting = None
        self._setPaused(CONNECTING, False)
        self._pick.responded()
        self._status = 200
        self._write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._account(200)
        self._splice(connection, b"", "connect")

    def _watch(self, timeout: float) -> None:
        """
        Start the response timer unless it runs: it is set once and left to
        run, not set and cancelled per request.
        """
        if self._timer is None:
            self._timer = self._context.clock.callLater(timeout, self._timerFired)

    def _timerFired(self) -> None:
        """
        Answer 504 if the deadline passed, wait for the rest if a later
        request moved it, or lapse if no response is awaited.
        """
        self._timer = None
        left = self._checkDeadline()
        if left:
            self._timer = self._context.clock.callLater(left, self._timerFired)

    # Responses, called by the upstream.

    def responseInformational(self, head: ResponseHead) -> None:
        """
        A 1xx before the final response, such as 100 Continue: passed on,
        except to HTTP/1.0 clients, who do not know the class.
        """
        if self._head.version == b"1.1":
            self._write(forwardedResponseHead(head))

    def responseHead(self, head: ResponseHead) -> None:
        self._responseStarted(head)
        request = self._head
        status = head.status
        if status == 101:
            if request.upgrade is None or head.upgrade is None:
                self.responseFailed(ProtocolError(502, "101 to a request that asked for no upgrade"))
                return
            extra = b"Connection: Upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"
            self._write(forwardedResponseHead(head, extra))
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
        if head.whole and not self._chunkedOut:
            self._heldHead = forwardedResponseHead(head, extra)
        else:
            self._write(forwardedResponseHead(head, extra))

    def responseData(self, data: bytes) -> None:
        held = self._heldHead
        if held is not None:
            self._heldHead = None
            self._write(held + data)
        elif self._chunkedOut:
            pieces = chunk(data)
            self._src.wrote(len(data) + len(pieces[0]) + 2)
            self.transport.writeSequence(pieces)
        else:
            self._write(data)

    def responseEnd(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        The response is complete; trailers, which only an HTTP/2 upstream
        gives, are dropped (see L{meshproxy.http.h1}).
        """
        held = self._heldHead
        if held is not None:
            self._heldHead = None
            self._write(held)
        elif self._chunkedOut:
            self._write(LAST_CHUNK)
        self._responseComplete()

    def responseUpgraded(self, data: bytes) -> None:
        """
        The endpoint switched protocols: relay both connections as bytes
        from here on.

        @param data: what the endpoint sent after its 101.
        """
        upstream, self._upstream = self._upstream, None
        self._account(101)
        self._splice(upstream, data, "upgrade")

    def _splice(self, upstream: UpstreamConnection, data: bytes, protocol: str) -> None:
        """
        Hand both connections to a relay, with the bytes each side sent
        after the HTTP exchange.  The exchange no longer counts against
        C{[proxy] max_requests}: a tunnel is a connection, which
        C{max_connections} counts, and it may last for hours.
        """
        if self._admitted:
            self._release()
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
        writeNow(self.transport, data)

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
        self._accountError(status)
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

    def _cutShort(self) -> None:
        """
        A response cut short: close, so that the client sees the
        truncation.
        """
        self._close()

    def _setPaused(self, reason: int, paused: bool) -> None:
        before = self._paused
        after = before | reason if paused else before & ~reason
        self._paused = after
        if before and not after:
            self.transport.resumeProducing()
        elif after and not before:
            self.transport.pauseProducing()
