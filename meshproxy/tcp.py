# -*- test-case-name: tests.test_tcp -*-
"""
The opaque TCP relay: bytes in on one connection, the same bytes out on
another, in both directions, until both ends are done.

A connection the proxy cannot or need not understand (detection said
C{opaque}, a TLS connection for another identity, an opaque port) is relayed
to one endpoint of its target.  The listener hands the accepted connection
to a L{RelayProtocol} by delegation: C{makeConnection(transport)}, then
C{dataReceived} with the bytes detection read, then every later event.

Three properties matter more than anything else here:

  - Backpressure.  Each transport is the other's streaming producer, so a
    reader slower than its writer fills one kernel buffer, then one
    transport buffer, and then the other side stops reading.  The relay
    itself never holds more than the bytes detection read.

  - Half-close.  Many protocols end a request with a FIN and then read the
    response (C{nc -N}, some RPC and database clients).  An end of input on
    one side becomes a C{shutdown(SHUT_WR)} on the other while the opposite
    direction keeps flowing.

  - One account per connection.  However it ends, each side's metrics close
    once, the balancer's pick finishes once and one log line tells an
    operator who talked to what, how much, for how long and why it ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .balance import IPick, Waiter
from .config import Address, Endpoint
from .metrics import ProxyMetrics, TCPMetrics

if TYPE_CHECKING:
    # Only named in an annotation: the TLS layer, which the connectors use,
    # imports writeNow from here.
    from .endpoint import IConnector

__all__ = ["RelayProtocol", "Target", "writeNow"]


@frozen
class Target:
    """
    Where relayed connections go: one service, or one local application.

    @ivar name: the service name or application address, the C{target}
        label of the metrics and the name in logs.
    @ivar direction: C{"inbound"} or C{"outbound"}.
    @ivar picker: chooses the endpoint of each connection: anything with
        C{pick(exclude) -> Deferred[IPick]}, normally the service's
        L{Waiter}, which waits up to the failfast time while every endpoint
        is ejected and then fails with L{NoEndpointsReady}.
    @ivar connector: opens the connection to that endpoint.
    @ivar metrics: where the relay counts connections and bytes.
    @ivar attempts: how many distinct endpoints a connection tries before
        it gives up; only failures to connect are retried, since once bytes
        have been forwarded a retry could repeat them.
    """

    name: str
    direction: str
    picker: Waiter
    connector: IConnector
    metrics: ProxyMetrics
    attempts: int = 3


def _formatAddress(address) -> str:
    """
    An accepted connection's peer as an operator writes it: C{host:port},
    or the address's own text for non-IP listeners (UNIX sockets).
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        return str(Address(address.host, address.port))
    return str(address)


#: What a relayed TCP connection reads at once, and buffers for writing
#: before it pauses the other side: twice Twisted's default, and as much as
#: one C{send} takes (L{twisted.internet.abstract.FileDescriptor.SEND_LIMIT}).
#: Each read costs a turn of the reactor whatever its size, so this takes
#: 12-19 % off the relay's CPU time per megabyte; twice as much again costs
#: more than it saves (the chunks outgrow the CPU caches and the
#: allocator's heap).
_CHUNK = 2**17


def writeNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once if the transport is a
    plain TCP connection with nothing buffered.

    A TCP transport's C{write} only buffers: the bytes go out when the
    reactor next finds the socket writable (Twisted #5303).  The relay
    writes each chunk as it reads it, into a socket that can nearly always
    take it at once, so waiting costs, per chunk, a turn of the reactor,
    two C{epoll_ctl} calls (watch for writability, then stop) and often a
    copy joining two chunks: about a fifth of the relay's CPU time in the
    C{tcp relay} benchmark.  Sending at once is what asyncio's transports
    do.  What the socket does not take, a write while bytes are buffered,
    and a failed send go through the transport as usual, which keeps the
    bytes in order, the producer's back-pressure, and the handling of a
    lost connection (the reactor, not the writer, must see the error).

    It reads the buffer attributes of L{twisted.internet.tcp.Connection}
    that C{write} and C{doWrite} keep; C{tests.test_tcp} checks each path
    against a real connection, so a Twisted release that changes them
    fails there first.
    """
    if (
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    ):
        sent = transport.writeSomeData(data)
        if sent == len(data):
            return
        if isinstance(sent, int):
            data = data[sent:]
    transport.write(data)


@implementer(IHalfCloseableProtocol)
class _Upstream(Protocol):
    """
    The connection the relay opened to an endpoint.  It keeps no state of
    its own and hands every event to the relay, so the whole life of a
    relayed connection reads top to bottom in L{RelayProtocol}.

    @ivar _relay: the relay this connection serves.
    """

    def __init__(self, relay: RelayProtocol) -> None:
        self._relay = relay

    def dataReceived(self, data: bytes) -> None:
        self._relay._upstreamDataReceived(data)

    def readConnectionLost(self) -> None:
        self._relay._upstreamReadConnectionLost()

    def writeConnectionLost(self) -> None:
        """
        Our C{shutdown(SHUT_WR)} went out; nothing more to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._relay._upstreamConnectionLost(reason)


class _UpstreamFactory(Factory):
    """
    Builds the one L{_Upstream} of a relay.

    @ivar _relay: the relay the connection will serve.
    """

    #: A relay opens a connection per accepted connection: the "Starting
    #: factory" lines of a noisy factory would double the log volume.
    noisy = False

    def __init__(self, relay: RelayProtocol) -> None:
        self._relay = relay

    def buildProtocol(self, addr) -> _Upstream:
        return _Upstream(self._relay)


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    Relays one accepted connection to an endpoint of a L{Target}.

    The accepted connection stays paused while the relay connects, so
    nothing but the bytes detection read is ever buffered here.  A failure
    to connect moves on to an endpoint not yet tried, up to
    L{Target.attempts}; when none is left the accepted connection is closed.

    A relayed connection succeeds, for the C{classification} of both
    sides' C{tcp_close_total}, when an endpoint was reached and neither
    connection ended with an error.  The balancer's pick, by contrast, only
    hears about the endpoint's own connection, so that clients resetting
    their connections do not count against a healthy endpoint.

    @ivar _target: where the connection goes.
    @ivar _protocol: the detection verdict label, for the log line.
    @ivar _clock: the L{IReactorTime} that times the connection.
    @ivar _tls: the C{tls} label of the accepted connection.
    @ivar _clientId: the client's verified identity, or C{""}.
    @ivar _src: the metrics of the accepted connection.
    @ivar _dst: the metrics of the connection to the endpoint, once it is
        established (its labels depend on the endpoint).
    @ivar _pending: bytes received while connecting, forwarded first.
    @ivar _tried: the endpoints this connection tried, not to be picked
        again.
    @ivar _endpoint: the endpoint of the current or last attempt, or
        L{None} if the balancer had none.
    @ivar _pick: the balancer's choice for the current or last attempt, or
        L{None} once it has been told how the attempt went.
    @ivar _connecting: the connection attempt in progress, or L{None}.
    @ivar _upstream: the connection to the endpoint once established.
    @ivar _consumers: the transports that have the other registered as
        their producer.
    @ivar _srcReadDone: the client will send no more bytes.
    @ivar _dstReadDone: the endpoint will send no more bytes.
    @ivar _srcLost: the accepted connection is closed.
    @ivar _dstLost: the connection to the endpoint is closed.
    @ivar _bytesIn: bytes received from the client.
    @ivar _bytesOut: bytes received from the endpoint (and sent on to the
        client).
    @ivar _error: why the relayed connection failed, or L{None}.
    @ivar _peer: the client's address.
    @ivar _started: when the connection was accepted, in C{_clock} seconds.
    """

    _log = Logger()

    def __init__(self, target: Target, tls: str, protocol: str, clock: IReactorTime, clientId: str = "") -> None:
        """
        @param target: where the connection goes.
        @param tls: the C{tls} label of the accepted connection's metrics:
            C{"true"} (mTLS terminated here), C{"no_identity"} or
            C{"opaque"} (TLS passed through).
        @param protocol: the detection verdict label (C{"opaque"},
            C{"tls"}, ...), for the log line.
        @param clock: times the connection for the log line.
        @param clientId: the client's identity, verified by mTLS, or
            C{""}: the C{client_id} label of both sides' metrics.
        """
        self._target = target
        self._tls = tls
        self._protocol = protocol
        self._clock = clock
        self._clientId = clientId
        self._src = target.metrics.tcp(target.direction, "src", target.name, tls, clientId)
        self._dst: TCPMetrics | None = None
        self._pending: list[bytes] = []
        self._tried: set[Endpoint] = set()
        self._endpoint: Endpoint | None = None
        self._pick = None
        self._connecting = None
        self._upstream: _Upstream | None = None
        self._consumers: list = []
        self._srcReadDone = False
        self._dstReadDone = False
        self._srcLost = False
        self._dstLost = False
        self._bytesIn = 0
        self._bytesOut = 0
        self._error: str | None = None

    # The accepted connection.

    def connectionMade(self) -> None:
        self._peer = self.transport.getPeer()
        self._started = self._clock.seconds()
        self._src.opened()
        # Read nothing more until there is somewhere to send it.
        self.transport.pauseProducing()
        self._connect()

    def dataReceived(self, data: bytes) -> None:
        n = len(data)
        self._bytesIn += n
        self._src.read(n)
        if self._upstream is None:
            self._pending.append(data)
        else:
            writeNow(self._upstream.transport, data)
            self._dst.wrote(n)

    def readConnectionLost(self) -> None:
        self._srcReadDone = True
        if self._upstream is not None:
            self._endOfInput(self._upstream.transport)

    def writeConnectionLost(self) -> None:
        """
        Our C{shutdown(SHUT_WR)} went out; nothing more to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._srcLost = True
        self._src.closed(self._noteClose("src", reason))
        if self._connecting is not None:
            # Cancelling fires the attempt's errback at once, which finishes
            # the pick without trying another endpoint.
            self._connecting.cancel()
        elif self._upstream is not None and not self._dstLost:
            # Close the other side once it has written what it holds; the
            # account is settled when it is gone.
            self._unsplice()
            self._upstream.transport.loseConnection()
            return
        self._settle()

    # Connecting.

    def _connect(self) -> None:
        """
        Pick an endpoint not tried yet, or give up and close the accepted
        connection.
        """
        if len(self._tried) >= self._target.attempts:
            self.transport.loseConnection()
            return
        self._connecting = self._target.picker.pick(frozenset(self._tried))
        self._connecting.addCallbacks(self._picked, self._notPicked)

    def _picked(self, pick: IPick) -> None:
        self._pick = pick
        self._endpoint = pick.endpoint
        self._tried.add(pick.endpoint)
        self._connecting = self._target.connector.connect(pick.endpoint, _UpstreamFactory(self))
        self._connecting.addCallbacks(self._connected, self._connectFailed)

    def _notPicked(self, reason: Failure) -> None:
        self._connecting = None
        if self._srcLost:
            # The client left while waiting for an endpoint.
            return
        if self._error is None:
            self._error = str(reason.value)
        self.transport.loseConnection()

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = None
        pick, self._pick = self._pick, None
        if self._srcLost:
            # The client left while we were connecting: not the endpoint's
            # fault.
            pick.finished(True)
            return
        pick.finished(False, refused=reason.check(ConnectionRefusedError) is not None)
        self._error = f"connect: {reason.type.__name__}"
        self._connect()

    def _connected(self, upstream: _Upstream) -> None:
        """
        Splice the two connections together.
        """
        self._connecting = None
        self._upstream = upstream
        # Endpoints that failed before this one are the balancer's concern;
        # the relayed connection itself is whole.
        self._error = None
        self._pick.responded()
        self._dst = self._dstMetrics(self._endpoint)
        self._dst.opened()
        src, dst = self.transport, upstream.transport
        for transport in (src, dst):
            if isinstance(transport, Connection):
                transport.bufferSize = _CHUNK
        if self._pending:
            dst.writeSequence(self._pending)
            self._dst.wrote(sum(map(len, self._pending)))
            self._pending.clear()
        # A full write buffer on one side pauses reading on the other.
        src.registerProducer(dst, True)
        dst.registerProducer(src, True)
        self._consumers = [src, dst]
        if self._srcReadDone:
            self._endOfInput(dst)
        src.resumeProducing()

    def _dstMetrics(self, endpoint: Endpoint) -> TCPMetrics:
        """
        The metrics of the connection to C{endpoint}.  The connector speaks
        mTLS to exactly the endpoints that have an identity (see
        L{meshproxy.endpoint.MeshConnector}), proven by the time the
        connection is made; any other endpoint carries what the client sent,
        so its C{tls} label is the accepted connection's.
        """
        tls = "true" if endpoint.identity else self._tls
        target = self._target
        return target.metrics.tcp(target.direction, "dst", target.name, tls, self._clientId, endpoint.identity or "")

    # The connection to the endpoint, through _Upstream.

    def _upstreamDataReceived(self, data: bytes) -> None:
        n = len(data)
        self._bytesOut += n
        self._dst.read(n)
        writeNow(self.transport, data)
        self._src.wrote(n)

    def _upstreamReadConnectionLost(self) -> None:
        self._dstReadDone = True
        self._endOfInput(self.transport)

    def _upstreamConnectionLost(self, reason: Failure) -> None:
        self._dstLost = True
        self._pick.finished(reason.check(ConnectionDone) is not None)
        self._pick = None
        self._dst.closed(self._noteClose("dst", reason))
        if not self._srcLost:
            self._unsplice()
            self.transport.loseConnection()
            return
        self._settle()

    # Both.

    def _endOfInput(self, transport) -> None:
        """
        One side sent its last byte: pass the end of input on to C{transport}
        of the other side, or close both when neither has more to send.
        """
        if self._srcReadDone and self._dstReadDone:
            self._unsplice()
            self.transport.loseConnection()
            self._upstream.transport.loseConnection()
        else:
            # The side that ended has nothing more to produce for this one.
            self._unsplice(transport)
            transport.loseWriteConnection()

    def _unsplice(self, transport=None) -> None:
        """
        Unregister the producer of C{transport} (default: of both), before
        shutting it down: a transport that had paused its producer resumes
        it after its last write instead of closing, or shutting down
        writing, and then waits forever (see
        L{twisted.internet.abstract.FileDescriptor.doWrite}).
        """
        for consumer in list(self._consumers):
            if transport is None or consumer is transport:
                self._consumers.remove(consumer)
                consumer.unregisterProducer()

    def _noteClose(self, side: str, reason: Failure) -> bool:
        """
        Note how one side's connection ended.

        @param side: C{"src"} or C{"dst"}, for the error text.
        @return: whether the relayed connection still counts as a success.
        """
        if self._error is None and not reason.check(ConnectionDone):
            self._error = f"{side}: {reason.type.__name__}"
        return self._error is None

    def _settle(self) -> None:
        """
        Both connections are closed: log the one line about this one.
        """
        self._log.info(
            "{direction} {peer} -> {target} ({endpoint}) {protocol}, tls={tls}, client_id={clientId}: "
            "{bytesIn} bytes in, {bytesOut} bytes out, {duration:.3f}s, error={error}",
            direction=self._target.direction,
            peer=_formatAddress(self._peer),
            tls=self._tls,
            clientId=self._clientId or "-",
            target=self._target.name,
            endpoint=None if self._endpoint is None else str(self._endpoint.address),
            protocol=self._protocol,
            bytesIn=self._bytesIn,
            bytesOut=self._bytesOut,
            duration=self._clock.seconds() - self._started,
            error=self._error,
        )
