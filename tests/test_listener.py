"""
Tests for L{meshproxy.listener}: what an inbound listener does with TLS.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.balance import RoundRobin, Waiter
from meshproxy.config import Address, Endpoint
from meshproxy.identity.store import IdentityStore
from meshproxy.listener import ListenerService, relayFactory
from meshproxy.metrics import ProxyMetrics
from meshproxy.tcp import Target
from meshproxy.tls import MeshTLS

from .test_tcp import _FakeConnector
from .test_tls import CLIENT, SERVER, Harness

APP = Endpoint(Address("127.0.0.1", 8080))


class InboundTLSTests(SynchronousTestCase):
    """
    An inbound listener terminates mTLS for its own identity, and passes
    any other TLS through.
    """

    def setUp(self):
        self.mesh = Harness(self)
        self.metrics = ProxyMetrics()
        self.connector = _FakeConnector()

    def accept(self, client, tls=None, http=None):
        """
        Connect C{client} to the inbound listener of the mesh's server.
        """
        target = Target("127.0.0.1:8080", "inbound", Waiter(RoundRobin([APP], self.mesh.clock), self.mesh.clock), self.connector, self.metrics)
        factory = relayFactory(target, self.mesh.clock, self.metrics, 10, False, tls or self.mesh.server, http)
        return self.mesh.pump(factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 50000)), client)

    def sample(self, name, **labels):
        return self.metrics.registry.get_sample_value(name, labels) or 0

    def test_terminate(self):
        """
        A ClientHello for our identity is terminated; detection runs on the
        plaintext; the relay to the application counts the connection with
        C{tls="true"} and the verified client identity.
        """
        client = self.mesh.clientProtocol(SERVER)
        verified = client.whenVerified()
        pump = self.accept(client)
        peer = self.successResultOf(verified)
        peer.transport.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        pump.flush()
        _, app = self.connector.succeed()
        self.assertEqual(app.value(), b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        app.clear()
        self.assertEqual((self.sample("detect_total", result="tls"), self.sample("detect_total", result="http1")), (1, 1))
        labels = dict(direction="inbound", target="127.0.0.1:8080", tls="true", client_id=CLIENT, server_id="")
        self.assertEqual(self.sample("tcp_open_total", peer="src", **labels), 1)
        self.assertEqual(self.sample("tcp_open_total", peer="dst", **labels), 1)

    def test_terminateHTTP(self):
        """
        With an HTTP builder, HTTP on the terminated plaintext is served by
        the protocol it builds, told the C{tls} label and the verified
        client identity.
        """
        built = []

        def http(verdict, tls, clientId):
            built.append((verdict.result, tls, clientId))
            return Protocol()

        client = self.mesh.clientProtocol(SERVER)
        verified = client.whenVerified()
        pump = self.accept(client, http=http)
        self.successResultOf(verified).transport.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        pump.flush()
        self.assertEqual(built, [("h2", "true", CLIENT)])
        self.assertEqual(self.connector.attempts, [])

    def test_passThrough(self):
        """
        A ClientHello for another name reaches the application untouched.
        """
        self.accept(self.mesh.twistedClient("other.example"))
        _, app = self.connector.succeed()
        hello = app.value()
        self.assertEqual(hello[:1], b"\x16")
        self.assertIn(b"other.example", hello)
        labels = dict(direction="inbound", target="127.0.0.1:8080", tls="opaque", client_id="", server_id="")
        self.assertEqual(self.sample("tcp_open_total", peer="src", **labels), 1)

    def test_noCertificateYet(self):
        """
        Before the first certificate, TLS for our identity is closed rather
        than passed to the application.
        """
        empty = MeshTLS(IdentityStore(SERVER, self.mesh.ca.anchors, self.mesh.clock), self.mesh.clock)
        client = self.mesh.clientProtocol(SERVER)
        verified = client.whenVerified()
        with capturedLogs() as events:
            self.accept(client, empty).flush()
        self.failureResultOf(verified)
        self.assertEqual(self.connector.attempts, [])
        self.assertTrue(any("No identity certificate yet" in e["log_format"] for e in events))


class ListenerServiceTests(TestCase):
    """
    L{ListenerService} on a real loopback port.
    """

    async def test_acceptedSocketOptions(self):
        """
        Connections accepted on a TCP listener have C{TCP_NODELAY} and
        C{SO_KEEPALIVE}, set once on the listening socket.
        """
        accepted = Deferred()

        class Record(Protocol):
            def connectionMade(self):
                accepted.callback((self.transport.getTcpNoDelay(), self.transport.getTcpKeepAlive()))

        service = ListenerService(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Record), lambda: None)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        port = service._port.getHost().port
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        self.addCleanup(client.transport.loseConnection)
        self.assertEqual(await accepted, (True, True))
