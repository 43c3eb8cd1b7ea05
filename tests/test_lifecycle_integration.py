"""
The proxy's lifecycle as operators drive it, with a real C{twistd -n
meshproxy} process: a graceful shutdown on SIGTERM or C{POST /shutdown},
and a reload on SIGHUP, each while traffic flows.
"""

from __future__ import annotations

import hashlib
import signal
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from .realprocess import Proxy, freePort, get
from .test_integration import Named, upstream

#: What the slow backends send: 10 pieces, one every half second.
PIECES = [hashlib.sha256(b"%d" % i).hexdigest().encode() * 64 for i in range(10)]
PACE = 0.5


class Streaming(Resource):
    """
    An HTTP backend whose response takes about 5 s: L{PIECES}, chunked,
    one every L{PACE} seconds.
    """

    isLeaf = True

    def render_GET(self, request):
        def write(index: int) -> None:
            if index == len(PIECES):
                request.finish()
                return
            request.write(PIECES[index])
            reactor.callLater(PACE, write, index + 1)

        write(0)
        return NOT_DONE_YET


class Trickle(Protocol):
    """
    A TCP backend that sends L{PIECES} at the same pace, then closes.
    """

    def connectionMade(self) -> None:
        self.send(0)

    def send(self, index: int) -> None:
        if index == len(PIECES):
            self.transport.loseConnection()
            return
        self.transport.write(PIECES[index])
        self.call = reactor.callLater(PACE, self.send, index + 1)

    def connectionLost(self, reason) -> None:
        if self.call.active():
            self.call.cancel()


class Hold(Protocol):
    """
    A TCP backend that never sends nor closes; C{accepted} fires when a
    connection arrives.
    """

    accepted: Deferred[None]

    def connectionMade(self) -> None:
        self.factory.accepted.callback(None)


class Receive(Protocol):
    """
    A TCP client that keeps what it receives: C{started} fires at the
    first bytes, C{done} with all of them when the connection closes.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.started: Deferred[None] = Deferred()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.data:
            self.started.callback(None)
        self.data += data

    def connectionLost(self, reason) -> None:
        self.done.callback(bytes(self.data))


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """
    Poll C{condition} (a function, or a coroutine function) until it is
    true, for at most C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = condition()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        await deferLater(reactor, 0.05, lambda: None)


class LifecycleTests(TestCase):
    timeout = 120

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def unready(self, proxy: Proxy) -> bool:
        """
        Whether the proxy's C{/ready} answers 503.
        """
        try:
            status, _ = await get(f"http://127.0.0.1:{proxy.adminPort}/ready")
        except Exception:
            return False
        return status == 503

    async def test_drain(self):
        """
        SIGTERM while a slow HTTP response and a slow TCP transfer run:
        both finish intact, the listener refuses new connections and
        C{/ready} says 503 meanwhile, and the process exits 0 well within
        the grace period.
        """
        web = await self.listen(Site(Streaming()))
        blob = await self.listen(Factory.forProtocol(Trickle))
        http, tcp = freePort(), freePort()
        config = upstream(http, "web", [web]) + upstream(tcp, "blob", [blob], opaque=True)
        proxy = await Proxy(self, '[proxy]\nshutdown_grace = "15s"\n' + config).start()

        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{http}/".encode())
        receiver = Receive()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcp), receiver)
        await receiver.started
        body = readBody(response)

        signalled = reactor.seconds()
        proxy.process.signalProcess(signal.SIGTERM)
        await until(lambda: refused(http) and refused(tcp), "refusing connections")
        await until(lambda: self.unready(proxy), "unready")
        self.assertEqual(await body, b"".join(PIECES))
        self.assertEqual(await receiver.done, b"".join(PIECES))
        self.assertEqual(await proxy.collector.ended, 0, proxy.output)
        self.assertLess(reactor.seconds() - signalled, 15)
        self.assertIn("Every connection finished", proxy.output)

    async def test_drainGrace(self):
        """
        A connection that does not finish within the grace period is cut,
        and the process exits 0.
        """
        factory = Factory.forProtocol(Hold)
        factory.accepted = Deferred()
        held = await self.listen(factory)
        tcp = freePort()
        config = '[proxy]\nshutdown_grace = "1s"\n' + upstream(tcp, "held", [held], opaque=True)
        proxy = await Proxy(self, config).start()
        client = Receive()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcp), client)
        await factory.accepted
        proxy.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await proxy.collector.ended, 0, proxy.output)
        self.assertEqual(await client.done, b"")
        self.assertIn("aborting 1 connections", proxy.output)

    async def test_shutdownEndpoint(self):
        """
        With C{[admin] shutdown = true}, C{POST /shutdown} answers 202 and
        the process exits 0; without it, the path is a 404.
        """
        backend = await self.listen(Site(Named(b"a")))
        # Proxy writes the [admin] table first: this key lands in it.
        proxy = await Proxy(self, "shutdown = true\n" + upstream(freePort(), "web", [backend])).start()
        response = await Agent(reactor).request(b"POST", f"http://127.0.0.1:{proxy.adminPort}/shutdown".encode())
        self.assertEqual(response.code, 202)
        self.assertEqual(await proxy.collector.ended, 0, proxy.output)

        proxy = await Proxy(self, upstream(freePort(), "web", [backend])).start()
        response = await Agent(reactor).request(b"POST", f"http://127.0.0.1:{proxy.adminPort}/shutdown".encode())
        self.assertEqual(response.code, 404)
        await readBody(response)

    async def test_reload(self):
        """
        Under steady load, SIGHUP with new endpoints and a new balancer
        moves the traffic to the new endpoints with no failed request;
        then an invalid file is refused, logged, and traffic goes on.
        """
        old = [Named(b"old1"), Named(b"old2")]
        new = [Named(b"new1"), Named(b"new2")]
        oldPorts = [await self.listen(Site(r)) for r in old]
        newPorts = [await self.listen(Site(r)) for r in new]
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "web", oldPorts, balancer="round-robin")).start()
        header = proxy.config.getContent().decode().split("[[upstreams]]")[0]

        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        done, failures, stopping = [0], [], []

        async def worker():
            while not stopping:
                try:
                    response = await agent.request(b"GET", f"http://127.0.0.1:{listen}/".encode())
                    body = await readBody(response)
                    if response.code != 200:
                        failures.append((response.code, body))
                except Exception as e:
                    failures.append(e)
                done[0] += 1

        workers = gatherResults([Deferred.fromCoroutine(worker()) for _ in range(4)])
        try:
            await until(lambda: done[0] >= 50, "50 requests done")
            proxy.config.setContent((header + upstream(listen, "web", newPorts, balancer="p2c-peak-ewma")).encode())
            proxy.process.signalProcess(signal.SIGHUP)
            await until(lambda: sum(r.requests for r in new) >= 20, "serving from the new endpoints")
            self.assertIn("web: balancer round-robin -> p2c-peak-ewma; web: endpoints (static)", proxy.output)
            before = [r.requests for r in old]

            proxy.config.setContent((header + upstream(listen, "web", newPorts) + "[bogus]\n").encode())
            proxy.process.signalProcess(signal.SIGHUP)
            await until(lambda: "Reload refused" in proxy.output, "refused")
            target = done[0] + 50
            await until(lambda: done[0] >= target, "50 more requests done")
        finally:
            stopping.append(True)
            await workers
        self.assertEqual(failures, [])
        self.assertEqual([r.requests for r in old], before)
        self.assertIn("bogus: unknown key", proxy.output)
