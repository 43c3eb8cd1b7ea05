# -*- test-case-name: tests.test_tls -*-
"""
Mutual TLS between proxies: TLS 1.3 only, ECDSA P-256 certificates from
the identity store, trust anchored in the mesh's own roots.

L{MeshTLS} turns the store's credentials into OpenSSL contexts, one server
and one client context per credential version, rebuilt when the store says
the credentials changed.  Every new connection takes the newest context;
a connection already open keeps the one it started with, so a renewal never
disturbs traffic.

  - Server side (an inbound connection whose SNI is our identity): present
    our chain; ask for a client certificate without requiring one (policy,
    not TLS, decides about clients without one); a certificate that is
    given must chain to the anchors, or the handshake fails.
  - Client side (an endpoint with an identity): SNI is the endpoint's
    identity; present our chain; the server's chain must lead to the
    anchors and its leaf must carry that identity as a DNS name
    exactly.  Anything else is an error, never plaintext.

L{TLSProtocol} is the connection.  It differs from Twisted's
L{TLSMemoryBIOProtocol} in three ways, each for the relay above it:

  1. The protocol it carries is built only once the peer is verified, and
     given the peer's identity.  Nothing above TLS can read or write before
     the peer is known, and the inbound side builds its relay for the
     verified client.  C{whenVerified} tells the outbound connector.
  2. Half-close.  C{loseWriteConnection} sends C{close_notify} after what
     was written (a TCP FIN would be a truncation, and could overtake TLS
     records still buffered), and reading goes on; a C{close_notify}
     received becomes C{readConnectionLost} for a protocol that provides
     L{IHalfCloseableProtocol}.  TLS 1.3 allows this (RFC 8446, section
     6.1: each side closes its own direction), and OpenSSL supports it: the
     connection's TCP socket is closed once both directions are.
  3. C{loseConnection} closes the TCP connection once our C{close_notify}
     is out, as TCP's closes after what was written, without waiting for
     the peer's C{close_notify} (RFC 8446 does not require it), which a
     peer still sending might never send, and without waiting for a
     registered producer to unregister (Twisted's does; the HTTP protocols
     are their transport's producer for life, as over TCP).

Writes are not held back to be coalesced (Twisted's
C{BufferingTLSTransport} holds them until the next reactor turn): a relay
writes what it read, in chunks large enough already, and an interactive
protocol is better served without the delay.  What is coalesced costs no
delay: the records of one write go to the TCP connection in one piece, and
sent at once (L{meshproxy.tcp.writeNow}); the plaintext of the records of
one TCP read goes up in one piece.

These touch private methods of L{TLSMemoryBIOProtocol}
(C{_checkHandshakeStatus}, C{_flushReceiveBIO}, C{_flushSendBIO},
C{_write}, C{_unbufferPendingWrites}); the tests in C{tests.test_tls}
exercise each path against real OpenSSL, so a Twisted release that changes
them fails there first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_ASN1, X509, dump_certificate
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNSPattern
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .identity.store import Credentials, IdentityStore
from .tcp import writeNow

__all__ = ["HandshakeFailed", "MeshTLS", "TLSProtocol"]

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h, stable across releases) that a
# mesh can run into, in the words an operator searches for.
_VERIFY_ERRORS = {
    2: "unknown issuer (unable to get issuer certificate)",
    7: "bad certificate signature",
    9: "certificate not yet valid",
    10: "certificate expired",
    18: "self-signed certificate, not a trust anchor",
    19: "unknown CA (self-signed certificate in the chain)",
    20: "unknown CA (unable to get local issuer certificate)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "certificate not for this purpose (extended key usage)",
    47: "name outside the CA's permitted names",
}


#: How much of the memory BIO's records one read takes: a relayed 64 KiB
#: chunk and its records' overhead in one piece.
_BIO_READ = 2**17


class HandshakeFailed(Exception):
    """
    A TLS connection ended before its peer was verified; the message says
    why, as the log line does.
    """


def _verifyCallback(connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int) -> bool:
    """
    Called by OpenSSL for each certificate of the peer's chain, the anchor
    first and the leaf (depth 0) last.

    OpenSSL's own chain verification decides about the chain; a refusal is
    only noted on the L{TLSProtocol} (Twisted makes it the connection's app
    data), so that the failure is logged with its reason rather than
    "certificate verify failed".  The leaf's name is checked here, within
    the handshake, so that a client refusing a server sends an alert
    instead of completing the handshake first.
    """
    tlsProtocol = connection.get_app_data()
    if not ok:
        reason = _VERIFY_ERRORS.get(errno, f"X509 verify error {errno}")
        subject = certificate.to_cryptography().subject.rfc4514_string()
        tlsProtocol.rejected(f"{reason}: {subject} (chain depth {depth})")
        return False
    if depth == 0:
        return tlsProtocol.acceptLeaf(_dnsNames(dump_certificate(FILETYPE_ASN1, certificate)))
    return True


def _context(credentials: Credentials, anchors: list[X509], verify: int) -> SSL.Context:
    """
    A TLS 1.3-only context presenting C{credentials} and verifying peers
    against C{anchors} with the OpenSSL C{verify} mode.  Session tickets and
    the session cache stay off (Twisted's defaults): every connection
    verifies its peer afresh, with the newest certificates.
    """
    context = CertificateOptions(
        privateKey=credentials.key,
        certificate=credentials.leaf,
        extraCertChain=list(credentials.chain[1:]),
        raiseMinimumTo=TLSVersion.TLSv1_3,
    ).getContext()
    context.set_verify(verify, _verifyCallback)
    store = context.get_cert_store()
    for anchor in anchors:
        store.add_cert(anchor)
    return context


@lru_cache(maxsize=512)
def _dnsNames(der: bytes) -> tuple[str, ...]:
    """
    The DNS names of the certificate whose DER encoding is C{der}, as
    C{service_identity} reads them to verify it.

    Parsing the certificate and its names took nearly three quarters of the
    verify callback's time, on every handshake, for the same few peer
    certificates.  The names are a function of the encoding alone, so they
    are remembered by it: the cache cannot be fooled by another
    certificate, and needs no expiry of its own, as OpenSSL checks the
    chain, its signatures and its validity dates on every handshake before
    the names are looked at.  Keyed by the whole encoding rather than a
    digest, so that nothing is hashed twice; 512 of them, well under a
    megabyte, are the certificates of more peers than a proxy talks to
    within one certificate lifetime.
    """
    certificate = x509.load_der_x509_certificate(der)
    return tuple(p.pattern.decode("ascii") for p in extract_patterns(certificate) if isinstance(p, DNSPattern))


@implementer(IHalfCloseableProtocol)
class TLSProtocol(TLSMemoryBIOProtocol):
    """
    One mutually authenticated TLS connection (see the module docstring).

    @ivar expectedIdentity: for a client, the identity the server must
        prove (and the SNI sent); L{None} for a server.
    @ivar peerIdentity: the peer's identity, once its chain is verified:
        the expected one for a client; for a server, the first DNS name of
        the client's certificate, or L{None} if it sent none.
    @ivar _build: builds the protocol carried, given C{peerIdentity}.
    @ivar _timeout: seconds the handshake may take.
    @ivar _clock: times the handshake.
    @ivar _timer: the pending handshake timeout, until verified or lost.
    @ivar _verified: whether the peer was verified and the carried protocol
        built.
    @ivar _rejection: why the peer was refused, if it was.
    @ivar _waiting: the L{Deferred}s of L{whenVerified} not fired yet.
    @ivar _writeClosed: C{loseWriteConnection} was called.
    @ivar _closeNotifySent: our C{close_notify} is out.
    @ivar _readClosed: the peer's C{close_notify} came.
    """

    _log = Logger()

    expectedIdentity: str | None = None
    peerIdentity: str | None = None
    _timer: IDelayedCall | None = None
    _verified = False
    _rejection: str | None = None
    _writeClosed = False
    _closeNotifySent = False
    _readClosed = False

    def __init__(
        self,
        factory: TLSMemoryBIOFactory,
        build: Callable[[str | None], IProtocol],
        timeout: float,
        clock: IReactorTime,
        expectedIdentity: str | None = None,
    ) -> None:
        # Until the peer is verified the wrapped protocol is an inert
        # placeholder: connection loss during the handshake reaches nobody.
        super().__init__(factory, Protocol(), _connectWrapped=False)
        self._build = build
        self._timeout = timeout
        self._clock = clock
        self.expectedIdentity = expectedIdentity
        self._waiting: list[Deferred[IProtocol]] = []

    def whenVerified(self) -> Deferred[IProtocol]:
        """
        Wait for the peer to be verified.

        @return: a L{Deferred} that fires with the protocol carried once the
            handshake completed and the peer was verified, or fails with
            L{HandshakeFailed}.  Cancelling it aborts the connection.  Ask
            before the handshake completes, as a connector does when the
            TCP connection is made.
        """
        waiting: Deferred[IProtocol] = Deferred(lambda d: self.abortConnection())
        self._waiting.append(waiting)
        return waiting

    def acceptLeaf(self, names: Sequence[str]) -> bool:
        """
        Whether to accept the peer's leaf certificate, whose chain OpenSSL
        has verified and whose DNS names are C{names}: a server must carry
        L{expectedIdentity} as a DNS name, exactly.  A wildcard name is not
        an identity: C{*.mesh.local} would let one workload answer for all.
        """
        if self.expectedIdentity is None:
            self.peerIdentity = next(iter(names), None)
            return True
        if self.expectedIdentity not in names:
            self.rejected(f"the server certificate is for {list(names)}, not {self.expectedIdentity!r}")
            return False
        self.peerIdentity = self.expectedIdentity
        return True

    def rejected(self, reason: str) -> None:
        """
        Note why the peer's certificate was refused (the first reason is
        the one that counts).
        """
        if self._rejection is None:
            self._rejection = reason

    # Verification.

    def makeConnection(self, transport) -> None:
        self._timer = self._clock.callLater(self._timeout, self._handshakeTimedOut)
        super().makeConnection(transport)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.rejected(f"no TLS handshake within {self._timeout:g}s")
        self.abortConnection()

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()
        if self._handshakeDone and not self._verified and not self._aborted:
            self._verifyPeer()

    def _verifyPeer(self) -> None:
        """
        The handshake is complete, with the peer's chain verified by
        L{_verifyCallback}: start the protocol carried.

        A client fails closed if the callback never approved the server's
        name (as on a resumed session, which these contexts never allow).
        """
        if self.expectedIdentity is not None and self.peerIdentity != self.expectedIdentity:
            self.rejected(f"the server's identity was not verified as {self.expectedIdentity!r}")
            self.failVerification(Failure(HandshakeFailed(self._rejection)))
            return
        self._verified = True
        self._timer.cancel()
        self._timer = None
        self.wrappedProtocol = self._build(self.peerIdentity)
        self.wrappedProtocol.makeConnection(self)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.wrappedProtocol)

    def connectionLost(self, reason: Failure) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failure = self._reason or reason
        peer = self.transport.getPeer()
        super().connectionLost(reason)
        if not self._verified:
            self._handshakeFailed(peer, failure)

    def _handshakeFailed(self, peer, failure: Failure) -> None:
        """
        Log why the connection ended before its peer was verified, and fail
        whoever waits for it.
        """
        why = self._rejection
        if why is None:
            if failure.check(SSL.Error):
                errors = failure.value.args[0] if failure.value.args else []
                why = "; ".join(str(error[-1]) for error in errors) or repr(failure.value)
            else:
                why = f"connection closed during the handshake ({failure.type.__name__})"
        self._log.warn(
            "TLS handshake {role} {peer} failed: {why}",
            role="to" if self.expectedIdentity else "from",
            peer=peer,
            identity=self.expectedIdentity,
            why=why,
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.errback(HandshakeFailed(why))

    # Half-close.

    def write(self, data: bytes) -> None:
        # As after shutdown(SHUT_WR): bytes written after the end are lost.
        if not self._writeClosed:
            super().write(data)

    def loseWriteConnection(self) -> None:
        """
        Send C{close_notify} once the bytes written so far are encrypted;
        keep reading.
        """
        if self._writeClosed or self.disconnecting:
            return
        self._writeClosed = True
        if not self._appSendBuffer:
            self._sendCloseNotify()

    def loseConnection(self) -> None:
        if self._producer is not None:
            self.unregisterProducer()
        super().loseConnection()

    def _unbufferPendingWrites(self) -> None:
        super()._unbufferPendingWrites()
        if self._writeClosed and not self._closeNotifySent and not self._appSendBuffer:
            self._sendCloseNotify()

    def _sendCloseNotify(self) -> None:
        self._closeNotifySent = True
        # Closes the TCP connection too if the peer's close_notify came first.
        self._shutdownTLS()
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()

    def _flushReceiveBIO(self) -> None:
        """
        L{TLSMemoryBIOProtocol._flushReceiveBIO}, except that the plaintext
        of all the records at hand goes up in one call, and for a
        C{close_notify}: see L{_closeNotifyReceived}.

        One TCP read often holds several records: four for a relayed 64 KiB
        chunk, a few HTTP/2 frames.  Delivered together they make one call
        of the protocol above and one write onwards, rather than one per
        record.  What came before a C{close_notify} or an error is
        delivered before it, as it arrived.
        """
        received: list[bytes] = []
        while not self._lostTLSConnection and not self._readClosed:
            try:
                received.append(self._tlsConnection.recv(2**15))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._deliver(received)
                self._closeNotifyReceived()
            except SSL.Error:
                self._deliver(received)
                self._tlsShutdownFinished(Failure())
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        """
        Give the plaintext in C{received} to the protocol carried, unless
        the connection was aborted, and empty the list.
        """
        if received and not self._aborted:
            ProtocolWrapper.dataReceived(self, b"".join(received))
        received.clear()

    def _write(self, data: bytes) -> None:
        """
        L{TLSMemoryBIOProtocol._write}, with the records of one write sent
        on in one piece.

        OpenSSL is still given at most a record's worth (16 KiB) at a time,
        as in Twisted, so that a write it cannot take yet (C{WantReadError})
        is retried from a record boundary; but the records are collected
        from the memory BIO once, at the end, and a relay's 64 KiB chunk
        becomes one C{send} rather than four.
        """
        if self._lostTLSConnection:
            return
        sent = 0
        while sent < len(data):
            try:
                sent += self._tlsConnection.send(data[sent : sent + 2**14])
            except SSL.WantReadError:
                self._bufferedWrite(data[sent:])
                break
            except SSL.Error:
                # Sends the records so far, and an alert, and closes.
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """
        L{TLSMemoryBIOProtocol._flushSendBIO}, taking everything in the
        memory BIO (Twisted takes 32 KiB) and sending it at once (see
        L{meshproxy.tcp.writeNow}).  A read shorter than asked for emptied
        the BIO, which spares the C{WantReadError} of one more.
        """
        records: list[bytes] = []
        while True:
            try:
                chunk = self._tlsConnection.bio_read(_BIO_READ)
            except SSL.WantReadError:
                break
            records.append(chunk)
            if len(chunk) < _BIO_READ:
                break
        if records:
            writeNow(self.transport, b"".join(records))

    def _closeNotifyReceived(self) -> None:
        """
        The peer will send nothing more.  A half-closeable protocol hears it
        as the end of input, as from TCP, and may go on writing; once our
        side is done too, or for any other protocol, the whole connection
        ends as in Twisted.
        """
        self._readClosed = True
        if self._verified and not self.disconnecting and IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
            if not self._closeNotifySent:
                return
        self._shutdownTLS()
        self._tlsShutdownFinished(None)

    def readConnectionLost(self) -> None:
        """
        The TCP connection's input ended.  After the peer's C{close_notify}
        that is the expected end (the peer may shut down writing after it);
        before, it is a truncation, and the connection ends as Twisted ends
        it, with L{ConnectionLost}.
        """
        if not self._readClosed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Never called: TLS half-closes with C{close_notify}, not with a TCP
        C{shutdown}.
        """

    def _shutdownTLS(self) -> None:
        """
        L{TLSMemoryBIOProtocol._shutdownTLS}, and once the application has
        asked to close (C{loseConnection}), close the TCP connection as soon
        as our C{close_notify} is out.
        """
        super()._shutdownTLS()
        if self.disconnecting and not self._lostTLSConnection:
            self._tlsShutdownFinished(None)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class MeshTLS:
    """
    The mTLS of one proxy identity: contexts from an L{IdentityStore}, and
    L{TLSProtocol}s for inbound and outbound connections.

    @ivar identity: the proxy's own identity, the SNI it terminates.
    @ivar _anchors: the trust anchors, converted for OpenSSL once.
    @ivar _server: the server context of the newest credentials.
    @ivar _client: the client context of the newest credentials.
    @ivar _factories: the L{TLSMemoryBIOFactory} of each side (client:
        L{True}), which the protocols need for their connections and to be
        counted.
    """

    _log = Logger()

    def __init__(self, store: IdentityStore, clock: IReactorTime) -> None:
        self.identity = store.identity
        self._clock = clock
        self._anchors = [X509.from_cryptography(anchor) for anchor in store.trustAnchors]
        self._server: SSL.Context | None = None
        self._client: SSL.Context | None = None
        self._factories = {
            isClient: TLSMemoryBIOFactory(self, isClient, Factory(), clock) for isClient in (False, True)
        }
        store.subscribe(self._credentialsChanged)

    @property
    def ready(self) -> bool:
        """
        Whether there are credentials to make connections with.
        """
        return self._server is not None

    def _credentialsChanged(self, credentials: Credentials) -> None:
        """
        Build the contexts of new credentials; connections made from now on
        use them.  Both are complete before they are installed, as a context
        must not change while connections use it.
        """
        server = _context(credentials, self._anchors, SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE)
        for anchor in self._anchors:
            # Named in the certificate request, so that a client holding
            # several certificates picks one of this mesh.
            server.add_client_ca(anchor)
        client = _context(credentials, self._anchors, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        self._server, self._client = server, client
        self._log.info(
            "Using the certificate of {identity}, expiring {expires}",
            identity=self.identity,
            expires=credentials.leaf.not_valid_after_utc.isoformat(),
        )

    def serverConnectionForTLS(self, tlsProtocol: TLSProtocol) -> SSL.Connection:
        return SSL.Connection(self._server, None)

    def clientConnectionForTLS(self, tlsProtocol: TLSProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._client, None)
        connection.set_tlsext_host_name(tlsProtocol.expectedIdentity.encode("ascii"))
        return connection

    def server(self, build: Callable[[str | None], IProtocol], timeout: float) -> IProtocol:
        """
        Terminate an inbound TLS connection for our identity.

        @param build: called with the client's verified identity (or
            L{None}) once the handshake is complete; returns the protocol
            for the plaintext.
        @param timeout: seconds the handshake may take.

        @return: the protocol to hand the connection to, ClientHello
            included; one that closes it if there is no certificate yet.
        """
        if not self.ready:
            return _NoCertificate()
        return TLSProtocol(self._factories[False], build, timeout, self._clock)

    def clientFactory(self, identity: str, wrappedFactory: IProtocolFactory, timeout: float) -> IProtocolFactory:
        """
        A factory of outbound TLS connections to a server that must prove
        C{identity}; each carries a protocol of C{wrappedFactory}, built
        once the server is verified (see L{TLSProtocol.whenVerified}).

        @raise HandshakeFailed: if there is no certificate yet.
        """
        if not self.ready:
            raise HandshakeFailed("no identity certificate yet")
        return _ClientFactory(self._factories[True], identity, wrappedFactory, timeout, self._clock)


class _ClientFactory(Factory):
    """
    Builds the L{TLSProtocol} of one outbound connection.
    """

    noisy = False

    def __init__(self, tlsFactory, identity, wrappedFactory, timeout, clock) -> None:
        self._tlsFactory = tlsFactory
        self._identity = identity
        self._wrappedFactory = wrappedFactory
        self._timeout = timeout
        self._clock = clock

    def buildProtocol(self, addr) -> TLSProtocol:
        return TLSProtocol(
            self._tlsFactory,
            lambda peerIdentity: self._wrappedFactory.buildProtocol(addr),
            self._timeout,
            self._clock,
            self._identity,
        )


class _NoCertificate(Protocol):
    """
    Closes a connection the proxy should terminate TLS for but cannot yet:
    before the first certificate, C{/ready} says not ready, and a client
    that came anyway is better refused than served by the application in
    the clear.
    """

    _log = Logger()

    def connectionMade(self) -> None:
        self._log.warn("No identity certificate yet: closing the TLS connection from {peer}", peer=self.transport.getPeer())
        self.transport.abortConnection()
