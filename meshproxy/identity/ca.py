# -*- test-case-name: tests.test_identity_ca -*-
"""
The mesh's certificate authority: C{meshproxy ca init DIR} makes one, and
L{CertificateAuthority} loads it to sign workload certificates.

A CA directory holds::

    ca.pem          the trust anchor bundle (root certificates): the only
                    file to distribute; every proxy's trust_anchors names it
    root.key        the root's private key; the issuer never reads it, so it
                    can be moved offline once the directory is made
    issuer-ca.pem   the intermediate (issuing) CA, signed by the root
    issuer-ca.key   its private key, which signs every workload certificate
    issuer.pem      the issuer's TLS certificate for identity.<trust domain>,
                    followed by the intermediate
    issuer.key      its private key
    token.key       32 random bytes: the HMAC key of join tokens
    ca.toml         the trust domain

Private files are created with mode 0600 by C{open} itself: writing first
and C{chmod}ing after would leave a moment in which another user could open
the key.  Nothing is ever overwritten (C{O_EXCL}), so a second C{ca init}
cannot replace the anchors a running mesh trusts.

Every key is ECDSA P-256, the curve linkerd2-proxy signs with and every TLS
stack verifies.  The intermediate carries a critical name constraint that
permits only DNS names under the trust domain: even a certificate the issuer
were tricked into signing for another name fails verification in OpenSSL,
rustls and cryptography alike.

Certificates start L{CLOCK_SKEW_ALLOWANCE} before they are made, as
linkerd's do, so that a peer whose clock runs a little behind does not
reject a certificate as not yet valid.

Randomness (keys, serial numbers, the token key) is not a parameter here,
unlike time: it comes from the operating system's CSPRNG through
C{cryptography} and L{os.urandom}, and a parameter would only invite a
predictable source for the sake of tests that do not need one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.python.filepath import FilePath

from ..config import isDNSName

__all__ = [
    "ANCHORS",
    "CAError",
    "CLOCK_SKEW_ALLOWANCE",
    "CertificateAuthority",
    "FILES",
    "ISSUING_LIFETIME",
    "ROOT_LIFETIME",
    "SERVING_LIFETIME",
    "initialize",
]

#: How long before its making a certificate becomes valid.
CLOCK_SKEW_ALLOWANCE = timedelta(seconds=20)

#: The root's lifetime: it is the anchor every proxy is configured with, so
#: replacing it means touching every proxy.
ROOT_LIFETIME = timedelta(days=3650)

#: The intermediate's lifetime: its key is online on every issuer replica,
#: so it is kept short, as linkerd's one-year issuer certificate.
ISSUING_LIFETIME = timedelta(days=365)

#: The issuer's own serving certificate's lifetime (never beyond the
#: intermediate's).
SERVING_LIFETIME = timedelta(days=365)

#: The trust anchor bundle's file name.
ANCHORS = "ca.pem"
_ROOT_KEY = "root.key"
_ISSUING_CERTIFICATE = "issuer-ca.pem"
_ISSUING_KEY = "issuer-ca.key"
_SERVING_CERTIFICATE = "issuer.pem"
_SERVING_KEY = "issuer.key"
_TOKEN_KEY = "token.key"
_SETTINGS = "ca.toml"

#: Every file of a CA directory, public ones first.
FILES = (
    ANCHORS,
    _ISSUING_CERTIFICATE,
    _SERVING_CERTIFICATE,
    _SETTINGS,
    _ROOT_KEY,
    _ISSUING_KEY,
    _SERVING_KEY,
    _TOKEN_KEY,
)

_TOKEN_KEY_SIZE = 32


class CAError(Exception):
    """
    A CA directory cannot be made or loaded, or the authority cannot sign
    right now; the message says which file or certificate and why.
    """


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _sign(
    subject: x509.Name,
    publicKey: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate | None,
    issuerKey: ec.EllipticCurvePrivateKey,
    notBefore: datetime,
    notAfter: datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """
    Sign a certificate, self-signed if C{issuer} is L{None}.

    Every certificate gets a subject key identifier and, unless self-signed,
    the authority key identifier of its issuer: verifiers use them to pick
    the right issuer when several anchors share a name (during a rotation).

    @param extensions: (extension, critical) pairs to add.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
    )
    if issuer is not None:
        identifier = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(identifier), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuerKey, hashes.SHA256())


def _usage(digitalSignature: bool = False, signsCertificates: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digitalSignature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signsCertificates,
        crl_sign=signsCertificates,
        encipher_only=False,
        decipher_only=False,
    )


def _authority(pathLength: int) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=pathLength), True),
        (_usage(signsCertificates=True), True),
    ]


def _leaf(
    identity: str,
    publicKey: ec.EllipticCurvePublicKey,
    issuer: x509.Certificate,
    issuerKey: ec.EllipticCurvePrivateKey,
    notBefore: datetime,
    notAfter: datetime,
    usages: Sequence[x509.ObjectIdentifier],
) -> x509.Certificate:
    """
    Sign an end-entity certificate for C{identity}: the name is both the
    common name (for humans and old tools) and the one DNS SAN (what TLS
    verification reads).
    """
    return _sign(
        _name(identity),
        publicKey,
        issuer,
        issuerKey,
        notBefore,
        notAfter,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_usage(digitalSignature=True), True),
            (x509.ExtendedKeyUsage(list(usages)), False),
            (x509.SubjectAlternativeName([x509.DNSName(identity)]), False),
        ],
    )


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificatesPEM(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _create(path: FilePath, content: bytes, mode: int) -> None:
    """
    Write a new file with C{mode} from its creation on, and make it durable:
    a power cut right after C{ca init} must not leave an empty key behind.

    @raise OSError: if the file exists (even as a dangling symbolic link) or
        cannot be written.
    """
    fd = os.open(path.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with open(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def initialize(directory: FilePath, trustDomain: str, now: float) -> CertificateAuthority:
    """
    Make a new CA in C{directory} (created, mode 0700, if missing).

    @param trustDomain: the DNS suffix every identity of the mesh ends with.
    @param now: the current time in seconds since the epoch.

    @return: the authority just written, loaded back from disk (which checks
        what was written).

    @raise CAError: if C{directory} already holds any CA file, or a file
        cannot be written; files this call wrote are removed again, so a
        failed C{ca init} can simply be rerun.
    """
    if not isDNSName(trustDomain):
        raise CAError(f'the trust domain must be a lower-case DNS name such as "mesh.local", got {trustDomain!r}')
    existing = [name for name in FILES if directory.child(name).exists() or directory.child(name).islink()]
    if existing:
        raise CAError(f"{directory.path} already holds a CA ({', '.join(existing)}): refusing to overwrite it")

    start = _utc(now) - CLOCK_SKEW_ALLOWANCE
    rootKey = ec.generate_private_key(ec.SECP256R1())
    root = _sign(
        _name(f"meshproxy root CA {trustDomain}"),
        rootKey.public_key(),
        None,
        rootKey,
        start,
        start + ROOT_LIFETIME,
        _authority(pathLength=1),
    )
    issuingKey = ec.generate_private_key(ec.SECP256R1())
    issuing = _sign(
        _name(f"meshproxy issuing CA {trustDomain}"),
        issuingKey.public_key(),
        root,
        rootKey,
        start,
        start + ISSUING_LIFETIME,
        [
            *_authority(pathLength=0),
            (x509.NameConstraints(permitted_subtrees=[x509.DNSName(trustDomain)], excluded_subtrees=None), True),
        ],
    )
    servingKey = ec.generate_private_key(ec.SECP256R1())
    serving = _leaf(
        _issuerIdentity(trustDomain),
        servingKey.public_key(),
        issuing,
        issuingKey,
        start,
        min(start + SERVING_LIFETIME, issuing.not_valid_after_utc),
        [ExtendedKeyUsageOID.SERVER_AUTH],
    )
    settings = (
        "# Written by `meshproxy ca init`.\n"
        "# Every identity this CA issues ends with the trust domain.\n"
        f'trust_domain = "{trustDomain}"\n'
    ).encode()

    contents = {
        ANCHORS: (_certificatesPEM(root), 0o644),
        _ISSUING_CERTIFICATE: (_certificatesPEM(issuing), 0o644),
        _SERVING_CERTIFICATE: (_certificatesPEM(serving, issuing), 0o644),
        _SETTINGS: (settings, 0o644),
        _ROOT_KEY: (_keyPEM(rootKey), 0o600),
        _ISSUING_KEY: (_keyPEM(issuingKey), 0o600),
        _SERVING_KEY: (_keyPEM(servingKey), 0o600),
        _TOKEN_KEY: (os.urandom(_TOKEN_KEY_SIZE), 0o600),
    }
    written: list[FilePath] = []
    try:
        os.makedirs(directory.path, 0o700, exist_ok=True)
        for name in FILES:
            content, mode = contents[name]
            path = directory.child(name)
            _create(path, content, mode)
            written.append(path)
    except OSError as e:
        for path in written:
            path.remove()
        raise CAError(f"cannot write the CA in {directory.path}: {e.strerror} ({e.filename})") from None
    return CertificateAuthority.load(directory)


def _issuerIdentity(trustDomain: str) -> str:
    return f"identity.{trustDomain}"


class _Directory:
    """
    Reads the files of a CA directory, turning every problem into a
    L{CAError} that names the file.
    """

    def __init__(self, directory: FilePath) -> None:
        self._directory = directory

    def error(self, name: str, message: str) -> CAError:
        return CAError(f"{self._directory.child(name).path}: {message}")

    def read(self, name: str) -> bytes:
        try:
            return self._directory.child(name).getContent()
        except OSError as e:
            raise self.error(name, f"cannot read: {e.strerror}") from None

    def certificates(self, name: str) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(self.read(name))
        except ValueError as e:
            raise self.error(name, f"expected PEM certificates: {e}") from None

    def key(self, name: str, certificate: x509.Certificate) -> ec.EllipticCurvePrivateKey:
        """
        The private key in C{name}, which must be the ECDSA key of
        C{certificate}: a key that does not match would only fail later,
        at the first handshake or the first verification of what it signed.
        """
        try:
            key = serialization.load_pem_private_key(self.read(name), password=None)
        except (ValueError, TypeError) as e:
            raise self.error(name, f"expected an unencrypted PEM private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
            raise self.error(name, "this is not the private key of the certificate next to it")
        return key

    def signedBy(self, name: str, certificate: x509.Certificate, issuers: Sequence[x509.Certificate]) -> None:
        for issuer in issuers:
            try:
                certificate.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return
        raise self.error(name, "the certificate is not signed by the CA it should chain to")


class CertificateAuthority:
    """
    A loaded CA directory: what the issuer needs to sign workload
    certificates, check join tokens and serve TLS.  The root key is not
    part of it.

    @ivar trustDomain: the DNS suffix of every identity this CA issues.
    @ivar anchors: the trust anchors (C{ca.pem}), in file order.
    @ivar issuingCertificate: the intermediate that signs leaf certificates.
    @ivar servingCertificate: the issuer's own TLS certificate, for
        L{issuerIdentity}.
    @ivar servingKey: its private key.
    @ivar tokenKey: the HMAC key of join tokens.
    @ivar _issuingKey: the intermediate's private key.
    """

    def __init__(
        self,
        trustDomain: str,
        anchors: Sequence[x509.Certificate],
        issuingCertificate: x509.Certificate,
        issuingKey: ec.EllipticCurvePrivateKey,
        servingCertificate: x509.Certificate,
        servingKey: ec.EllipticCurvePrivateKey,
        tokenKey: bytes,
    ) -> None:
        self.trustDomain = trustDomain
        self.anchors = tuple(anchors)
        self.issuingCertificate = issuingCertificate
        self._issuingKey = issuingKey
        self.servingCertificate = servingCertificate
        self.servingKey = servingKey
        self.tokenKey = tokenKey

    @classmethod
    def load(cls, directory: FilePath) -> CertificateAuthority:
        """
        Load and cross-check a CA directory made by L{initialize}: each key
        must match its certificate, the intermediate must be signed by an
        anchor and the serving certificate by the intermediate.  Validity
        periods are not checked here; L{issue} refuses to sign outside the
        intermediate's.

        @raise CAError: naming the first file that is missing or wrong.
        """
        files = _Directory(directory)
        try:
            settings = tomllib.loads(files.read(_SETTINGS).decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise files.error(_SETTINGS, f"not valid TOML: {e}") from None
        trustDomain = settings.get("trust_domain")
        if not isinstance(trustDomain, str) or not isDNSName(trustDomain):
            raise files.error(_SETTINGS, f"trust_domain: expected a lower-case DNS name, got {trustDomain!r}")
        anchors = files.certificates(ANCHORS)
        issuing, *rest = files.certificates(_ISSUING_CERTIFICATE)
        if rest:
            raise files.error(_ISSUING_CERTIFICATE, "expected exactly one certificate")
        files.signedBy(_ISSUING_CERTIFICATE, issuing, anchors)
        issuingKey = files.key(_ISSUING_KEY, issuing)
        serving = files.certificates(_SERVING_CERTIFICATE)[0]
        files.signedBy(_SERVING_CERTIFICATE, serving, [issuing])
        servingKey = files.key(_SERVING_KEY, serving)
        tokenKey = files.read(_TOKEN_KEY)
        if len(tokenKey) < _TOKEN_KEY_SIZE:
            raise files.error(_TOKEN_KEY, f"expected at least {_TOKEN_KEY_SIZE} random bytes, got {len(tokenKey)}")
        return cls(trustDomain, anchors, issuing, issuingKey, serving, servingKey, tokenKey)

    @property
    def issuerIdentity(self) -> str:
        """
        The name on the issuer's serving certificate, C{identity.<trust
        domain>}, which proxies configure as C{issuer_identity}.
        """
        return _issuerIdentity(self.trustDomain)

    def checkIdentity(self, identity: str) -> None:
        """
        Refuse a name this CA must not issue a workload certificate for.

        @raise ValueError: if C{identity} is not a lower-case DNS name
            strictly under the trust domain, or is L{issuerIdentity}: a
            workload holding that name could impersonate the issuer.
        """
        if not isDNSName(identity):
            raise ValueError(f"{identity!r} is not a lower-case DNS name")
        if not identity.endswith("." + self.trustDomain):
            raise ValueError(f"{identity!r} is not in the trust domain {self.trustDomain!r}")
        if identity == self.issuerIdentity:
            raise ValueError(f"{identity!r} is reserved for the issuer")

    def issue(
        self, identity: str, publicKey: ec.EllipticCurvePublicKey, now: float, lifetime: float
    ) -> x509.Certificate:
        """
        Sign a workload certificate usable for both ends of mTLS.

        This only signs: whoever calls it has checked that the holder of the
        private key of C{publicKey} may have C{identity}.

        @param now: the current time in seconds since the epoch.
        @param lifetime: seconds from C{now} the certificate is valid for;
            it is cut short at the intermediate's expiry, since no verifier
            would accept it longer.

        @raise ValueError: if L{checkIdentity} refuses C{identity}.
        @raise CAError: if the intermediate is not valid at C{now}.
        """
        self.checkIdentity(identity)
        start = _utc(now)
        validFrom = self.issuingCertificate.not_valid_before_utc
        validUntil = self.issuingCertificate.not_valid_after_utc
        if not validFrom <= start < validUntil:
            raise CAError(
                f"the issuing CA certificate is not valid now: valid from {validFrom.isoformat()} "
                f"until {validUntil.isoformat()}"
            )
        return _leaf(
            identity,
            publicKey,
            self.issuingCertificate,
            self._issuingKey,
            max(start - CLOCK_SKEW_ALLOWANCE, validFrom),
            min(start + timedelta(seconds=lifetime), validUntil),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
