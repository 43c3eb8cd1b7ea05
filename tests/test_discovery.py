"""
Tests for L{meshproxy.discovery}: the sink, the discovery service, the
static and file resolvers, and the C{discovery} configuration.
"""

from __future__ import annotations

import json
from textwrap import dedent

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.balance import RoundRobin
from meshproxy.config import (
    Address,
    ConfigError,
    DNSDiscovery,
    Endpoint,
    EtcdDiscovery,
    FileDiscovery,
    load,
    readEndpoint,
    readEndpoints,
)
from meshproxy.discovery import (
    BalancerSink,
    DiscoveryService,
    FileResolver,
    IEndpointSink,
    IResolver,
    StaticResolver,
    discoveryService,
    watchPolling,
)
from meshproxy.metrics import ProxyMetrics
from meshproxy.readiness import Readiness

A = Endpoint(Address("10.0.0.1", 80))
B = Endpoint(Address("10.0.0.2", 80))
C = Endpoint(Address("10.0.0.3", 80), weight=2)


@implementer(IEndpointSink)
class RecordingSink:
    """
    An L{IEndpointSink} that keeps the current set, as the real one does,
    and every call.
    """

    def __init__(self) -> None:
        self.sink = BalancerSink(lambda endpoints: None, lambda count: None, lambda: None)
        self.calls: list[tuple[str, tuple[Endpoint, ...]]] = []

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self.sink.endpoints)

    def replace(self, endpoints) -> None:
        endpoints = tuple(endpoints)
        self.calls.append(("replace", endpoints))
        self.sink.replace(endpoints)

    def add(self, endpoints) -> None:
        endpoints = tuple(endpoints)
        self.calls.append(("add", endpoints))
        self.sink.add(endpoints)

    def remove(self, endpoints) -> None:
        endpoints = tuple(endpoints)
        self.calls.append(("remove", endpoints))
        self.sink.remove(endpoints)


class BalancerSinkTests(SynchronousTestCase):
    """
    L{BalancerSink} updates the balancer only on a real change, and every
    answer counts for readiness.
    """

    def setUp(self) -> None:
        self.updates: list[tuple[Endpoint, ...]] = []
        self.counts: list[int] = []
        self.answers = 0

        def answered():
            self.answers += 1

        self.sink = BalancerSink(self.updates.append, self.counts.append, answered)

    def test_interface(self):
        self.assertTrue(verifyObject(IEndpointSink, self.sink))

    def test_replace(self):
        """
        A new set reaches the balancer; the same set again, in another
        order, does not, but is an answer all the same.
        """
        self.sink.replace([A, B])
        self.sink.replace([B, A])
        self.assertEqual(self.updates, [(A, B)])
        self.assertEqual(self.counts, [2])
        self.assertEqual(self.answers, 2)
        self.assertTrue(self.sink.answered)

    def test_emptyAnswer(self):
        """
        An empty first answer changes nothing but is an answer.
        """
        self.sink.replace([])
        self.assertEqual((self.updates, self.answers), ([], 1))

    def test_addRemove(self):
        """
        Added endpoints go after the others; removing keeps the order of
        those that stay; adding one already there or removing one absent
        is no change.
        """
        self.sink.add([B])
        self.sink.add([A, B])
        self.sink.add([A])
        self.sink.remove([C])
        self.sink.remove([B])
        self.assertEqual(self.updates, [(B,), (B, A), (A,)])
        self.assertEqual(self.counts, [1, 2, 1])

    def test_balancerKeepsState(self):
        """
        With a real balancer, an endpoint that stays keeps its state (its
        request in flight) and a pick on a removed endpoint still
        finishes: a change drops nothing.
        """
        balancer = RoundRobin([], Clock())
        sink = BalancerSink(balancer.update, lambda count: None, lambda: None)
        sink.replace([A, B])
        onA = balancer.pick(exclude=frozenset([B]))
        onB = balancer.pick(exclude=frozenset([A]))
        sink.replace([A, C])
        inFlight = {s.endpoint: s.inFlight for s in balancer.snapshots()}
        self.assertEqual(inFlight, {A: 1, C: 0})
        onB.finished(True)
        onA.finished(True)
        self.assertEqual({s.endpoint: s.inFlight for s in balancer.snapshots()}, {A: 0, C: 0})


class DiscoveryServiceTests(SynchronousTestCase):
    """
    L{DiscoveryService} runs its resolver and makes the service ready at
    the first answer, or gives up waiting after the timeout.
    """

    def test_staticAnswersAtStart(self):
        """
        Static endpoints are pushed at start, which counts as the answer
        C{/ready} waits for, and as an update in the metrics.
        """
        self.clock = Clock()
        self.readiness = Readiness()
        self.metrics = ProxyMetrics()
        self.balancer = RoundRobin([], self.clock)
        service = discoveryService(_Service(), self.balancer.update, self.metrics, self.readiness, False, self.clock, 10.0)
        self.assertEqual(self.readiness.pending, ["discovery web (static)"])
        service.startService()
        self.assertTrue(self.readiness.ready)
        self.assertEqual([s.endpoint for s in self.balancer.snapshots()], [A, B])
        registry = self.metrics.registry
        self.assertEqual(registry.get_sample_value("discovery_updates_total", {"service": "web", "source": "static"}), 1)
        self.assertEqual(registry.get_sample_value("discovery_endpoints", {"service": "web"}), 2)
        service.stopService()

    def test_timeout(self):
        """
        A resolver that never answers is given up on after the timeout: the
        proxy gets ready and the log names the resolver and its service.
        """
        resolver = _Silent()
        sink = BalancerSink(lambda endpoints: None, lambda count: None, lambda: None)
        self.readiness = Readiness()
        clock = Clock()
        service = DiscoveryService("web", resolver, sink, self.readiness.require("discovery web (etcd)"), clock, 10.0)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service.startService()
        clock.advance(9.9)
        self.assertEqual(self.readiness.pending, ["discovery web (etcd)"])
        clock.advance(0.1)
        self.assertTrue(self.readiness.ready)
        self.assertIn("etcd resolver of service web has not answered in 10s", _text(logged))
        service.stopService()
        self.assertTrue(resolver.stopped)

    def test_resolveWith(self):
        """
        A new resolver pushes into the same sink: the old one stops, and
        only the difference reaches the balancer, counted under the new
        source.
        """
        metrics = ProxyMetrics()
        updates = []
        service = discoveryService(_Service(), lambda e: updates.append(tuple(e)), metrics, None, False, Clock(), 10.0)
        service.startService()
        old = service.resolver
        service.resolveWith(StaticResolver([B, C]))
        self.assertIsNot(service.resolver, old)
        self.assertEqual(updates, [(A, B), (B, C)])
        self.assertEqual(
            metrics.registry.get_sample_value("discovery_updates_total", {"service": "web", "source": "static"}), 2
        )
        service.stopService()

    def test_resolveWithStopped(self):
        """
        A stopped service only remembers its new resolver, which starts
        with the service.
        """
        silent = _Silent()
        service = DiscoveryService("web", silent, BalancerSink(None, None, None), lambda: None, Clock(), 10.0)
        service.resolveWith(_Silent())
        self.assertFalse(silent.stopped)

    def test_noTimeoutAfterStop(self):
        clock = Clock()
        service = DiscoveryService("web", _Silent(), BalancerSink(None, None, None), lambda: None, clock, 10.0)
        service.startService()
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


@implementer(IResolver)
class _Silent:
    source = "etcd"
    stopped = False

    def start(self, sink):
        pass

    def stop(self):
        self.stopped = True


class _Service:
    """
    Enough of a L{meshproxy.config.Service} for L{discoveryService}.
    """

    name = "web"
    endpoints = (A, B)
    discovery = None


def _text(observer) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(event) for event in observer)


class StaticResolverTests(SynchronousTestCase):
    def test_answersOnce(self):
        resolver = StaticResolver([A, B])
        self.assertTrue(verifyObject(IResolver, resolver))
        sink = RecordingSink()
        resolver.start(sink)
        resolver.stop()
        self.assertEqual(sink.calls, [("replace", (A, B))])


class FileResolverTests(SynchronousTestCase):
    """
    L{FileResolver} with the polling watch on a L{Clock}.
    """

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.path.parent().makedirs(ignoreExistingDirectory=True)
        self.clock = Clock()
        self.resolver = FileResolver(self.path, False, watchPolling(self.clock))
        self.sink = RecordingSink()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def write(self, document) -> None:
        self.path.setContent(document if isinstance(document, bytes) else json.dumps(document).encode())

    def test_interface(self):
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_changesPickedUp(self):
        """
        The file's list is pushed at start and again within the poll
        interval of each change; a poll that finds the same bytes pushes
        nothing.
        """
        self.write([{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}])
        self.resolver.start(self.sink)
        self.assertEqual(self.sink.endpoints, [A, B])
        self.clock.advance(0.5)
        self.write([{"address": "10.0.0.3:80", "weight": 2}])
        self.clock.advance(0.5)
        self.assertEqual(self.sink.endpoints, [C])
        self.assertEqual(len(self.sink.calls), 2)
        self.resolver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_badFileKeepsLastSet(self):
        """
        A file that is not JSON, not a valid list, or gone keeps the last
        good set; each reason is logged once, naming the file.
        """
        self.write([{"address": "10.0.0.1:80"}])
        self.resolver.start(self.sink)
        self.write(b'[{"address": "10.0.0.2:80"')
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.write([{"address": "10.0.0.2"}, {"adress": "x"}])
        self.clock.advance(0.5)
        self.path.remove()
        self.clock.advance(0.5)
        self.assertEqual(self.sink.endpoints, [A])
        self.assertEqual(len(self.sink.calls), 1)
        text = _text(self.logged)
        self.assertEqual(text.count("not JSON"), 1)
        self.assertIn(f"{self.path.path}: not a valid list of endpoints: {self.path.path}: [0].address:", text)
        self.assertIn("[1].adress: unknown key", text)
        self.assertIn("cannot read it", text)
        self.assertIn("the last good endpoints stay in use", text)
        self.write([{"address": "10.0.0.2:80"}])
        self.clock.advance(0.5)
        self.assertEqual(self.sink.endpoints, [B])

    def test_missingAtStart(self):
        """
        A file that does not exist yet is no answer: readiness waits for it.
        """
        self.resolver.start(self.sink)
        self.assertEqual(self.sink.calls, [])
        self.write([])
        self.clock.advance(0.5)
        self.assertEqual(self.sink.calls, [("replace", ())])


class INotifyTests(SynchronousTestCase):
    """
    The inotify watch calls back on changes in the file's directory,
    renames included.
    """

    def test_rename(self):
        from twisted.internet import reactor

        from meshproxy.discovery import watchINotify

        watch = watchINotify(reactor)
        self.assertIsNotNone(watch, "inotify is available on Linux")
        directory = FilePath(self.mktemp())
        directory.makedirs()
        path = directory.child("web.json")
        calls = []
        stop = watch(path, lambda: calls.append(1))
        self.addCleanup(stop)
        directory.child("web.json.tmp").setContent(b"[]")
        directory.child("web.json.tmp").moveTo(path)
        # The events wait in the inotify descriptor until the reactor reads
        # it; read it here, bounded, without running the reactor.
        from twisted.internet import inotify

        notifier = [r for r in reactor.getReaders() if isinstance(r, inotify.INotify)]
        self.assertEqual(len(notifier), 1)
        notifier[0].doRead()
        self.assertTrue(calls)


class ConfigTests(SynchronousTestCase):
    """
    The C{discovery} table of a service.
    """

    def load(self, service: str, proxy: str = ""):
        path = FilePath(self.mktemp())
        path.parent().makedirs(ignoreExistingDirectory=True)
        path.setContent(
            dedent(
                f"""\
                {proxy}
                [[upstreams]]
                listen = "tcp:0:interface=127.0.0.1"
                service = "web"

                [services.web]
                """
            ).encode()
            + dedent(service).encode()
        )
        return path, load(path)

    def errors(self, service: str, proxy: str = "") -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            self.load(service, proxy)
        return [e.split(": ", 1)[1] for e in caught.exception.errors]

    def test_sources(self):
        path, config = self.load('discovery = { file = "web.json" }\n')
        self.assertEqual(config.services["web"].discovery, FileDiscovery(path.sibling("web.json")))
        self.assertEqual(config.services["web"].endpoints, ())
        _, config = self.load('discovery = { dns_srv = "_web._tcp.mesh.local", nameserver = "127.0.0.1:5353" }\n')
        self.assertEqual(
            config.services["web"].discovery, DNSDiscovery("_web._tcp.mesh.local", Address("127.0.0.1", 5353))
        )
        _, config = self.load(
            'discovery = { etcd = ["http://a:2379/", "http://b:2379"], prefix = "/m/web/",'
            ' username = "u", password = "p" }\n'
        )
        self.assertEqual(
            config.services["web"].discovery,
            EtcdDiscovery(("http://a:2379", "http://b:2379"), "/m/web/", "u", "p"),
        )

    def test_exactlyOneSource(self):
        self.assertEqual(
            self.errors('endpoints = []\ndiscovery = { file = "web.json" }\n'),
            ["services.web.endpoints: expected either endpoints or discovery (exactly one source per service)"],
        )
        self.assertEqual(
            self.errors("balancer = \"random\"\n"),
            ["services.web.endpoints: expected either endpoints or discovery (exactly one source per service)"],
        )
        self.assertEqual(
            self.errors('discovery = { file = "web.json", etcd = "http://a:2379", prefix = "/x/" }\n'),
            ["services.web.discovery.file: expected exactly one of file, dns_srv or etcd, got ['file', 'etcd']"],
        )

    def test_everyErrorNamed(self):
        self.assertEqual(
            self.errors('discovery = { dns_srv = "bad name!", identity = "{target}", ttl = 3 }\n'),
            [
                "services.web.discovery.dns_srv: expected a DNS name such as \"_web._tcp.mesh.local\", got 'bad name!'",
                "services.web.discovery.nameserver: missing: expected a string",
                "services.web.discovery.identity: reaching an endpoint over mTLS needs proxy.identity and"
                " proxy.trust_anchors",
                "services.web.discovery.ttl: unknown key",
            ],
        )
        self.assertEqual(
            self.errors('discovery = { etcd = "ftp://x", prefix = "", username = "u" }\n'),
            [
                "services.web.discovery.etcd: expected http:// or https:// URLs of etcd members, got ['ftp://x']",
                "services.web.discovery.prefix: expected a non-empty key prefix: an empty one would read all of etcd",
                "services.web.discovery.username: expected username and password together, or neither",
            ],
        )

    def test_discoveryTimeout(self):
        _, config = self.load('discovery = { file = "web.json" }\n', '[proxy]\ndiscovery_timeout = "3s"\n')
        self.assertEqual(config.proxy.discovery_timeout, 3.0)


class ReadEndpointsTests(SynchronousTestCase):
    """
    L{readEndpoint} and L{readEndpoints} check discovered endpoint objects
    as the configuration's C{endpoints} are checked, naming the source.
    """

    def test_valid(self):
        self.assertEqual(
            readEndpoints("web.json", [{"address": "10.0.0.1:80"}, {"address": "10.0.0.3:80", "weight": 2}], False),
            (A, C),
        )
        self.assertEqual(
            readEndpoint("etcd key /m/a", {"address": "10.0.0.5:4143", "identity": "web.mesh.local"}, True),
            Endpoint(Address("10.0.0.5", 4143), "web.mesh.local"),
        )

    def test_errors(self):
        with self.assertRaises(ConfigError) as caught:
            readEndpoints("web.json", [{"address": "10.0.0.1:80", "weight": 0}, 3], False)
        self.assertEqual(
            caught.exception.errors,
            ["web.json: [0].weight: expected a positive integer, got 0", "web.json: [1]: expected an endpoint table, got 3"],
        )
        with self.assertRaises(ConfigError) as caught:
            readEndpoints("web.json", {"address": "10.0.0.1:80"}, False)
        self.assertIn("expected a list of endpoint objects", caught.exception.errors[0])
        with self.assertRaises(ConfigError) as caught:
            readEndpoint("etcd key /m/a", {"address": "10.0.0.5:4143", "identity": "web.mesh.local"}, False)
        self.assertEqual(
            caught.exception.errors,
            ["etcd key /m/a: identity: reaching an endpoint over mTLS needs proxy.identity and proxy.trust_anchors"],
        )
        with self.assertRaises(ConfigError):
            readEndpoint("etcd key /m/a", "10.0.0.5:4143", False)
