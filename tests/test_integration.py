"""
meshproxy as users run it: a real C{twistd -n meshproxy} process in front of
real loopback backends, driven by C{curl}, raw TCP clients and C{promtool}.
"""

from __future__ import annotations

import hashlib
import re

from zope.interface import implementer

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from .realprocess import Proxy, freePort, run, tool

MB = 1024 * 1024


def pattern(size: int, seed: bytes) -> list[bytes]:
    """
    C{size} bytes that are not all alike, as 1 MiB chunks, so a dropped,
    repeated or reordered chunk changes the digest.
    """
    return [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() * (MB // 32) for i in range(size // MB)]


def digest(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def upstream(
    listen: int, service: str, ports: list[int], opaque: bool = False, balancer: str = "p2c-peak-ewma"
) -> str:
    """
    The configuration of one upstream listener on C{listen} relaying to the
    endpoints on C{ports}.
    """
    endpoints = ", ".join(f'{{ address = "127.0.0.1:{port}" }}' for port in ports)
    return f"""
[[upstreams]]
listen = "tcp:{listen}:interface=127.0.0.1"
service = "{service}"

[services.{service}]
balancer = "{balancer}"
opaque = {str(opaque).lower()}
endpoints = [{endpoints}]
"""


class Named(Resource):
    """
    An HTTP backend that answers every GET with its own name.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name
        self.requests = 0

    def render_GET(self, request):
        self.requests += 1
        return self.name


@implementer(IHalfCloseableProtocol)
class Exchange(Protocol):
    """
    One side of a large two-way exchange over a half-closed connection:
    send C{chunks} (at once, then shut down writing; or only once the peer
    has finished sending), and hash what arrives until the peer shuts down.
    """

    def __init__(self, chunks: list[bytes], sendFirst: bool) -> None:
        self.chunks = chunks
        self.sendFirst = sendFirst
        self.received = hashlib.sha256()
        self.size = 0
        self.done: Deferred[tuple[int, str]] = Deferred()

    def connectionMade(self) -> None:
        if self.sendFirst:
            self.send()
            self.transport.loseWriteConnection()

    def send(self) -> None:
        self.transport.writeSequence(self.chunks)

    def dataReceived(self, data: bytes) -> None:
        self.received.update(data)
        self.size += len(data)

    def readConnectionLost(self) -> None:
        # Both directions are done once this side has sent: closing flushes
        # the writes first.
        if not self.sendFirst:
            self.send()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.done.callback((self.size, self.received.hexdigest()))


def exchanges(chunks: list[bytes]) -> tuple[Factory, list[Exchange]]:
    """
    A factory of backends that answer C{chunks} once the client has sent
    all it had, and the list of those built so far.
    """
    built: list[Exchange] = []

    def backend() -> Exchange:
        built.append(Exchange(chunks, sendFirst=False))
        return built[-1]

    return Factory.forProtocol(backend), built


class Banner(Protocol):
    """
    A server-speaks-first backend, like SMTP or MySQL: it greets first, then
    echoes.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"220 banner\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(Protocol):
    """
    A client that collects what it receives until it has C{until} bytes.
    """

    def __init__(self, until: int) -> None:
        self.until = until
        self.data = b""
        self.complete: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.until and not self.complete.called:
            self.complete.callback(self.data)


class RelayTests(TestCase):
    """
    Opaque TCP relaying through a real proxy process.
    """

    timeout = 120

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def httpBackends(self, *names: bytes) -> tuple[list[Named], list[int]]:
        resources = [Named(name) for name in names]
        ports = [await self.listen(Site(resource)) for resource in resources]
        return resources, ports

    async def curl(self, url: str, *options: str) -> bytes:
        code, output = await run([tool("curl", "curl"), "-sS", "--max-time", "10", *options, url])
        self.assertEqual(code, 0, output)
        return output

    async def test_curlRoundRobin(self):
        """
        HTTP through an upstream listener: each request goes to the next
        endpoint, with the detected protocol and the responses counted.
        """
        resources, (a, b) = await self.httpBackends(b"a", b"b")
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "web", [a, b], balancer="round-robin")).start()
        bodies = [await self.curl(f"http://127.0.0.1:{listen}/") for _ in range(4)]
        self.assertEqual(bodies, [b"a", b"b", b"a", b"b"])
        self.assertEqual([r.requests for r in resources], [2, 2])
        sample = await proxy.samples()
        labels = dict(direction="outbound", authority="web", tls="no_identity")
        self.assertEqual(sample("detect_total", result="http1"), 4)
        self.assertEqual(sample("request_total", **labels), 4)
        self.assertEqual(sample("response_total", status_code="200", classification="success", **labels), 4)
        self.assertEqual(sample("response_latency_ms_count", status_code="200", **labels), 4)

    async def test_metricsPassPromtool(self):
        """
        The real C{/metrics} of a proxy that carried traffic passes
        C{promtool check metrics}: no parse error, and no lint warning but
        the one about linkerd2-proxy's histogram name.
        """
        _, (a,) = await self.httpBackends(b"a")
        listen = freePort()
        proxy = await Proxy(
            self,
            f"""
[[inbound]]
listen = "tcp:{listen}:interface=127.0.0.1"
app = "127.0.0.1:{a}"
""",
        ).start()
        self.assertEqual(await self.curl(f"http://127.0.0.1:{listen}/"), b"a")
        code, output = await run(
            [tool("promtool", "prometheus"), "check", "metrics"], stdin=(await proxy.metrics()).encode()
        )
        # The inbound listener served the request as HTTP: linkerd2-proxy's
        # histogram name, kept so its dashboards work (SPEC section 6), is
        # the one lint promtool reports (see tests.test_admin).
        self.assertEqual(
            (code, output), (3, b"response_latency_ms metric names should not contain abbreviated units\n")
        )

    async def test_largeTransferBothWays(self):
        """
        50 MiB each way arrive intact through the proxy, the client's
        half-close reaches the backend, which answers only then, and the
        proxy never holds the transfer in memory.
        """
        upload, download = pattern(50 * MB, b"up"), pattern(50 * MB, b"down")
        factory, backends = exchanges(download)
        port = await self.listen(factory)
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "blob", [port], opaque=True)).start()
        client = Exchange(upload, sendFirst=True)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen), client)
        received = await client.done
        self.assertEqual(received, (50 * MB, digest(download)))
        self.assertEqual(await backends[0].done, (50 * MB, digest(upload)))
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{proxy.process.pid}/status").read()).group(1))
        self.assertLess(peak, 100 * 1024, "the proxy's peak RSS (kB) suggests it buffered the transfer")
        sample = await proxy.samples()
        labels = dict(direction="outbound", target="blob", tls="no_identity")
        for peer in ("src", "dst"):
            self.assertEqual(sample("tcp_read_bytes_total", peer=peer, **labels), 50 * MB)
            self.assertEqual(sample("tcp_write_bytes_total", peer=peer, **labels), 50 * MB)
        self.assertEqual(sample("detect_total", result="skipped"), 1)

    async def test_failover(self):
        """
        An endpoint that refuses connections is skipped: every connection
        reaches the live one.
        """
        _, (live,) = await self.httpBackends(b"live")
        dead, listen = freePort(), freePort()
        proxy = await Proxy(self, upstream(listen, "web", [dead, live], opaque=True)).start()
        bodies = [await self.curl(f"http://127.0.0.1:{listen}/") for _ in range(4)]
        self.assertEqual(bodies, [b"live"] * 4)
        sample = await proxy.samples()
        labels = dict(direction="outbound", target="web", tls="no_identity")
        self.assertEqual(sample("tcp_open_total", peer="dst", **labels), 4)
        self.assertEqual(sample("tcp_close_total", peer="src", classification="success", **labels), 4)

    async def test_serverSpeaksFirst(self):
        """
        A client that sends nothing is relayed as opaque TCP once the detect
        timeout passes, so a server-speaks-first protocol still works; on an
        opaque port the banner comes without that wait.  Garbage bytes are
        relayed as they are, and one stalled connection does not hold up
        another.
        """
        port = await self.listen(Factory.forProtocol(Banner))
        detecting, opaque = freePort(), freePort()
        proxy = await Proxy(
            self,
            f"""
[proxy]
detect_timeout = "300ms"

[[inbound]]
listen = "tcp:{detecting}:interface=127.0.0.1"
app = "127.0.0.1:{port}"

[[inbound]]
listen = "tcp:{opaque}:interface=127.0.0.1"
app = "127.0.0.1:{port}"
opaque = true
""",
        ).start()
        silent = Collect(len(b"220 banner\r\n"))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", detecting), silent)
        started = reactor.seconds()
        garbage = Collect(len(b"220 banner\r\n\x00\xff\x13garbage"))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", detecting), garbage)
        garbage.transport.write(b"\x00\xff\x13garbage")
        self.assertEqual(await garbage.complete, b"220 banner\r\n\x00\xff\x13garbage")
        self.assertLess(reactor.seconds() - started, 0.3, "garbage waited for the detect timeout")
        self.assertEqual(await silent.complete, b"220 banner\r\n")
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        quick = Collect(len(b"220 banner\r\n"))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", opaque), quick)
        self.assertEqual(await quick.complete, b"220 banner\r\n")
        for client in (silent, garbage, quick):
            client.transport.loseConnection()
        sample = await proxy.samples()
        for result in ("timeout", "opaque", "skipped"):
            self.assertEqual(sample("detect_total", result=result), 1)


class StartupTests(TestCase):
    """
    How the process starts, and refuses to.
    """

    async def test_badConfig(self):
        """
        twistd refuses a bad configuration with exit status 1 and the same
        messages as C{meshproxy check}, without a traceback.
        """
        proxy = Proxy(self, '[[upstreams]]\nlisten = "tcp:1"\nservice = "web"\n[services.web]\nendpoints = []\nbalancr = "x"\n')
        code, output = await run(proxy.argv())
        self.assertEqual(code, 1, output)
        text = output.decode()
        self.assertIn(f"{proxy.config.path}: services.web.balancr: unknown key", text)
        self.assertNotIn("Traceback", text)

    async def test_badCertificateFile(self):
        """
        A file the configuration names that turns out not to hold what it
        should stops the start the same way, naming the key.
        """
        proxy = Proxy(
            self,
            '[proxy]\nidentity = "web.mesh.local"\ntrust_anchors = "ca.pem"\n'
            '[identity]\ncert_file = "ca.pem"\nkey_file = "ca.pem"\n'
            '[[inbound]]\nlisten = "tcp:0"\napp = "127.0.0.1:1"\n',
        )
        proxy.directory.child("ca.pem").setContent(b"not a certificate\n")
        code, output = await run(proxy.argv())
        self.assertEqual(code, 1, output)
        self.assertIn("proxy.trust_anchors", output.decode())
        self.assertNotIn("Traceback", output.decode())

    async def test_portInUse(self):
        """
        A listener that cannot bind stops the start with the reason.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        taken = port.getHost().port
        proxy = Proxy(self, f'[[inbound]]\nlisten = "tcp:{taken}:interface=127.0.0.1"\napp = "127.0.0.1:1"\n')
        code, output = await run(proxy.argv())
        self.assertNotEqual(code, 0)
        self.assertIn(f"Couldn't listen on 127.0.0.1:{taken}", output.decode())
