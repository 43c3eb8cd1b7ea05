"""
The inbound listener's TLS as an auditor sees it: C{testssl.sh} against a
real C{twistd -n meshproxy}, and client certificates the proxy must refuse
(with a log line saying why) beyond the foreign CA that
C{tests.test_mtls_integration} covers.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from meshproxy.identity import ca

from .meshca import TestCA
from .realprocess import Proxy, freePort, run, tool
from .test_integration import Named

SERVER = "web.mesh.local"
CLIENT = "app.mesh.local"

#: testssl.sh findings that prove the claims, by id: what each must say.
#: TLS 1.3 only; no renegotiation (TLS 1.3 has none); nothing weak offered.
EXPECTED = {
    "SSLv2": "not offered",
    "SSLv3": "not offered",
    "TLS1": "not offered",
    "TLS1_1": "not offered",
    "TLS1_2": "not offered",
    "TLS1_3": "offered with final",
    "cipherlist_NULL": "not offered",
    "cipherlist_aNULL": "not offered",
    "cipherlist_EXPORT": "not offered",
    "cipherlist_LOW": "not offered",
    "cipherlist_3DES_IDEA": "not offered",
    "cipherlist_AVERAGE": "not offered",
    "secure_renego": "TLS 1.3 only server",
    "secure_client_renego": "not vulnerable",
}


class InboundTLSAuditTests(TestCase):
    """
    The inbound listener of a proxy with a static certificate, audited.
    """

    timeout = 240

    def setUp(self):
        self.ca = TestCA(self)
        self.files = FilePath(self.mktemp())
        self.files.makedirs()

    async def serverProxy(self) -> tuple[Proxy, int]:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(b"hello")))
        self.addCleanup(port.stopListening)
        certFile, keyFile = self.ca.write(self.files, SERVER)
        inbound = freePort()
        config = f"""
[proxy]
identity = "{SERVER}"
trust_anchors = "{self.ca.anchorsFile.path}"

[identity]
cert_file = "{certFile.path}"
key_file = "{keyFile.path}"

[[inbound]]
listen = "tcp:{inbound}:interface=127.0.0.1"
app = "127.0.0.1:{port.getHost().port}"
"""
        return await Proxy(self, config).start(), inbound

    async def test_testssl(self):
        """
        testssl.sh, connecting with SNI = the proxy's identity, finds TLS
        1.3 only, no weak cipher category, no renegotiation, and the
        proxy's certificate for that identity, trusted by the mesh's
        anchors.
        """
        proxy, inbound = await self.serverProxy()
        report = self.files.child("testssl.json")
        started = time.monotonic()
        code, output = await run(
            [
                tool("timeout", "coreutils"), "180",
                tool("testssl", "testssl.sh"),
                "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
                "--ip", "127.0.0.1", "--connect-timeout", "5", "--openssl-timeout", "5",
                "--add-ca", self.ca.anchorsFile.path,
                "--jsonfile", report.path,
                "-p", "-s", "-R", "-S",
                f"{SERVER}:{inbound}",
            ]
        )
        elapsed = time.monotonic() - started
        self.assertTrue(report.exists(), output.decode(errors="replace"))
        findings = {item["id"]: item["finding"] for item in json.loads(report.getContent())}
        text = output.decode(errors="replace")
        report.copyTo(FilePath("/tmp/testssl-last.json"))
        for key, expected in EXPECTED.items():
            self.assertIn(key, findings, text)
            self.assertTrue(findings[key].startswith(expected), (key, findings[key]))
        # The certificate served for the SNI is the proxy's, for its
        # identity, and chains to the anchors.
        self.assertIn(SERVER, findings["cert_subjectAltName"])
        self.assertIn(SERVER, findings["cert_commonName"])
        self.assertTrue(findings["cert_trust"].startswith("Ok"), findings["cert_trust"])
        self.assertTrue(findings["cert_chain_of_trust"].startswith("passed"), findings["cert_chain_of_trust"])
        self.assertLess(elapsed, 170, "testssl.sh is close to its time bound")
        # The proxy stayed up through the audit.
        self.assertFalse(proxy.collector.ended.called, proxy.output)


class ClientCertificateTests(TestCase):
    """
    Client certificates the inbound listener refuses over a real
    connection, each with a log line naming why.  (A certificate from
    another CA: C{tests.test_mtls_integration.test_opensslClient}.)
    """

    timeout = 120

    setUp = InboundTLSAuditTests.setUp
    serverProxy = InboundTLSAuditTests.serverProxy

    def forged(self, identity: str, usages, issued: float | None = None, lifetime: float = 3600):
        """
        A key and chain signed by the mesh's own intermediate without the
        checks of L{ca.CertificateAuthority.issue}: what a CA bug or a
        stolen intermediate key would produce.
        """
        authority = self.ca.authority
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc) if issued is None else datetime.fromtimestamp(issued, timezone.utc)
        leaf = ca._leaf(
            identity, key.public_key(), authority.issuingCertificate, authority._issuingKey,
            now - timedelta(minutes=1), now + timedelta(seconds=lifetime), usages,
        )
        return key, [leaf, authority.issuingCertificate]

    async def test_refusedClients(self):
        """
        An expired client certificate, one for a name outside the trust
        domain (the intermediate's name constraint) and one not for client
        authentication are refused: the client reads an alert, never the
        application's answer, and the proxy logs the reason for each.
        """
        proxy, inbound = await self.serverProxy()
        both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cases = {
            "expired": (self.ca.expired(CLIENT), "certificate expired"),
            "outside": (self.forged("app.example.com", both), "name outside the CA's permitted names"),
            "serverOnly": (self.forged(CLIENT, [ExtendedKeyUsageOID.SERVER_AUTH]), "certificate not for this purpose"),
        }
        for name, (credentials, _) in cases.items():
            directory = self.files.child(name)
            directory.makedirs()
            cert, key = self.ca.write(directory, CLIENT, credentials)
            code, output = await run(
                [tool("timeout", "coreutils"), "10", tool("openssl", "openssl"), "s_client", "-connect", f"127.0.0.1:{inbound}", "-servername", SERVER,
                 "-CAfile", self.ca.anchorsFile.path, "-cert", cert.path, "-key", key.path, "-cert_chain", cert.path,
                 "-ign_eof"],
                stdin=b"GET / HTTP/1.0\r\n\r\n",
            )
            text = output.decode(errors="replace")
            self.assertNotIn("hello", text, (name, text))
            self.assertIn("alert", text, (name, text))
        # A good client still gets through afterwards.
        cert, key = self.ca.write(self.files, CLIENT)
        code, output = await run(
            [tool("timeout", "coreutils"), "10", tool("openssl", "openssl"), "s_client", "-connect", f"127.0.0.1:{inbound}", "-servername", SERVER,
             "-CAfile", self.ca.anchorsFile.path, "-cert", cert.path, "-key", key.path, "-cert_chain", cert.path,
             "-ign_eof"],
            stdin=b"GET / HTTP/1.0\r\n\r\n",
        )
        self.assertIn("hello", output.decode(errors="replace"))
        await proxy.stop()
        for name, (_, reason) in cases.items():
            self.assertIn(reason, proxy.output, name)
