"""
The C{[proxy] max_*} caps in a real proxy process: what a client sees when
one is reached, and the metric that counts it.

(Each cap against the HTTP server in memory: C{tests.test_http_server.LimitTests};
the cap's bookkeeping: C{tests.test_limits}.)
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from .realprocess import Proxy, freePort, upstreamConfig
from .test_http_integration import Raw
from .test_integration import Named

GET = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"


class KeepAlive(Protocol):
    """
    A keep-alive HTTP/1.1 client whose responses end with the backend's
    name: C{request} sends one and waits for that.
    """

    def __init__(self) -> None:
        self.data = b""
        self.waiting = None

    def request(self, until: bytes = b"ok") -> Deferred:
        self.data = b""
        self.waiting = (until, Deferred())
        self.transport.write(GET)
        d = self.waiting[1]
        d.addTimeout(15, reactor)
        return d

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.waiting is not None and self.data.endswith(self.waiting[0]):
            (_, d), self.waiting = self.waiting, None
            d.callback(self.data)


class LimitTests(TestCase):
    timeout = 120

    async def proxy(self, limits: str) -> tuple[Proxy, int]:
        """
        A proxy with C{limits} in its C{[proxy]} table, its upstream
        listener routing to a backend answering C{ok}: (proxy, listener
        port).
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(b"ok")))
        self.addCleanup(port.stopListening)
        listen = freePort()
        proxy = await Proxy(self, upstreamConfig(listen, port.getHost().port, limits)).start()
        return proxy, listen

    async def connect(self, listen: int, protocol):
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen), protocol)
        self.addCleanup(client.transport.abortConnection)
        return client

    async def test_connections(self):
        """
        At C{max_connections} the proxy stops accepting: a third client's
        request waits (in the kernel's accept queue) while two connections
        are open and served, and is answered once one of them closes.
        """
        proxy, listen = await self.proxy("max_connections = 2")
        first = await self.connect(listen, KeepAlive())
        second = await self.connect(listen, KeepAlive())
        await first.request()
        await second.request()
        samples = await proxy.samples()
        self.assertEqual(samples("limit_exceeded_total", limit="connections"), 1)
        self.assertEqual(samples("limit_max", limit="connections"), 2)
        third = await self.connect(listen, KeepAlive())
        answered = third.request()
        # Both open connections make a whole round trip through the proxy
        # after the third client's request was sent: had the proxy accepted
        # it, the request (16 bytes to an idle endpoint) would be answered.
        await first.request()
        await second.request()
        self.assertFalse(answered.called)
        first.transport.loseConnection()
        self.assertTrue((await answered).endswith(b"ok"))

    async def test_requestBody(self):
        """
        A declared body over C{max_request_body} gets 413 before anything
        is forwarded; a chunked one that grows past it gets 413 as soon as
        it does; a body under the cap goes through.
        """
        proxy, listen = await self.proxy('max_request_body = "1KiB"')
        declared = await self.connect(listen, Raw())
        declared.transport.write(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 2048\r\n\r\n")
        response = await declared.done
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertIn(b"meshproxy-proxy-error: request body too large", response)
        chunked = await self.connect(listen, Raw())
        chunked.transport.write(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            chunked.transport.write(b"200\r\n" + b"a" * 512 + b"\r\n")
        response = await chunked.done
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        small = await self.connect(listen, Raw(until=b"ok"))
        small.transport.write(b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 1024\r\n\r\n" + b"a" * 1024)
        self.assertTrue((await small.done).endswith(b"ok"))
        samples = await proxy.samples()
        self.assertEqual(samples("limit_exceeded_total", limit="request_body"), 2)
        self.assertEqual(samples("limit_max", limit="request_body"), 1024)
