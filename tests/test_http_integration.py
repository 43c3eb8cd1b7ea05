"""
The HTTP/1.1 path as users run it: a real C{twistd -n meshproxy} process in
front of in-process loopback backends, driven by C{curl} and raw sockets.
"""

from __future__ import annotations

import hashlib
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from .realprocess import Proxy, freePort, run, tool
from .test_integration import MB, Named, upstream

LABELS = dict(direction="outbound", authority="web", tls="no_identity")


class Blob(Resource):
    """
    Hashes what is uploaded; streams C{size} bytes (chunked, at the pace
    the client reads) to a GET.
    """

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def render_POST(self, request):
        h = hashlib.sha256()
        while piece := request.content.read(MB):
            h.update(piece)
        return h.hexdigest().encode()

    def render_GET(self, request):
        request.registerProducer(_Stream(request, self.size), False)
        return NOT_DONE_YET


class _Stream:
    """
    A pull producer of C{size} bytes of one pattern, 1 MiB a pull.
    """

    def __init__(self, request, size: int) -> None:
        self.request = request
        self.left = size

    def resumeProducing(self) -> None:
        if self.left <= 0:
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.request.write(b"x" * MB)
        self.left -= MB

    def stopProducing(self) -> None:
        self.left = 0


class Echo(Protocol):
    """
    A WebSocket-like server: answers the upgrade request with a 101, then
    echoes.
    """

    def connectionMade(self) -> None:
        self.head = b""
        self.switched = False

    def dataReceived(self, data: bytes) -> None:
        if self.switched:
            self.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            _, rest = self.head.split(b"\r\n\r\n", 1)
            self.switched = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n" + rest)


class Raw(Protocol):
    """
    A raw client: collects everything until the connection closes, or
    until C{until} appears.
    """

    def __init__(self, until: bytes | None = None) -> None:
        self.until = until
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.until is not None and self.until in self.data and not self.done.called:
            self.done.callback(self.data)

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(self.data)


class HTTPTests(TestCase):
    """
    HTTP/1.1 requests through upstream and outbound listeners.
    """

    timeout = 180

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def backends(self, *names: bytes) -> tuple[list[Named], list[int]]:
        resources = [Named(name) for name in names]
        return resources, [await self.listen(Site(r)) for r in resources]

    async def curl(self, *args: str, expect: int = 0) -> bytes:
        code, output = await run([tool("curl", "curl"), "-sS", "--http1.1", "--max-time", "30", *args])
        self.assertEqual(code, expect, output)
        return output

    async def raw(self, port: int, data: bytes, until: bytes | None = None) -> Raw:
        client = Raw(until)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(data)
        await client.done
        return client

    async def test_keepAliveBalancing(self):
        """
        One curl with several URLs keeps one connection to the proxy, and
        its requests are balanced one by one over both endpoints.
        """
        resources, ports = await self.backends(b"a", b"b")
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "web", ports, balancer="round-robin")).start()
        urls = [f"http://127.0.0.1:{listen}/{i}" for i in range(4)]
        output = await self.curl(*urls, "-w", " %{num_connects}\n")
        self.assertEqual(output.split(b"\n")[:4], [b"a 1", b"b 0", b"a 0", b"b 0"])
        self.assertEqual([r.requests for r in resources], [2, 2])
        sample = await proxy.samples()
        self.assertEqual(sample("tcp_open_total", direction="outbound", peer="src", target="web", tls="no_identity"), 1)
        self.assertEqual(sample("tcp_open_total", direction="outbound", peer="dst", target="web", tls="no_identity"), 2)
        self.assertEqual(sample("request_total", **LABELS), 4)

    async def test_outbound(self):
        """
        The outbound listener routes by Host and by an absolute-form target
        (C{http_proxy}), tunnels CONNECT, and answers 404 for an authority
        no service claims.
        """
        (web, api), (webPort, apiPort) = await self.backends(b"web", b"api")
        listen = freePort()
        config = f"""
[outbound]
listen = "tcp:{listen}:interface=127.0.0.1"
""" + upstream(freePort(), "web", [webPort]) + upstream(freePort(), "api", [apiPort]).replace(
            "[services.api]", '[services.api]\nauthorities = ["api.local"]'
        )
        proxy = await Proxy(self, config).start()
        self.assertEqual(await self.curl("-H", "Host: web", f"http://127.0.0.1:{listen}/"), b"web")
        self.assertEqual(await self.curl("-x", f"http://127.0.0.1:{listen}", "http://api.local/"), b"api")
        self.assertEqual(await self.curl("-p", "-x", f"http://127.0.0.1:{listen}", "http://web/"), b"web")
        output = await self.curl("-i", "-H", "Host: nobody", f"http://127.0.0.1:{listen}/")
        self.assertIn(b"HTTP/1.1 404 Not Found", output)
        self.assertIn(b"meshproxy-proxy-error: no service for authority 'nobody'", output)
        sample = await proxy.samples()
        self.assertEqual(sample("response_total", direction="outbound", tls="no_identity", status_code="404", classification="success"), 1)
        self.assertEqual(sample("detect_total", result="http1"), 4)

    async def test_errors(self):
        """
        A dead endpoint is 502, a service without endpoints 503 after the
        failfast time, an endpoint that never answers 504; each says why.
        """
        silent = await self.listen(Factory.forProtocol(Protocol))
        dead, empty, slow = freePort(), freePort(), freePort()
        config = (
            "[proxy]\nresponse_timeout = \"500ms\"\n"
            + upstream(dead, "dead", [freePort()])
            + upstream(slow, "slow", [silent])
            + f'[[upstreams]]\nlisten = "tcp:{empty}:interface=127.0.0.1"\nservice = "none"\n[services.none]\nendpoints = []\n'
        )
        await Proxy(self, config).start()
        for port, status, reason in [
            (dead, b"502 Bad Gateway", b"meshproxy-proxy-error: connect to 127.0.0.1:"),
            (empty, b"503 Service Unavailable", b"meshproxy-proxy-error: no endpoints ready"),
            (slow, b"504 Gateway Timeout", b"meshproxy-proxy-error: no response within 0.5s"),
        ]:
            started = reactor.seconds()
            output = await self.curl("-i", f"http://127.0.0.1:{port}/")
            self.assertIn(b"HTTP/1.1 " + status, output)
            self.assertIn(reason, output)
            if port == empty:
                self.assertGreaterEqual(reactor.seconds() - started, 2.9)

    async def test_streaming(self):
        """
        200 MiB up and 200 MiB down (chunked) pass through the proxy intact
        while its peak RSS stays far below either.
        """
        size = 200 * MB
        port = await self.listen(Site(Blob(size)))
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "web", [port])).start()
        upload = self.mktemp()
        h = hashlib.sha256()
        with open(upload, "wb") as f:
            for i in range(size // MB):
                piece = hashlib.sha256(i.to_bytes(4, "big")).digest() * (MB // 32)
                h.update(piece)
                f.write(piece)
        output = await self.curl("--data-binary", f"@{upload}", f"http://127.0.0.1:{listen}/")
        self.assertEqual(output, h.hexdigest().encode())
        output = await self.curl("-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{listen}/")
        self.assertEqual(int(output), size)
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{proxy.process.pid}/status").read()).group(1))
        self.assertLess(peak, 120 * 1024, "the proxy's peak RSS (kB) suggests it buffered a body")

    async def test_upgrade(self):
        """
        An Upgrade request answered 101 becomes a tunnel.
        """
        port = await self.listen(Factory.forProtocol(Echo))
        listen = freePort()
        await Proxy(self, upstream(listen, "web", [port])).start()
        client = await self.raw(
            listen, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping", until=b"ping"
        )
        self.assertTrue(client.data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), client.data)
        self.assertTrue(client.data.endswith(b"\r\n\r\nping"), client.data)
        client.done = Deferred()
        client.until = b"pong"
        client.transport.write(b"pong")
        self.assertTrue((await client.done).endswith(b"pingpong"))
        client.transport.loseConnection()

    async def test_continue(self):
        """
        curl's C{Expect: 100-continue} gets the backend's 100 Continue
        through the proxy, then the body goes and the response comes.
        """
        port = await self.listen(Site(Blob(0)))
        listen = freePort()
        await Proxy(self, upstream(listen, "web", [port])).start()
        body = b"x" * 5000
        upload = self.mktemp()
        with open(upload, "wb") as f:
            f.write(body)
        output = await self.curl(
            "-v", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", f"http://127.0.0.1:{listen}/"
        )
        self.assertIn(b"< HTTP/1.1 100 Continue", output)
        self.assertIn(hashlib.sha256(body).hexdigest().encode(), output)

    async def test_smuggling(self):
        """
        Ambiguous or malformed requests are answered 400 and closed, and
        never reach the backend; another connection keeps working.
        """
        (backend,), (port,) = await self.backends(b"ok")
        listen = freePort()
        await Proxy(self, upstream(listen, "web", [port])).start()
        good = Raw(until=b"ok")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen), good)
        attempts = {
            "CL+TE": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "duplicate CL": b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "TE chunked, identity": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "obs-fold": b"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n",
            # A bare LF ending the request line is no HTTP/1 for detection,
            # which relays such a connection as opaque TCP: in a field.
            "bare LF": b"GET / HTTP/1.1\r\nHost: web\nX: a\r\n\r\n",
            "NUL": b"GET / HTTP/1.1\r\nHost: web\r\nX: a\x00b\r\n\r\n",
            "bad chunk size": b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        }
        for name, data in attempts.items():
            client = await self.raw(listen, data)
            self.assertTrue(client.data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (name, client.data))
            self.assertIn(b"meshproxy-proxy-error: ", client.data)
        self.assertEqual(backend.requests, 0)
        good.transport.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        self.assertTrue((await good.done).endswith(b"ok"))
        self.assertEqual(backend.requests, 1)
        good.transport.loseConnection()
