"""
Tests for the issuer: the issuing policy (L{meshproxy.identity.issuer.Issuer}),
the certify wire format (L{meshproxy.identity.certify}), the HTTPS site over
in-memory TLS, the configuration and command lines, and real
C{twistd -n meshproxy-identity} processes driven by C{curl} and C{openssl}.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import re
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.cli import main
from meshproxy.config import ConfigError
from meshproxy.identity import issuer as issuing
from meshproxy.identity import tap
from meshproxy.identity.ca import CertificateAuthority, _leaf, _sign, initialize
from meshproxy.identity.certify import (
    Issued,
    MalformedMessage,
    decodeError,
    decodeRequest,
    decodeResponse,
    encodeError,
    encodeRequest,
    encodeResponse,
    makeCSR,
    makeKey,
)
from meshproxy.identity.config import load
from meshproxy.identity.issuer import Issuer, IssuerMetrics, Rejected, issuerSite, issuerTLS
from meshproxy.identity.tokens import mintToken, verifyToken
from meshproxy.readiness import Readiness

from .realprocess import _Collector, freePort, run, tool

#: The time the policy tests decide at: 2027-01-15T08:00:00Z.
NOW = 1_800_000_000.0
DAY = 86400.0


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def csrWith(key, names: list[x509.GeneralName] | None, commonName: str | None = None) -> bytes:
    """
    A CSR of any shape, signed by C{key}: C{names} as the subjectAltName
    (none if L{None}), C{commonName} as the subject's CN.
    """
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, commonName)] if commonName else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signingHash = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, signingHash).public_bytes(serialization.Encoding.PEM)


def csrDER(key, identity: str) -> bytes:
    return x509.load_pem_x509_csr(makeCSR(key, identity)).public_bytes(serialization.Encoding.DER)


def csrPEM(der: bytes) -> bytes:
    """
    PEM armour around any bytes, parseable or not.
    """
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE REQUEST-----\n"


def tamperedCSR(key, identity: str) -> bytes:
    """
    A CSR whose signed content was changed after signing: still valid DER,
    but the signature no longer matches.
    """
    forged = identity.replace("web", "wec").encode()
    return csrPEM(csrDER(key, identity).replace(identity.encode(), forged))


def clientCertificate(
    authority: CertificateAuthority, identity: str, key, start: float, lifetime: float
) -> x509.Certificate:
    """
    A workload certificate made directly with the CA, as a renewal would
    present it; unlike L{CertificateAuthority.issue} this signs at any time,
    to make expired certificates.
    """
    return _leaf(
        identity,
        key.public_key(),
        authority.issuingCertificate,
        authority._issuingKey,
        utc(start),
        utc(start + lifetime),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )


#: One CSR for every example of a property test, so that each example mutates
#: the same bytes (an ECDSA signature's length varies with the key).
_FIXED_KEY = makeKey()
_FIXED_CSR = csrDER(_FIXED_KEY, "web.prod.mesh.local")


class IssuerTests(SynchronousTestCase):
    """
    Tests for L{Issuer}, the issuing policy, with time passed in.
    """

    identity = "web.prod.mesh.local"

    def setUp(self) -> None:
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", NOW - DAY)
        self.issuer = Issuer(self.authority, DAY)
        self.key = makeKey()

    def token(self, identity: str | None = None, now: float = NOW, lifetime: float = 3600) -> str:
        return mintToken(self.authority.tokenKey, identity or self.identity, now, lifetime)

    def assertRejected(
        self, reason: str, status: int, csr: bytes, token: str | None = None, chain=(), now: float = NOW
    ) -> Rejected:
        error = self.assertRaises(Rejected, self.issuer.certify, csr, token, list(chain), now)
        self.assertEqual((error.reason, error.status), (reason, status), error.detail)
        return error

    def assertChains(self, issued: Issued, identity: str, now: float) -> None:
        """
        C{issued} verifies against the trust anchors (C{ca.pem}) for both
        ends of mTLS, with the chain the issuer returned.
        """
        store = Store(x509.load_pem_x509_certificates(pem(*self.authority.anchors)))
        server = PolicyBuilder().store(store).time(utc(now)).build_server_verifier(DNSName(identity))
        self.assertEqual(server.verify(issued.certificate, list(issued.chain))[:2], [issued.certificate, *issued.chain])
        client = (
            PolicyBuilder()
            .store(store)
            .time(utc(now))
            .build_client_verifier()
            .verify(issued.certificate, list(issued.chain))
        )
        self.assertEqual(client.subjects, [x509.DNSName(identity)])

    def test_token(self) -> None:
        """
        A CSR with a join token for its name gets a certificate for that
        name and that key, valid for the configured lifetime from 20 seconds
        ago, with the intermediate as its chain.
        """
        issued = self.issuer.certify(makeCSR(self.key, self.identity), self.token(), [], NOW)
        leaf = issued.certificate
        self.assertEqual(issued.chain, (self.authority.issuingCertificate,))
        self.assertEqual(leaf.public_key(), self.key.public_key())
        self.assertEqual(leaf.subject.rfc4514_string(), f"CN={self.identity}")
        self.assertEqual(
            leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            ),
            [self.identity],
        )
        self.assertEqual(
            list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.assertEqual((leaf.not_valid_before_utc, leaf.not_valid_after_utc), (utc(NOW - 20), utc(NOW + DAY)))
        self.assertEqual(issued.expires, NOW + DAY)
        self.assertChains(issued, self.identity, NOW)
        self.assertChains(issued, self.identity, NOW - 19)

    def test_tokenWinsOverClientCertificate(self) -> None:
        """
        With a token, a client certificate is not looked at: a proxy holding
        a stale certificate can still start over with a new token.
        """
        other = initialize(FilePath(self.mktemp()), "mesh.local", NOW - DAY)
        stale = clientCertificate(other, "db.mesh.local", self.key, NOW - 2 * DAY, 60)
        issued = self.issuer.certify(makeCSR(self.key, self.identity), self.token(), [stale], NOW)
        self.assertChains(issued, self.identity, NOW)

    def test_renewal(self) -> None:
        """
        Without a token, a certificate this CA issued, valid now, renews
        itself, with or without the intermediate sent along, for a new key.
        """
        first = self.issuer.certify(makeCSR(self.key, self.identity), self.token(), [], NOW)
        later = NOW + 0.7 * DAY
        newKey = makeKey()
        for chain in ([first.certificate, *first.chain], [first.certificate]):
            renewed = self.issuer.certify(makeCSR(newKey, self.identity), None, chain, later)
            self.assertEqual(renewed.certificate.public_key(), newKey.public_key())
            self.assertEqual(renewed.expires, later + DAY)
            self.assertChains(renewed, self.identity, later)

    def test_identityMismatch(self) -> None:
        """
        A token for one name does not get a certificate for another.
        """
        error = self.assertRejected(
            issuing.IDENTITY_MISMATCH, 403, makeCSR(self.key, "db.prod.mesh.local"), self.token()
        )
        self.assertEqual(error.identity, "db.prod.mesh.local")
        self.assertIn(self.identity, error.detail)

    def test_moreThanOneName(self) -> None:
        names = [x509.DNSName(self.identity), x509.DNSName("db.prod.mesh.local")]
        self.assertRejected(issuing.BAD_CSR_NAMES, 400, csrWith(self.key, names, self.identity), self.token())

    def test_nonDNSNames(self) -> None:
        """
        URI (SPIFFE), IP address and email names are refused, alone or as
        the only name.
        """
        for name in [
            x509.UniformResourceIdentifier("spiffe://mesh.local/ns/prod/sa/web"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
            x509.RFC822Name("web@mesh.local"),
        ]:
            self.assertRejected(issuing.BAD_CSR_NAMES, 400, csrWith(self.key, [name]), self.token())

    def test_commonNameDiffers(self) -> None:
        csr = csrWith(self.key, [x509.DNSName(self.identity)], "db.prod.mesh.local")
        self.assertRejected(issuing.BAD_CSR_NAMES, 400, csr, self.token())

    def test_commonNameOptional(self) -> None:
        csr = csrWith(self.key, [x509.DNSName(self.identity)])
        self.assertChains(self.issuer.certify(csr, self.token(), [], NOW), self.identity, NOW)

    def test_noSubjectAltName(self) -> None:
        self.assertRejected(issuing.BAD_CSR_NAMES, 400, csrWith(self.key, None, self.identity), self.token())

    def test_notLowerCaseDNSName(self) -> None:
        csr = csrWith(self.key, [x509.DNSName("Web.Prod.mesh.local")])
        self.assertRejected(issuing.BAD_CSR_NAMES, 400, csr, self.token())

    def test_badCSRSignature(self) -> None:
        self.assertRejected(issuing.BAD_CSR_SIGNATURE, 400, tamperedCSR(self.key, self.identity), self.token())

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutatedCSR(self, data) -> None:
        """
        Whatever bytes of a CSR a client changes, the issuer answers with a
        refusal, never with an unexpected exception (a 500); and if it
        issues at all, the certificate is for what the key holder signed.
        """
        der = bytearray(_FIXED_CSR)
        for _ in range(data.draw(st.integers(1, 4))):
            der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
        try:
            issued = self.issuer.certify(csrPEM(bytes(der)), self.token(), [], NOW)
        except Rejected:
            return
        self.assertEqual(issued.certificate.public_key(), _FIXED_KEY.public_key())
        self.assertEqual(issued.certificate.subject.rfc4514_string(), f"CN={self.identity}")

    def test_malformedCSR(self) -> None:
        for garbage in [b"", b"hello", makeCSR(self.key, self.identity)[:200]]:
            self.assertRejected(issuing.MALFORMED_CSR, 400, garbage, self.token())

    def test_expiredToken(self) -> None:
        token = self.token(now=NOW - 3600, lifetime=3600)
        self.assertRejected("expired_token", 401, makeCSR(self.key, self.identity), token)

    def test_tamperedToken(self) -> None:
        version, payload, mac = self.token().split(".")
        forged = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
        self.assertRejected(
            "bad_token_signature", 401, makeCSR(self.key, self.identity), f"{version}.{payload}.{forged}"
        )

    def test_tokenOfAnotherCA(self) -> None:
        token = mintToken(bytes(32), self.identity, NOW, 3600)
        self.assertRejected("bad_token_signature", 401, makeCSR(self.key, self.identity), token)

    def test_malformedToken(self) -> None:
        self.assertRejected("malformed_token", 401, makeCSR(self.key, self.identity), "hello")

    def test_wrongKeyType(self) -> None:
        """
        Only ECDSA P-256 keys are certified: RSA, other curves and Ed25519
        are refused, even with a valid token.
        """
        for key in [
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec.generate_private_key(ec.SECP384R1()),
            ed25519.Ed25519PrivateKey.generate(),
        ]:
            error = self.assertRejected(
                issuing.WRONG_KEY_TYPE, 400, csrWith(key, [x509.DNSName(self.identity)], self.identity), self.token()
            )
            self.assertIn("P-256", error.detail)

    def test_noCredentials(self) -> None:
        self.assertRejected(issuing.NO_CREDENTIALS, 401, makeCSR(self.key, self.identity))

    def test_renewalCertificateOfAnotherCA(self) -> None:
        """
        A certificate from another CA, even for the same trust domain and
        name, does not renew.
        """
        other = initialize(FilePath(self.mktemp()), "mesh.local", NOW - DAY)
        foreign = clientCertificate(other, self.identity, self.key, NOW - 60, DAY)
        self.assertRejected(
            issuing.UNTRUSTED_CLIENT_CERTIFICATE,
            401,
            makeCSR(self.key, self.identity),
            chain=[foreign, other.issuingCertificate],
        )

    def test_renewalExpiredCertificate(self) -> None:
        expired = clientCertificate(self.authority, self.identity, self.key, NOW - 2 * DAY, DAY)
        error = self.assertRejected(
            issuing.EXPIRED_CLIENT_CERTIFICATE, 401, makeCSR(self.key, self.identity), chain=[expired]
        )
        self.assertIn("join token", error.detail)

    def test_renewalCertificateNotYetValid(self) -> None:
        early = clientCertificate(self.authority, self.identity, self.key, NOW + 60, DAY)
        self.assertRejected(issuing.EXPIRED_CLIENT_CERTIFICATE, 401, makeCSR(self.key, self.identity), chain=[early])

    def test_renewalForAnotherIdentity(self) -> None:
        """
        A valid certificate for one name does not renew another.
        """
        db = clientCertificate(self.authority, "db.prod.mesh.local", self.key, NOW - 60, DAY)
        self.assertRejected(issuing.IDENTITY_MISMATCH, 403, makeCSR(self.key, self.identity), chain=[db])

    def test_renewalCertificateWithTwoNames(self) -> None:
        """
        A client certificate under the anchors that names more than one
        identity (one this issuer would never make, say from another issuer
        sharing the anchors) proves none of them.
        """
        names = x509.SubjectAlternativeName([x509.DNSName(self.identity), x509.DNSName("db.prod.mesh.local")])
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        both = _sign(
            x509.Name([]),
            self.key.public_key(),
            self.authority.issuingCertificate,
            self.authority._issuingKey,
            utc(NOW - 60),
            utc(NOW + DAY),
            [(x509.BasicConstraints(ca=False, path_length=None), True), (usage, False), (names, True)],
        )
        error = self.assertRejected(
            issuing.UNTRUSTED_CLIENT_CERTIFICATE, 401, makeCSR(self.key, self.identity), chain=[both]
        )
        self.assertIn("not one DNS identity", error.detail)

    def test_renewalWithServerOnlyCertificate(self) -> None:
        """
        The issuer's own serving certificate (server authentication only)
        is no client credential.
        """
        self.assertRejected(
            issuing.UNTRUSTED_CLIENT_CERTIFICATE,
            401,
            makeCSR(self.key, self.authority.issuerIdentity),
            chain=[self.authority.servingCertificate],
        )

    def test_identityNotAllowed(self) -> None:
        """
        Even with a valid token, names outside the trust domain and the
        issuer's own name are refused.
        """
        for name in ["web.example.com", "identity.mesh.local"]:
            self.assertRejected(issuing.IDENTITY_NOT_ALLOWED, 403, makeCSR(self.key, name), self.token(name))

    def test_issuingCAExpired(self) -> None:
        later = self.authority.issuingCertificate.not_valid_after_utc.timestamp() + 1
        self.assertRejected(
            issuing.ISSUER_CA_INVALID, 503, makeCSR(self.key, self.identity), self.token(now=later), now=later
        )

    def test_everyReasonHasAStatus(self) -> None:
        self.assertTrue(all(400 <= status < 600 for status in issuing.REASONS.values()))


class CertifyMessageTests(SynchronousTestCase):
    """
    Tests for L{meshproxy.identity.certify}, the wire format and the
    client's half.
    """

    def setUp(self) -> None:
        self.key = makeKey()
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", NOW - DAY)

    def test_makeCSR(self) -> None:
        csr = x509.load_pem_x509_csr(makeCSR(self.key, "web.mesh.local"))
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(csr.public_key(), self.key.public_key())
        self.assertIsInstance(self.key.curve, ec.SECP256R1)
        self.assertEqual(csr.subject.rfc4514_string(), "CN=web.mesh.local")
        self.assertEqual(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            x509.SubjectAlternativeName([x509.DNSName("web.mesh.local")]),
        )

    def test_requestRoundTrip(self) -> None:
        csr = makeCSR(self.key, "web.mesh.local")
        self.assertEqual(decodeRequest(encodeRequest(csr, "mpt1.a.b")), (csr, "mpt1.a.b"))
        self.assertEqual(decodeRequest(encodeRequest(csr)), (csr, None))
        self.assertNotIn(b"token", encodeRequest(csr))

    def test_malformedRequests(self) -> None:
        for body in [
            b"",
            b"csr=1",
            b"[]",
            b'{"csr": 1}',
            b'{"token": "x"}',
            b'{"csr": "x", "token": 5}',
            b'{"csr": "x", "tokn": "y"}',
            b'{"csr": "\\u00e9"}',
            b"\xff",
        ]:
            self.assertRaises(MalformedMessage, decodeRequest, body)

    def issued(self, identity: str = "web.mesh.local", key=None) -> Issued:
        certificate = self.authority.issue(identity, (key or self.key).public_key(), NOW, DAY)
        return Issued(certificate, (self.authority.issuingCertificate,))

    def test_responseRoundTrip(self) -> None:
        issued = self.issued()
        self.assertEqual(decodeResponse(encodeResponse(issued), self.key, "web.mesh.local"), issued)
        self.assertEqual(json.loads(encodeResponse(issued))["expires"], int(NOW + DAY))

    def test_responseForAnotherKey(self) -> None:
        self.assertRaises(
            MalformedMessage, decodeResponse, encodeResponse(self.issued(key=makeKey())), self.key, "web.mesh.local"
        )

    def test_responseForAnotherName(self) -> None:
        self.assertRaises(
            MalformedMessage, decodeResponse, encodeResponse(self.issued("db.mesh.local")), self.key, "web.mesh.local"
        )

    def test_responseExpiresMismatch(self) -> None:
        body = json.loads(encodeResponse(self.issued()))
        body["expires"] += 1
        self.assertRaises(MalformedMessage, decodeResponse, json.dumps(body).encode(), self.key, "web.mesh.local")

    def test_malformedResponses(self) -> None:
        for body in [
            b"",
            b"{}",
            b'{"certificate": "x", "chain": [], "expires": 1}',
            b'{"certificate": 1, "chain": [], "expires": 1}',
        ]:
            self.assertRaises(MalformedMessage, decodeResponse, body, self.key, "web.mesh.local")

    def test_errors(self) -> None:
        self.assertEqual(decodeError(encodeError("expired_token", "too late")), "expired_token: too late")
        self.assertEqual(decodeError(b"<html>bad gateway</html>"), "<html>bad gateway</html>")


class _Client(Protocol):
    """
    Send one raw HTTP/1.1 request once TLS is up; keep what comes back.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class IssuerSiteTests(SynchronousTestCase):
    """
    Tests for L{issuerSite} and L{issuerTLS}: real twisted.web over real TLS
    (OpenSSL) in memory.  Certificates are made at the real time, since
    OpenSSL checks the server certificate against the system clock.
    """

    identity = "web.mesh.local"

    def setUp(self) -> None:
        self.now = time.time()
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", self.now)
        self.clock = Clock()
        self.clock.advance(self.now)
        self.metrics = IssuerMetrics(self.authority)
        self.site = issuerSite(Issuer(self.authority, DAY), self.metrics, Readiness(), self.clock)
        self.key = makeKey()

    def exchange(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        *,
        client=None,
        headers: bytes | None = None,
        alpn=None,
        **tls,
    ):
        """
        One request over a fresh TLS connection.

        @param client: (certificate chain, key) to present, if any.
        @param alpn: the protocols the client offers, if any.
        @param tls: more L{CertificateOptions} arguments for the client.
        @return: (status, headers, body), or L{None} if the connection
            ended without a response; and the client protocol.
        """
        if headers is None:
            headers = b"Content-Length: %d\r\n" % (len(body),)
        protocol = _Client(b"%s %s HTTP/1.1\r\nHost: identity.mesh.local\r\n%s\r\n%s" % (method, path, headers, body))
        if client is not None:
            chain, key = client
            tls.update(certificate=chain[0], extraCertChain=chain[1:], privateKey=key)
        trust = trustRootFromCertificates([Certificate.loadPEM(pem(*self.authority.anchors))])
        creator = optionsForClientTLS(
            "identity.mesh.local", trust, acceptableProtocols=alpn, extraCertificateOptions=tls
        )
        server = TLSMemoryBIOFactory(issuerTLS(self.authority), False, self.site, self.clock)
        clientFactory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: protocol), self.clock)
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(None), lambda: clientFactory.buildProtocol(None), clock=self.clock
        )
        pump.flush()
        if not protocol.received:
            return None, protocol
        head, _, content = protocol.received.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        parsed = {name.lower(): value for name, _, value in (field.partition(b": ") for field in fields)}
        return (int(status.split(b" ")[1]), parsed, content[: int(parsed[b"content-length"])]), protocol

    def certify(self, body: bytes, **kwargs):
        response, _ = self.exchange(b"POST", b"/v1/certify", body, **kwargs)
        return response

    def test_connectionCreator(self) -> None:
        verifyObject(IOpenSSLServerConnectionCreator, issuerTLS(self.authority))

    def test_token(self) -> None:
        """
        A first certificate for a join token, as JSON, logged once with the
        identity, serial and expiry, and counted.
        """
        token = mintToken(self.authority.tokenKey, self.identity, self.now, 600)
        with capturedLogs() as events:
            status, headers, body = self.certify(encodeRequest(makeCSR(self.key, self.identity), token))
        self.assertEqual((status, headers[b"content-type"]), (200, b"application/json"))
        issued = decodeResponse(body, self.key, self.identity)
        self.assertEqual(issued.chain, (self.authority.issuingCertificate,))
        (event,) = [e for e in events if e.get("identity")]
        self.assertEqual(event["identity"], self.identity)
        self.assertEqual(event["serial"], f"{issued.certificate.serial_number:x}")
        self.assertEqual(event["credential"], "join token")
        self.assertEqual(self.metrics.registry.get_sample_value("identity_issued_total"), 1.0)

    def test_renewalOverTLS(self) -> None:
        """
        The certificate a client presents in the TLS handshake renews it,
        whether it sends the intermediate along or not.
        """
        leaf = self.authority.issue(self.identity, self.key.public_key(), self.now, DAY)
        for chain in ([leaf, self.authority.issuingCertificate], [leaf]):
            newKey = makeKey()
            with capturedLogs() as events:
                status, _, body = self.certify(encodeRequest(makeCSR(newKey, self.identity)), client=(chain, self.key))
            self.assertEqual(status, 200, body)
            decodeResponse(body, newKey, self.identity)
            self.assertEqual([e["credential"] for e in events if e.get("identity")], ["renewal"])

    def test_foreignClientCertificate(self) -> None:
        """
        A client certificate of another CA does not break the handshake: the
        request is answered with the reason, and a token still works on the
        same connection.
        """
        other = initialize(FilePath(self.mktemp()), "mesh.local", self.now)
        foreign = other.issue(self.identity, self.key.public_key(), self.now, DAY)
        client = ([foreign, other.issuingCertificate], self.key)
        with capturedLogs() as events:
            status, _, body = self.certify(encodeRequest(makeCSR(self.key, self.identity)), client=client)
        self.assertEqual((status, json.loads(body)["error"]), (401, "untrusted_client_certificate"))
        (event,) = [e for e in events if e.get("reason")]
        self.assertEqual((event["identity"], event["reason"]), (self.identity, "untrusted_client_certificate"))
        token = mintToken(self.authority.tokenKey, self.identity, self.now, 600)
        status, _, _ = self.certify(encodeRequest(makeCSR(self.key, self.identity), token), client=client)
        self.assertEqual(status, 200)
        self.assertEqual(
            self.metrics.registry.get_sample_value(
                "identity_rejected_total", {"reason": "untrusted_client_certificate"}
            ),
            1.0,
        )

    def test_noCredentials(self) -> None:
        status, _, body = self.certify(encodeRequest(makeCSR(self.key, self.identity)))
        self.assertEqual((status, json.loads(body)["error"]), (401, "no_credentials"))

    def test_malformedRequest(self) -> None:
        status, _, body = self.certify(b"csr=hello")
        self.assertEqual((status, json.loads(body)["error"]), (400, "malformed_request"))

    def test_tooLarge(self) -> None:
        """
        A body over 64 KiB is not kept, and is answered 413, whether its
        length was announced or chunked.
        """
        big = b"x" * (issuing.MAX_BODY + 1)
        status, _, body = self.certify(big)
        self.assertEqual((status, json.loads(body)["error"]), (413, "request_too_large"))
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        status, _, _ = self.certify(chunked, headers=b"Transfer-Encoding: chunked\r\n")
        self.assertEqual(status, 413)
        self.assertEqual(
            self.metrics.registry.get_sample_value("identity_rejected_total", {"reason": "request_too_large"}), 2.0
        )

    def test_wrongMethod(self) -> None:
        (status, headers, _), _ = self.exchange(b"GET", b"/v1/certify")
        self.assertEqual((status, headers[b"allow"]), (405, b"POST"))

    def test_notFound(self) -> None:
        for path in [b"/v1/other", b"/v2/certify", b"/v1/certify/x", b"/"]:
            (status, _, _), _ = self.exchange(b"POST", path)
            self.assertEqual(status, 404, path)

    def test_probesAndMetrics(self) -> None:
        """
        C{/live}, C{/ready} and C{/metrics} answer as the proxy's admin
        server does, with the issuer's own metrics.
        """
        (status, _, body), _ = self.exchange(b"GET", b"/live")
        self.assertEqual((status, body), (200, b"live\n"))
        (status, _, body), _ = self.exchange(b"GET", b"/ready")
        self.assertEqual((status, body), (200, b"ready\n"))
        (status, _, body), _ = self.exchange(b"GET", b"/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b'identity_rejected_total{reason="expired_token"} 0.0', body)
        self.assertIn(b"identity_issued_total 0.0", body)
        self.assertIn(b"\nidentity_issuer_ca_expiration_timestamp_seconds ", body)
        self.assertEqual(
            self.metrics.registry.get_sample_value("identity_issuer_ca_expiration_timestamp_seconds"),
            self.authority.issuingCertificate.not_valid_after_utc.timestamp(),
        )

    def test_tls12Refused(self) -> None:
        """
        A client that cannot speak TLS 1.3 gets no connection.
        """
        response, protocol = self.exchange(b"GET", b"/live", lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        self.assertIsNone(response)
        self.assertTrue(protocol.lost.check(SSL.Error))

    def test_http11Negotiated(self) -> None:
        """
        A client offering HTTP/2 in ALPN gets HTTP/1.1 (see
        L{issuing._IssuerSite.acceptableProtocols}).
        """
        (status, _, _), protocol = self.exchange(b"GET", b"/live", alpn=[b"h2", b"http/1.1"])
        self.assertEqual(status, 200)
        self.assertEqual(protocol.transport.negotiatedProtocol, b"http/1.1")


_CONFIG = '[issuer]\nlisten = "tcp:{port}:interface=127.0.0.1"\nca_dir = "{ca}"\ncert_lifetime = "{lifetime}"\n'


class ConfigTests(SynchronousTestCase):
    """
    Tests for L{meshproxy.identity.config} and the C{twistd} options of
    L{meshproxy.identity.tap}.
    """

    def setUp(self) -> None:
        self.directory = FilePath(self.mktemp())
        self.authority = initialize(self.directory.child("ca"), "mesh.local", NOW)
        self.path = self.directory.child("identity.toml")

    def write(self, text: str) -> FilePath:
        self.path.setContent(text.encode())
        return self.path

    def test_valid(self) -> None:
        """
        C{ca_dir} is relative to the configuration file and loaded.
        """
        config = load(self.write(_CONFIG.format(port=8443, ca="ca", lifetime="1h")))
        self.assertEqual((config.listen, config.cert_lifetime), ("tcp:8443:interface=127.0.0.1", 3600.0))
        self.assertEqual(config.authority.anchors, self.authority.anchors)

    def test_defaults(self) -> None:
        config = load(self.write('[issuer]\nca_dir = "ca"\n'))
        self.assertEqual((config.listen, config.cert_lifetime), ("tcp:8443:interface=127.0.0.1", 86400.0))

    def test_everyProblem(self) -> None:
        """
        Every problem is reported at once, naming the file and the key.
        """
        self.write('[issuer]\nlisten = "nope:1"\nca_dir = "missing"\ncert_lifetime = "10s"\nlifetime = "1h"\n[proxy]\n')
        error = self.assertRaises(ConfigError, load, self.path)
        keys = [line.split(": ")[1] for line in error.errors]
        self.assertEqual(keys, ["proxy", "issuer.listen", "issuer.ca_dir", "issuer.cert_lifetime", "issuer.lifetime"])
        self.assertTrue(all(line.startswith(self.path.path + ": ") for line in error.errors))
        self.assertIn("missing/ca.toml", error.errors[2])

    def test_missingIssuer(self) -> None:
        error = self.assertRaises(ConfigError, load, self.write("x = 1\n"))
        self.assertEqual(
            error.errors, [f"{self.path.path}: issuer: missing: expected a table", f"{self.path.path}: x: unknown key"]
        )

    def test_notTOML(self) -> None:
        error = self.assertRaises(ConfigError, load, self.write("[issuer"))
        self.assertIn("not valid TOML", str(error))

    def test_tapExitsWithProblems(self) -> None:
        """
        C{twistd meshproxy-identity} with a bad file exits with status 1 and
        the problems, not a usage message or a traceback.
        """
        self.write('[issuer]\nca_dir = "missing"\n')
        error = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--config", self.path.path])
        self.assertIsInstance(error.code, str)
        self.assertIn("issuer.ca_dir", error.code)


class CommandLineTests(SynchronousTestCase):
    """
    Tests for C{meshproxy ca init} and C{meshproxy ca token}.
    """

    def meshproxy(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_initAndToken(self) -> None:
        """
        C{ca token} prints only the token, which the CA's issuers accept for
        the identity until the TTL has passed.
        """
        directory = FilePath(self.mktemp())
        status, out, err = self.meshproxy("ca", "init", directory.path, "--trust-domain", "prod.example")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("ca.pem", out)
        authority = CertificateAuthority.load(directory)
        self.assertEqual(authority.trustDomain, "prod.example")
        before = time.time()
        status, out, err = self.meshproxy("ca", "token", "web.prod.example", "--ca", directory.path, "--ttl", "10m")
        self.assertEqual((status, err), (0, ""))
        token = out.rstrip("\n")
        self.assertEqual(out, token + "\n")
        self.assertEqual(verifyToken(authority.tokenKey, token, before), "web.prod.example")
        self.assertRaises(Exception, verifyToken, authority.tokenKey, token, before + 601)

    def test_refusals(self) -> None:
        directory = FilePath(self.mktemp())
        self.assertEqual(self.meshproxy("ca", "init", directory.path)[0], 0)
        status, out, err = self.meshproxy("ca", "init", directory.path)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("refusing to overwrite", err)
        for identity in ["identity.mesh.local", "web.example.com"]:
            status, out, err = self.meshproxy("ca", "token", identity, "--ca", directory.path)
            self.assertEqual((status, out), (1, ""))
            self.assertIn(repr(identity), err)
        status, out, err = self.meshproxy("ca", "token", "web.mesh.local", "--ca", self.mktemp())
        self.assertEqual((status, out), (1, ""))
        self.assertIn("cannot read", err)


@implementer(IPolicyForHTTPS)
class _IssuerPolicy:
    """
    Connect to the issuer at any address, verifying that it is
    C{identity.<trust domain>} under the CA's anchors, as a proxy does.
    """

    def __init__(self, authority: CertificateAuthority) -> None:
        trust = trustRootFromCertificates([Certificate.loadPEM(pem(*authority.anchors))])
        self._creator = optionsForClientTLS(authority.issuerIdentity, trust)

    def creatorForNetloc(self, hostname, port):
        return self._creator


class IssuerProcess:
    """
    A C{twistd -n meshproxy-identity} process serving the CA in C{caDir}.
    """

    def __init__(self, testCase: TestCase, caDir: FilePath, config: str | None = None) -> None:
        self.port = freePort()
        directory = FilePath(testCase.mktemp())
        directory.makedirs()
        self.config = directory.child("identity.toml")
        self.config.setContent((config or _CONFIG.format(port=self.port, ca=caDir.path, lifetime="1h")).encode())
        self.caDir = caDir
        self.authority = CertificateAuthority.load(caDir)
        self.collector = _Collector()
        self.process = None
        testCase.addCleanup(self.stop)

    @property
    def output(self) -> str:
        return self.collector.output.decode(errors="replace")

    def argv(self) -> list[str]:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return [twistd, "--nodaemon", "--pidfile=", "--logfile=-", "meshproxy-identity", "--config", self.config.path]

    def spawn(self) -> Deferred[int]:
        argv = self.argv()
        self.process = reactor.spawnProcess(self.collector, argv[0], argv, env=os.environ)
        return self.collector.ended

    async def start(self, timeout: float = 15.0) -> IssuerProcess:
        """
        Start the process and wait until its C{/ready} answers 200 over TLS.
        """
        self.spawn()
        agent = Agent(reactor, contextFactory=_IssuerPolicy(self.authority))
        deadline = reactor.seconds() + timeout
        while True:
            if self.collector.ended.called:
                raise AssertionError(f"the issuer exited during start:\n{self.output}")
            try:
                response = await agent.request(b"GET", b"https://127.0.0.1:%d/ready" % (self.port,))
                await readBody(response)
                if response.code == 200:
                    return self
            except Exception:
                pass
            if reactor.seconds() > deadline:
                raise AssertionError(f"the issuer is not ready after {timeout}s:\n{self.output}")
            await deferLater(reactor, 0.05, lambda: None)

    def stop(self) -> Deferred | None:
        if self.process is None or self.collector.ended.called:
            return None
        self.process.signalProcess("TERM")
        return self.collector.ended


class IssuerProcessTests(TestCase):
    """
    The issuer as operators run it, driven by C{meshproxy}, C{curl} and
    C{openssl}.
    """

    identity = "web.prod.mesh.local"

    async def makeCA(self) -> FilePath:
        directory = FilePath(self.mktemp())
        code, output = await run(
            [tool("meshproxy", "the meshproxy package (pip install .)"), "ca", "init", directory.path]
        )
        self.assertEqual(code, 0, output)
        return directory

    async def token(self, caDir: FilePath) -> str:
        code, output = await run(
            [
                tool("meshproxy", "the meshproxy package"),
                "ca",
                "token",
                self.identity,
                "--ca",
                caDir.path,
                "--ttl",
                "5m",
            ]
        )
        self.assertEqual(code, 0, output)
        return output.decode().strip()

    async def curl(self, issuer: IssuerProcess, body: bytes, *options: str) -> tuple[int, bytes, str]:
        """
        POST C{body} to the issuer's C{/v1/certify} with curl, trusting only
        C{ca.pem} and expecting the issuer's name, as a proxy would.

        @return: the status, the body and curl's verbose log.
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        work.child("body.json").setContent(body)
        response = work.child("response.json")
        code, output = await run(
            [
                tool("curl", "curl"),
                "--silent",
                "--show-error",
                "--verbose",
                "--cacert",
                issuer.caDir.child("ca.pem").path,
                "--resolve",
                f"identity.mesh.local:{issuer.port}:127.0.0.1",
                "--output",
                response.path,
                "--data",
                "@" + work.child("body.json").path,
                *options,
                f"https://identity.mesh.local:{issuer.port}/v1/certify",
            ]
        )
        log = output.decode(errors="replace")
        self.assertEqual(code, 0, log)
        self.assertIn("SSL connection using TLSv1.3", log)
        status = re.search(r"^< HTTP/1.1 (\d{3})", log, re.MULTILINE)
        return int(status.group(1)), response.getContent(), log

    def credentials(self, issued: Issued, key) -> list[str]:
        """
        curl options presenting C{issued} (with its chain) and C{key}.
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        work.child("cert.pem").setContent(pem(issued.certificate, *issued.chain))
        work.child("key.pem").setContent(keyPEM(key))
        return ["--cert", work.child("cert.pem").path, "--key", work.child("key.pem").path]

    async def assertVerifies(self, caDir: FilePath, issued: Issued) -> None:
        """
        C{openssl verify} accepts C{issued} under C{ca.pem}, for both TLS
        client and server use.
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        work.child("leaf.pem").setContent(pem(issued.certificate))
        work.child("chain.pem").setContent(pem(*issued.chain))
        for purpose in ["sslclient", "sslserver"]:
            code, output = await run(
                [
                    tool("openssl", "openssl"),
                    "verify",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    caDir.child("ca.pem").path,
                    "-untrusted",
                    work.child("chain.pem").path,
                    work.child("leaf.pem").path,
                ]
            )
            self.assertEqual((code, output.decode().strip()), (0, f"{work.child('leaf.pem').path}: OK"))

    async def test_certifyAndRenewWithCurl(self) -> None:
        """
        With a token from C{meshproxy ca token}, curl gets a certificate that
        OpenSSL verifies under C{ca.pem}; presenting it (C{--cert/--key})
        renews it; a request with neither is refused with the reason.
        """
        caDir = await self.makeCA()
        issuer = await IssuerProcess(self, caDir).start()
        key = makeKey()
        status, body, log = await self.curl(issuer, encodeRequest(makeCSR(key, self.identity), await self.token(caDir)))
        self.assertEqual(status, 200, log)
        issued = decodeResponse(body, key, self.identity)
        await self.assertVerifies(caDir, issued)

        newKey = makeKey()
        status, body, log = await self.curl(
            issuer, encodeRequest(makeCSR(newKey, self.identity)), *self.credentials(issued, key)
        )
        self.assertEqual(status, 200, log)
        renewed = decodeResponse(body, newKey, self.identity)
        await self.assertVerifies(caDir, renewed)
        self.assertNotEqual(renewed.certificate.serial_number, issued.certificate.serial_number)

        status, body, log = await self.curl(issuer, encodeRequest(makeCSR(newKey, self.identity)))
        self.assertEqual((status, json.loads(body)["error"]), (401, "no_credentials"))
        self.assertIn(f"Issued a certificate for {self.identity}", issuer.output)
        self.assertIn(f"serial {renewed.certificate.serial_number:x}", issuer.output)
        self.assertIn(f"Refused a certificate for {self.identity} to 127.0.0.1:", issuer.output)

    async def test_replicasShareACADirectory(self) -> None:
        """
        Two issuers on one CA directory both issue, and each renews what the
        other issued: they share no state beyond the directory.
        """
        caDir = await self.makeCA()
        first, second = IssuerProcess(self, caDir), IssuerProcess(self, caDir)
        await first.start()
        await second.start()
        key = makeKey()
        token = await self.token(caDir)
        issued = {}
        for replica in (first, second):
            status, body, log = await self.curl(replica, encodeRequest(makeCSR(key, self.identity), token))
            self.assertEqual(status, 200, log)
            issued[replica] = decodeResponse(body, key, self.identity)
        for renewer, holder in ((first, second), (second, first)):
            status, body, log = await self.curl(
                renewer, encodeRequest(makeCSR(key, self.identity)), *self.credentials(issued[holder], key)
            )
            self.assertEqual(status, 200, log)

    async def test_stopsCleanly(self) -> None:
        """
        SIGTERM stops the issuer with exit status 0 and its whole log
        written, to twistd's last line: the log goes through
        L{meshproxy.logsink}, whose queue is flushed at exit.
        """
        issuer = await IssuerProcess(self, await self.makeCA()).start()
        self.assertEqual(await issuer.stop(), 0, issuer.output)
        self.assertTrue(issuer.output.endswith("Server Shut Down.\n"), issuer.output[-500:])

    async def test_tls13Only(self) -> None:
        """
        C{openssl s_client} cannot connect with TLS 1.2; with TLS 1.3 it
        verifies the issuer as C{identity.mesh.local} under C{ca.pem}.
        """
        caDir = await self.makeCA()
        issuer = await IssuerProcess(self, caDir).start()
        common = [
            tool("openssl", "openssl"),
            "s_client",
            "-connect",
            f"127.0.0.1:{issuer.port}",
            "-servername",
            "identity.mesh.local",
            "-verify_hostname",
            "identity.mesh.local",
            "-verify_return_error",
            "-CAfile",
            caDir.child("ca.pem").path,
        ]
        code, output = await run([*common, "-tls1_2"], stdin=b"")
        self.assertNotEqual(code, 0, output)
        self.assertIn(b"alert protocol version", output)
        code, output = await run([*common, "-tls1_3"], stdin=b"")
        self.assertEqual(code, 0, output)
        self.assertIn(b"Verify return code: 0 (ok)", output)
        self.assertIn(b"TLSv1.3", output)

    async def test_badConfig(self) -> None:
        """
        A configuration naming no CA directory stops the issuer at once with
        status 1 and the reason, without a traceback.
        """
        caDir = await self.makeCA()
        issuer = IssuerProcess(self, caDir, '[issuer]\nca_dir = "nowhere"\n')
        code = await issuer.spawn()
        self.assertEqual(code, 1, issuer.output)
        self.assertIn("issuer.ca_dir: not a usable CA directory", issuer.output)
        self.assertNotIn("Traceback", issuer.output)

    async def test_pluginListed(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        code, output = await run([twistd, "--help"])
        self.assertEqual(code, 0, output)
        self.assertRegex(output.decode(), r"\n\s+meshproxy-identity\s+The meshproxy identity issuer")
