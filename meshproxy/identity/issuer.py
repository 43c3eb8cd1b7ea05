# -*- test-case-name: tests.test_identity_issuer -*-
"""
The issuer: who may have a certificate for which name, and the HTTPS service
that answers proxies asking for one.

The policy, L{Issuer}, is sans-I/O: a CSR, a join token or a client
certificate chain, and the time go in; a certificate comes out, or a
L{Rejected} naming the reason.  Around it, a small twisted.web site serves:

C{POST /v1/certify}
    Body C{{"csr": "<PEM>", "token": "<join token>"}} (see
    L{meshproxy.identity.certify}).  Without C{token} the request renews:
    the client must present, over TLS, a certificate this CA issued that is
    valid now.  200 answers C{{"certificate": "<leaf PEM>", "chain":
    ["<intermediate PEM>"], "expires": <unix seconds>}}.  A refusal answers
    C{{"error": "<reason>", "detail": "<sentence>"}}: 400 for a request or
    CSR that is wrong whoever sends it, 401 for missing or bad credentials,
    403 for good credentials that do not cover the name asked for, 413 for
    a body over 64 KiB, 503 when the issuing CA itself is not valid now.
    Each issuance and each refusal is logged once, with the identity.

C{GET /metrics}
    C{identity_issued_total}, C{identity_rejected_total{reason}} and
    C{identity_issuer_ca_expiration_timestamp_seconds}, from a registry of
    this issuer's own.

C{GET /live}, C{GET /ready}
    As the proxy's admin server answers them.

The listener speaks TLS 1.3 only, with the issuer's certificate for
C{identity.<trust domain>}.  It asks every client for a certificate but
requires none, since a first request carries a join token instead.  The TLS
layer accepts whatever certificate is presented, having checked only that
the client holds its private key (TLS does that whatever the verify
callback says); L{Issuer} then verifies the chain with C{cryptography}
against the trust anchors at the current time.  Verifying in one place,
after the handshake, means a stale or foreign certificate gets a clear 401
with a reason and a log line rather than a bare handshake alert, and it
cannot spoil a request that authenticates with a token.  Nothing else may
trust the peer certificate of these connections.

Nothing from a CSR but its public key and its one checked name reaches the
certificate: requested extensions (a CA flag, other names, key usages) are
ignored, never copied.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.web.http import BAD_REQUEST, FORBIDDEN, OK, REQUEST_ENTITY_TOO_LARGE, SERVICE_UNAVAILABLE, UNAUTHORIZED
from twisted.web.server import Request, Site
from zope.interface import implementer

from ..admin import AdminResource, AdminRoot, QuietSite, adminRoot
from ..config import isDNSName
from ..readiness import Readiness
from . import tokens
from .ca import CAError, CertificateAuthority
from .certify import Issued, MalformedMessage, decodeRequest, encodeError, encodeResponse

__all__ = [
    "BAD_CSR_NAMES",
    "BAD_CSR_SIGNATURE",
    "EXPIRED_CLIENT_CERTIFICATE",
    "IDENTITY_MISMATCH",
    "IDENTITY_NOT_ALLOWED",
    "ISSUER_CA_INVALID",
    "IssuerMetrics",
    "Issuer",
    "MALFORMED_CSR",
    "MALFORMED_REQUEST",
    "MAX_BODY",
    "NO_CREDENTIALS",
    "REASONS",
    "REQUEST_TOO_LARGE",
    "Rejected",
    "UNTRUSTED_CLIENT_CERTIFICATE",
    "WRONG_KEY_TYPE",
    "issuerSite",
    "issuerTLS",
]

#: The largest request body read: a CSR and a token take about 1 KiB.
MAX_BODY = 64 * 1024

MALFORMED_REQUEST = "malformed_request"
REQUEST_TOO_LARGE = "request_too_large"
MALFORMED_CSR = "malformed_csr"
WRONG_KEY_TYPE = "wrong_key_type"
BAD_CSR_SIGNATURE = "bad_csr_signature"
BAD_CSR_NAMES = "bad_csr_names"
NO_CREDENTIALS = "no_credentials"
UNTRUSTED_CLIENT_CERTIFICATE = "untrusted_client_certificate"
EXPIRED_CLIENT_CERTIFICATE = "expired_client_certificate"
IDENTITY_MISMATCH = "identity_mismatch"
IDENTITY_NOT_ALLOWED = "identity_not_allowed"
ISSUER_CA_INVALID = "issuer_ca_invalid"

#: Every reason a certify request is refused for, with its HTTP status.
REASONS = {
    MALFORMED_REQUEST: BAD_REQUEST,
    REQUEST_TOO_LARGE: REQUEST_ENTITY_TOO_LARGE,
    MALFORMED_CSR: BAD_REQUEST,
    WRONG_KEY_TYPE: BAD_REQUEST,
    BAD_CSR_SIGNATURE: BAD_REQUEST,
    BAD_CSR_NAMES: BAD_REQUEST,
    tokens.MALFORMED: UNAUTHORIZED,
    tokens.UNSUPPORTED_VERSION: UNAUTHORIZED,
    tokens.BAD_SIGNATURE: UNAUTHORIZED,
    tokens.EXPIRED: UNAUTHORIZED,
    NO_CREDENTIALS: UNAUTHORIZED,
    UNTRUSTED_CLIENT_CERTIFICATE: UNAUTHORIZED,
    EXPIRED_CLIENT_CERTIFICATE: UNAUTHORIZED,
    IDENTITY_MISMATCH: FORBIDDEN,
    IDENTITY_NOT_ALLOWED: FORBIDDEN,
    ISSUER_CA_INVALID: SERVICE_UNAVAILABLE,
}

_JSON = b"application/json"


class Rejected(Exception):
    """
    A certify request is refused.

    @ivar reason: one of L{REASONS}: a fixed word for clients and metrics.
    @ivar detail: a sentence for the operator.
    @ivar identity: the name the CSR asked for, if it got that far.
    """

    def __init__(self, reason: str, detail: str, identity: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.identity = identity

    @property
    def status(self) -> int:
        """
        The HTTP status of this refusal.
        """
        return REASONS[self.reason]


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, timezone.utc)


def _describeKey(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__


def _requested(pem: bytes) -> tuple[str, ec.EllipticCurvePublicKey]:
    """
    The one name a CSR asks for and its public key, once the CSR is
    well-formed, self-signed and of the one shape the issuer signs.

    @raise Rejected: if it is not.
    """
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, x509.InvalidVersion) as e:
        raise Rejected(MALFORMED_CSR, f"not a PEM certificate signing request: {e}") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise Rejected(WRONG_KEY_TYPE, f"the CSR's key is not supported: {e}") from None
    # Only P-256: the key every meshproxy makes and every TLS stack of the
    # mesh verifies.  Another type would be signed and then fail handshakes.
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise Rejected(WRONG_KEY_TYPE, f"expected an ECDSA P-256 key, got {_describeKey(key)}")
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm as e:
        raise Rejected(BAD_CSR_SIGNATURE, f"the CSR's signature algorithm is not supported: {e}") from None
    if not valid:
        raise Rejected(BAD_CSR_SIGNATURE, "the CSR's signature does not verify with its key")
    try:
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        commonNames = [attribute.value for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except x509.ExtensionNotFound:
        raise Rejected(BAD_CSR_NAMES, "the CSR has no subjectAltName with the identity") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise Rejected(MALFORMED_CSR, f"the CSR's extensions or subject cannot be read: {e}") from None
    if len(names) != 1:
        raise Rejected(BAD_CSR_NAMES, f"expected exactly one subjectAltName, got {len(names)}")
    (name,) = names
    if not isinstance(name, x509.DNSName):
        raise Rejected(BAD_CSR_NAMES, f"expected a DNS name, got {name}")
    identity = name.value
    if not isDNSName(identity):
        raise Rejected(BAD_CSR_NAMES, f"expected a lower-case DNS name, got {identity!r}")
    if commonNames and commonNames != [identity]:
        raise Rejected(BAD_CSR_NAMES, f"the common name {commonNames} differs from the DNS name {identity!r}", identity)
    return identity, key


class Issuer:
    """
    The issuing policy: a CSR for one DNS name gets a certificate for that
    name if the request carries a join token for it, or, to renew, comes
    with a client certificate for it that chains to the trust anchors and
    is valid now.

    @ivar _authority: the CA that signs.
    @ivar _lifetime: the lifetime of the certificates issued, in seconds.
    @ivar _anchors: the trust anchors as a verification store, built once.
    """

    def __init__(self, authority: CertificateAuthority, lifetime: float) -> None:
        self._authority = authority
        self._lifetime = lifetime
        self._anchors = Store(list(authority.anchors))

    def certify(self, csr: bytes, token: str | None, clientChain: Sequence[x509.Certificate], now: float) -> Issued:
        """
        Decide on one certify request and, if it is granted, sign.

        @param csr: the PEM certificate signing request.
        @param token: the join token, or L{None} to renew.
        @param clientChain: the certificates the client presented over TLS,
            leaf first, not verified yet; empty if it presented none.  Only
            consulted without a token.
        @param now: the current time in seconds since the epoch.

        @return: the certificate and its chain.

        @raise Rejected: if the request is refused.
        """
        identity, key = _requested(csr)
        if token is not None:
            try:
                granted = tokens.verifyToken(self._authority.tokenKey, token, now)
            except tokens.TokenError as e:
                raise Rejected(e.reason, e.detail, identity) from None
            credential = "join token"
        elif clientChain:
            granted = self._clientIdentity(clientChain, now, identity)
            credential = "client certificate"
        else:
            raise Rejected(NO_CREDENTIALS, "send a join token, or renew with a client certificate", identity)
        if granted != identity:
            raise Rejected(
                IDENTITY_MISMATCH, f"the CSR asks for {identity!r} but the {credential} is for {granted!r}", identity
            )
        try:
            certificate = self._authority.issue(identity, key, now, self._lifetime)
        except ValueError as e:
            raise Rejected(IDENTITY_NOT_ALLOWED, str(e), identity) from None
        except CAError as e:
            raise Rejected(ISSUER_CA_INVALID, str(e), identity) from None
        return Issued(certificate, (self._authority.issuingCertificate,))

    def _clientIdentity(self, chain: Sequence[x509.Certificate], now: float, identity: str) -> str:
        """
        The identity a client certificate proves, once verified: valid at
        C{now}, for client authentication, chaining to the trust anchors.

        The issuer's own intermediate is offered to the verifier besides the
        ones the client sent, so a client that presents only its leaf can
        renew too.

        @raise Rejected: if the chain does not verify or names anything but
            one DNS name.
        """
        leaf, *intermediates = chain
        at = _utc(now)
        if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
            raise Rejected(
                EXPIRED_CLIENT_CERTIFICATE,
                f"the client certificate is valid from {leaf.not_valid_before_utc.isoformat()} "
                f"until {leaf.not_valid_after_utc.isoformat()}: get a new join token",
                identity,
            )
        verifier = PolicyBuilder().store(self._anchors).time(at).build_client_verifier()
        try:
            verified = verifier.verify(leaf, [*intermediates, self._authority.issuingCertificate])
        except VerificationError as e:
            raise Rejected(
                UNTRUSTED_CLIENT_CERTIFICATE,
                f"the client certificate does not chain to the trust anchors: {e}",
                identity,
            ) from None
        names = verified.subjects or []
        if len(names) != 1 or not isinstance(names[0], x509.DNSName):
            raise Rejected(
                UNTRUSTED_CLIENT_CERTIFICATE, f"the client certificate names {names}, not one DNS identity", identity
            )
        return names[0].value


def _acceptForLater(connection: SSL.Connection, certificate: object, error: int, depth: int, ok: int) -> bool:
    """
    Accept any client certificate during the handshake: L{Issuer} verifies
    it afterwards (see the module docstring).
    """
    return True


@implementer(IOpenSSLServerConnectionCreator)
class _IssuerTLS:
    """
    The issuer's TLS server side.

    @ivar _context: the one context every connection shares, complete
        before the first connection uses it.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


def issuerTLS(authority: CertificateAuthority) -> IOpenSSLServerConnectionCreator:
    """
    TLS 1.3 only, serving C{issuer.pem}, asking for (not requiring) a
    client certificate: the anchors are named in the certificate request,
    so a client holding several certificates picks one of this mesh.
    """
    context = CertificateOptions(
        privateKey=authority.servingKey,
        certificate=authority.servingCertificate,
        extraCertChain=[authority.issuingCertificate],
        raiseMinimumTo=TLSVersion.TLSv1_3,
    ).getContext()
    context.set_verify(SSL.VERIFY_PEER, _acceptForLater)
    for anchor in authority.anchors:
        context.add_client_ca(anchor)
    return _IssuerTLS(context)


def _peerChain(request: Request) -> list[x509.Certificate]:
    """
    The certificates the client presented, leaf first, unverified.

    OpenSSL keeps a server's peer leaf apart from the rest of the chain the
    peer sent, hence the two calls.
    """
    connection = request.transport.getHandle()
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    return [leaf, *(connection.get_peer_cert_chain(as_cryptography=True) or [])]


class IssuerMetrics:
    """
    The issuer's metrics, on a registry of its own.

    @ivar registry: what C{/metrics} renders.
    @ivar issued: counts certificates issued.
    @ivar rejected: counts refusals by reason; every reason is there from
        the start, at zero, so an alert on a rate sees the first one.
    """

    def __init__(self, authority: CertificateAuthority) -> None:
        self.registry = registry = CollectorRegistry()
        self.issued = Counter("identity_issued", "Certificates issued.", registry=registry)
        self.rejected = Counter("identity_rejected", "Certify requests refused.", ("reason",), registry=registry)
        for reason in REASONS:
            self.rejected.labels(reason)
        Gauge(
            "identity_issuer_ca_expiration_timestamp_seconds",
            "When the issuing CA certificate expires; no certificate is issued after.",
            registry=registry,
        ).set(authority.issuingCertificate.not_valid_after_utc.timestamp())


class _CertifyResource(AdminResource):
    """
    C{POST /v1/certify}.

    @ivar _issuer: decides and signs.
    @ivar _metrics: counts the outcomes.
    @ivar _clock: tells the time the issuer decides at.
    """

    allowedMethods = (b"POST",)
    _log = Logger()

    def __init__(self, issuer: Issuer, metrics: IssuerMetrics, clock: IReactorTime) -> None:
        super().__init__()
        self._issuer = issuer
        self._metrics = metrics
        self._clock = clock

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        address = request.getClientAddress()
        peer = f"{address.host}:{address.port}" if isinstance(address, (IPv4Address, IPv6Address)) else str(address)
        try:
            issued, renewal = self._certify(request)
        except Rejected as e:
            self._metrics.rejected.labels(e.reason).inc()
            self._log.warn(
                "Refused a certificate for {identity} to {peer}: {reason}: {detail}",
                identity=e.identity,
                peer=peer,
                reason=e.reason,
                detail=e.detail,
            )
            return e.status, encodeError(e.reason, e.detail), _JSON
        self._metrics.issued.inc()
        self._log.info(
            "Issued a certificate for {identity} to {peer} by {credential}: serial {serial}, expires {expires}",
            identity=issued.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            peer=peer,
            credential="renewal" if renewal else "join token",
            serial=f"{issued.certificate.serial_number:x}",
            expires=issued.certificate.not_valid_after_utc.isoformat(),
        )
        return OK, encodeResponse(issued), _JSON

    def _certify(self, request: Request) -> tuple[Issued, bool]:
        """
        @return: what was issued, and whether it was a renewal.
        """
        body = request.content
        if body.exceeded:
            raise Rejected(REQUEST_TOO_LARGE, f"the body is over {MAX_BODY} bytes")
        try:
            csr, token = decodeRequest(body.getvalue())
        except MalformedMessage as e:
            raise Rejected(MALFORMED_REQUEST, str(e)) from None
        return self._issuer.certify(csr, token, _peerChain(request), self._clock.seconds()), token is None


class _BoundedBody(io.BytesIO):
    """
    A request body that keeps at most C{limit} bytes.

    Past the limit it keeps nothing more and is marked L{exceeded}, so
    memory stays bounded whatever a client sends; the request is answered
    413 once twisted.web has read it all.

    @ivar exceeded: whether the body was, or was announced to be, larger
        than the limit.
    """

    def __init__(self, limit: int, length: int | None) -> None:
        super().__init__()
        self._limit = limit
        self.exceeded = length is not None and length > limit

    def write(self, data: bytes) -> int:
        if self.exceeded or self.tell() + len(data) > self._limit:
            self.exceeded = True
            return len(data)
        return super().write(data)


class _IssuerSite(QuietSite):
    """
    The issuer's site: quiet, as the admin site (L{_CertifyResource} logs
    what matters), with request bodies bounded by L{MAX_BODY}, and HTTP/1.1
    only.
    """

    def acceptableProtocols(self) -> list[bytes]:
        """
        Offer only HTTP/1.1 in ALPN.  HTTP/2 buys nothing for a request per
        proxy every few hours, and twisted.web's HTTP/2 requests have no
        transport to read the client certificate from.
        """
        return [b"http/1.1"]

    def getContentFile(self, length: int | None) -> _BoundedBody:
        """
        Where twisted.web stores each request body (see
        L{twisted.web.server.Request.gotLength}).
        """
        return _BoundedBody(MAX_BODY, length)


def issuerSite(issuer: Issuer, metrics: IssuerMetrics, readiness: Readiness, clock: IReactorTime) -> Site:
    """
    The issuer's HTTP site, to serve over L{issuerTLS}.

    @param clock: the time certificates are issued at, and the reactor the
        site times idle connections out with.
    """
    root = adminRoot(metrics, readiness)
    version1 = AdminRoot()
    version1.putChild(b"certify", _CertifyResource(issuer, metrics, clock))
    root.putChild(b"v1", version1)
    return _IssuerSite(root, logPath=None, reactor=clock)
