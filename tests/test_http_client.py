"""
Tests for L{meshproxy.http.client}: the pool of idle connections to
endpoints and the protocol of one connection.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from meshproxy.config import Address, Endpoint
from meshproxy.endpoint import IConnector
from meshproxy.http.client import ConnectionPool
from meshproxy.http.h1 import RequestHead
from meshproxy.metrics import ProxyMetrics

A = Endpoint(Address("10.0.0.1", 80))
B = Endpoint(Address("10.0.0.2", 80))
GET = RequestHead(b"GET", b"/", b"1.1", [(b"Host", b"web")], b"web")


@implementer(IConnector)
class Connector:
    """
    Connects at once, over a L{StringTransport}.
    """

    def connect(self, endpoint, protocolFactory):
        protocol = protocolFactory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return succeed(protocol)


class Owner:
    """
    A server protocol stand-in that records the events it is sent.
    """

    def __init__(self) -> None:
        self.events = []
        self.responseEvents = tuple(
            (lambda value, kind=kind: self.events.append((kind, value))) for kind in range(6)
        )

    def upstreamLost(self, reason):
        self.events.append(("lost", reason))


class PoolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.metrics = ProxyMetrics()
        self.pool = ConnectionPool(Connector(), self.clock, idleTimeout=3.0)
        self.dst = self.metrics.tcp("outbound", "dst", "web", "no_identity")

    def connection(self, endpoint=A):
        return self.successResultOf(self.pool.connect(endpoint, self.dst))

    def test_mostRecentFirst(self):
        """
        Idle connections are per endpoint, the most recently released
        first.
        """
        first, second, other = self.connection(), self.connection(), self.connection(B)
        self.assertIsNone(self.pool.idle(A))
        self.pool.release(first)
        self.pool.release(second)
        self.pool.release(other)
        self.assertIs(self.pool.idle(A), second)
        self.assertIs(self.pool.idle(A), first)
        self.assertIsNone(self.pool.idle(A))
        self.assertIs(self.pool.idle(B), other)

    def test_idleTimeout(self):
        """
        A connection idle for 3 s is closed; one timer serves the pool, and
        a connection released later gets its own full time.
        """
        old = self.connection()
        self.pool.release(old)
        self.clock.advance(2)
        young = self.connection()
        self.pool.release(young)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1)
        self.assertTrue(old.transport.disconnecting)
        self.assertFalse(young.transport.disconnecting)
        self.assertIs(self.pool.idle(A), young)
        self.pool.release(young)
        self.clock.advance(3)
        self.assertTrue(young.transport.disconnecting)
        self.assertIsNone(self.pool.idle(A))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closedWhileIdle(self):
        """
        A connection the application closes, or sends unasked bytes on,
        while idle leaves the pool at once.
        """
        closing, chatty = self.connection(), self.connection()
        self.pool.release(closing)
        self.pool.release(chatty)
        closing.readConnectionLost()
        chatty.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(closing.transport.disconnecting)
        self.assertTrue(chatty.transport.disconnecting)
        self.assertIsNone(self.pool.idle(A))

    def test_retain(self):
        """
        Idle connections to an endpoint no longer retained close at once;
        a busy one carries on and closes when its exchange is over, instead
        of going back to the pool.  Other endpoints' connections stay.
        """
        idle, busy, other = self.connection(), self.connection(), self.connection(B)
        self.pool.release(idle)
        self.pool.release(other)
        self.pool.retain(frozenset({B}))
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        self.assertIsNone(self.pool.idle(A))
        self.pool.release(busy)
        self.assertTrue(busy.transport.disconnecting)
        self.assertIsNone(self.pool.idle(A))
        self.assertIs(self.pool.idle(B), other)
        self.assertFalse(other.transport.disconnecting)

    def test_retainAgain(self):
        """
        An endpoint retained again keeps its new connections.
        """
        self.pool.retain(frozenset({B}))
        self.pool.retain(frozenset({A, B}))
        connection = self.connection()
        self.pool.release(connection)
        self.assertIs(self.pool.idle(A), connection)
        self.assertFalse(connection.transport.disconnecting)

    def test_events(self):
        """
        A response goes to the connection's owner as events; bytes after the
        end of the response close the connection instead of reaching
        anyone.
        """
        connection = self.connection()
        owner = Owner()
        connection.attach(owner, GET, b"/", GET.headers, True)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual([kind for kind, _ in owner.events], [0, 1, 2])
        connection.detach()
        connection.attach(owner, GET, b"/", GET.headers, True)
        owner.responseEvents = owner.responseEvents[:2] + ((lambda _: connection.detach()),) + owner.responseEvents[3:]
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(connection.transport.disconnecting)

    def test_lost(self):
        """
        A connection lost during an exchange tells its owner, and its
        account is closed.
        """
        connection = self.connection()
        owner = Owner()
        connection.attach(owner, GET, b"/", GET.headers, True)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(owner.events[0][0], "lost")
        key = ("outbound", "dst", "web", "no_identity", "", "")
        self.assertEqual(self.metrics.tcpOpenConnections.labels(*key)._value.get(), 0)
        self.assertEqual(self.metrics.tcpClose.labels(*key, "success")._value.get(), 1)

    def test_framing(self):
        """
        The connection frames what an exchange sends: a head in HTTP/1.1,
        a body of unknown length in chunks ending with the last chunk, an
        upgrade request with its connection fields.
        """
        connection = self.connection()
        post = RequestHead(b"POST", b"/", b"2", [(b"host", b"web")], b"web", chunked=True)
        connection.attach(Owner(), post, b"/up", post.headers, False)
        connection.sendData(b"abc")
        connection.sendEnd([(b"grpc-status", b"0")])
        self.assertEqual(
            connection.transport.value(),
            b"POST /up HTTP/1.1\r\nhost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        connection = self.connection()
        upgrade = RequestHead(b"GET", b"/", b"1.1", [(b"Host", b"web")], b"web", upgrade=b"websocket")
        connection.attach(Owner(), upgrade, b"/", upgrade.headers, True)
        self.assertEqual(
            connection.transport.value(),
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
