"""
Tests for L{meshproxy.tls}: real OpenSSL handshakes over in-memory
transports (L{twisted.test.iosim}) driven by one shared L{Clock}.
"""

from __future__ import annotations

import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL.crypto import X509
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.config import Address, Endpoint
from meshproxy.endpoint import IConnector, MeshConnector
from meshproxy.tls import HandshakeFailed, MeshTLS, TLSProtocol, _dnsNames

from .meshca import TestCA

SERVER = "web.prod.mesh.local"
CLIENT = "app.prod.mesh.local"
ADDRESS = IPv4Address("TCP", "10.0.0.5", 4143)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """
    The application protocol on one end: records what happens to it.

    @ivar peerIdentity: the identity it was built for.
    @ivar received: the bytes it read.
    @ivar ended: its input ended (C{readConnectionLost}).
    @ivar lost: the reason its connection was lost, once it was.
    """

    def __init__(self, peerIdentity=None):
        self.peerIdentity = peerIdentity
        self.received = b""
        self.ended = False
        self.writeEnded = False
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.ended = True

    def writeConnectionLost(self):
        self.writeEnded = True

    def connectionLost(self, reason):
        self.lost = reason


class WholePeer(Protocol):
    """
    An application protocol that cannot half-close.
    """

    lost = None

    def connectionLost(self, reason):
        self.lost = reason


class Harness:
    """
    A mesh of two proxies' mTLS, the server's under C{serverCA} and the
    client's under C{clientCA}, connected in memory.
    """

    def __init__(self, testCase, serverCA=None, clientCA=None):
        # The store checks validity with this clock, OpenSSL with the real
        # one: they must agree.
        self.clock = Clock()
        self.clock.advance(time.time())
        self.ca = TestCA(testCase)
        self.serverCA = serverCA or self.ca
        self.clientCA = clientCA or self.ca
        self.serverStore = self.serverCA.store(SERVER, self.clock)
        self.clientStore = self.clientCA.store(CLIENT, self.clock)
        self.server = MeshTLS(self.serverStore, self.clock)
        self.client = MeshTLS(self.clientStore, self.clock)
        self.servers = []

    def build(self, peerIdentity, protocol=Peer):
        peer = protocol(peerIdentity)
        self.servers.append(peer)
        return peer

    def serverProtocol(self, protocol=Peer):
        return self.server.server(lambda identity: self.build(identity, protocol), 10)

    def clientProtocol(self, identity=SERVER, wrapped=Peer):
        return self.client.clientFactory(identity, Factory.forProtocol(wrapped), 5).buildProtocol(ADDRESS)

    def twistedClient(self, name=SERVER, **options):
        """
        A client protocol of plain Twisted TLS that trusts the mesh's
        anchors and asks for C{name}, with more L{CertificateOptions}.
        """
        trust = Certificate(X509.from_cryptography(self.ca.anchors[0]))
        creator = optionsForClientTLS(name, trustRoot=trust, extraCertificateOptions=options)
        return TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Peer), self.clock).buildProtocol(ADDRESS)

    def connect(self, server=None, client=None, greet=True):
        """
        Connect a server and a client protocol in memory and run the
        handshake.

        @return: the client L{TLSProtocol}, its whenVerified L{Deferred},
            the server L{TLSProtocol} and the pump.
        """
        server = server or self.serverProtocol()
        client = client or self.clientProtocol()
        verified = client.whenVerified() if isinstance(client, TLSProtocol) else None
        return client, verified, server, self.pump(server, client, greet)

    def pump(self, server, client, greet=True):
        """
        Connect C{server} and C{client} in memory.

        @return: the L{IOPump}, flushed once unless C{greet} is false.
        """
        return connect(
            server,
            FakeTransport(server, isServer=True),
            client,
            FakeTransport(client, isServer=False),
            greet=greet,
            clock=self.clock,
        )


def connected(testCase, wrapped=Peer):
    """
    Connect a fresh L{Harness}'s client, carrying a C{wrapped}, to its
    server and run the handshake.

    @return: the client's carried protocol, the server's and the pump.
    """
    mesh = Harness(testCase)
    client, verified, server, pump = mesh.connect(client=mesh.clientProtocol(wrapped=wrapped))
    pump.flush()
    return testCase.successResultOf(verified), mesh.servers[0], pump


class HandshakeTests(SynchronousTestCase):
    """
    Who is accepted, who is refused, and what each side learns.
    """

    def test_mutual(self):
        """
        Each side verifies the other over TLS 1.3: the client's protocol is
        built once the server proved the expected identity; the server's
        is built for the client's identity; bytes flow both ways.
        """
        mesh = Harness(self)
        client, verified, server, pump = mesh.connect()
        pump.flush()
        wrapped = self.successResultOf(verified)
        self.assertIsInstance(wrapped, Peer)
        self.assertEqual(client.peerIdentity, SERVER)
        self.assertEqual(server.peerIdentity, CLIENT)
        [served] = mesh.servers
        self.assertEqual(served.peerIdentity, CLIENT)
        self.assertEqual(client.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(client.getHandle().get_servername(), SERVER.encode())
        wrapped.transport.write(b"ping")
        served.transport.write(b"pong")
        pump.flush()
        self.assertEqual((served.received, wrapped.received), (b"ping", b"pong"))

    def test_clientWithoutCertificate(self):
        """
        A client certificate is asked for, not required: a client without
        one is served, with no identity.
        """
        mesh = Harness(self)
        anonymous = mesh.twistedClient(raiseMinimumTo=TLSVersion.TLSv1_3)
        _, _, server, pump = mesh.connect(client=anonymous)
        pump.flush()
        [served] = mesh.servers
        self.assertIsNone(served.peerIdentity)
        anonymous.write(b"hello")
        pump.flush()
        self.assertEqual(served.received, b"hello")

    def test_foreignClient(self):
        """
        A client certificate from another mesh fails the handshake; the
        server logs why and builds nothing.
        """
        mesh = Harness(self)
        key, chain = TestCA(self).credentials(CLIENT)
        foreign = mesh.twistedClient(privateKey=key, certificate=chain[0], extraCertChain=chain[1:])
        with capturedLogs() as events:
            mesh.connect(client=foreign)[3].flush()
        self.assertEqual(mesh.servers, [])
        [event] = [e for e in events if e.get("role") == "from"]
        self.assertIn("unknown CA", event["why"])
        self.assertIn("meshproxy issuing CA", event["why"])

    def test_namesRemembered(self):
        """
        The names of a peer certificate are read once: a second handshake
        with the same certificates finds them, and is verified alike.
        """
        mesh = Harness(self)
        mesh.connect()[3].flush()
        hits = _dnsNames.cache_info().hits
        client, verified, server, pump = mesh.connect()
        pump.flush()
        self.successResultOf(verified)
        self.assertEqual(server.peerIdentity, CLIENT)
        self.assertEqual(_dnsNames.cache_info().hits, hits + 2)

    def test_rememberedNamesAreNotTrust(self):
        """
        A certificate whose names were read before is still refused if its
        chain does not lead to the anchors: OpenSSL's verification comes
        first, on every handshake.
        """
        mesh = Harness(self)
        key, chain = TestCA(self).credentials(CLIENT)
        _dnsNames(chain[0].public_bytes(Encoding.DER))
        foreign = mesh.twistedClient(privateKey=key, certificate=chain[0], extraCertChain=chain[1:])
        with capturedLogs() as events:
            mesh.connect(client=foreign)[3].flush()
        self.assertEqual(mesh.servers, [])
        self.assertTrue(any("unknown CA" in e.get("why", "") for e in events))

    def test_wrongIdentity(self):
        """
        A server whose certificate is valid but for another identity is
        refused: the connection fails with the names in the reason, and
        nothing is built on either side.
        """
        mesh = Harness(self)
        with capturedLogs() as events:
            client, verified, server, pump = mesh.connect(client=mesh.clientProtocol("db.prod.mesh.local"))
            pump.flush()
        failure = self.failureResultOf(verified, HandshakeFailed)
        self.assertIn(SERVER, str(failure.value))
        self.assertIn("db.prod.mesh.local", str(failure.value))
        self.assertEqual(mesh.servers, [])
        self.assertTrue(any(e.get("role") == "to" and "not 'db.prod.mesh.local'" in e["why"] for e in events))

    def test_wildcardServer(self):
        """
        A wildcard certificate under the anchors proves no identity.
        """
        mesh = Harness(self)
        key, chain = mesh.ca.credentials(SERVER)
        wildcard = x509.CertificateBuilder(
            issuer_name=chain[1].subject,
            subject_name=chain[0].subject,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=chain[0].not_valid_before_utc,
            not_valid_after=chain[0].not_valid_after_utc,
            extensions=[
                x509.Extension(x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName([x509.DNSName("*.prod.mesh.local")])),
                x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
            ],
        ).sign(mesh.ca.authority._issuingKey, hashes.SHA256())
        options = CertificateOptions(privateKey=key, certificate=wildcard, extraCertChain=chain[1:])
        server = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Peer), mesh.clock).buildProtocol(ADDRESS)
        with capturedLogs():
            client, verified, _, pump = mesh.connect(server=server)
            pump.flush()
        self.assertIn("['*.prod.mesh.local'], not", str(self.failureResultOf(verified, HandshakeFailed).value))

    def test_foreignServer(self):
        """
        A server certificate from another mesh is refused as an unknown CA.
        """
        mesh = Harness(self, serverCA=TestCA(self))
        client, verified, server, pump = mesh.connect()
        pump.flush()
        self.assertIn("unknown CA", str(self.failureResultOf(verified, HandshakeFailed).value))

    def test_expiredServer(self):
        """
        An expired server certificate is refused as expired.  (The store
        would not hold one, so the server here is plain Twisted TLS.)
        """
        mesh = Harness(self)
        key, chain = mesh.ca.expired(SERVER)
        options = CertificateOptions(
            privateKey=key, certificate=chain[0], extraCertChain=chain[1:], raiseMinimumTo=TLSVersion.TLSv1_3
        )
        stale = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Peer), mesh.clock).buildProtocol(ADDRESS)
        client, verified, _, pump = mesh.connect(server=stale)
        pump.flush()
        self.assertIn("certificate expired", str(self.failureResultOf(verified, HandshakeFailed).value))

    def test_tls12Refused(self):
        """
        A client that offers at most TLS 1.2 gets no handshake.
        """
        mesh = Harness(self)
        old = mesh.twistedClient(lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        with capturedLogs() as events:
            mesh.connect(client=old)[3].flush()
        self.assertEqual(mesh.servers, [])
        [event] = [e for e in events if e.get("role") == "from"]
        self.assertIn("protocol", event["why"])

    def test_handshakeTimeout(self):
        """
        A client that never finishes its handshake is cut off after the
        timeout, with a log line.
        """
        mesh = Harness(self)
        server = mesh.serverProtocol()
        transport = FakeTransport(server, isServer=True)
        with capturedLogs() as events:
            server.makeConnection(transport)
            mesh.clock.advance(9)
            self.assertFalse(transport.disconnecting)
            mesh.clock.advance(1)
            self.assertTrue(transport.disconnecting)
            server.connectionLost(ConnectionDone())
        [event] = events
        self.assertEqual(event["why"], "no TLS handshake within 10s")
        self.assertEqual(mesh.clock.getDelayedCalls(), [])

    def test_cancel(self):
        """
        Cancelling the wait for verification aborts the connection.
        """
        mesh = Harness(self)
        client, verified, server, pump = mesh.connect(greet=False)
        verified.cancel()
        self.failureResultOf(verified)
        self.assertTrue(client.transport.disconnecting)
        pump.flush()

    def test_noCertificateYet(self):
        """
        Before the first certificate, inbound TLS for the identity is
        closed and outbound mTLS refused.
        """
        mesh = Harness(self)
        empty = MeshTLS(type(mesh.serverStore)(SERVER, mesh.ca.anchors, mesh.clock), mesh.clock)
        self.assertFalse(empty.ready)
        refused = empty.server(Peer, 10)
        transport = FakeTransport(refused, isServer=True)
        with capturedLogs():
            refused.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertRaises(HandshakeFailed, empty.clientFactory, SERVER, Factory.forProtocol(Peer), 1)


class HalfCloseTests(SynchronousTestCase):
    """
    C{loseWriteConnection} over TLS: C{close_notify} for one direction while
    the other flows.
    """

    def test_halfClose(self):
        """
        The client's end of output reaches the server after its bytes, as
        C{readConnectionLost}; the server still answers; when the server
        ends too, both connections close cleanly.
        """
        client, server, pump = connected(self)
        client.transport.write(b"request")
        client.transport.loseWriteConnection()
        client.transport.write(b"dropped")
        pump.flush()
        self.assertEqual(server.received, b"request")
        self.assertTrue(server.ended)
        self.assertTrue(client.writeEnded)
        self.assertIsNone(server.lost)

        server.transport.write(b"x" * 100000)
        pump.flush()
        self.assertEqual(len(client.received), 100000)
        self.assertFalse(client.ended)
        server.transport.loseWriteConnection()
        pump.flush()
        self.assertTrue(client.ended)
        client.lost.trap(ConnectionDone)
        server.lost.trap(ConnectionDone)

    def test_serverFirst(self):
        """
        Either side may end first.
        """
        client, server, pump = connected(self)
        server.transport.loseWriteConnection()
        pump.flush()
        self.assertTrue(client.ended)
        client.transport.write(b"late")
        client.transport.loseWriteConnection()
        pump.flush()
        self.assertEqual((server.received, server.ended), (b"late", True))
        server.lost.trap(ConnectionDone)

    def test_notHalfCloseable(self):
        """
        A protocol that cannot half-close loses the whole connection at the
        peer's C{close_notify}, as with Twisted's TLS.
        """
        client, server, pump = connected(self, WholePeer)
        server.transport.loseWriteConnection()
        pump.flush()
        client.lost.trap(ConnectionDone)

    def test_truncation(self):
        """
        A TCP end of input without C{close_notify} is a truncation: the
        connection is lost with an error.
        """
        client, server, pump = connected(self)
        server.transport.readConnectionLost()
        pump.flush()
        server.lost.trap(ConnectionLost)
        self.assertFalse(server.ended)

    def test_endAfterCloseNotify(self):
        """
        A TCP end of input after the peer's C{close_notify} changes nothing:
        the other direction stays open.
        """
        client, server, pump = connected(self)
        client.transport.loseWriteConnection()
        pump.flush()
        server.transport.readConnectionLost()
        server.transport.write(b"still")
        pump.flush()
        self.assertEqual(client.received, b"still")
        self.assertIsNone(server.lost)

    def test_loseConnection(self):
        """
        C{loseConnection} closes the TCP connection once what was written
        and our C{close_notify} are out, without waiting for the peer's.
        """
        client, server, pump = connected(self)
        server.transport.write(b"last")
        server.transport.loseConnection()
        self.assertTrue(server.transport.transport.disconnecting)
        pump.flush()
        self.assertEqual(client.received, b"last")
        client.lost.trap(ConnectionDone)
        server.lost.trap(ConnectionDone)


class Events(Peer):
    """
    A L{Peer} that also records each call, in order.

    @ivar events: C{("data", bytes)} for each C{dataReceived}, C{("end",)}
        for C{readConnectionLost}.
    """

    def __init__(self, peerIdentity=None):
        super().__init__(peerIdentity)
        self.events = []

    def dataReceived(self, data):
        super().dataReceived(data)
        self.events.append(("data", data))

    def readConnectionLost(self):
        super().readConnectionLost()
        self.events.append(("end",))


class CoalescingTests(SynchronousTestCase):
    """
    The records of one write leave in one piece; the plaintext of the
    records of one read goes up in one piece.
    """

    def test_oneSendPerWrite(self):
        """
        A write of several records' worth is one write to the TCP
        transport, and arrives whole.
        """
        client, server, pump = connected(self, Events)
        tcp = server.transport.transport
        payload = bytes(range(256)) * 256
        server.transport.write(payload)
        self.assertEqual(len(tcp.stream), 1)
        pump.flush()
        self.assertEqual(client.events, [("data", payload)])

    def test_oneDeliveryPerRead(self):
        """
        Records that arrive in one read are delivered in one call.
        """
        client, server, pump = connected(self, Events)
        for word in (b"one ", b"two ", b"three"):
            server.transport.write(word)
        pump.flush()
        self.assertEqual(client.events, [("data", b"one two three")])

    def test_dataBeforeCloseNotify(self):
        """
        Bytes that arrive in the same read as the peer's C{close_notify}
        are delivered before the end of input.
        """
        client, server, pump = connected(self, Events)
        server.transport.write(b"last words")
        server.transport.loseWriteConnection()
        pump.flush()
        self.assertEqual(client.events, [("data", b"last words"), ("end",)])


class RotationTests(SynchronousTestCase):
    """
    New credentials reach new connections at once and leave open ones be.
    """

    def test_swap(self):
        mesh = Harness(self)
        client, verified, server, pump = mesh.connect()
        pump.flush()
        old = self.successResultOf(verified)
        first = server.getHandle().get_certificate().to_cryptography()

        mesh.serverStore.update(*mesh.ca.credentials(SERVER))
        newClient, newVerified, newServer, newPump = mesh.connect()
        newPump.flush()
        self.successResultOf(newVerified)
        presented = newClient.getHandle().get_peer_certificate(as_cryptography=True)
        self.assertEqual(presented, mesh.serverStore.current.leaf)
        self.assertNotEqual(presented, first)

        old.transport.write(b"still flowing")
        pump.flush()
        self.assertEqual(mesh.servers[0].received, b"still flowing")
        self.assertEqual(client.getHandle().get_peer_certificate(as_cryptography=True), first)


class MeshConnectorTests(SynchronousTestCase):
    """
    Tests for L{MeshConnector}: mTLS for endpoints with an identity, TCP for
    the others, and a connection only once the server is verified.
    """

    def setUp(self):
        self.mesh = Harness(self)
        self.reactor = MemoryReactorClock()
        self.connector = MeshConnector(self.reactor, 1.0, self.mesh.client)

    def connect(self, identity):
        """
        Connect to an endpoint proving C{identity}, whose TCP connection
        reaches the mesh's server in memory.
        """
        d = self.connector.connect(Endpoint(Address("10.0.0.5", 4143), identity), Factory.forProtocol(Peer))
        factory = self.reactor.tcpClients[-1][2]
        client = factory.buildProtocol(ADDRESS)
        return d, self.mesh.pump(self.mesh.serverProtocol(), client, greet=False)

    def test_interface(self):
        self.assertTrue(verifyObject(IConnector, self.connector))

    def test_verified(self):
        """
        The attempt succeeds with the protocol carried, once the handshake
        is complete.
        """
        d, pump = self.connect(SERVER)
        self.assertNoResult(d)
        pump.flush()
        peer = self.successResultOf(d)
        self.assertIsInstance(peer, Peer)
        self.assertIsInstance(peer.transport, TLSProtocol)
        self.assertEqual(peer.transport.peerIdentity, SERVER)

    def test_wrongIdentity(self):
        """
        A server that proves another identity fails the attempt.
        """
        d, pump = self.connect("db.prod.mesh.local")
        with capturedLogs():
            pump.flush()
        self.failureResultOf(d, HandshakeFailed)

    def test_handshakeTimeout(self):
        """
        The connect timeout bounds the handshake too.
        """
        d, pump = self.connect(SERVER)
        with capturedLogs():
            self.mesh.clock.advance(1)
            pump.flush()
        self.assertIn("no TLS handshake within 1s", str(self.failureResultOf(d, HandshakeFailed).value))

    def test_plain(self):
        """
        An endpoint without an identity gets plain TCP.
        """
        d = self.connector.connect(Endpoint(Address("10.0.0.6", 80)), Factory.forProtocol(Peer))
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(ADDRESS)
        protocol.makeConnection(FakeTransport(protocol, isServer=False))
        self.assertNotIsInstance(self.successResultOf(d).transport, TLSProtocol)

    def test_noIdentity(self):
        """
        A proxy without an identity cannot reach a meshed endpoint, and does
        not try in plaintext.
        """
        d = MeshConnector(self.reactor, 1.0, None).connect(Endpoint(Address("10.0.0.5", 4143), SERVER), Factory())
        self.failureResultOf(d, HandshakeFailed)
        self.assertEqual(self.reactor.tcpClients, [])
