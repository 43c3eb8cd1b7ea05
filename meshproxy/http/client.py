# -*- test-case-name: tests.test_http_client -*-
"""
Connections to endpoints for HTTP/1.1: a pool of idle keep-alive
connections per endpoint, and the protocol of one such connection.

A request borrows a connection for exactly as long as its exchange lasts,
so each request is balanced on its own while connections are still reused.
The pool's duties are those that keep a reused connection from failing a
request:

  - An idle connection keeps reading.  An application that closes an idle
    connection (its keep-alive timeout) is noticed when its FIN arrives and
    the connection leaves the pool, so the next request does not meet it.
  - Idle connections are closed after C{idleTimeout} (3 s, as
    linkerd2-proxy), shorter than the keep-alive timeout of common servers
    (5 s for Node.js and Go, 60-75 s for nginx and Apache), so the proxy,
    not the application, nearly always closes first.
  - The most recently used connection is reused first, so a burst's extra
    connections age out instead of being kept warm in turn.
  - Connections to an endpoint that no service lists any more
    (L{ConnectionPool.retain}) are closed: idle ones at once, busy ones
    when their exchange is over, so that discovery churn leaves no
    connection behind to an address that may soon be someone else's.

The race that remains, an application closing a connection just as a
request is written to it, is for the server to retry (see
L{meshproxy.http.server}).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import Endpoint
from ..endpoint import IConnector
from ..metrics import TCPMetrics
from ..tcp import writeNow
from .h1 import LAST_CHUNK, UPGRADE, RequestHead, ResponseReader, chunk, requestHead

__all__ = ["ConnectionFactory", "ConnectionPool", "UpstreamConnection"]


@implementer(IHalfCloseableProtocol, IPushProducer)
class UpstreamConnection(Protocol):
    """
    One HTTP/1.1 connection to an endpoint, and the upstream of one
    exchange at a time (see L{meshproxy.http.exchange}).

    While a request uses it, every response event goes to that request's
    owner (the exchange), by method call and without allocation: the
    owner's C{responseEvents} are its handlers, indexed by event kind.
    After a 101 or a C{CONNECT} it becomes a byte stream: every event goes
    to the protocol it was handed to (L{handOver}).

    It is its transport's streaming producer for its whole life, so a full
    write buffer towards the endpoint (a request body faster than the
    application reads it) pauses the owner's client, whoever the owner is
    at the time.

    @ivar endpoint: where it is connected.
    @ivar metrics: the L{TCPMetrics} it is counted in (C{peer="dst"}); the
        protocol it is handed over to takes the account over.
    @ivar idleSince: when it last went back to the pool, in pool clock
        seconds.
    @ivar _owner: the server protocol of the request using it, or L{None}
        while idle.
    @ivar _reader: parses its responses.
    @ivar _chunked: whether the request body is sent in chunks.
    @ivar _next: the protocol it was handed over to, or L{None}.
    """

    _chunked = False

    def __init__(self, pool: ConnectionPool, endpoint: Endpoint, metrics: TCPMetrics) -> None:
        self._pool = pool
        self.endpoint = endpoint
        self.metrics = metrics
        self.idleSince = 0.0
        self._owner = None
        self._reader = ResponseReader()
        self._next = None

    def connectionMade(self) -> None:
        self.metrics.opened()
        self.transport.registerProducer(self, True)

    def attach(self, owner, head: RequestHead, target: bytes, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """
        Lend the connection to C{owner} for one exchange, and send the
        request head, framed for HTTP/1.1.

        @param end: whether the request is complete with its head.
        """
        self._owner = owner
        if head.method == b"HEAD":
            # Its response has no body whatever its header says.
            self._reader.expectBodiless()
        chunked = self._chunked = head.chunked
        extra = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        if head.upgrade is not None:
            extra += b"Connection: Upgrade\r\nUpgrade: " + head.upgrade + b"\r\n"
        out = requestHead(head.method, target, headers, extra)
        self.write(out + LAST_CHUNK if chunked and end else out)

    def sendData(self, data: bytes) -> None:
        """
        Send a piece of the request body.
        """
        if self._chunked:
            pieces = chunk(data)
            self.metrics.wrote(len(data) + len(pieces[0]) + 2)
            self.transport.writeSequence(pieces)
        else:
            self.write(data)

    def sendEnd(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """
        The request body is complete; trailers are dropped (see
        L{meshproxy.http.h1}).
        """
        if self._chunked:
            self.write(LAST_CHUNK)

    def pauseReading(self) -> None:
        """
        The owner's client cannot take more of the response.
        """
        self.transport.pauseProducing()

    def resumeReading(self) -> None:
        self.transport.resumeProducing()

    def finish(self, keep: bool) -> None:
        """
        The exchange is complete: back to the pool if C{keep}, else closed.
        """
        if keep:
            self._pool.release(self)
        else:
            self.abandon()

    def abandon(self) -> None:
        """
        The exchange ended before its response did: the connection can carry
        no other request.
        """
        self._owner = None
        self.transport.loseConnection()

    def detach(self) -> None:
        """
        The exchange is over: stop sending its owner events.
        """
        self._owner = None

    def write(self, data: bytes) -> None:
        """
        Send C{data} to the endpoint, counted.
        """
        self.metrics.wrote(len(data))
        writeNow(self.transport, data)

    def handOver(self, protocol) -> None:
        """
        Make the connection a byte stream served by C{protocol}, which gets
        C{makeConnection} with this transport and every later event.
        """
        self._owner = None
        self.transport.unregisterProducer()
        self._next = protocol
        protocol.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        owner = self._owner
        if owner is None:
            # Bytes nobody asked for: the connection cannot be trusted with
            # a request.
            self.metrics.read(len(data))
            self._drop()
            return
        events = self._reader.feed(data)
        size = len(data)
        if events and events[-1][0] is UPGRADE:
            # What follows a 101 is the relay's to count.
            size -= len(events[-1][1])
        self.metrics.read(size)
        handlers = owner.responseEvents
        for kind, value in events:
            if self._owner is not owner:
                # The response ended (or failed) and more bytes followed it,
                # which belong to no request: even a request that took the
                # connection meanwhile must not read them as its response.
                self._drop()
                return
            handlers[kind](value)

    def _drop(self) -> None:
        """
        Close the connection, out of the pool at once so that no request
        takes it while it closes.
        """
        self._pool.discard(self)
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        if self._next is not None:
            self._next.readConnectionLost()
        else:
            # An HTTP endpoint that stops sending is done with the
            # connection (an idle one must leave the pool now, not when the
            # close completes); a response running to the close ends in
            # connectionLost.
            self._drop()

    def writeConnectionLost(self) -> None:
        if self._next is not None:
            self._next.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        self.metrics.closed(reason.check(ConnectionDone) is not None)
        owner, self._owner = self._owner, None
        if owner is None:
            self._pool.discard(self)
        else:
            owner.upstreamLost(reason)

    # IPushProducer, for the transport to the endpoint.

    def pauseProducing(self) -> None:
        if self._owner is not None:
            self._owner.upstreamThrottled(True)

    def resumeProducing(self) -> None:
        if self._owner is not None:
            self._owner.upstreamThrottled(False)

    def stopProducing(self) -> None:
        """
        The connection is closing; L{connectionLost} follows.
        """


class ConnectionFactory(Factory):
    """
    Builds the protocol of one new connection of a pool: an
    L{UpstreamConnection}, or another protocol taking the same arguments
    (the pool, the endpoint, the metrics).
    """

    noisy = False

    def __init__(self, protocol, pool, endpoint: Endpoint, metrics: TCPMetrics) -> None:
        self._protocol = protocol
        self._pool = pool
        self._endpoint = endpoint
        self._metrics = metrics

    def buildProtocol(self, addr):
        return self._protocol(self._pool, self._endpoint, self._metrics)


class ConnectionPool:
    """
    Idle HTTP/1.1 connections, by endpoint, shared by every route of a
    proxy.

    One timer serves the whole pool: it fires when the oldest idle
    connection expires and is set again for the next oldest, rather than a
    timer per connection set and cancelled on every request.

    @ivar _connector: opens new connections (plain TCP or mTLS).
    @ivar _clock: times idleness.
    @ivar _idleTimeout: seconds an idle connection is kept.
    @ivar _idle: idle connections by endpoint, oldest first.
    @ivar _sweep: the pending expiry timer, or L{None}.
    @ivar _retained: the endpoints whose connections are kept, or L{None}
        for all of them: set by L{retain}.
    """

    def __init__(self, connector: IConnector, clock: IReactorTime, idleTimeout: float = 3.0) -> None:
        self._connector = connector
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._idle: dict[Endpoint, deque[UpstreamConnection]] = {}
        self._sweep = None
        self._retained: frozenset[Endpoint] | None = None

    def idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """
        Take the most recently used idle connection to C{endpoint}, if any.
        """
        connections = self._idle.get(endpoint)
        if connections:
            return connections.pop()
        return None

    def connect(self, endpoint: Endpoint, metrics: TCPMetrics) -> Deferred[UpstreamConnection]:
        """
        Open a new connection to C{endpoint}; it joins the pool only when
        L{release}d.

        @param metrics: where the connection is counted.
        """
        return self._connector.connect(endpoint, ConnectionFactory(UpstreamConnection, self, endpoint, metrics))

    def release(self, connection: UpstreamConnection) -> None:
        """
        An exchange is over and the connection may carry another, unless
        its endpoint left every service meanwhile: then it closes.
        """
        connection.detach()
        retained = self._retained
        if retained is not None and connection.endpoint not in retained:
            connection.transport.loseConnection()
            return
        connection.idleSince = self._clock.seconds()
        connections = self._idle.get(connection.endpoint)
        if connections is None:
            connections = self._idle[connection.endpoint] = deque()
        connections.append(connection)
        if self._sweep is None:
            self._sweep = self._clock.callLater(self._idleTimeout, self._expire)

    def retain(self, endpoints: frozenset[Endpoint]) -> None:
        """
        Keep connections to C{endpoints} only: the idle connections to any
        other endpoint close now, and the busy ones when their exchange is
        over (L{release}), so no request is cut short.

        @param endpoints: every endpoint some route may still send to.
        """
        self._retained = endpoints
        for endpoint in self._idle.keys() - endpoints:
            for connection in self._idle.pop(endpoint):
                connection.transport.loseConnection()

    def discard(self, connection: UpstreamConnection) -> None:
        """
        Forget a connection that closed or misbehaved while idle.
        """
        connections = self._idle.get(connection.endpoint)
        if connections and connection in connections:
            connections.remove(connection)

    def _expire(self) -> None:
        """
        Close the connections idle for too long; wake again for the next.
        """
        self._sweep = None
        now = self._clock.seconds()
        deadline = now - self._idleTimeout
        oldest = None
        for endpoint, connections in list(self._idle.items()):
            while connections and connections[0].idleSince <= deadline:
                connections.popleft().transport.loseConnection()
            if connections:
                first = connections[0].idleSince
                oldest = first if oldest is None else min(oldest, first)
            else:
                del self._idle[endpoint]
        if oldest is not None:
            self._sweep = self._clock.callLater(oldest + self._idleTimeout - now, self._expire)
