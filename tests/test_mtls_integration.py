"""
Mutual TLS between real C{twistd -n meshproxy} processes, and against
C{openssl s_client} and C{openssl s_server}, with certificates from the
project's own CA code.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from .meshca import TestCA
from .realprocess import Proxy, freePort, run, serve, tool
from .test_integration import MB, Exchange, Named, digest, exchanges, pattern

SERVER = "web.mesh.local"
CLIENT = "app.mesh.local"


class Mesh(TestCase):
    """
    Proxies with identities from one test CA, as a server side in front
    of an application and a client side whose service's endpoints are
    server sides.
    """

    timeout = 120

    def setUp(self):
        self.ca = TestCA(self)
        self.files = FilePath(self.mktemp())
        self.files.makedirs()

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def identity(self, name: str) -> str:
        return self.ca.proxyConfig(self.files, name)

    async def serverProxy(self, app: int) -> tuple[Proxy, int]:
        """
        The server-side proxy: its inbound listener in front of C{app}.
        """
        inbound = freePort()
        listener = f'[[inbound]]\nlisten = "tcp:{inbound}:interface=127.0.0.1"\napp = "127.0.0.1:{app}"\n'
        return await Proxy(self, self.identity(SERVER) + listener).start(), inbound

    async def clientProxy(
        self, endpoints: list[tuple[int, str]], opaque: bool = False, upgrade: str = "h2"
    ) -> tuple[Proxy, int]:
        """
        The client-side proxy: an upstream listener for service C{web}
        whose endpoints are (port, identity) pairs.
        """
        listed = ", ".join(f'{{ address = "127.0.0.1:{port}", identity = "{name}" }}' for port, name in endpoints)
        return await self.webProxy(f'opaque = {str(opaque).lower()}\nupgrade = "{upgrade}"\nendpoints = [{listed}]\n')

    async def webProxy(self, settings: str) -> tuple[Proxy, int]:
        """
        The client-side proxy: an upstream listener for the round-robin
        service C{web}, with the further C{settings} lines of its table.
        """
        listen = freePort()
        listener = f"""
[[upstreams]]
listen = "tcp:{listen}:interface=127.0.0.1"
service = "web"

[services.web]
balancer = "round-robin"
{settings}"""
        return await Proxy(self, self.identity(CLIENT) + listener).start(), listen

    async def curl(self, url: str) -> bytes:
        code, output = await run([tool("curl", "curl"), "-sS", "--max-time", "10", url])
        self.assertEqual(code, 0, output)
        return output

    async def s_client(self, port: int, *options: str, stdin: bytes = b"") -> tuple[int, str]:
        code, output = await run(
            [tool("openssl", "openssl"), "s_client", "-connect", f"127.0.0.1:{port}", *options], stdin=stdin
        )
        return code, output.decode(errors="replace")

    async def _httpBackends(self, *names: bytes) -> tuple[list[Named], list[int]]:
        resources = [Named(name) for name in names]
        return resources, [await self.listen(Site(resource)) for resource in resources]



class MutualTLSTests(Mesh):
    """
    A client-side proxy reaching a server-side proxy's inbound listener over
    mTLS, and the inbound listener as TLS tools see it.
    """

    async def test_proxyToProxy(self):
        """
        HTTP through both proxies (balanced per request on the client
        side), and a large two-way transfer (relayed) whose
        half-closes cross the mTLS hop; the server side counts the
        connections as mTLS from the client's identity, the client side as
        mTLS to the server's.
        """
        _, (app,) = await self._httpBackends(b"hello")
        server, inbound = await self.serverProxy(app)
        client, listen = await self.clientProxy([(inbound, SERVER)])
        self.assertEqual(await self.curl(f"http://127.0.0.1:{listen}/"), b"hello")

        upload, download = pattern(20 * MB, b"up"), pattern(20 * MB, b"down")
        factory, backends = exchanges(download)
        blob = await self.listen(factory)
        blobServer, blobInbound = await self.serverProxy(blob)
        blobClient, blobListen = await self.clientProxy([(blobInbound, SERVER)], opaque=True)
        exchange = Exchange(upload, sendFirst=True)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", blobListen), exchange)
        self.assertEqual(await exchange.done, (20 * MB, digest(download)))
        self.assertEqual(await backends[0].done, (20 * MB, digest(upload)))

        sample = await server.samples()
        labels = dict(direction="inbound", target=f"127.0.0.1:{app}", tls="true", client_id=CLIENT)
        self.assertEqual(sample("tcp_open_total", peer="src", **labels), 1)
        self.assertEqual(sample("detect_total", result="tls"), 1)
        # HTTP/1.1 from curl travels as HTTP/2 between the proxies.
        self.assertEqual(sample("detect_total", result="h2"), 1)
        self.assertGreater(sample("identity_cert_expiration_timestamp_seconds"), reactor.seconds())

        sample = await blobServer.samples()
        labels = dict(direction="inbound", target=f"127.0.0.1:{blob}", tls="true", client_id=CLIENT)
        self.assertEqual(sample("tcp_read_bytes_total", peer="src", **labels), 20 * MB)
        self.assertEqual(sample("tcp_close_total", peer="src", classification="success", **labels), 1)
        sample = await blobClient.samples()
        labels = dict(direction="outbound", target="web", tls="true", server_id=SERVER)
        self.assertEqual(sample("tcp_read_bytes_total", peer="dst", **labels), 20 * MB)

    async def test_opensslClient(self):
        """
        C{openssl s_client} with the proxy's SNI gets TLS 1.3 and a
        certificate for the identity that verifies with the anchors; with a
        certificate of its own it reaches the application.  TLS 1.2 is
        refused, and so is a client certificate from another mesh: with TLS
        1.3 the alert comes once the client reads, and no application data
        comes back.
        """
        _, (app,) = await self._httpBackends(b"hello")
        proxy, inbound = await self.serverProxy(app)
        anchors = self.ca.anchorsFile.path
        request = b"GET / HTTP/1.0\r\n\r\n"

        code, output = await self.s_client(inbound, "-servername", SERVER, "-CAfile", anchors, "-tls1_3")
        self.assertEqual(code, 0, output)
        self.assertIn("TLSv1.3", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn(f"subject=CN = {SERVER}", output)

        cert, key = self.ca.write(self.files, CLIENT)
        code, output = await self.s_client(
            inbound, "-servername", SERVER, "-CAfile", anchors, "-cert", cert.path, "-key", key.path, "-cert_chain", cert.path, "-ign_eof",
            stdin=request,
        )
        self.assertIn("hello", output)

        code, output = await self.s_client(inbound, "-servername", SERVER, "-CAfile", anchors, "-tls1_2")
        self.assertNotEqual(code, 0, output)
        self.assertIn("alert protocol version", output)
        self.assertIn("no peer certificate available", output)

        cert, key = TestCA(self).write(self.files, "rogue.mesh.local")
        code, output = await self.s_client(
            inbound, "-servername", SERVER, "-CAfile", anchors, "-cert", cert.path, "-key", key.path, "-cert_chain", cert.path, "-ign_eof",
            stdin=request,
        )
        self.assertIn("alert unknown ca", output)
        self.assertNotIn("hello", output)
        await proxy.stop()
        self.assertIn("unknown CA", proxy.output)

    async def test_passThrough(self):
        """
        A ClientHello for another name goes to the application untouched:
        the client sees the application's certificate, not the proxy's.
        """
        other = TestCA(self, trustDomain="example")
        cert, key = other.write(self.files, "other.example")
        app = freePort()
        await serve(
            self,
            [tool("openssl", "openssl"), "s_server", "-accept", f"127.0.0.1:{app}", "-cert", cert.path, "-key", key.path,
             "-cert_chain", cert.path, "-www"],
            app,
        )
        proxy, inbound = await self.serverProxy(app)
        code, output = await self.s_client(
            inbound, "-servername", "other.example", "-CAfile", other.anchorsFile.path, "-tls1_3"
        )
        self.assertEqual(code, 0, output)
        self.assertIn("subject=CN = other.example", output)
        self.assertIn("Verify return code: 0 (ok)", output)
        sample = await proxy.samples()
        self.assertEqual(
            sample("tcp_open_total", direction="inbound", peer="src", target=f"127.0.0.1:{app}", tls="opaque"), 1
        )

    async def test_refusedServers(self):
        """
        The client-side proxy refuses a server proving another identity and
        a server with an expired certificate, logs why, and moves on to an
        endpoint that proves the identity.
        """
        _, (app,) = await self._httpBackends(b"hello")
        _, inbound = await self.serverProxy(app)
        wrong, expired = freePort(), freePort()
        for port, credentials in [(wrong, self.ca.credentials("db.mesh.local")), (expired, self.ca.expired(SERVER))]:
            directory = self.files.child(f"{port}")
            directory.makedirs()
            certFile, keyFile = self.ca.write(directory, SERVER, credentials)
            await serve(
                self,
                [tool("openssl", "openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-cert", certFile.path,
                 "-key", keyFile.path, "-cert_chain", certFile.path, "-www"],
                port,
            )
        endpoints = [(wrong, SERVER), (expired, SERVER), (inbound, SERVER)]
        client, listen = await self.clientProxy(endpoints, opaque=True)
        self.assertEqual(await self.curl(f"http://127.0.0.1:{listen}/"), b"hello")
        sample = await client.samples()
        labels = dict(direction="outbound", target="web", tls="true", server_id=SERVER)
        self.assertEqual(sample("tcp_open_total", peer="dst", **labels), 1)
        await client.stop()
        self.assertIn("the server certificate is for ['db.mesh.local'], not 'web.mesh.local'", client.output)
        self.assertIn("certificate expired", client.output)
