"""
Tests for L{meshproxy.tcp} and L{meshproxy.endpoint}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TCPTimedOutError,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.balance import IPick, NoEndpointsReady, RoundRobin, Waiter
from meshproxy.config import Address, Endpoint
from meshproxy.endpoint import IConnector, TCPConnector
from meshproxy.metrics import ProxyMetrics
from meshproxy.tcp import RelayProtocol, Target, writeNow

ENDPOINTS = (
    Endpoint(Address("10.0.0.1", 4143)),
    Endpoint(Address("10.0.0.2", 4143)),
    Endpoint(Address("10.0.0.3", 4143)),
)

#: An endpoint outside the mesh, for the connector.
WEB = Endpoint(Address("10.0.0.1", 80))


class _TCPTransport(StringTransport):
    """
    A L{StringTransport} with the parts of L{ITCPTransport} the relay and
    the connector use.

    @ivar writeClosed: whether L{loseWriteConnection} was called.
    @ivar noDelay: the value given to L{setTcpNoDelay}.
    @ivar keepAlive: the value given to L{setTcpKeepAlive}.
    """

    writeClosed = False
    noDelay = False
    keepAlive = False

    def loseWriteConnection(self):
        self.writeClosed = True

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def setTcpKeepAlive(self, enabled):
        self.keepAlive = enabled


@implementer(IPick)
class _RecordingPick:
    """
    A pick that remembers what it was told.
    """

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.responses = 0
        self.outcomes = []

    def responded(self):
        self.responses += 1

    def finished(self, success, refused=False):
        self.outcomes.append(success)
        self.refused = refused


class _RecordingPicker:
    """
    A picker over round robin that records every C{exclude} it is given and
    every pick it makes, and fails at once when no endpoint is left (as a
    L{Waiter} does after the failfast time).
    """

    def __init__(self, endpoints):
        self._roundRobin = RoundRobin(endpoints)
        self.excluded = []
        self.picks = []

    def update(self, endpoints):
        self._roundRobin.update(endpoints)

    def pick(self, exclude=frozenset()):
        self.excluded.append(exclude)
        chosen = self._roundRobin.pick(exclude)
        if chosen is None:
            return fail(NoEndpointsReady())
        pick = _RecordingPick(chosen.endpoint)
        self.picks.append(pick)
        return succeed(pick)


@implementer(IConnector)
class _FakeConnector:
    """
    A connector whose connection attempts the test completes by hand.

    @ivar attempts: C{(endpoint, protocolFactory, deferred)} per call.
    @ivar cancelled: the endpoints whose attempts were cancelled.
    """

    def __init__(self):
        self.attempts = []
        self.cancelled = []

    def connect(self, endpoint, protocolFactory):
        d = Deferred(lambda d: self.cancelled.append(endpoint))
        self.attempts.append((endpoint, protocolFactory, d))
        return d

    def succeed(self, index=-1):
        """
        Complete an attempt: build its protocol on a new transport.

        @return: the protocol and its transport.
        """
        endpoint, factory, d = self.attempts[index]
        address = IPv4Address("TCP", endpoint.address.host, endpoint.address.port)
        protocol = factory.buildProtocol(address)
        transport = _TCPTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def fail(self, reason, index=-1):
        self.attempts[index][2].errback(reason)


class RelayTests(SynchronousTestCase):
    """
    Tests for L{RelayProtocol} over in-memory transports.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = ProxyMetrics()
        self.connector = _FakeConnector()
        self.balancer = _RecordingPicker(ENDPOINTS)
        self.client = _TCPTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))

    def accept(self, detected=b"", attempts=3, balancer=None):
        """
        Hand an accepted connection and the bytes detection read to a new
        relay, as the listener does.
        """
        target = Target(
            name="web",
            direction="outbound",
            picker=self.balancer if balancer is None else balancer,
            connector=self.connector,
            metrics=self.metrics,
            attempts=attempts,
        )
        relay = RelayProtocol(target, "no_identity", "opaque", self.clock)
        relay.makeConnection(self.client)
        if detected:
            relay.dataReceived(detected)
        return relay

    def sample(self, name, peer, **labels):
        """
        One value of the relay's metrics, C{0} if never set.
        """
        labels = dict(direction="outbound", peer=peer, target="web", tls="no_identity", client_id="", server_id="", **labels)
        return self.metrics.registry.get_sample_value(name, labels) or 0

    def test_interfaces(self):
        """
        L{TCPConnector} provides L{IConnector}, L{RelayProtocol}
        L{IHalfCloseableProtocol}.
        """
        self.assertTrue(verifyObject(IConnector, TCPConnector(MemoryReactorClock(), 1.0)))
        target = Target("web", "outbound", Waiter(RoundRobin(), self.clock), self.connector, self.metrics)
        relay = RelayProtocol(target, "opaque", "opaque", self.clock)
        self.assertTrue(verifyObject(IHalfCloseableProtocol, relay))

    def test_pausedWhileConnecting(self):
        """
        The accepted connection is paused until the endpoint's connection is
        established, then resumed.
        """
        self.accept(b"GET")
        self.assertEqual(self.client.producerState, "paused")
        self.assertEqual(len(self.connector.attempts), 1)
        self.connector.succeed()
        self.assertEqual(self.client.producerState, "producing")

    def test_detectedBytesFirst(self):
        """
        Bytes that arrived before the connection was established, the
        detected ones first, are written before any later bytes.
        """
        relay = self.accept(b"detected ")
        relay.dataReceived(b"early ")
        _, server = self.connector.succeed()
        relay.dataReceived(b"late")
        self.assertEqual(server.value(), b"detected early late")

    def test_bothWays(self):
        """
        Bytes flow unchanged in both directions.
        """
        relay = self.accept(b"ping")
        upstream, server = self.connector.succeed()
        upstream.dataReceived(b"pong")
        relay.dataReceived(b"\x00" * 100)
        upstream.dataReceived(b"\xff" * 7)
        self.assertEqual(server.value(), b"ping" + b"\x00" * 100)
        self.assertEqual(self.client.value(), b"pong" + b"\xff" * 7)

    def test_backpressure(self):
        """
        Each transport is the other's streaming producer: a side that cannot
        write fast enough pauses reading on the other.
        """
        self.accept()
        _, server = self.connector.succeed()
        self.assertIs(self.client.producer, server)
        self.assertIs(server.producer, self.client)
        self.assertTrue(self.client.streaming)
        self.assertTrue(server.streaming)

        self.client.producer.pauseProducing()
        self.assertEqual(server.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(server.producerState, "producing")

        server.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")

    def test_halfCloseFromClient(self):
        """
        The client's end of input shuts down writing to the endpoint, while
        the endpoint's bytes still reach the client; when the endpoint ends
        too, both connections close.
        """
        relay = self.accept()
        upstream, server = self.connector.succeed()
        relay.readConnectionLost()
        self.assertTrue(server.writeClosed)
        self.assertFalse(server.disconnecting)
        # The client produces nothing more for the endpoint; a paused
        # producer would keep the endpoint's transport from shutting down.
        self.assertIsNone(server.producer)
        self.assertIs(self.client.producer, server)
        upstream.dataReceived(b"response")
        self.assertEqual(self.client.value(), b"response")
        self.assertFalse(self.client.writeClosed)

        upstream.readConnectionLost()
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(server.disconnecting)
        # A transport with a producer registered would not close.
        self.assertIsNone(self.client.producer)
        self.assertIsNone(server.producer)

    def test_halfCloseFromEndpoint(self):
        """
        The endpoint's end of input shuts down writing to the client, while
        the client's bytes still reach the endpoint.
        """
        relay = self.accept()
        upstream, server = self.connector.succeed()
        upstream.readConnectionLost()
        self.assertTrue(self.client.writeClosed)
        self.assertFalse(self.client.disconnecting)
        relay.dataReceived(b"more")
        self.assertEqual(server.value(), b"more")
        self.assertFalse(server.writeClosed)

        relay.readConnectionLost()
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(server.disconnecting)

    def test_halfCloseWhileConnecting(self):
        """
        A client that ends its input before the endpoint is reached has its
        bytes delivered, then the end of input.
        """
        relay = self.accept(b"all of it")
        relay.readConnectionLost()
        _, server = self.connector.succeed()
        self.assertEqual(server.value(), b"all of it")
        self.assertTrue(server.writeClosed)
        self.assertFalse(server.disconnecting)

    def test_retryNextEndpoint(self):
        """
        A failed connection attempt is reported to the balancer and the next
        attempt excludes the endpoints already tried.
        """
        self.accept(b"hello")
        self.connector.fail(ConnectionRefusedError())
        self.connector.fail(TCPTimedOutError())
        _, server = self.connector.succeed()

        self.assertEqual(
            self.balancer.excluded,
            [frozenset(), frozenset(ENDPOINTS[:1]), frozenset(ENDPOINTS[:2])],
        )
        self.assertEqual([e for e, _, _ in self.connector.attempts], list(ENDPOINTS))
        first, second, third = self.balancer.picks
        self.assertEqual((first.outcomes, first.responses), ([False], 0))
        self.assertEqual((second.outcomes, second.responses), ([False], 0))
        self.assertEqual((third.outcomes, third.responses), ([], 1))
        self.assertEqual(server.value(), b"hello")


    def test_allAttemptsFail(self):
        """
        When every allowed attempt fails, the client's connection is closed
        and the log line gives the last reason.
        """
        relay = self.accept(b"hello", attempts=2)
        self.connector.fail(ConnectionRefusedError())
        self.assertFalse(self.client.disconnecting)
        self.connector.fail(ConnectionRefusedError())
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(len(self.connector.attempts), 2)

        with capturedLogs() as events:
            relay.connectionLost(Failure(ConnectionDone()))
        [event] = events
        self.assertEqual(event["error"], "connect: ConnectionRefusedError")
        self.assertEqual(event["endpoint"], "10.0.0.2:4143")
        self.assertEqual(event["bytesIn"], 5)
        self.assertEqual(self.sample("tcp_close_total", "src", classification="failure"), 1)
        self.assertEqual(self.sample("tcp_open_total", "dst"), 0)

    def test_noEndpoint(self):
        """
        A target without endpoints closes the client's connection at once.
        """
        relay = self.accept(balancer=_RecordingPicker(()))
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.connector.attempts, [])
        with capturedLogs() as events:
            relay.connectionLost(Failure(ConnectionDone()))
        [event] = events
        self.assertEqual((event["error"], event["endpoint"]), ("no endpoints ready", None))

    def test_clientGoneWhileConnecting(self):
        """
        A client that leaves while the relay is connecting cancels the
        attempt, which is not held against the endpoint nor retried.
        """
        relay = self.accept(b"hi")
        with capturedLogs() as events:
            relay.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.connector.cancelled, [ENDPOINTS[0]])
        self.assertEqual(len(self.connector.attempts), 1)
        [pick] = self.balancer.picks
        self.assertEqual(pick.outcomes, [True])
        [event] = events
        self.assertEqual(event["error"], "src: ConnectionLost")
        self.assertEqual(self.sample("tcp_open_connections", "src"), 0)

    def test_endpointReset(self):
        """
        An endpoint that resets the connection fails the pick and closes the
        client's connection; both sides count as failures.
        """
        relay = self.accept()
        upstream, server = self.connector.succeed()
        upstream.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.balancer.picks[0].outcomes, [False])
        with capturedLogs() as events:
            relay.connectionLost(Failure(ConnectionDone()))
        [event] = events
        self.assertEqual(event["error"], "dst: ConnectionLost")
        self.assertEqual(self.sample("tcp_close_total", "src", classification="failure"), 1)
        self.assertEqual(self.sample("tcp_close_total", "dst", classification="failure"), 1)

    def test_clientReset(self):
        """
        A client that resets the connection closes the endpoint's, whose
        pick still succeeds.
        """
        relay = self.accept()
        upstream, server = self.connector.succeed()
        relay.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(server.disconnecting)
        with capturedLogs() as events:
            upstream.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.balancer.picks[0].outcomes, [True])
        [event] = events
        self.assertEqual(event["error"], "src: ConnectionLost")

    def test_metrics(self):
        """
        Each side counts its connection and the bytes read from and written
        to it.
        """
        relay = self.accept(b"12345")
        upstream, _ = self.connector.succeed()
        self.assertEqual(self.sample("tcp_open_connections", "src"), 1)
        self.assertEqual(self.sample("tcp_open_connections", "dst"), 1)
        relay.dataReceived(b"678")
        upstream.dataReceived(b"ab")
        upstream.connectionLost(Failure(ConnectionDone()))
        relay.connectionLost(Failure(ConnectionDone()))

        for peer, read, wrote in [("src", 8, 2), ("dst", 2, 8)]:
            self.assertEqual(self.sample("tcp_open_total", peer), 1)
            self.assertEqual(self.sample("tcp_open_connections", peer), 0)
            self.assertEqual(self.sample("tcp_close_total", peer, classification="success"), 1)
            self.assertEqual(self.sample("tcp_close_total", peer, classification="failure"), 0)
            self.assertEqual(self.sample("tcp_read_bytes_total", peer), read)
            self.assertEqual(self.sample("tcp_write_bytes_total", peer), wrote)
        self.assertEqual(self.balancer.picks[0].outcomes, [True])

    def test_meshedEndpointLabels(self):
        """
        The connection to an endpoint with an identity, which the connector
        reaches over mTLS, counts as C{tls="true"} with the endpoint's
        identity as C{server_id}; the accepted side keeps its own labels.
        """
        meshed = Endpoint(Address("10.0.0.7", 4143), "web.prod.mesh.local")
        self.accept(b"hi", balancer=_RecordingPicker([meshed]))
        self.connector.succeed()
        dst = dict(
            direction="outbound", peer="dst", target="web", tls="true", client_id="", server_id="web.prod.mesh.local"
        )
        self.assertEqual(self.metrics.registry.get_sample_value("tcp_open_total", dst), 1)
        self.assertEqual(self.sample("tcp_open_total", "src"), 1)

    def test_oneLogLine(self):
        """
        A relayed connection logs exactly one line, when both connections
        are closed, with who talked to what, how much and for how long.
        """
        with capturedLogs() as events:
            relay = self.accept(b"12345")
            upstream, _ = self.connector.succeed()
            upstream.dataReceived(b"ab")
            self.clock.advance(2.5)
            relay.readConnectionLost()
            upstream.readConnectionLost()
            relay.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(events, [])
            upstream.connectionLost(Failure(ConnectionDone()))
        [event] = events
        expected = dict(
            direction="outbound",
            peer="127.0.0.1:50000",
            target="web",
            endpoint="10.0.0.1:4143",
            protocol="opaque",
            bytesIn=5,
            bytesOut=2,
            duration=2.5,
            error=None,
        )
        self.assertEqual({k: event[k] for k in expected}, expected)
        self.assertEqual(event["log_namespace"], "meshproxy.tcp.RelayProtocol")


class TCPConnectorTests(SynchronousTestCase):
    """
    Tests for L{TCPConnector} against a L{MemoryReactorClock}.
    """

    def test_literals(self):
        """
        IP literals are connected to directly, with the configured timeout.
        """
        memory = MemoryReactorClock()
        connector = TCPConnector(memory, 2.5)
        connector.connect(WEB, Factory.forProtocol(Protocol))
        connector.connect(Endpoint(Address("::1", 81)), Factory.forProtocol(Protocol))
        self.assertEqual(
            [(host, port, timeout) for host, port, _, timeout, _ in memory.tcpClients],
            [("10.0.0.1", 80, 2.5), ("::1", 81, 2.5)],
        )

    def test_socketOptions(self):
        """
        The connection fires with the protocol, with C{TCP_NODELAY} and
        C{SO_KEEPALIVE} set on its transport.
        """
        memory = MemoryReactorClock()
        d = TCPConnector(memory, 1).connect(WEB, Factory.forProtocol(Protocol))
        factory = memory.tcpClients[0][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 80))
        transport = _TCPTransport()
        protocol.makeConnection(transport)
        self.assertIsInstance(self.successResultOf(d), Protocol)
        self.assertTrue(transport.noDelay)
        self.assertTrue(transport.keepAlive)

    def test_cancel(self):
        """
        Cancelling the attempt stops connecting.
        """
        memory = MemoryReactorClock()
        d = TCPConnector(memory, 1).connect(WEB, Factory.forProtocol(Protocol))
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(memory.connectors[0].stoppedConnecting)


@implementer(IHalfCloseableProtocol)
class _Collect(Protocol):
    """
    Collects what it reads, and closes the connection once its peer's
    input ended.

    @ivar received: the bytes read so far.
    @ivar lost: fires when the connection is closed.
    """

    def __init__(self):
        self.received = []
        self.lost = Deferred()

    def dataReceived(self, data):
        self.received.append(data)

    def readConnectionLost(self):
        self.onEnd()

    def writeConnectionLost(self):
        pass

    def onEnd(self):
        """
        The peer will send nothing more.
        """
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost.callback(b"".join(self.received))


class _Reverser(_Collect):
    """
    A server that answers after the client's end of input: all it read,
    reversed.
    """

    def onEnd(self):
        self.transport.write(b"".join(self.received)[::-1])
        self.transport.loseConnection()


class _Sender(_Collect):
    """
    A client that sends its payload, ends its input, and closes once the
    answer is complete.
    """

    def __init__(self, payload):
        super().__init__()
        self.payload = payload

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()


class LoopbackTests(TestCase):
    """
    The relay and L{TCPConnector} over real loopback sockets.
    """

    def test_relay(self):
        """
        A megabyte goes to a real server through the relay, and comes back
        reversed after the client's half-close went through.  Both
        connections read and buffer 128 KiB at a time.
        """
        server = _Reverser()
        backend = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        metrics = ProxyMetrics()
        target = Target(
            name="backend",
            direction="inbound",
            picker=Waiter(RoundRobin([Endpoint(Address("127.0.0.1", backend.getHost().port))]), reactor),
            connector=TCPConnector(reactor, 5),
            metrics=metrics,
        )
        relay = _ObservedRelay(target, "opaque", "opaque", reactor)
        proxy = reactor.listenTCP(0, Factory.forProtocol(lambda: relay), interface="127.0.0.1")
        self.addCleanup(proxy.stopListening)

        payload = bytes(range(256)) * 4096
        client = _Sender(payload)
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.getHost().port), client)

        def check(results):
            received, served, _ = results
            self.assertEqual(received, payload[::-1])
            self.assertEqual(served, payload)
            self.assertEqual((relay.transport.bufferSize, relay._upstream.transport.bufferSize), (2**17, 2**17))
            labels = dict(direction="inbound", target="backend", tls="opaque", client_id="", server_id="")
            sample = metrics.registry.get_sample_value
            for peer in ("src", "dst"):
                self.assertEqual(sample("tcp_open_connections", dict(labels, peer=peer)), 0)
                read = sample("tcp_read_bytes_total", dict(labels, peer=peer))
                self.assertEqual(read, len(payload))

        # The endpoint closes first, so the relay's accepted connection is
        # the last socket to go.
        return gatherResults([client.lost, server.lost, relay.lost]).addCallback(check)


    def test_connectorHostname(self):
        """
        L{TCPConnector} resolves a host name and connects, with
        C{TCP_NODELAY} and C{SO_KEEPALIVE} set on the socket.
        """
        server = _Collect()
        listener = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        endpoint = Endpoint(Address("localhost", listener.getHost().port))
        connected = TCPConnector(reactor, 5).connect(endpoint, Factory.forProtocol(Protocol))

        def check(protocol):
            self.assertTrue(protocol.transport.getTcpNoDelay())
            self.assertTrue(protocol.transport.getTcpKeepAlive())
            protocol.transport.loseConnection()
            return server.lost

        return connected.addCallback(check)


class WriteNowTests(TestCase):
    """
    L{writeNow} against real loopback connections, whose buffers it reads.
    """

    def connected(self):
        """
        A connected pair of loopback sockets.

        @return: a L{Deferred} that fires with the client's protocol and
            the server's L{_Collect}.
        """
        server = _Collect()
        listener = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        client = Protocol()
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getHost().port), client)

        def close(_):
            client.transport.loseConnection()
            return server.lost

        self.addCleanup(lambda: close(None))
        return d.addCallback(lambda _: (client, server))

    def test_sentAtOnce(self):
        """
        A write to an idle TCP connection is sent before L{writeNow}
        returns: nothing is buffered and the socket is not watched for
        writability.
        """

        def write(pair):
            client, server = pair
            writeNow(client.transport, b"hello")
            self.assertEqual((client.transport.dataBuffer, client.transport._tempDataLen), (b"", 0))
            self.assertNotIn(client.transport, reactor.getWriters())
            client.transport.loseConnection()
            return server.lost

        return self.connected().addCallback(write).addCallback(self.assertEqual, b"hello")

    def test_afterBuffered(self):
        """
        While bytes wait in the transport's buffer, L{writeNow} writes
        after them, in order.
        """

        def write(pair):
            client, server = pair
            client.transport.write(b"first ")
            writeNow(client.transport, b"second")
            self.assertEqual(client.transport._tempDataBuffer, [b"first ", b"second"])
            client.transport.loseConnection()
            return server.lost

        return self.connected().addCallback(write).addCallback(self.assertEqual, b"first second")

    def test_partial(self):
        """
        What the socket does not take is buffered by the transport and sent
        when it can be, and the transport's producer is paused meanwhile.
        """
        payload = bytes(range(256)) * 2**12

        def write(pair):
            client, server = pair
            producer = _Pausable()
            client.transport.registerProducer(producer, True)
            writeNow(client.transport, payload)
            self.assertGreater(client.transport._tempDataLen, 0)
            self.assertLess(client.transport._tempDataLen, len(payload))
            self.assertTrue(producer.paused)
            client.transport.unregisterProducer()
            client.transport.loseConnection()
            return server.lost

        return self.connected().addCallback(write).addCallback(self.assertEqual, payload)

    def test_otherTransports(self):
        """
        Any other transport is written to as usual.
        """
        transport = StringTransport()
        writeNow(transport, b"hello")
        self.assertEqual(transport.value(), b"hello")


@implementer(IPushProducer)
class _Pausable:
    """
    A streaming producer that notes whether it is paused.
    """

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


class _ObservedRelay(RelayProtocol):
    """
    A relay that says when its accepted connection is closed.

    @ivar lost: fires then.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.lost = Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)
