"""
Tests for L{meshproxy.identity.ca}: C{ca init}'s files and certificates,
loading them back, and signing workload certificates.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.identity import ca
from meshproxy.identity.ca import FILES, CAError, CertificateAuthority, initialize

#: A fixed "now" for every test: 2027-01-15T08:00:00Z.
NOW = 1_800_000_000.0

_PRIVATE = ["root.key", "issuer-ca.key", "issuer.key", "token.key"]


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def extension(certificate: x509.Certificate, kind: type) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


class InitializeTests(SynchronousTestCase):
    """
    Tests for L{initialize}, C{meshproxy ca init}.
    """

    def setUp(self) -> None:
        self.directory = FilePath(self.mktemp())

    def test_files(self) -> None:
        """
        The directory is created mode 0700 and holds every CA file; the keys
        are mode 0600 even under a umask that would let anyone read them,
        because they are created so rather than changed after.
        """
        old = os.umask(0)
        try:
            initialize(self.directory, "mesh.local", NOW)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory.path).st_mode), 0o700)
        self.assertEqual(sorted(self.directory.listdir()), sorted(FILES))
        modes = {name: stat.S_IMODE(os.stat(self.directory.child(name).path).st_mode) for name in FILES}
        self.assertEqual({name: modes[name] for name in _PRIVATE}, dict.fromkeys(_PRIVATE, 0o600))
        self.assertEqual(
            {name: mode for name, mode in modes.items() if name not in _PRIVATE},
            dict.fromkeys(["ca.pem", "issuer-ca.pem", "issuer.pem", "ca.toml"], 0o644),
        )
        self.assertEqual(len(self.directory.child("token.key").getContent()), 32)

    def test_refusesOverwrite(self) -> None:
        """
        A second C{ca init} in the same directory fails and changes nothing:
        replacing the anchors would cut every proxy off the mesh.
        """
        initialize(self.directory, "mesh.local", NOW)
        before = {name: self.directory.child(name).getContent() for name in FILES}
        error = self.assertRaises(CAError, initialize, self.directory, "mesh.local", NOW)
        self.assertIn("already holds a CA", str(error))
        self.assertIn(self.directory.path, str(error))
        self.assertEqual({name: self.directory.child(name).getContent() for name in FILES}, before)

    def test_refusesAnyExistingFile(self) -> None:
        """
        One CA file already there is enough to refuse, and nothing is written.
        """
        self.directory.makedirs()
        self.directory.child("token.key").setContent(b"x" * 32)
        error = self.assertRaises(CAError, initialize, self.directory, "mesh.local", NOW)
        self.assertIn("token.key", str(error))
        self.assertEqual(self.directory.listdir(), ["token.key"])

    def test_refusesSymlink(self) -> None:
        """
        A symbolic link planted where a key would go, even a dangling one,
        is never followed: a key written through it could land anywhere.
        """
        self.directory.makedirs()
        target = FilePath(self.mktemp())
        os.symlink(target.path, self.directory.child("root.key").path)
        self.assertRaises(CAError, initialize, self.directory, "mesh.local", NOW)
        self.assertFalse(target.exists())

    def test_writeFailureCleansUp(self) -> None:
        """
        If a file cannot be written, the files already written are removed,
        so the command can be rerun once the cause is fixed.
        """
        calls = []
        real = ca._create

        def create(path, content, mode):
            if path.basename() == "issuer.key":
                calls.append(path)
                raise PermissionError(13, "Permission denied", path.path)
            real(path, content, mode)

        self.patch(ca, "_create", create)
        error = self.assertRaises(CAError, initialize, self.directory, "mesh.local", NOW)
        self.assertIn("Permission denied", str(error))
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.directory.listdir(), [])

    def test_badTrustDomain(self) -> None:
        """
        The trust domain must be a lower-case DNS name: it becomes the name
        constraint and the suffix of every identity.
        """
        for bad in ["Mesh.Local", "mesh..local", "-mesh.local", "mesh local", ""]:
            self.assertRaises(CAError, initialize, self.directory, bad, NOW)
        self.assertFalse(self.directory.exists())

    def test_certificates(self) -> None:
        """
        The root is a long-lived CA, the intermediate a CA that can sign only
        leaves, only under the trust domain, and the serving certificate a
        TLS server certificate for C{identity.<trust domain>}; all start 20
        seconds early.
        """
        authority = initialize(self.directory, "mesh.local", NOW)
        (root,) = authority.anchors
        issuing = authority.issuingCertificate
        serving = authority.servingCertificate
        start = utc(NOW) - timedelta(seconds=20)
        for certificate in (root, issuing, serving):
            self.assertEqual(certificate.not_valid_before_utc, start)
            self.assertIsInstance(certificate.public_key(), ec.EllipticCurvePublicKey)
            self.assertIsInstance(certificate.public_key().curve, ec.SECP256R1)
        self.assertEqual(root.not_valid_after_utc, start + timedelta(days=3650))
        self.assertEqual(extension(root, x509.BasicConstraints).value, x509.BasicConstraints(ca=True, path_length=1))
        self.assertEqual(issuing.not_valid_after_utc, start + timedelta(days=365))
        basic = extension(issuing, x509.BasicConstraints)
        self.assertEqual((basic.critical, basic.value), (True, x509.BasicConstraints(ca=True, path_length=0)))
        usage = extension(issuing, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature)
        constraints = extension(issuing, x509.NameConstraints)
        self.assertTrue(constraints.critical)
        self.assertEqual(constraints.value.permitted_subtrees, [x509.DNSName("mesh.local")])
        self.assertEqual(
            extension(serving, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName),
            ["identity.mesh.local"],
        )
        self.assertEqual(list(extension(serving, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(authority.issuerIdentity, "identity.mesh.local")

        verifier = (
            PolicyBuilder().store(Store([root])).time(utc(NOW)).build_server_verifier(DNSName("identity.mesh.local"))
        )
        chain = verifier.verify(serving, [issuing])
        self.assertEqual(chain, [serving, issuing, root])

    def test_servingChainFile(self) -> None:
        """
        C{issuer.pem} is the serving certificate followed by the
        intermediate, what a TLS server sends; C{ca.pem} is the root alone.
        """
        authority = initialize(self.directory, "mesh.local", NOW)
        self.assertEqual(
            x509.load_pem_x509_certificates(self.directory.child("issuer.pem").getContent()),
            [authority.servingCertificate, authority.issuingCertificate],
        )
        self.assertEqual(
            x509.load_pem_x509_certificates(self.directory.child("ca.pem").getContent()), list(authority.anchors)
        )


class LoadTests(SynchronousTestCase):
    """
    Tests for L{CertificateAuthority.load}.
    """

    def setUp(self) -> None:
        self.directory = FilePath(self.mktemp())
        self.made = initialize(self.directory, "prod.example", NOW)

    def test_roundTrip(self) -> None:
        """
        Loading gives back what C{ca init} made, without the root key, which
        the issuer never needs.
        """
        self.directory.child("root.key").remove()
        loaded = CertificateAuthority.load(self.directory)
        self.assertEqual(loaded.trustDomain, "prod.example")
        self.assertEqual(loaded.anchors, self.made.anchors)
        self.assertEqual(loaded.issuingCertificate, self.made.issuingCertificate)
        self.assertEqual(loaded.servingCertificate, self.made.servingCertificate)
        self.assertEqual(loaded.tokenKey, self.made.tokenKey)

    def assertLoadFails(self, name: str, message: str) -> None:
        error = self.assertRaises(CAError, CertificateAuthority.load, self.directory)
        self.assertIn(self.directory.child(name).path, str(error))
        self.assertIn(message, str(error))

    def test_missingFile(self) -> None:
        self.directory.child("issuer-ca.key").remove()
        self.assertLoadFails("issuer-ca.key", "cannot read")

    def test_keyMismatch(self) -> None:
        """
        A key that is not its certificate's is found at load, not at the
        first handshake.
        """
        self.directory.child("issuer.key").setContent(self.directory.child("issuer-ca.key").getContent())
        self.assertLoadFails("issuer.key", "not the private key")

    def test_foreignIntermediate(self) -> None:
        """
        An intermediate that no anchor signed is refused.
        """
        other = initialize(FilePath(self.mktemp()), "prod.example", NOW)
        self.directory.child("ca.pem").setContent(other.anchors[0].public_bytes(serialization.Encoding.PEM))
        self.assertLoadFails("issuer-ca.pem", "not signed by")

    def test_shortTokenKey(self) -> None:
        self.directory.child("token.key").setContent(b"short")
        self.assertLoadFails("token.key", "at least 32")

    def test_badSettings(self) -> None:
        self.directory.child("ca.toml").setContent(b"trust_domain = 3\n")
        self.assertLoadFails("ca.toml", "trust_domain")

    def test_notPEM(self) -> None:
        self.directory.child("ca.pem").setContent(b"hello")
        self.assertLoadFails("ca.pem", "expected PEM certificates")


class IssueTests(SynchronousTestCase):
    """
    Tests for L{CertificateAuthority.issue}.
    """

    def setUp(self) -> None:
        self.authority = initialize(FilePath(self.mktemp()), "mesh.local", NOW)
        self.key = ec.generate_private_key(ec.SECP256R1())

    def test_leaf(self) -> None:
        """
        A workload certificate names the identity as CN and sole DNS SAN,
        serves both ends of mTLS, cannot sign certificates, links to its
        issuer by key identifiers, and starts 20 seconds early.
        """
        now = NOW + 3600
        leaf = self.authority.issue("web.prod.mesh.local", self.key.public_key(), now, 86400)
        self.assertEqual(leaf.subject.rfc4514_string(), "CN=web.prod.mesh.local")
        self.assertEqual(leaf.issuer, self.authority.issuingCertificate.subject)
        self.assertEqual(
            extension(leaf, x509.SubjectAlternativeName).value,
            x509.SubjectAlternativeName([x509.DNSName("web.prod.mesh.local")]),
        )
        self.assertEqual(
            list(extension(leaf, x509.ExtendedKeyUsage).value),
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        usage = extension(leaf, x509.KeyUsage)
        self.assertTrue(usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign)
        basic = extension(leaf, x509.BasicConstraints)
        self.assertEqual((basic.critical, basic.value.ca), (True, False))
        self.assertEqual(
            extension(leaf, x509.AuthorityKeyIdentifier).value.key_identifier,
            extension(self.authority.issuingCertificate, x509.SubjectKeyIdentifier).value.digest,
        )
        self.assertEqual(
            extension(leaf, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
        )
        self.assertEqual(leaf.not_valid_before_utc, utc(now - 20))
        self.assertEqual(leaf.not_valid_after_utc, utc(now + 86400))
        self.assertEqual(leaf.public_key(), self.key.public_key())
        self.assertGreater(leaf.serial_number, 2**64)

    def test_serialsDiffer(self) -> None:
        serials = {
            self.authority.issue("a.mesh.local", self.key.public_key(), NOW, 60).serial_number for _ in range(20)
        }
        self.assertEqual(len(serials), 20)

    def test_cappedAtIntermediateExpiry(self) -> None:
        """
        A certificate never outlives its issuer: no verifier would accept
        it past that point.
        """
        expiry = self.authority.issuingCertificate.not_valid_after_utc
        now = expiry.timestamp() - 3600
        leaf = self.authority.issue("web.mesh.local", self.key.public_key(), now, 86400)
        self.assertEqual(leaf.not_valid_after_utc, expiry)

    def test_intermediateExpired(self) -> None:
        """
        Past the intermediate's expiry nothing is signed.
        """
        expiry = self.authority.issuingCertificate.not_valid_after_utc.timestamp()
        error = self.assertRaises(CAError, self.authority.issue, "web.mesh.local", self.key.public_key(), expiry, 60)
        self.assertIn("not valid now", str(error))

    def test_intermediateNotYetValid(self) -> None:
        self.assertRaises(CAError, self.authority.issue, "web.mesh.local", self.key.public_key(), NOW - 3600, 60)

    def test_refusedNames(self) -> None:
        """
        Names outside the trust domain, the trust domain itself, the
        issuer's own name, and anything but a lower-case DNS name are never
        signed.
        """
        for name in [
            "web.example.com",
            "mesh.local",
            "evilmesh.local",
            "identity.mesh.local",
            "Web.mesh.local",
            "a b.mesh.local",
        ]:
            self.assertRaises(ValueError, self.authority.issue, name, self.key.public_key(), NOW, 60)

    def test_nameConstraint(self) -> None:
        """
        Should the issuer ever sign a name outside the trust domain, the
        intermediate's name constraint makes verifiers refuse it.
        """
        rogue = ca._leaf(
            "web.example.com",
            self.key.public_key(),
            self.authority.issuingCertificate,
            self.authority._issuingKey,
            utc(NOW),
            utc(NOW + 60),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        verifier = PolicyBuilder().store(Store(list(self.authority.anchors))).time(utc(NOW)).build_client_verifier()
        self.assertRaises(VerificationError, verifier.verify, rogue, [self.authority.issuingCertificate])
