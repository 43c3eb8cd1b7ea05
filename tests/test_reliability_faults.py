"""
Faults around a real C{twistd -n meshproxy}: a backend killed under load,
discovery servers going away, a log that cannot be written.  Every client
request is bounded by a timeout: a hung request fails the test, it never
hangs it.

(An endpoint that accepts but never answers gets 504:
C{tests.test_http_integration.HTTPTests.test_errors}; etcd restarting
mid-watch: C{tests.test_discovery_integration}.)
"""

from __future__ import annotations

import os
import signal
import sys
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.server import Site

from .realprocess import Proxy, freePort, tool
from .test_discovery_integration import Daemon, Etcd, Traffic
from .test_http_integration import Raw
from .test_integration import Named, upstream

#: A backend process: answers every GET with its name after C{delay}
#: seconds, so that requests are in flight on it when it is killed.
BACKEND = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

name, port, delay = sys.argv[1].encode(), int(sys.argv[2]), float(sys.argv[3])

class Slow(Resource):
    isLeaf = True
    def render_GET(self, request):
        call = reactor.callLater(delay, lambda: (request.write(name), request.finish()))
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET

reactor.listenTCP(port, Site(Slow()), interface="127.0.0.1")
reactor.run()
"""

#: Seconds any one client request may take before it counts as hung.
REQUEST_TIMEOUT = 5.0


async def listening(port: int, deadline: float = 10.0) -> None:
    """
    Wait until something accepts connections on C{port} of 127.0.0.1.
    """
    end = reactor.seconds() + deadline
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if reactor.seconds() > end:
            raise AssertionError(f"nothing listening on {port} after {deadline}s")
        await deferLater(reactor, 0.05, lambda: None)


class Load:
    """
    C{concurrency} clients sending GETs one after another over keep-alive
    connections, recording (start, end, outcome) for each: the status and
    body, or the exception (a timeout included).
    """

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url.encode()
        self.concurrency = concurrency
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = concurrency
        self.agent = Agent(reactor, pool=self.pool)
        self.results: list[tuple[float, float, object]] = []
        self.running = True

    async def one(self) -> object:
        d = self.agent.request(b"GET", self.url)
        d.addTimeout(REQUEST_TIMEOUT, reactor)
        try:
            response = await d
            body = readBody(response)
            body.addTimeout(REQUEST_TIMEOUT, reactor)
            return (response.code, await body)
        except Exception as e:
            return e

    async def client(self) -> None:
        while self.running:
            start = reactor.seconds()
            outcome = await self.one()
            self.results.append((start, reactor.seconds(), outcome))

    def run(self):
        return gatherResults([Deferred.fromCoroutine(self.client()) for _ in range(self.concurrency)])


class FaultTests(TestCase):
    timeout = 120

    def backend(self, name: str, port: int, delay: float) -> Daemon:
        script = FilePath(self.mktemp())
        script.setContent(BACKEND.encode())
        daemon = Daemon(self, [sys.executable, script.path, name, str(port), str(delay)])
        daemon.start()
        return daemon

    async def test_backendKilledUnderLoad(self):
        """
        Under steady load over two backends, one is killed with SIGKILL:
        only requests that were on it fail, each with a 502 (none hangs,
        none is a connection error for the client), and from one second
        after the kill every request is answered by the survivor.
        """
        ports = [freePort(), freePort()]
        backends = [self.backend(name, port, 0.1) for name, port in zip(["a", "b"], ports)]
        for port in ports:
            await listening(port)
        listen = freePort()
        await Proxy(self, upstream(listen, "web", ports)).start()
        load = Load(f"http://127.0.0.1:{listen}/", concurrency=16)
        running = load.run()
        await deferLater(reactor, 2.0, lambda: None)
        killed = reactor.seconds()
        os.kill(backends[0].process.pid, signal.SIGKILL)
        await deferLater(reactor, 3.0, lambda: None)
        load.running = False
        await running
        await load.pool.closeCachedConnections()

        before = [o for s, e, o in load.results if e < killed]
        around = [o for s, e, o in load.results if s < killed + 1.0 and e >= killed]
        after = [o for s, e, o in load.results if s >= killed + 1.0]
        errors = [o for _, _, o in load.results if isinstance(o, Exception)]
        statuses = sorted({o[0] for _, _, o in load.results if not isinstance(o, Exception)})
        failed = [o for o in around if isinstance(o, tuple) and o[0] == 502]
        sys.stderr.write(
            f"\n    {len(load.results)} requests: {len(before)} before the kill, {len(around)} around it "
            f"({len(failed)} answered 502), {len(after)} from 1 s after; statuses {statuses}; "
            f"client errors {len(errors)}\n"
        )
        self.assertEqual(errors, [], "a request hung or its connection broke")
        self.assertTrue(all(o == (200, b"a") or o == (200, b"b") for o in before), before)
        self.assertGreater(len(after), 50)
        self.assertEqual({o for o in after}, {(200, b"b")}, "traffic still reaches the killed backend")
        # At most the requests in flight on the killed backend fail: with 16
        # clients over two backends, no more than 16.
        self.assertLessEqual(len(failed), load.concurrency)
        self.assertTrue(all(o[0] in (200, 502) for o in around), around)

    async def test_discoveryServersDown(self):
        """
        With the DNS server, or etcd, gone for several times the records'
        TTL, the proxy keeps sending traffic to the last endpoints it knew.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(b"a")))
        self.addCleanup(port.stopListening)
        backend = port.getHost().port

        dnsPort = freePort()
        directory = FilePath(self.mktemp())
        directory.makedirs()
        dns = Daemon(
            self,
            [tool("dnsmasq", "dnsmasq-base"), "--keep-in-foreground", "--conf-file=/dev/null",
             "--listen-address=127.0.0.1", f"--port={dnsPort}", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--user=root", f"--pid-file={directory.child('pid').path}", "--local=/mesh/", "--local-ttl=1",
             "--host-record=web-0.mesh,127.0.0.1", f"--srv-host=_web._tcp.mesh,web-0.mesh,{backend},0,1"],
        )
        dns.start()
        etcd = Etcd(self)
        await etcd.start()
        await etcd.ctl("put", f"/mesh/web/127.0.0.1:{backend}", f'{{"address": "127.0.0.1:{backend}"}}')
        viaDNS, viaEtcd = freePort(), freePort()
        config = f"""
[[upstreams]]
listen = "tcp:{viaDNS}:interface=127.0.0.1"
service = "dns"

[services.dns]
discovery = {{ dns_srv = "_web._tcp.mesh", nameserver = "127.0.0.1:{dnsPort}" }}

[[upstreams]]
listen = "tcp:{viaEtcd}:interface=127.0.0.1"
service = "etcd"

[services.etcd]
discovery = {{ etcd = "{etcd.url}", prefix = "/mesh/web/" }}
"""
        proxy = await Proxy(self, config).start()
        traffic = [Traffic(viaDNS), Traffic(viaEtcd)]
        for t in traffic:
            self.assertEqual(await t.one(), b"a")
        await dns.stop()
        await etcd.daemon.stop()
        end = reactor.seconds() + 5.0
        answers = []
        while reactor.seconds() < end:
            for t in traffic:
                d = Deferred.fromCoroutine(t.one())
                d.addTimeout(REQUEST_TIMEOUT, reactor)
                answers.append(await d)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(set(answers), {b"a"}, proxy.output)
        self.assertGreater(len(answers), 40)


class _LogProxy(Proxy):
    """
    A proxy whose log goes where C{logArguments} say.
    """

    logArguments = ["--logfile=-"]

    def argv(self) -> list[str]:
        argv = super().argv()
        index = argv.index("--logfile=-")
        return argv[:index] + self.logArguments + argv[index + 1 :]


class LogFaultTests(TestCase):
    """
    A log that cannot be written must not stop traffic: the proxy logs each
    malformed request, so a client can make it log as fast as it likes.
    """

    timeout = 120

    async def checkTraffic(self, proxy: Proxy, listen: int) -> None:
        # Well over 64 KiB of log lines (a pipe's buffer): 1000 malformed
        # requests, each logged; then good requests must still be served.
        bad = b"GET / HTTP/1.1\r\nHost: web\r\nX: a\x00b\r\n\r\n"
        for batch in range(10):
            clients = []
            for _ in range(100):
                client = Raw()
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listen), client)
                client.transport.write(bad)
                clients.append(client.done)
            d = gatherResults(clients)
            d.addTimeout(REQUEST_TIMEOUT, reactor)
            for data in await d:
                self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        for _ in range(20):
            d = agent.request(b"GET", f"http://127.0.0.1:{listen}/".encode())
            d.addTimeout(REQUEST_TIMEOUT, reactor)
            response = await d
            self.assertEqual((response.code, await readBody(response)), (200, b"ok"))

    async def backend(self) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(b"ok")))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def test_fullDisk(self):
        """
        A log file on a full disk (C{/dev/full}: every write fails with
        ENOSPC) does not stop traffic.
        """
        listen = freePort()
        proxy = _LogProxy(self, upstream(listen, "web", [await self.backend()]))
        proxy.logArguments = ["--logfile=/dev/full"]
        await proxy.start()
        await self.checkTraffic(proxy, listen)
        self.assertFalse(proxy.collector.ended.called, proxy.output)
