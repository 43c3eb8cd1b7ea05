"""
Tests for L{meshproxy.identity.client}: the renewal state machine with a
L{Clock} and a certifier whose answers the tests give, the HTTPS certifier
against a real issuer process, and real proxies that get and renew their
certificates while traffic flows.
"""

from __future__ import annotations

import os
import time
from random import Random

from attrs import frozen
from cryptography import x509
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.config import Address, load
from meshproxy.identity.ca import initialize
from meshproxy.identity.certify import decodeResponse, encodeResponse, makeCSR, makeKey
from meshproxy.identity.client import (
    EXCHANGE_TIMEOUT,
    MAX_RESPONSE,
    CertifyError,
    HTTPSCertifier,
    ICertifier,
    IdentityClient,
    State,
    refreshDelay,
    retryDelay,
)
from meshproxy.identity.issuer import Issuer, IssuerMetrics, Rejected, issuerSite, issuerTLS
from meshproxy.identity.store import Credentials, IdentityStore
from meshproxy.identity.tokens import mintToken
from meshproxy.metrics import ProxyMetrics
from meshproxy.readiness import Readiness
from meshproxy.service import ProxyService

from .realprocess import Proxy, freePort, get, run, tool
from .test_identity_issuer import IssuerProcess

#: The time the unit tests start at: 2027-01-15T08:00:00Z.
NOW = 1_800_000_000.0
IDENTITY = "web.mesh.local"


@frozen
class _Request:
    """
    One certify exchange the client started, for the test to answer.
    """

    csr: bytes
    token: str | None
    current: Credentials | None
    deferred: Deferred[bytes]


@implementer(ICertifier)
class FakeCertifier:
    """
    Records each exchange and leaves its answer to the test.

    @ivar requests: every exchange started, oldest first.
    """

    def __init__(self) -> None:
        self.requests: list[_Request] = []

    def certify(self, csr: bytes, token: str | None, current: Credentials | None) -> Deferred[bytes]:
        deferred: Deferred[bytes] = Deferred()
        self.requests.append(_Request(csr, token, current, deferred))
        return deferred


class DelayTests(SynchronousTestCase):
    """
    Tests for the pure timing functions L{refreshDelay} and L{retryDelay}.
    """

    def test_refreshAt70Percent(self) -> None:
        self.assertEqual(refreshDelay(NOW, NOW + 100), 70.0)
        self.assertAlmostEqual(refreshDelay(NOW + 20, NOW + 86400), 0.7 * 86380)

    def test_refreshClamped(self) -> None:
        """
        A renewal waits at least 10 seconds, even for a certificate about
        to expire or expired, and at most a day.
        """
        self.assertEqual(refreshDelay(NOW, NOW + 5), 10.0)
        self.assertEqual(refreshDelay(NOW, NOW - 5), 10.0)
        self.assertEqual(refreshDelay(NOW, NOW + 30 * 86400), 86400.0)

    def test_retryGrowth(self) -> None:
        """
        Without jitter (a sample of one half) the wait doubles from a
        second up to a minute.
        """
        delays = [retryDelay(failures, NOW, None, 0.5) for failures in range(1, 10)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0])

    def test_retryJitter(self) -> None:
        """
        The jitter moves the wait by at most a fifth either way.
        """
        for failures, base in [(1, 1.0), (4, 8.0), (12, 60.0)]:
            self.assertAlmostEqual(retryDelay(failures, NOW, None, 0.0), 0.8 * base)
            self.assertAlmostEqual(retryDelay(failures, NOW, None, 0.999999), 1.2 * base, places=4)

    def test_retryNoOverflow(self) -> None:
        self.assertEqual(retryDelay(10_000, NOW, None, 0.5), 60.0)

    def test_retryEndsAtExpiry(self) -> None:
        """
        While the certificate is valid, the wait ends at its expiry; after,
        the backoff alone decides.
        """
        self.assertEqual(retryDelay(6, NOW, NOW + 0.5, 0.5), 0.5)
        self.assertEqual(retryDelay(1, NOW, NOW + 3, 0.5), 1.0)
        self.assertEqual(retryDelay(6, NOW, NOW - 3, 0.5), 32.0)

    def test_retryShortensNearExpiry(self) -> None:
        """
        While the certificate is valid, the base is at most a quarter of
        the time it has left, but at least a second: a day-long
        certificate's backoff is not changed, a nearly expired one is asked
        for again every second or so.
        """
        self.assertEqual(retryDelay(9, NOW, NOW + 0.3 * 86400, 0.5), 60.0)
        self.assertEqual(retryDelay(6, NOW, NOW + 40, 0.5), 10.0)
        self.assertEqual(retryDelay(6, NOW, NOW + 3, 0.5), 1.0)
        self.assertAlmostEqual(retryDelay(6, NOW, NOW + 40, 0.0), 8.0)
        self.assertEqual(retryDelay(2, NOW, NOW + 40, 0.5), 2.0)


class IdentityClientTests(SynchronousTestCase):
    """
    Tests for L{IdentityClient}, with a real CA and the issuer's real
    policy behind a certifier the tests answer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", NOW)
        self.tokenFile = FilePath(self.mktemp())
        self.token = mintToken(self.authority.tokenKey, IDENTITY, NOW, 3600)
        self.tokenFile.setContent(f"  {self.token}\n".encode())
        self.store = IdentityStore(IDENTITY, self.authority.anchors, self.clock)
        self.certifier = FakeCertifier()
        self.metrics = ProxyMetrics()
        self.client = IdentityClient(
            self.store, self.certifier, self.tokenFile, self.metrics, self.clock, Random(4)
        )
        self.addCleanup(self.assertNoLeftovers)

    def assertNoLeftovers(self) -> None:
        """
        Once stopped, the client leaves nothing scheduled.
        """
        if self.client.running:
            self.client.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def answer(self, lifetime: float = 3600.0, authority=None) -> None:
        """
        Answer the latest exchange as the issuer would at the current time,
        with certificates of C{lifetime}.
        """
        request = self.certifier.requests[-1]
        issuer = Issuer(authority or self.authority, lifetime)
        chain = [] if request.current is None else list(request.current.chain)
        try:
            issued = issuer.certify(request.csr, request.token, chain, self.clock.seconds())
        except Rejected as e:
            request.deferred.errback(CertifyError(f"the issuer answered {e.status}: {e.reason}: {e.detail}"))
        else:
            request.deferred.callback(encodeResponse(issued))

    def refuse(self, reason: str = "cannot reach the issuer at 127.0.0.1:8443: Connection refused") -> None:
        """
        Fail the latest exchange for C{reason}.  (Not named C{fail}: the
        assertions call C{self.fail} to fail the test.)
        """
        self.certifier.requests[-1].deferred.errback(CertifyError(reason))

    def pending(self) -> float:
        """
        The one scheduled call's delay from now.
        """
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def due(self) -> None:
        """
        Set the clock to the time of the one scheduled call, exactly, and
        run it: advancing by L{pending} can leave the clock a rounding
        error short of it, this far from the epoch.
        """
        (call,) = self.clock.getDelayedCalls()
        self.clock.rightNow = call.getTime()
        self.clock.advance(0)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def issueFirst(self, lifetime: float = 3600.0) -> Credentials:
        self.client.startService()
        self.answer(lifetime)
        return self.store.current

    def test_interfaces(self) -> None:
        verifyObject(ICertifier, self.certifier)
        certifier = HTTPSCertifier(Clock(), Address("127.0.0.1", 8443), "identity.mesh.local", self.authority.anchors)
        verifyObject(ICertifier, certifier)
        verifyObject(IService, self.client)

    def test_firstIssuanceWithToken(self) -> None:
        """
        At start the client asks at once, with a CSR for its identity and
        the token from the file (without the surrounding whitespace), and
        installs what it gets, logged and counted.
        """
        self.assertIsNone(self.store.current)
        self.client.startService()
        (request,) = self.certifier.requests
        self.assertEqual((request.token, request.current), (self.token, None))
        csr = x509.load_pem_x509_csr(request.csr)
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), [IDENTITY])
        self.assertEqual(self.client.state, State.REQUESTING)
        with capturedLogs() as events:
            self.answer()
        current = self.store.current
        self.assertEqual(current.leaf.public_key(), csr.public_key())
        self.assertEqual(self.client.state, State.WAITING)
        (event,) = events
        self.assertEqual(
            (event["identity"], event["serial"], event["expires"]),
            (IDENTITY, f"{current.leaf.serial_number:x}", current.leaf.not_valid_after_utc.isoformat()),
        )
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="success"), 1.0)
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="failure"), 0.0)
        self.assertEqual(self.sample("identity_cert_refresh_timestamp_seconds"), NOW)

    def test_synchronousCertifier(self) -> None:
        """
        A certifier that answers at once is as good as one that answers
        later.
        """
        issuer = Issuer(self.authority, 3600)

        @implementer(ICertifier)
        class Immediate:
            def certify(_, csr, token, current):
                return succeed(encodeResponse(issuer.certify(csr, token, [], self.clock.seconds())))

        self.client = IdentityClient(self.store, Immediate(), self.tokenFile, self.metrics, self.clock, Random(4))
        self.client.startService()
        self.assertIsNotNone(self.store.current)
        self.assertEqual(self.client.state, State.WAITING)
        self.assertAlmostEqual(self.pending(), 0.7 * 3600)

    def test_renewalAt70Percent(self) -> None:
        """
        The renewal starts at 70 % of the remaining lifetime, not before.
        """
        current = self.issueFirst(lifetime=100)
        self.assertEqual(current.expires, NOW + 100)
        self.assertEqual(self.pending(), 70.0)
        self.clock.advance(69.9)
        self.assertEqual(len(self.certifier.requests), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.certifier.requests), 2)
        self.assertEqual(self.client.state, State.REQUESTING)

    def test_renewalWithCurrentCertificate(self) -> None:
        """
        A renewal presents the current certificate and no token: the token
        file is not even read.  The new certificate, for a new key, replaces
        the old one, and the next renewal is at 70 % of its lifetime.
        """
        first = self.issueFirst()
        self.tokenFile.remove()
        self.clock.advance(self.pending())
        request = self.certifier.requests[-1]
        self.assertEqual((request.token, request.current), (None, first))
        self.answer()
        second = self.store.current
        self.assertNotEqual(second.leaf.serial_number, first.leaf.serial_number)
        self.assertNotEqual(second.leaf.public_key(), first.leaf.public_key())
        self.assertAlmostEqual(self.pending(), 0.7 * 3600)
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="success"), 2.0)
        self.assertEqual(self.sample("identity_cert_refresh_timestamp_seconds"), NOW + 0.7 * 3600)

    def test_issuerDownBackoff(self) -> None:
        """
        While the issuer is down the retries back off exponentially, each
        within the jitter bounds, and the current certificate stays in use.
        """
        first = self.issueFirst()
        self.clock.advance(self.pending())
        with capturedLogs() as events:
            delays = []
            for failures in range(1, 10):
                self.refuse()
                delay = self.pending()
                base = min(2.0 ** (failures - 1), 60.0)
                self.assertTrue(0.8 * base <= delay <= 1.2 * base, (failures, delay))
                delays.append(delay)
                self.assertIs(self.store.current, first)
                self.clock.advance(delay)
        self.assertEqual(self.client.failures, 9)
        self.assertEqual(len(delays), len(set(delays)), "no jitter")
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="failure"), 9.0)
        self.assertEqual(self.sample("identity_cert_refresh_timestamp_seconds"), NOW)
        self.assertEqual({e["log_level"].name for e in events}, {"warn"})
        self.assertIn("Connection refused", events[0]["reason"])
        self.assertIn("stays in use", events[0]["log_format"])

    def test_recovery(self) -> None:
        """
        A success after failures installs the new certificate and starts the
        backoff afresh.
        """
        self.issueFirst()
        self.clock.advance(self.pending())
        for _ in range(4):
            self.refuse()
            self.clock.advance(self.pending())
        self.answer()
        self.assertEqual(self.client.failures, 0)
        self.assertEqual(self.sample("identity_cert_refresh_timestamp_seconds"), self.clock.seconds())
        self.assertAlmostEqual(self.pending(), refreshDelay(self.clock.seconds(), self.store.current.expires), 3)
        self.clock.advance(self.pending())
        self.refuse()
        self.assertLessEqual(self.pending(), 1.2)

    def test_outageEndingBeforeExpiry(self) -> None:
        """
        An issuer down from before the renewal is due until shortly before
        the certificate expires: each attempt meanwhile fails and the
        current certificate stays in use; once the issuer is back, the next
        attempt renews it with the current certificate, within 1.2 times a
        quarter of the time left (at least a second), so before the expiry.
        """
        lifetime = 40.0
        for left in [11.0, 9.0, 6.0, 4.0, 3.0, 2.0]:
            for seed in range(5):
                self.client = IdentityClient(
                    self.store, self.certifier, self.tokenFile, self.metrics, self.clock, Random(seed)
                )
                first = self.issueFirst(lifetime)
                returns = first.expires - left
                self.due()
                while self.clock.seconds() < returns:
                    self.refuse()
                    self.assertIs(self.store.current, first)
                    self.due()
                request = self.certifier.requests[-1]
                self.assertEqual((request.token, request.current), (None, first))
                self.assertLessEqual(self.clock.seconds() - returns, 1.2 * max(left / 4, 1.0), (left, seed))
                self.assertLess(self.clock.seconds(), first.expires, (left, seed))
                self.answer(lifetime)
                self.assertGreater(self.store.current.expires, first.expires)
                self.client.stopService()

    def test_expiryWhileDown(self) -> None:
        """
        Retries stop at the expiry of the current certificate; from then on
        the client asks with the token, logging each failure as an error
        that names the expiry, until it gets a certificate again.
        """
        first = self.issueFirst(lifetime=20)
        self.assertEqual(self.pending(), 14.0)
        self.clock.advance(14)
        while self.clock.seconds() < first.expires:
            self.assertIsNone(self.certifier.requests[-1].token)
            self.refuse()
            self.assertLessEqual(self.clock.seconds() + self.pending(), first.expires)
            self.clock.advance(self.pending())
        self.assertEqual(self.clock.seconds(), first.expires)
        request = self.certifier.requests[-1]
        self.assertEqual((request.token, request.current), (self.token, None))
        with capturedLogs() as events:
            self.refuse("the issuer answered 503: issuer_ca_invalid: ...")
        (event,) = events
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("EXPIRED", event["log_format"])
        self.assertEqual(event["expires"], first.leaf.not_valid_after_utc.isoformat())
        self.assertEqual(event["reason"], "the issuer answered 503: issuer_ca_invalid: ...")
        self.assertIs(self.store.current, first)
        self.clock.advance(self.pending())
        self.answer()
        self.assertGreater(self.store.current.expires, self.clock.seconds())

    def test_refusalReason(self) -> None:
        """
        The issuer's reason for a refusal is what the log says.
        """
        self.tokenFile.setContent(b"mpt1.e30.AAAA")
        self.client.startService()
        with capturedLogs() as events:
            self.answer()
        (event,) = events
        self.assertEqual(event["log_level"].name, "warn")
        self.assertTrue(event["reason"].startswith("the issuer answered 401: bad_token_signature"), event["reason"])
        self.assertIsNone(self.store.current)

    def test_tokenReadAtEachAttempt(self) -> None:
        """
        A missing or empty token file is a failed attempt, retried; a token
        put in the file is used at the next attempt.
        """
        self.tokenFile.remove()
        with capturedLogs() as events:
            self.client.startService()
            self.tokenFile.setContent(b"\n")
            self.clock.advance(self.pending())
        self.assertEqual(self.certifier.requests, [])
        self.assertIn("cannot read the join token file", events[0]["reason"])
        self.assertIn("is empty", events[1]["reason"])
        self.tokenFile.setContent(self.token.encode())
        self.clock.advance(self.pending())
        self.assertEqual(self.certifier.requests[-1].token, self.token)
        self.answer()
        self.assertIsNotNone(self.store.current)

    def test_unusableResponses(self) -> None:
        """
        A certificate for another key, or one the store refuses (of another
        CA), is a failed attempt: nothing is installed.
        """
        self.client.startService()
        request = self.certifier.requests[-1]
        wrongKey = Issuer(self.authority, 3600).certify(
            makeCSR(makeKey(), IDENTITY), self.token, [], self.clock.seconds()
        )
        with capturedLogs() as events:
            request.deferred.callback(encodeResponse(wrongKey))
            other = initialize(FilePath(self.mktemp()), "mesh.local", NOW)
            self.tokenFile.setContent(mintToken(other.tokenKey, IDENTITY, NOW, 3600).encode())
            self.clock.advance(self.pending())
            self.answer(authority=other)
        self.assertEqual(events[0]["reason"], "the certificate is for another key")
        self.assertIn("is not valid for 'web.mesh.local' under the trust anchors", events[1]["reason"])
        self.assertIsNone(self.store.current)
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="failure"), 2.0)

    def test_timeout(self) -> None:
        """
        An exchange that gets no answer is abandoned after the timeout, and
        retried.
        """
        self.client.startService()
        request = self.certifier.requests[-1]
        with capturedLogs() as events:
            self.clock.advance(EXCHANGE_TIMEOUT)
        self.assertTrue(request.deferred.called)
        self.assertEqual(events[0]["reason"], f"no answer within {EXCHANGE_TIMEOUT:g}s")
        self.assertEqual(self.client.state, State.WAITING)

    def test_unexpectedError(self) -> None:
        """
        An error no part of the exchange raises on purpose is logged with
        its traceback, and the exchange retried.
        """
        self.client.startService()
        self.certifier.requests[-1].deferred.errback(ZeroDivisionError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.client.state, State.WAITING)

    def test_stopWhileWaiting(self) -> None:
        self.issueFirst()
        self.client.stopService()
        self.assertEqual(self.client.state, State.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileRequesting(self) -> None:
        """
        Stopping cancels the exchange in flight, which is neither counted
        nor logged as a failure, and leaves no timer.
        """
        self.client.startService()
        with capturedLogs() as events:
            self.client.stopService()
        # Nothing but the cancellation answered it.  (The certifier's
        # Deferred is the head of the client's chain, which handled the
        # failure: its result is no failure.)
        self.assertTrue(self.certifier.requests[-1].deferred.called)
        self.assertEqual(self.client.state, State.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(events, [])
        self.assertEqual(self.sample("identity_cert_refreshes_total", result="failure"), 0.0)

    def test_secretsNotLogged(self) -> None:
        """
        Neither the token nor a private key appears in any log event.
        """
        with capturedLogs() as events:
            self.issueFirst()
            self.clock.advance(self.pending())
            self.refuse()
            self.clock.advance(self.pending())
            self.answer()
        self.assertTrue(events)
        for event in events:
            text = repr(event)
            self.assertNotIn(self.token, text)
            self.assertNotIn("PRIVATE KEY", text)
            self.assertNotIn("EllipticCurvePrivateKey", text)


class ProxyServiceTests(SynchronousTestCase):
    """
    L{ProxyService} runs an L{IdentityClient} when C{[identity]} names an
    issuer, feeding the store that C{/ready} waits on.
    """

    def test_issuer(self) -> None:
        directory = FilePath(self.mktemp())
        initialize(directory.child("ca"), "mesh.local", time.time())
        directory.child("join.token").setContent(b"token\n")
        directory.child("meshproxy.toml").setContent(
            b'[proxy]\nidentity = "web.mesh.local"\ntrust_anchors = "ca/ca.pem"\n'
            b'[identity]\nissuer = "127.0.0.1:8443"\nissuer_identity = "identity.mesh.local"\n'
            b'token_file = "join.token"\n'
            b'[[inbound]]\nlisten = "tcp:0:interface=127.0.0.1"\napp = "127.0.0.1:8080"\n'
        )
        service = ProxyService(load(directory.child("meshproxy.toml")), MemoryReactorClock())
        self.assertEqual(len([child for child in service if isinstance(child, IdentityClient)]), 1)
        self.assertIn("identity certificate", service.readiness.pending)


class _Streaming(Resource):
    """
    Answers every request with C{body} and C{status}: something in the
    issuer's place that is not the issuer.
    """

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status = status
        self.body = body

    def render_POST(self, request):
        request.setResponseCode(self.status)
        return self.body


class HTTPSCertifierTests(TestCase):
    """
    Tests for L{HTTPSCertifier} against the issuer's real site and TLS
    listener on loopback, in this process.
    """

    def setUp(self) -> None:
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", time.time())

    async def listen(self, site: Site) -> Address:
        factory = TLSMemoryBIOFactory(issuerTLS(self.authority), False, site)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return Address("127.0.0.1", port.getHost().port)

    async def issuer(self) -> Address:
        authority = self.authority
        return await self.listen(issuerSite(Issuer(authority, 3600), IssuerMetrics(authority), Readiness(), reactor))

    def certifier(self, address: Address, issuerIdentity: str = "identity.mesh.local", anchors=None) -> HTTPSCertifier:
        return HTTPSCertifier(reactor, address, issuerIdentity, anchors or self.authority.anchors)

    async def certify(self, certifier: HTTPSCertifier, token: str | None, current: Credentials | None = None):
        """
        One exchange for a new key: the credentials it got.
        """
        key = makeKey()
        body = await certifier.certify(makeCSR(key, IDENTITY), token, current)
        issued = decodeResponse(body, key, IDENTITY)
        return Credentials(key, (issued.certificate, *issued.chain), issued.expires)

    async def assertFails(self, deferred: Deferred, *expected: str) -> str:
        try:
            await deferred
        except CertifyError as e:
            message = str(e)
        else:
            self.fail("the exchange succeeded")
        for text in expected:
            self.assertIn(text, message)
        return message

    async def test_tokenThenRenewal(self) -> None:
        """
        A token gets a first certificate; presenting it over TLS renews it.
        """
        certifier = self.certifier(await self.issuer())
        first = await self.certify(certifier, mintToken(self.authority.tokenKey, IDENTITY, time.time(), 600))
        second = await self.certify(certifier, None, first)
        self.assertNotEqual(first.leaf.serial_number, second.leaf.serial_number)
        self.assertEqual(second.chain[1:], (self.authority.issuingCertificate,))

    async def test_refusal(self) -> None:
        """
        A refusal fails with the status and the issuer's reason.
        """
        certifier = self.certifier(await self.issuer())
        await self.assertFails(
            certifier.certify(makeCSR(makeKey(), IDENTITY), None, None), "the issuer answered 401: no_credentials: "
        )

    async def test_issuerDown(self) -> None:
        await self.assertFails(
            self.certifier(Address("127.0.0.1", freePort())).certify(b"", "token", None),
            "cannot reach the issuer at 127.0.0.1:",
            "refused",
        )

    async def test_issuerNotVerified(self) -> None:
        """
        An issuer whose certificate is not for C{issuer_identity}, or not
        under the trust anchors, is not sent the request.
        """
        address = await self.issuer()
        other = initialize(FilePath(self.mktemp()), "mesh.local", time.time())
        for certifier in [
            self.certifier(address, issuerIdentity="web.mesh.local"),
            self.certifier(address, anchors=other.anchors),
        ]:
            await self.assertFails(certifier.certify(b"", "token", None), "cannot reach the issuer at")

    async def test_notAnIssuer(self) -> None:
        """
        Whatever answers in the issuer's place: an error body that is not
        the issuer's is quoted, a body over the limit is not read.
        """
        address = await self.listen(Site(_Streaming(502, b"<html>Bad Gateway</html>")))
        await self.assertFails(
            self.certifier(address).certify(b"", "token", None), "the issuer answered 502: <html>Bad Gateway</html>"
        )
        address = await self.listen(Site(_Streaming(200, b"x" * (MAX_RESPONSE + 1))))
        await self.assertFails(self.certifier(address).certify(b"", "token", None), f"over {MAX_RESPONSE} bytes")


class PingPong(Protocol):
    """
    A client on a long-lived connection: each L{roundTrip} sends a message
    and waits for the echo.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: Deferred[bytes] | None = None
        self.expected = 0
        self.lost: Deferred[None] = Deferred()

    def roundTrip(self, message: bytes) -> Deferred[bytes]:
        self.waiting, self.expected = Deferred(), len(message)
        self.transport.write(message)
        return self.waiting.addTimeout(5, reactor)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.waiting is not None and len(self.buffer) >= self.expected:
            (waiting, self.waiting), (received, self.buffer) = (self.waiting, None), (self.buffer, b"")
            waiting.callback(received)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class RenewalProcessTests(TestCase):
    """
    Real proxies get their certificates from a real issuer, become ready
    only then, and renew them while a connection between them (mTLS)
    keeps carrying bytes.
    """

    timeout = 90

    async def meshproxy(self, *argv: str) -> str:
        code, output = await run([tool("meshproxy", "the meshproxy package (pip install .)"), *argv])
        self.assertEqual(code, 0, output)
        return output.decode()

    async def expiry(self, proxy: Proxy) -> float | None:
        return (await proxy.samples())("identity_cert_expiration_timestamp_seconds")

    async def test_issueAndRenewWhileTrafficFlows(self) -> None:
        started = time.time()
        caDir = FilePath(self.mktemp())
        await self.meshproxy("ca", "init", caDir.path, "--trust-domain", "mesh.local")
        issuer = IssuerProcess(self, caDir)
        issuer.config.setContent(
            f'[issuer]\nlisten = "tcp:{issuer.port}:interface=127.0.0.1"\n'
            f'ca_dir = "{caDir.path}"\ncert_lifetime = "20s"\n'.encode()
        )
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        inbound, outbound = freePort(), freePort()

        server, client = await echoMesh(self, caDir, issuer.port, port.getHost().port, inbound, outbound)

        # Not ready while the issuer is not there; ready once it is.
        starting = Deferred.fromCoroutine(server.start(timeout=30))
        deadline = time.time() + 15
        while True:
            try:
                status, body = await get(f"http://127.0.0.1:{server.adminPort}/ready")
                break
            except Exception:
                self.assertLess(time.time(), deadline, server.output)
                await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(status, 503)
        self.assertIn(b"identity certificate", body)
        self.assertIsNone(await self.expiry(server) or None)
        await issuer.start()
        await starting
        await client.start(timeout=15)
        firstExpiry = {p: await self.expiry(p) for p in (server, client)}

        # A long-lived connection through both proxies, across both renewals.
        pingPong = PingPong()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", outbound), pingPong)
        self.assertEqual(await pingPong.roundTrip(b"before"), b"before")
        deadline = time.time() + 25
        trips = 0
        while [await self.expiry(p) == firstExpiry[p] for p in (server, client)] != [False, False]:
            self.assertLess(time.time(), deadline, f"no renewal:\n{server.output}\n{client.output}")
            message = b"message %d" % (trips,)
            self.assertEqual(await pingPong.roundTrip(message), message)
            trips += 1
            await deferLater(reactor, 0.2, lambda: None)
        self.assertGreater(trips, 10)
        self.assertEqual(await pingPong.roundTrip(b"after"), b"after")
        self.assertFalse(pingPong.lost.called)
        for p in (server, client):
            samples = await p.samples()
            self.assertGreaterEqual(samples("identity_cert_refreshes_total", result="success"), 2.0)
            self.assertGreater(samples("identity_cert_refresh_timestamp_seconds"), started)

        # A new connection gets the new certificate.
        served = await servedCertificate(self, inbound, caDir)
        self.assertEqual(served.not_valid_after_utc.timestamp(), (await self.expiry(server)))

        pingPong.transport.loseConnection()
        await pingPong.lost
        for p in (server, client):
            await p.stop()
        self.assertEqual(privateKeysWritten(FilePath(os.getcwd()), since=started, but=caDir), [])


async def servedCertificate(testCase: TestCase, port: int, caDir: FilePath) -> x509.Certificate:
    """
    The certificate that a new connection to the proxy's listener on
    C{port} gets for C{web.mesh.local}, verified (by C{openssl s_client})
    against the CA of C{caDir}.
    """
    code, output = await run(
        [
            tool("openssl", "openssl"),
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "web.mesh.local",
            "-CAfile",
            caDir.child("ca.pem").path,
            "-verify_return_error",
        ],
        stdin=b"",
    )
    testCase.assertEqual(code, 0, output)
    return x509.load_pem_x509_certificate(output)


async def identityProxy(testCase: TestCase, caDir: FilePath, issuerPort: int, identity: str, listeners: str) -> Proxy:
    """
    A proxy (not started) for C{identity} that gets its certificates from
    the issuer on C{issuerPort}, with a join token of C{caDir} valid for
    five minutes, and the C{listeners} tables.
    """
    directory = FilePath(testCase.mktemp())
    directory.makedirs()
    code, minted = await run(
        [tool("meshproxy", "the meshproxy package"), "ca", "token", identity, "--ca", caDir.path, "--ttl", "5m"]
    )
    testCase.assertEqual(code, 0, minted)
    token = directory.child("join.token")
    token.setContent(minted)
    proxy = Proxy(
        testCase,
        f'[proxy]\nidentity = "{identity}"\ntrust_anchors = "{caDir.child("ca.pem").path}"\n\n'
        f'[identity]\nissuer = "127.0.0.1:{issuerPort}"\nissuer_identity = "identity.mesh.local"\n'
        f'token_file = "{token.path}"\n{listeners}',
    )
    # Temporary files, if the proxy made any, land where the checks for
    # written keys look.
    proxy.environment["TMPDIR"] = directory.path
    return proxy


async def echoMesh(
    testCase: TestCase, caDir: FilePath, issuerPort: int, app: int, inbound: int, outbound: int
) -> tuple[Proxy, Proxy]:
    """
    Two proxies (not started) with certificates from the issuer on
    C{issuerPort}: C{web.mesh.local}, whose inbound listener on C{inbound}
    is in front of the application on C{app}, and C{client.mesh.local},
    whose upstream listener on C{outbound} relays (opaque) to it over mTLS.
    """
    server = await identityProxy(
        testCase,
        caDir,
        issuerPort,
        "web.mesh.local",
        f'\n[[inbound]]\nlisten = "tcp:{inbound}:interface=127.0.0.1"\napp = "127.0.0.1:{app}"\n',
    )
    client = await identityProxy(
        testCase,
        caDir,
        issuerPort,
        "client.mesh.local",
        f'\n[[upstreams]]\nlisten = "tcp:{outbound}:interface=127.0.0.1"\nservice = "web"\n\n'
        f'[services.web]\nopaque = true\n'
        f'endpoints = [{{ address = "127.0.0.1:{inbound}", identity = "web.mesh.local" }}]\n',
    )
    return server, client


def privateKeysWritten(directory: FilePath, since: float, but: FilePath) -> list[str]:
    """
    The files below C{directory}, other than those below C{but}, changed
    since C{since} and holding a PEM private key.
    """
    found = []
    for path in directory.walk():
        if path.isfile() and not path.path.startswith(but.path + os.sep) and path.getModificationTime() >= since:
            if b"PRIVATE KEY" in path.getContent():
                found.append(path.path)
    return found
