"""
Tests for L{meshproxy.drain}, the registry of accepted connections that a
graceful shutdown drains, and for how the HTTP/1 server drains.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.drain import ConnectionRegistry, IDrainable
from meshproxy.http import HTTPServerProtocol

from .test_http_server import GET, OK, Harness, close


@implementer(IDrainable)
class Recorder(Protocol):
    """
    A protocol that records its events, and whether it was told to drain.
    """

    drained = 0

    def __init__(self) -> None:
        self.events: list = []

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def connectionLost(self, reason) -> None:
        self.events.append("lost")

    def drain(self) -> None:
        self.drained += 1


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write lost")


class AbortableTransport(StringTransport):
    """
    A L{StringTransport} that records L{abortConnection}.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class RegistryTests(SynchronousTestCase):
    """
    L{ConnectionRegistry} counts accepted connections and drains them.
    """

    def setUp(self) -> None:
        self.registry = ConnectionRegistry()
        self.clock = Clock()

    def test_counts(self):
        """
        The listener's protocol gets the real transport and every event.
        Each connection is counted until its C{connectionLost}.
        """
        factory = self.registry.track(Factory.forProtocol(Recorder))
        tracked = [factory.buildProtocol(None) for _ in range(2)]
        for protocol in tracked:
            protocol.makeConnection(StringTransport())
        self.assertIs(tracked[0]._next.transport, tracked[0].transport)
        tracked[0].dataReceived(b"x")
        self.assertEqual(len(self.registry), 2)
        tracked[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.registry), 1)
        self.assertEqual(tracked[0]._next.events, ["made", b"x", "lost"])

    def test_logPrefix(self):
        """
        Log lines name the listener's protocol, not the counter.
        """
        factory = self.registry.track(Factory.forProtocol(Recorder))
        self.assertEqual(factory.buildProtocol(None).logPrefix(), "Recorder")
        self.assertEqual(factory.logPrefix(), "Factory")

    def test_halfClose(self):
        """
        Half-closes reach a protocol that can half-close; one that cannot
        is closed, as the transport would close it.
        """
        factory = self.registry.track(Factory.forProtocol(HalfCloser))
        tracked = factory.buildProtocol(None)
        tracked.makeConnection(StringTransport())
        tracked.readConnectionLost()
        tracked.writeConnectionLost()
        self.assertEqual(tracked._next.events, ["made", "read lost", "write lost"])
        factory = self.registry.track(Factory.forProtocol(Protocol))
        tracked = factory.buildProtocol(None)
        transport = StringTransport()
        tracked.makeConnection(transport)
        tracked.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_drainEmpty(self):
        """
        With no connection open, the drain is over at once.
        """
        self.assertEqual(self.successResultOf(self.registry.drain(30, self.clock)), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drainWaits(self):
        """
        The drain tells every drainable protocol to finish and waits until
        the last connection closes; the grace timer is then cancelled.
        """
        protocol = Recorder()
        self.registry.add(protocol)
        factory = self.registry.track(Factory.forProtocol(Recorder))
        first, second = factory.buildProtocol(None), factory.buildProtocol(None)
        first.makeConnection(StringTransport())
        second.makeConnection(StringTransport())
        drained = self.registry.drain(30, self.clock)
        self.assertEqual(protocol.drained, 1)
        self.assertTrue(self.registry.draining)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(drained)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(drained), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_removed(self):
        """
        A protocol whose connection is lost is not drained; removing one
        never added does nothing.
        """
        protocol = Recorder()
        self.registry.add(protocol)
        self.registry.remove(protocol)
        self.registry.remove(Recorder())
        self.registry.drain(30, self.clock)
        self.assertEqual(protocol.drained, 0)

    def test_addedDuringDrain(self):
        """
        A protocol that starts to serve a connection during the drain (it
        was accepted before the listener stopped) is drained at once.
        """
        self.registry.drain(30, self.clock)
        protocol = Recorder()
        self.registry.add(protocol)
        self.assertEqual(protocol.drained, 1)

    def test_grace(self):
        """
        Connections still open at the end of the grace period are aborted,
        and the drain reports how many, with a log line.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = self.registry.track(Factory.forProtocol(Recorder))
        tracked = factory.buildProtocol(None)
        transport = AbortableTransport()
        tracked.makeConnection(transport)
        drained = self.registry.drain(5, self.clock)
        self.clock.advance(4.9)
        self.assertNoResult(drained)
        self.clock.advance(0.1)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.successResultOf(drained), 1)
        self.assertEqual(logged[0]["count"], 1)
        # The aborted connection's end is no second result.
        tracked.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.registry), 0)


class HTTPServerDrainTests(SynchronousTestCase):
    """
    An HTTP/1 server connection drains by making its exchange the last.
    """

    def setUp(self) -> None:
        self.h = Harness(self)

    def test_interface(self):
        verifyObject(IDrainable, self.h.client)

    def test_idle(self):
        """
        An idle connection closes on the next reactor turn.
        """
        self.h.context.registry.drain(30, self.h.clock)
        self.assertFalse(self.h.client.clientTransport.disconnecting)
        self.h.clock.advance(0)
        self.assertTrue(self.h.client.clientTransport.disconnecting)

    def test_requestBeforeNextTurn(self):
        """
        A request that arrives before that turn (the bytes detection read,
        delivered after C{connectionMade}) is answered, with
        C{Connection: close}, and then the connection closes.
        """
        self.h.context.registry.drain(30, self.h.clock)
        self.h.send(GET)
        self.h.clock.advance(0)
        self.assertFalse(self.h.client.clientTransport.disconnecting)
        upstream = self.h.connect()
        upstream.dataReceived(OK)
        response = self.h.received()
        self.assertIn(b"Connection: close\r\n", response)
        self.assertTrue(response.endswith(b"ok"))
        self.assertTrue(self.h.client.clientTransport.disconnecting)

    def test_inProgress(self):
        """
        The exchange in progress is finished, with C{Connection: close}, and
        the connection closes after it.
        """
        self.h.send(GET)
        upstream = self.h.connect()
        self.h.context.registry.drain(30, self.h.clock)
        self.h.clock.advance(0)
        self.assertFalse(self.h.client.clientTransport.disconnecting)
        upstream.dataReceived(OK)
        self.assertIn(b"Connection: close\r\n", self.h.received())
        self.assertTrue(self.h.client.clientTransport.disconnecting)

    def test_lostBeforeNextTurn(self):
        """
        A connection lost before the idle check is left alone, and leaves
        the registry.
        """
        registry = self.h.context.registry
        registry.drain(30, self.h.clock)
        close(self.h.client)
        self.h.clock.advance(0)
        self.assertFalse(self.h.client.clientTransport.disconnecting)

    def test_registered(self):
        """
        A server protocol registers when its connection is made.
        """
        server = HTTPServerProtocol(self.h.context)
        server.drain = lambda: setattr(server, "drained", True)
        self.h.context.registry.drain(30, self.h.clock)
        server.makeConnection(StringTransport())
        self.assertTrue(server.drained)
