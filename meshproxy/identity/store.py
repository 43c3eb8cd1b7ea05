# -*- test-case-name: tests.test_identity_store -*-
"""
The proxy's own identity: its current private key and certificate chain,
and the trust anchors every peer's chain must lead to.

Whoever obtains credentials hands them to L{IdentityStore.update}: the
renewal client after each certify exchange, or the service once at start
from a static C{[identity] cert_file} and C{key_file} (L{readCredentials}).
Whoever uses them subscribes (L{IdentityStore.subscribe}): the TLS layer
rebuilds its contexts, the readiness condition is met, the expiry gauge is
set.  Nobody polls, and nobody else holds the key.

The store refuses credentials that peers would refuse anyway (a leaf for
another name, a chain to other anchors, an expired certificate, a key that
is not the leaf's), so a bad renewal or a wrong file fails loudly where it
happens and the old credentials stay in use, rather than every handshake
failing later with a less helpful alert.

Private keys never appear in a log line, an exception or a C{repr}: the
value classes here leave them out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath

__all__ = ["Credentials", "IdentityError", "IdentityStore", "readAnchors", "readCredentials"]


class IdentityError(ValueError):
    """
    Credentials or trust anchors are unusable; the message says which and
    why, and never holds key material.
    """


@frozen
class Credentials:
    """
    One version of the proxy's credentials, checked by L{IdentityStore}.

    @ivar key: the private key of C{chain[0]}; never part of the C{repr}.
    @ivar chain: the leaf certificate, then the intermediates that link it
        to the trust anchors, in the order a TLS endpoint sends them.
    @ivar expires: when the leaf expires, in seconds since the epoch.
    """

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=lambda chain: f"<{chain[0].subject.rfc4514_string()} ...>")
    expires: float

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class IdentityStore:
    """
    The proxy's current credentials for one identity, and who to tell when
    they change.

    @ivar identity: the DNS name the leaf must carry.
    @ivar trustAnchors: the root certificates of the mesh.
    @ivar current: the latest credentials, or L{None} before the first
        L{update}.
    @ivar _clock: the time credentials are checked at.
    @ivar _anchors: C{trustAnchors} as a verification store, built once.
    @ivar _subscribers: called with each new L{Credentials}.
    """

    def __init__(self, identity: str, trustAnchors: Sequence[x509.Certificate], clock: IReactorTime) -> None:
        if not trustAnchors:
            raise IdentityError("no trust anchors: nothing could ever be verified")
        self.identity = identity
        self.trustAnchors = tuple(trustAnchors)
        self.current: Credentials | None = None
        self._clock = clock
        self._anchors = Store(list(trustAnchors))
        self._subscribers: list[Callable[[Credentials], object]] = []

    def subscribe(self, callback: Callable[[Credentials], object]) -> None:
        """
        Call C{callback} with the new L{Credentials} after each successful
        L{update}; at once too if there are credentials already, so a late
        subscriber does not wait for the next renewal.
        """
        self._subscribers.append(callback)
        if self.current is not None:
            callback(self.current)

    def update(self, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]) -> Credentials:
        """
        Check and install new credentials, and tell every subscriber.

        @param key: the private key of C{chain[0]}.
        @param chain: the leaf, then its intermediates.

        @return: the credentials installed.

        @raise IdentityError: if the credentials are not usable for this
            identity now; the current ones stay in place.
        """
        credentials = self._check(key, tuple(chain))
        self.current = credentials
        for callback in self._subscribers:
            callback(credentials)
        return credentials

    def _check(self, key: ec.EllipticCurvePrivateKey, chain: tuple[x509.Certificate, ...]) -> Credentials:
        """
        Refuse credentials a peer would refuse: both ends of mTLS verify the
        same things (the chain to the anchors, the validity period, the
        name, the key usage for their side), so the leaf is verified here
        once as a server and once as a client certificate.
        """
        if not chain:
            raise IdentityError("no certificate")
        leaf, *intermediates = chain
        if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
            raise IdentityError("the private key is not an ECDSA P-256 key")
        if key.public_key() != leaf.public_key():
            raise IdentityError("the private key is not the key of the certificate")
        now = _utc(self._clock.seconds())
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise IdentityError(
                f"the certificate for {leaf.subject.rfc4514_string()} is valid from "
                f"{leaf.not_valid_before_utc.isoformat()} until {leaf.not_valid_after_utc.isoformat()}, not now"
            )
        policy = PolicyBuilder().store(self._anchors).time(now)
        try:
            policy.build_server_verifier(x509.DNSName(self.identity)).verify(leaf, intermediates)
            policy.build_client_verifier().verify(leaf, intermediates)
        except VerificationError as e:
            raise IdentityError(
                f"the certificate for {leaf.subject.rfc4514_string()} is not valid for {self.identity!r} "
                f"under the trust anchors: {e}"
            ) from None
        return Credentials(key, chain, leaf.not_valid_after_utc.timestamp())


def _read(path: FilePath, what: str) -> bytes:
    try:
        return path.getContent()
    except OSError as e:
        raise IdentityError(f"{path.path}: cannot read the {what}: {e.strerror}") from None


def _certificates(path: FilePath, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path, what))
    except ValueError as e:
        raise IdentityError(f"{path.path}: expected PEM certificates ({what}): {e}") from None


def readAnchors(path: FilePath) -> list[x509.Certificate]:
    """
    The trust anchors of a PEM bundle such as a CA directory's C{ca.pem}.

    @raise IdentityError: naming the file, if it holds no certificate.
    """
    return _certificates(path, "trust anchors")


def readCredentials(certFile: FilePath, keyFile: FilePath) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """
    A static key and certificate chain, for L{IdentityStore.update}.  The
    files are only read.

    @param certFile: PEM: the leaf, then its intermediates.
    @param keyFile: the unencrypted PEM private key of the leaf.

    @raise IdentityError: naming the file that cannot be read or parsed.
    """
    chain = _certificates(certFile, "certificate chain")
    try:
        key = serialization.load_pem_private_key(_read(keyFile, "private key"), password=None)
    except (ValueError, TypeError):
        # The parser's message could quote the file; keep key bytes out.
        raise IdentityError(f"{keyFile.path}: expected an unencrypted PEM private key") from None
    return key, chain
