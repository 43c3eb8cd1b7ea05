# -*- test-case-name: tests.test_identity_client -*-
"""
The proxy's identity client: it gets the proxy's certificate from the
issuer, and renews it before it expires.

At start the client makes a private key in memory, sends a CSR for the
proxy's identity with the join token read from C{[identity] token_file},
and installs the certificate it gets back in the L{IdentityStore}, which
tells the TLS layer and C{/ready}.  The key is never written anywhere and
never logged: it lives in this process's memory, in the store, and in the
TLS contexts made from it.  Every exchange uses a fresh key, so a renewal
replaces key and certificate together and no key outlives its
certificate.

Renewal follows linkerd2-proxy: at 70 % of the remaining lifetime
(L{refreshDelay}), authenticated by the current certificate over TLS, with
no token.  If an exchange fails (the issuer is down, refuses, or answers
something unusable), the reason is logged and the exchange is retried
after a jittered exponential backoff that shortens as the expiry nears
(L{retryDelay}); meanwhile the current certificate stays in use, and an
issuer back before it expires renews it within seconds.  Once it has
expired it can no longer renew (the issuer refuses an expired client
certificate), so the client logs an error at each failure and asks with
the join token again: an operator who notices can put a fresh token into
C{token_file}, which is read anew at each attempt.  A retry is never
scheduled past the expiry, so that switch happens at once rather than up
to a backoff later.

The client is a small state machine, as Twisted's
L{twisted.application.internet.ClientService} is::

    state       input    next state
    ----------  -------  ------------------------------------------------
    STOPPED     START    REQUESTING (an exchange starts at once)
    REQUESTING  ISSUED   WAITING (until the renewal is due)
    REQUESTING  FAILED   WAITING (until the retry is due)
    WAITING     DUE      REQUESTING
    REQUESTING  STOP     STOPPED (the exchange is cancelled)
    WAITING     STOP     STOPPED (the timer is cancelled)
    STOPPED     FAILED   STOPPED (the cancelled exchange's end: ignored)

The state changes before the transition's side effect runs, so an input
that the side effect causes at once (a cancelled exchange failing, a
certifier that answers synchronously) meets the new state.

The HTTP exchange is behind L{ICertifier}; L{HTTPSCertifier} is the real
one, over TLS 1.3 to C{[identity] issuer}, verifying the issuer as
C{[identity] issuer_identity} under the trust anchors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from functools import partial
from random import Random
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL.crypto import X509
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.client import Agent, RequestTransmissionFailed, ResponseDone, ResponseFailed
from twisted.web.http import OK
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import Interface, implementer

from ..backoff import doubling
from ..config import Address
from ..metrics import ProxyMetrics
from .certify import MalformedMessage, decodeError, decodeResponse, encodeRequest, makeCSR, makeKey
from .store import Credentials, IdentityError, IdentityStore

__all__ = [
    "CertifyError",
    "EXCHANGE_TIMEOUT",
    "HTTPSCertifier",
    "ICertifier",
    "IdentityClient",
    "MAX_RESPONSE",
    "State",
    "refreshDelay",
    "retryDelay",
]

#: The share of the remaining lifetime after which a certificate is
#: renewed (linkerd2-proxy's): early enough that an issuer outage of a
#: third of the lifetime goes unnoticed, late enough not to load the issuer.
REFRESH_SHARE = 0.7
#: The shortest wait before a renewal: however short-lived the certificate,
#: a proxy does not ask more often than this.
MIN_REFRESH = 10.0
#: The longest wait before a renewal, for very long-lived certificates.
MAX_REFRESH = 86400.0

#: The wait before the first retry; it doubles after each failure in a row.
RETRY_MINIMUM = 1.0
#: The longest wait between retries, before jitter.
RETRY_MAXIMUM = 60.0
#: Each wait is the doubled base times a random factor within this share
#: of 1 either way, so proxies that lost the issuer together do not all
#: come back to it in the same second.
RETRY_JITTER = 0.2
#: While the certificate is valid, the base of a wait is at most this share
#: of the time it has left (but at least L{RETRY_MINIMUM}): the closer the
#: expiry, the more often the client asks, so that an issuer back before
#: the expiry renews the certificate soon after, not a doubled backoff
#: later.  Past the expiry a renewal is impossible, and the join token
#: that the client falls back to has likely expired long ago.
RETRY_EXPIRY_SHARE = 0.25

#: Seconds an exchange may take, connection and TLS handshake included,
#: before it counts as failed: an issuer that accepts connections but never
#: answers must not stall renewal.
EXCHANGE_TIMEOUT = 10.0

#: The largest response body read: a certificate and its chain take about
#: 2 KiB, so anything near this is not an issuer's answer.
MAX_RESPONSE = 64 * 1024


def refreshDelay(now: float, expires: float) -> float:
    """
    How long to wait before renewing a certificate that expires at
    C{expires}: L{REFRESH_SHARE} of the remaining lifetime, within
    L{MIN_REFRESH} and L{MAX_REFRESH}.

    @param now: the current time, in seconds since the epoch.
    @param expires: when the certificate expires, likewise.
    """
    return min(max(REFRESH_SHARE * (expires - now), MIN_REFRESH), MAX_REFRESH)


def retryDelay(failures: int, now: float, expires: float | None, sample: float) -> float:
    """
    How long to wait before the next attempt after C{failures} failed
    exchanges in a row.

    The base is L{RETRY_MINIMUM} doubled after each failure
    (L{meshproxy.backoff.doubling}) up to a maximum: L{RETRY_MAXIMUM}, and
    while the current certificate is valid, at most L{RETRY_EXPIRY_SHARE}
    of the time it has left; the wait is the base times a factor between
    M{1 - RETRY_JITTER} and M{1 + RETRY_JITTER}.  So an issuer that comes
    back a time M{t} before the expiry is asked again within
    M{1.2 max(t / 4, 1)} seconds.  The wait ends at the expiry at the
    latest: from then on the join token is the only credential left, and
    it is tried at once.

    @param failures: the failures in a row, at least 1.
    @param now: the current time, in seconds since the epoch.
    @param expires: when the current certificate expires, or L{None} if
        there is none.
    @param sample: a random number in [0, 1) that picks the jitter.
    """
    valid = expires is not None and now < expires
    maximum = RETRY_MAXIMUM
    if valid:
        maximum = min(maximum, max(RETRY_EXPIRY_SHARE * (expires - now), RETRY_MINIMUM))
    base = doubling(failures - 1, RETRY_MINIMUM, maximum)
    delay = base * (1.0 + RETRY_JITTER * (2.0 * sample - 1.0))
    return min(delay, expires - now) if valid else delay


class CertifyError(Exception):
    """
    A certify exchange failed: the issuer could not be reached, refused
    (the message then starts with the HTTP status and the issuer's reason
    code), or answered something that is not a certify response.  The
    message never holds a key or a token.
    """


class ICertifier(Interface):
    """
    One certify exchange with the issuer, as L{meshproxy.identity.certify}
    describes it: the transport, not the wire format.
    """

    def certify(csr: bytes, token: str | None, current: Credentials | None) -> Deferred[bytes]:
        """
        Ask for a certificate.

        @param csr: the PEM certificate signing request.
        @param token: the join token for a first certificate, or L{None} to
            renew.
        @param current: the credentials to present as the TLS client
            certificate when renewing, or L{None}.

        @return: a L{Deferred} that fires with the body of the issuer's
            successful response, or fails with L{CertifyError}.  Cancelling
            it abandons the exchange.
        """


class State(Enum):
    """
    Where the client stands; see the module docstring.
    """

    #: Not running.
    STOPPED = "stopped"
    #: An exchange with the issuer is in flight.
    REQUESTING = "requesting"
    #: A renewal or a retry is scheduled.
    WAITING = "waiting"


class _Input(Enum):
    """
    What happens to the client.
    """

    START = "start"
    STOP = "stop"
    DUE = "due"
    ISSUED = "issued"
    FAILED = "failed"


class IdentityClient(Service):
    """
    Keeps the proxy's store supplied with a valid certificate while
    running; see the module docstring.

    @ivar state: the current L{State}.
    @ivar failures: the failed exchanges in a row, for the backoff.
    @ivar _store: where certificates go, and the current one comes from.
    @ivar _certifier: does the exchanges.
    @ivar _tokenFile: the file holding the join token.
    @ivar _metrics: counts the exchanges.
    @ivar _clock: schedules renewals, retries and timeouts.
    @ivar _random: picks the jitter of retries.
    @ivar _exchange: the exchange in flight, while L{State.REQUESTING}.
    @ivar _timer: the renewal or retry, while L{State.WAITING}.
    """

    _log = Logger()

    def __init__(
        self,
        store: IdentityStore,
        certifier: ICertifier,
        tokenFile: FilePath,
        metrics: ProxyMetrics,
        clock: IReactorTime,
        random: Random,
    ) -> None:
        self.state = State.STOPPED
        self.failures = 0
        self._store = store
        self._certifier = certifier
        self._tokenFile = tokenFile
        self._metrics = metrics
        self._clock = clock
        self._random = random
        self._exchange: Deferred[Credentials] | None = None
        self._timer: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._feed(_Input.START)

    def stopService(self) -> None:
        super().stopService()
        self._feed(_Input.STOP)

    def _feed(self, input: _Input, value: Any = None) -> None:
        state, effect = _TRANSITIONS[self.state, input]
        self.state = state
        effect(self, value)

    def _request(self, value: None) -> None:
        """
        Start an exchange: a renewal with the current certificate while it
        is valid, else a request with the join token.
        """
        self._timer = None
        key = makeKey()
        exchange = maybeDeferred(self._send, key)
        exchange.addTimeout(EXCHANGE_TIMEOUT, self._clock)
        exchange.addCallback(self._install, key)
        # Set before the callbacks: a certifier may have answered already.
        self._exchange = exchange
        exchange.addCallbacks(partial(self._feed, _Input.ISSUED), partial(self._feed, _Input.FAILED))

    def _send(self, key: ec.EllipticCurvePrivateKey) -> Deferred[bytes]:
        csr = makeCSR(key, self._store.identity)
        current = self._store.current
        if current is not None and self._clock.seconds() < current.expires:
            return self._certifier.certify(csr, None, current)
        return self._certifier.certify(csr, self._readToken(), None)

    def _readToken(self) -> str:
        """
        The join token, read now, so that an operator can replace an
        expired one without restarting the proxy.

        @raise CertifyError: if the file cannot be read or holds no token.
        """
        try:
            token = self._tokenFile.getContent().decode("ascii").strip()
        except OSError as e:
            raise CertifyError(f"cannot read the join token file {self._tokenFile.path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CertifyError(f"the join token file {self._tokenFile.path} is not ASCII") from None
        if not token:
            raise CertifyError(f"the join token file {self._tokenFile.path} is empty")
        return token

    def _install(self, body: bytes, key: ec.EllipticCurvePrivateKey) -> Credentials:
        issued = decodeResponse(body, key, self._store.identity)
        return self._store.update(key, [issued.certificate, *issued.chain])

    def _scheduleRenewal(self, credentials: Credentials) -> None:
        self._exchange = None
        self.failures = 0
        now = self._clock.seconds()
        self._metrics.certificateRefreshed(now)
        delay = refreshDelay(now, credentials.expires)
        self._log.info(
            "Got a certificate for {identity}: serial {serial}, expires {expires}; renewing in {delay:.0f}s",
            identity=self._store.identity,
            serial=f"{credentials.leaf.serial_number:x}",
            expires=credentials.leaf.not_valid_after_utc.isoformat(),
            delay=delay,
        )
        self._timer = self._clock.callLater(delay, self._feed, _Input.DUE)

    def _scheduleRetry(self, failure: Failure) -> None:
        self._exchange = None
        self.failures += 1
        self._metrics.certificateRefreshFailed()
        now = self._clock.seconds()
        current = self._store.current
        expires = None if current is None else current.expires
        delay = retryDelay(self.failures, now, expires, self._random.random())
        fields = dict(identity=self._store.identity, reason=self._reason(failure), delay=delay)
        if current is None:
            self._log.warn("No certificate for {identity} yet: {reason}; retrying in {delay:.1f}s", **fields)
        elif now < current.expires:
            self._log.warn(
                "Could not renew the certificate of {identity}: {reason}; retrying in {delay:.1f}s,"
                " the current one stays in use until it expires {expires}",
                expires=current.leaf.not_valid_after_utc.isoformat(),
                **fields,
            )
        else:
            self._log.error(
                "The certificate of {identity} EXPIRED at {expires}: peers refuse it until a new one is issued."
                " Could not get one: {reason}; retrying with the join token in {delay:.1f}s",
                expires=current.leaf.not_valid_after_utc.isoformat(),
                **fields,
            )
        self._timer = self._clock.callLater(delay, self._feed, _Input.DUE)

    def _reason(self, failure: Failure) -> str:
        """
        Why an exchange failed, for the log.  A failure of a kind no part
        of the exchange raises on purpose is a bug: it is logged with its
        traceback, and the exchange retried all the same.
        """
        if failure.check(CertifyError, MalformedMessage, IdentityError):
            return str(failure.value)
        if failure.check(TimeoutError):
            return f"no answer within {EXCHANGE_TIMEOUT:g}s"
        self._log.failure("Unexpected error in the certify exchange", failure)
        return repr(failure.value)

    def _abandon(self, value: None) -> None:
        exchange, self._exchange = self._exchange, None
        exchange.cancel()

    def _cancelTimer(self, value: None) -> None:
        timer, self._timer = self._timer, None
        timer.cancel()

    def _ignore(self, value: object) -> None:
        """
        The end of an exchange cancelled by L{stopService}.
        """


#: The next state and the side effect of each input in each state.
_TRANSITIONS: dict[tuple[State, _Input], tuple[State, Callable[[IdentityClient, Any], None]]] = {
    (State.STOPPED, _Input.START): (State.REQUESTING, IdentityClient._request),
    (State.REQUESTING, _Input.ISSUED): (State.WAITING, IdentityClient._scheduleRenewal),
    (State.REQUESTING, _Input.FAILED): (State.WAITING, IdentityClient._scheduleRetry),
    (State.WAITING, _Input.DUE): (State.REQUESTING, IdentityClient._request),
    (State.REQUESTING, _Input.STOP): (State.STOPPED, IdentityClient._abandon),
    (State.WAITING, _Input.STOP): (State.STOPPED, IdentityClient._cancelTimer),
    (State.STOPPED, _Input.FAILED): (State.STOPPED, IdentityClient._ignore),
}


@implementer(IAgentEndpointFactory)
class _IssuerEndpoints:
    """
    Connects every request to the issuer's configured address over TLS,
    whatever host the URI names: the URI carries the issuer's identity (for
    the C{Host} header), the TLS creator checks it.
    """

    def __init__(self, reactor, address: Address, creator: IOpenSSLClientConnectionCreator) -> None:
        self._reactor = reactor
        self._address = address
        self._creator = creator

    def endpointForURI(self, uri):
        return wrapClientTLS(self._creator, HostnameEndpoint(self._reactor, self._address.host, self._address.port))


@implementer(IBodyProducer)
class _Body:
    """
    A request body of a few hundred bytes, written at once: there is
    nothing to pause or stop.
    """

    def __init__(self, content: bytes) -> None:
        self._content = content
        self.length = len(content)

    def startProducing(self, consumer) -> Deferred[None]:
        consumer.write(self._content)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BoundedReader(Protocol):
    """
    Reads a response body of at most C{limit} bytes, and drops the
    connection at once if it is larger: a misconfigured address could point
    at a server that streams forever.

    @ivar finished: fires with the body, or fails with L{CertifyError}.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received = bytearray()
        self.finished: Deferred[bytes] = Deferred(lambda d: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._received += data
        if len(self._received) > self._limit:
            self.finished.errback(CertifyError(f"the response is over {self._limit} bytes"))
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(bytes(self._received))
        else:
            self.finished.errback(CertifyError(f"the response was cut short: {reason.getErrorMessage()}"))


def _describe(error: Exception) -> str:
    """
    The reasons of a connection or HTTP failure, in one line: Agent wraps
    what went wrong (a refused handshake, a closed connection) in a list.
    """
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)):
        return "; ".join(reason.getErrorMessage() for reason in error.reasons)
    # Twisted's connection errors end their sentence; the log line goes on.
    return str(error).rstrip(".")


@implementer(ICertifier)
class HTTPSCertifier:
    """
    Certify exchanges over HTTPS: C{POST /v1/certify} to the issuer over
    TLS 1.3, on a new connection each time, with no other trust than the
    mesh's anchors and no other name than C{issuerIdentity}.

    @ivar _reactor: connects.
    @ivar _address: the issuer's address.
    @ivar _issuerIdentity: the name the issuer's certificate must carry.
    @ivar _trustRoot: the trust anchors, for OpenSSL.
    @ivar _uri: the certify URI.
    """

    def __init__(
        self, reactor, address: Address, issuerIdentity: str, trustAnchors: Sequence[x509.Certificate]
    ) -> None:
        self._reactor = reactor
        self._address = address
        self._issuerIdentity = issuerIdentity
        self._trustRoot = trustRootFromCertificates([Certificate(X509.from_cryptography(a)) for a in trustAnchors])
        self._uri = f"https://{issuerIdentity}:{address.port}/v1/certify".encode("ascii")

    def certify(self, csr: bytes, token: str | None, current: Credentials | None) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._certify(encodeRequest(csr, token), current))

    def _creator(self, current: Credentials | None) -> IOpenSSLClientConnectionCreator:
        """
        TLS 1.3 to the issuer, presenting C{current} if given.  A new creator
        per exchange: the client certificate changes with each renewal.
        """
        options: dict[str, Any] = {"raiseMinimumTo": TLSVersion.TLSv1_3}
        if current is not None:
            options.update(privateKey=current.key, certificate=current.leaf, extraCertChain=list(current.chain[1:]))
        return optionsForClientTLS(self._issuerIdentity, self._trustRoot, extraCertificateOptions=options)

    async def _certify(self, body: bytes, current: Credentials | None) -> bytes:
        endpoints = _IssuerEndpoints(self._reactor, self._address, self._creator(current))
        # The default pool is not persistent: the connection closes after
        # the response, as a proxy renews only every few hours.
        agent = Agent.usingEndpointFactory(self._reactor, endpoints)
        headers = Headers({b"content-type": [b"application/json"]})
        try:
            response: IResponse = await agent.request(b"POST", self._uri, headers, _Body(body))
        except (ConnectError, DNSLookupError, ResponseFailed, RequestTransmissionFailed) as e:
            raise CertifyError(f"cannot reach the issuer at {self._address}: {_describe(e)}") from None
        reader = _BoundedReader(MAX_RESPONSE)
        response.deliverBody(reader)
        content = await reader.finished
        if response.code != OK:
            raise CertifyError(f"the issuer answered {response.code}: {decodeError(content)}")
        return content
