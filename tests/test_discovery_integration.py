"""
Service discovery as users run it: a real C{twistd -n meshproxy} process
whose endpoints come from a real etcd, a real DNS server (dnsmasq) or a
watched file, with real HTTP backends behind it.  Each test starts its own
servers on free loopback ports with temporary directories and stops them
by process id.

The etcd tests print how long a change took to move live traffic
(C{register -> traffic}, C{remove -> traffic}).
"""

from __future__ import annotations

import json
import os
from base64 import b64encode
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from meshproxy.discovery import EtcdGateway

from .realprocess import Proxy, freePort, get, run, tool
from .test_integration import Named

#: The longest any wait of these tests lasts, in seconds.
DEADLINE = 20.0


def b64(text: str) -> str:
    return b64encode(text.encode()).decode()


class Daemon(ProcessProtocol):
    """
    A server process that a test starts, restarts and stops by its pid.

    @ivar output: everything it wrote, for failure messages.
    """

    def __init__(self, testCase: TestCase, argv: list[str]) -> None:
        self.argv = argv
        self.output = bytearray()
        self.ended: Deferred[None] | None = None
        self.process = None
        testCase.addCleanup(self.stop)

    def start(self) -> None:
        self.ended = Deferred()
        self.process = reactor.spawnProcess(self, self.argv[0], self.argv, env=os.environ)

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.check(ProcessDone))

    def stop(self) -> Deferred | None:
        if self.ended is None or self.ended.called:
            return None
        os.kill(self.process.pid, signal.SIGTERM)
        return self.ended


async def until(what: str, check, deadline: float = DEADLINE, interval: float = 0.02):
    """
    Call C{check} (a coroutine function) every C{interval} seconds until it
    returns something true, and return that; fail after C{deadline}
    seconds.
    """
    end = reactor.seconds() + deadline
    while True:
        result = await check()
        if result:
            return result
        if reactor.seconds() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        await deferLater(reactor, interval, lambda: None)


class Etcd:
    """
    A one-member etcd cluster on free loopback ports with its data in a
    temporary directory, and C{etcdctl} to change it.
    """

    def __init__(self, testCase: TestCase) -> None:
        directory = FilePath(testCase.mktemp())
        directory.makedirs()
        self.port, peer = freePort(), freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = Daemon(
            testCase,
            [
                tool("etcd", "etcd-server"),
                "--name=test",
                f"--data-dir={directory.child('data').path}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                f"--log-outputs={directory.child('etcd.log').path}",
                "--logger=zap",
            ],
        )
        self.user: list[str] = []

    async def start(self) -> None:
        self.daemon.start()

        async def healthy():
            if self.daemon.ended.called:
                raise AssertionError(f"etcd exited: {self.daemon.output.decode(errors='replace')}")
            try:
                status, body = await get(f"{self.url}/health")
            except Exception:
                return False
            return status == 200 and b'"true"' in body

        await until("etcd healthy", healthy)

    async def restart(self) -> None:
        await self.daemon.stop()
        await self.start()

    async def ctl(self, *arguments: str) -> bytes:
        code, output = await run(
            [tool("etcdctl", "etcd-client"), f"--endpoints={self.url}", *self.user, *arguments],
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        assert code == 0, output
        return output


class Traffic:
    """
    Requests through the proxy, one after another, each on a new
    connection, recording which backend answered.
    """

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/".encode()
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def one(self) -> bytes:
        response = await self.agent.request(b"GET", self.url)
        body = await readBody(response)
        return body if response.code == 200 else b"%d" % response.code

    async def reaches(self, name: bytes) -> float:
        """
        Send requests until C{name} answers one; return the seconds from the
        call to that answer.
        """
        start = reactor.seconds()

        async def answered():
            return await self.one() == name

        await until(f"{name!r} gets traffic", answered, interval=0.005)
        return reactor.seconds() - start

    async def leaves(self, name: bytes, quiet: int = 10) -> float:
        """
        Send requests until C{quiet} answers in a row come from others than
        C{name}; return the seconds from the call to the last answer from
        C{name} (0 if there was none).
        """
        start = last = reactor.seconds()
        others = 0

        async def gone():
            nonlocal last, others
            if await self.one() == name:
                last, others = reactor.seconds(), 0
            else:
                others += 1
            return others >= quiet

        await until(f"{name!r} gets no more traffic", gone, interval=0.005)
        return last - start


class DiscoveryIntegrationTests(TestCase):
    timeout = 180

    async def backends(self, *names: bytes) -> dict[bytes, int]:
        ports = {}
        for name in names:
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(name)))
            self.addCleanup(port.stopListening)
            ports[name] = port.getHost().port
        return ports

    async def proxy(self, discovery: str, proxy: str = "") -> tuple[Proxy, Traffic]:
        listen = freePort()
        config = f"""{proxy}
[[upstreams]]
listen = "tcp:{listen}:interface=127.0.0.1"
service = "web"

[services.web]
balancer = "round-robin"
discovery = {discovery}
"""
        return await Proxy(self, config).start(), Traffic(listen)

    def report(self, line: str) -> None:
        sys.stderr.write(f"\n    {self.id().rsplit('.', 1)[-1]}: {line}\n")

    async def test_etcdMovesTraffic(self):
        """
        Endpoints registered in etcd get traffic, and removed ones stop
        getting it, within a second; after etcd restarts mid-watch the
        proxy catches up with the changes made since.
        """
        etcd = Etcd(self)
        await etcd.start()
        ports = await self.backends(b"a", b"b", b"c")
        prefix = "/meshproxy/services/web/"
        proxy, traffic = await self.proxy(f'{{ etcd = "{etcd.url}", prefix = "{prefix}" }}')

        gateway = EtcdGateway(reactor, [etcd.url])

        def key(name: bytes) -> str:
            return b64(f"{prefix}127.0.0.1:{ports[name]}")

        async def register(name: bytes) -> None:
            value = json.dumps({"address": f"127.0.0.1:{ports[name]}"})
            await gateway.call("/v3/kv/put", {"key": key(name), "value": b64(value)})

        async def deregister(name: bytes) -> None:
            await gateway.call("/v3/kv/deleterange", {"key": key(name)})

        times = {}
        await register(b"a")
        times["register a"] = await traffic.reaches(b"a")
        await register(b"b")
        times["register b"] = await traffic.reaches(b"b")
        await deregister(b"a")
        times["remove a"] = await traffic.leaves(b"a")

        await etcd.restart()
        await register(b"c")
        times["register c after etcd restart"] = await traffic.reaches(b"c")
        await deregister(b"b")
        times["remove b after etcd restart"] = await traffic.leaves(b"b")

        self.report("; ".join(f"{event} -> traffic {seconds * 1000:.0f} ms" for event, seconds in times.items()))
        for event in ("register a", "register b", "remove a"):
            self.assertLess(times[event], 1.0, event)
        sample = await proxy.samples()
        self.assertEqual(sample("discovery_endpoints", service="web"), 1)
        self.assertGreaterEqual(sample("discovery_updates_total", service="web", source="etcd"), 5)
        self.assertIn("watching again from revision", proxy.output)

    async def test_etcdAuthLeaseAndSeveralURLs(self):
        """
        With auth on, the proxy signs in with its username and password; a
        dead member URL before the live one is skipped; an instance that
        registered with a lease (the README's etcdctl recipe) leaves when
        its keep-alive dies.
        """
        etcd = Etcd(self)
        await etcd.start()
        await etcd.ctl("user", "add", "root", "--new-user-password=secret", "--interactive=false")
        await etcd.ctl("auth", "enable")
        etcd.user = ["--user=root:secret"]
        ports = await self.backends(b"a", b"b")
        prefix = "/mesh/web/"
        dead = f"http://127.0.0.1:{freePort()}"
        proxy, traffic = await self.proxy(
            f'{{ etcd = ["{dead}", "{etcd.url}"], prefix = "{prefix}", username = "root", password = "secret" }}'
        )
        address = f"127.0.0.1:{ports[b'a']}"
        await etcd.ctl("put", prefix + address, json.dumps({"address": address}))
        await traffic.reaches(b"a")

        lease = (await etcd.ctl("lease", "grant", "3")).split()[1].decode()
        address = f"127.0.0.1:{ports[b'b']}"
        await etcd.ctl("put", f"--lease={lease}", prefix + address, json.dumps({"address": address}))
        keepAlive = Daemon(
            self, [tool("etcdctl", "etcd-client"), f"--endpoints={etcd.url}", *etcd.user, "lease", "keep-alive", lease]
        )
        keepAlive.start()
        await traffic.reaches(b"b")
        await keepAlive.stop()
        took = await traffic.leaves(b"b")
        self.report(f"lease keep-alive killed -> traffic left in {took * 1000:.0f} ms (lease TTL 3 s)")

    async def test_dnsTTLExpiry(self):
        """
        When the SRV records' TTL runs out, the proxy asks again and a
        changed SRV set moves the traffic.
        """
        ports = await self.backends(b"a", b"b")
        port = freePort()
        directory = FilePath(self.mktemp())
        directory.makedirs()

        def dnsmasq(target: bytes) -> Daemon:
            return Daemon(
                self,
                [
                    tool("dnsmasq", "dnsmasq-base"),
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--listen-address=127.0.0.1",
                    f"--port={port}",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    f"--pid-file={directory.child('pid').path}",
                    "--local=/mesh/",
                    "--local-ttl=5",
                    "--host-record=web-0.mesh,127.0.0.1",
                    f"--srv-host=_web._tcp.mesh,web-0.mesh,{ports[target]},0,1",
                ],
            )

        server = dnsmasq(b"a")
        server.start()
        # dnsmasq answers as soon as it has bound its port, before the
        # proxy asks: the proxy's /ready then waits for the first answer.
        proxy, traffic = await self.proxy(f'{{ dns_srv = "_web._tcp.mesh", nameserver = "127.0.0.1:{port}" }}')
        await traffic.reaches(b"a")
        await server.stop()
        changed = reactor.seconds()
        dnsmasq(b"b").start()
        await traffic.reaches(b"b")
        took = reactor.seconds() - changed
        self.assertEqual(await traffic.leaves(b"a"), 0)
        self.report(f"SRV set changed -> traffic moved in {took:.1f} s (TTL 5 s)")
        self.assertLess(took, 5.0 + 4.0)

    async def test_fileWatched(self):
        """
        A rewritten file moves traffic within a second; a file that is not
        JSON keeps the old set, and the log says why.
        """
        ports = await self.backends(b"a", b"b")
        directory = FilePath(self.mktemp())
        directory.makedirs()
        path = directory.child("web.json")

        def write(content: bytes) -> None:
            # As deployment tools do: write aside, then rename over.
            directory.child("web.json.new").setContent(content)
            directory.child("web.json.new").moveTo(path)

        write(json.dumps([{"address": f"127.0.0.1:{ports[b'a']}"}]).encode())
        proxy, traffic = await self.proxy(f'{{ file = "{path.path}" }}')
        await traffic.reaches(b"a")
        write(json.dumps([{"address": f"127.0.0.1:{ports[b'b']}"}]).encode())
        self.assertLess(await traffic.leaves(b"a"), 1.0)
        write(b'[{"address": ')

        async def logged():
            return "not JSON" in proxy.output

        await until("the bad file logged", logged)
        self.assertIn("the last good endpoints stay in use", proxy.output)
        self.assertEqual([await traffic.one() for _ in range(5)], [b"b"] * 5)

    async def test_inFlightRequestSurvivesRemoval(self):
        """
        A request in flight on an endpoint that discovery removes finishes
        normally, while new requests already go to the remaining endpoint.
        """
        held = Held()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(held))
        self.addCleanup(port.stopListening)
        ports = await self.backends(b"b")
        path = FilePath(self.mktemp())
        path.parent().makedirs(ignoreExistingDirectory=True)
        path.setContent(json.dumps([{"address": f"127.0.0.1:{port.getHost().port}"}]).encode())
        proxy, traffic = await self.proxy(f'{{ file = "{path.path}" }}')
        inFlight = Deferred.fromCoroutine(traffic.one())

        async def arrived():
            return held.requests

        await until("the request reaches the held backend", arrived)
        path.setContent(json.dumps([{"address": f"127.0.0.1:{ports[b'b']}"}]).encode())
        await traffic.reaches(b"b")
        self.assertFalse(inFlight.called)
        held.release(b"held")
        self.assertEqual(await inFlight, b"held")


class Held(Resource):
    """
    An HTTP backend that holds every request until L{release}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render_GET(self, request):
        self.requests.append(request)
        return NOT_DONE_YET

    def release(self, body: bytes) -> None:
        for request in self.requests:
            request.write(body)
            request.finish()
