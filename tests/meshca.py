"""
Certificates for the mTLS tests, made with the project's own CA code
(L{meshproxy.identity.ca}) so the tests exercise the chains the issuer
really signs.  A second L{TestCA} is a foreign mesh: same trust domain,
other anchors.
"""

from __future__ import annotations

import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.python.filepath import FilePath

from meshproxy.identity import ca
from meshproxy.identity.store import IdentityStore

#: How long before now the test CAs are made, so that certificates can be
#: issued already expired.
PAST = 2 * 86400


class TestCA:
    """
    A CA directory in a test's temporary directory, and helpers to issue
    from it.

    @ivar directory: the CA directory (C{ca.pem} is the anchor bundle).
    @ivar authority: the loaded CA.
    """

    def __init__(self, testCase, trustDomain: str = "mesh.local") -> None:
        self.directory = FilePath(testCase.mktemp())
        self.authority = ca.initialize(self.directory, trustDomain, time.time() - PAST)

    @property
    def anchors(self) -> list[x509.Certificate]:
        return list(self.authority.anchors)

    @property
    def anchorsFile(self) -> FilePath:
        return self.directory.child(ca.ANCHORS)

    def credentials(
        self, identity: str, issued: float | None = None, lifetime: float = 3600
    ) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
        """
        A new key and the chain (leaf, intermediate) certifying it as
        C{identity}, issued at C{issued} (default: now).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.authority.issue(identity, key.public_key(), time.time() if issued is None else issued, lifetime)
        return key, [leaf, self.authority.issuingCertificate]

    def expired(self, identity: str) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
        """
        Credentials for C{identity} that expired an hour ago.
        """
        return self.credentials(identity, issued=time.time() - 7200, lifetime=3600)

    def store(self, identity: str, clock) -> IdentityStore:
        """
        An L{IdentityStore} for C{identity} under this CA, holding fresh
        credentials.
        """
        store = IdentityStore(identity, self.anchors, clock)
        store.update(*self.credentials(identity))
        return store

    def write(self, directory: FilePath, identity: str, credentials=None) -> tuple[FilePath, FilePath]:
        """
        Write C{credentials} (default: fresh ones for C{identity}) as PEM
        files in C{directory}: the chain file and the key file.
        """
        key, chain = credentials or self.credentials(identity)
        certFile, keyFile = directory.child(f"{identity}.pem"), directory.child(f"{identity}.key")
        certFile.setContent(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        keyFile.setContent(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return certFile, keyFile

    def proxyConfig(self, directory: FilePath, identity: str) -> str:
        """
        The C{[proxy]} and C{[identity]} tables of a proxy with static
        credentials for C{identity}, written in C{directory}.
        """
        certFile, keyFile = self.write(directory, identity)
        return f"""
[proxy]
identity = "{identity}"
trust_anchors = "{self.anchorsFile.path}"

[identity]
cert_file = "{certFile.path}"
key_file = "{keyFile.path}"
"""
