"""
Tests for L{meshproxy.service.ProxyService}: its graceful shutdown and the
reload of its configuration, in memory.
"""

from __future__ import annotations

import signal

from twisted.internet.base import _ISupportsExitSignalCapturing
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from meshproxy.balance import P2CPeakEWMA
from meshproxy.config import Address, Endpoint, load
from meshproxy.http.client import UpstreamConnection
from meshproxy.listener import ListenerService
from meshproxy.service import ProxyService
from meshproxy.tap import reloadOnHangup

A, B, C = (Endpoint(Address("127.0.0.1", port)) for port in (8001, 8002, 8003))


def services(**balancers: tuple[str, list[Endpoint]]) -> str:
    """
    The C{[services]} tables of services with static endpoints, by name:
    (balancer, endpoints).
    """
    tables = []
    for name, (balancer, endpoints) in balancers.items():
        listed = ", ".join(f'{{ address = "{e.address}" }}' for e in endpoints)
        tables.append(f'[services.{name}]\nbalancer = "{balancer}"\nendpoints = [{listed}]\n')
    return "\n".join(tables)


LISTENERS = """
[proxy]
shutdown_grace = "10s"

[outbound]
listen = "tcp:4140:interface=127.0.0.1"

[[upstreams]]
listen = "tcp:9001:interface=127.0.0.1"
service = "web"
"""


class Fixture:
    """
    A L{ProxyService} on a L{MemoryReactorClock}, from a configuration file
    the test can rewrite.
    """

    def __init__(self, testCase, text: str) -> None:
        self.path = FilePath(testCase.mktemp())
        self.path.parent().makedirs(ignoreExistingDirectory=True)
        self.write(text)
        self.reactor = MemoryReactorClock()
        self.service = ProxyService(load(self.path), self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.logged = EventLoggingObserver.createWithCleanup(testCase, globalLogPublisher)

    def write(self, text: str) -> None:
        self.path.setContent(text.encode())

    def log(self) -> str:
        return "\n".join(formatEvent(event) for event in self.logged)

    def endpoints(self, name: str) -> list[Endpoint]:
        return [snapshot.endpoint for snapshot in self.service.balancers[name].snapshots()]

    def route(self, authority: bytes):
        return self.service._router.route(authority)


class ReloadTests(SynchronousTestCase):
    """
    L{ProxyService.reload} changes services in place.
    """

    def setUp(self) -> None:
        self.f = Fixture(self, LISTENERS + services(web=("round-robin", [A, B])))
        self.service = self.f.service

    def reload(self, text: str) -> None:
        self.f.write(text)
        self.service.reloadFile()

    def test_endpoints(self):
        """
        New static endpoints reach the balancer in use, which keeps the
        state of those that stay.
        """
        balancer = self.service.balancers["web"]
        pick = balancer.pick()
        self.reload(LISTENERS + services(web=("round-robin", [B, C])))
        self.assertIs(self.service.balancers["web"], balancer)
        self.assertEqual(self.f.endpoints("web"), [B, C])
        pick.finished(True)
        self.assertIn("Reloaded", self.f.log())
        self.assertIn("web: endpoints (static)", self.f.log())

    def test_balancer(self):
        """
        A new algorithm is a new balancer, seeded with the endpoints and put
        wherever the old one was: the metrics, the route, the waiter of
        the route and of the relay target.  Picks made on the old one
        finish there.
        """
        old = self.service.balancers["web"]
        pick = old.pick()
        self.reload(LISTENERS + services(web=("p2c-peak-ewma", [B, C])))
        new = self.service.balancers["web"]
        self.assertIsInstance(new, P2CPeakEWMA)
        self.assertEqual(self.f.endpoints("web"), [B, C])
        self.assertIs(self.f.route(b"web").balancer, new)
        self.assertIs(self.service.targets["web"].picker._balancer, new)
        pick.finished(True)
        waited = self.successResultOf(self.service.targets["web"].picker.pick())
        self.assertIn(waited.endpoint, (B, C))
        self.assertIn("web: balancer round-robin -> p2c-peak-ewma", self.f.log())

    def test_addRemove(self):
        """
        A service added gets a route, a balancer and its endpoints; one
        removed loses them.  The proxy stays ready.
        """
        self.reload(LISTENERS + services(web=("round-robin", [A]), api=("random", [C])))
        self.assertEqual(self.f.endpoints("api"), [C])
        self.assertEqual(self.f.route(b"api").service, "api")
        self.reload(LISTENERS + services(web=("round-robin", [A])))
        self.assertNotIn("api", self.service.balancers)
        self.assertIsNone(self.f.route(b"api"))
        self.assertNotIn("discovery api", self.service.namedServices)
        self.assertIn("-api", self.f.log())

    def idleConnection(self, endpoint: Endpoint) -> UpstreamConnection:
        """
        A connection to C{endpoint}, idle in the proxy's HTTP/1.1 pool.
        """
        pool = self.service._pool
        connection = UpstreamConnection(pool, endpoint, self.service.metrics.tcp("outbound", "dst", "web", "no_identity"))
        connection.makeConnection(StringTransport())
        pool.release(connection)
        return connection

    def test_endpointLeftCloses(self):
        """
        An endpoint that leaves every service loses its pooled connections;
        one that another service still lists keeps them, until that
        service goes too.
        """
        self.reload(LISTENERS + services(web=("round-robin", [A, B]), api=("random", [B])))
        a, b = self.idleConnection(A), self.idleConnection(B)
        self.reload(LISTENERS + services(web=("round-robin", [C]), api=("random", [B])))
        self.assertTrue(a.transport.disconnecting)
        self.assertFalse(b.transport.disconnecting)
        self.reload(LISTENERS + services(web=("round-robin", [C])))
        self.assertTrue(b.transport.disconnecting)

    def test_inboundApplicationStays(self):
        """
        The application of an inbound listener is no service's endpoint,
        and its connections stay.
        """
        app = Endpoint(Address("127.0.0.1", 8080))
        inbound = '[[inbound]]\nlisten = "tcp:4143:interface=127.0.0.1"\napp = "127.0.0.1:8080"\n\n'
        f = Fixture(self, inbound + LISTENERS + services(web=("round-robin", [A])))
        self.service = f.service
        connection = self.idleConnection(app)
        f.write(inbound + LISTENERS + services(web=("round-robin", [B])))
        f.service.reloadFile()
        self.assertFalse(connection.transport.disconnecting)
        self.assertIs(f.service._pool.idle(app), connection)

    def test_authorities(self):
        """
        New authorities route to the same route, now counted under the new
        first authority.
        """
        route = self.f.route(b"web")
        text = services(web=("round-robin", [A])).replace("balancer", 'authorities = ["www", "web"]\nbalancer')
        self.reload(LISTENERS + text)
        self.assertIs(self.f.route(b"www"), route)
        self.assertEqual(route.authority, "www")

    def test_listenersNeedRestart(self):
        """
        Listener and C{[proxy]} changes are not applied, and the log says a
        restart is needed; services still change.
        """
        text = LISTENERS.replace("9001", "9002").replace("10s", "5s") + services(web=("round-robin", [C]))
        self.reload(text)
        self.assertIn("proxy, upstreams need a restart", self.f.log())
        self.assertEqual(self.service.config.upstreams[0].listen, "tcp:9001:interface=127.0.0.1")
        self.assertEqual(self.service.config.proxy.shutdown_grace, 10.0)
        self.assertEqual(self.f.endpoints("web"), [C])

    def test_upstreamServiceStays(self):
        """
        The service of a running upstream listener is not removed.
        """
        self.reload(LISTENERS.replace('service = "web"', 'service = "api"') + services(api=("random", [C])))
        self.assertIn("web", self.service.balancers)
        self.assertIn("services.web (an upstream listener relays to it)", self.f.log())

    def test_invalid(self):
        """
        A file with problems is refused, each one logged, and the
        configuration in use stays.
        """
        config = self.service.config
        self.reload(LISTENERS + services(web=("fastest", [A])) + "[bogus]\n")
        self.assertIs(self.service.config, config)
        log = self.f.log()
        self.assertIn("services.web.balancer: expected one of", log)
        self.assertIn("bogus: unknown key", log)
        self.assertIn("refused (2 problems)", log)
        self.assertEqual(self.f.endpoints("web"), [A, B])

    def test_unchanged(self):
        self.reload(LISTENERS + services(web=("round-robin", [A, B])))
        self.assertIn("no service changed", self.f.log())

    def test_hangup(self):
        """
        SIGHUP asks the reactor to reload at its next turn.
        """
        installed = {}
        reloadOnHangup(self.service, self.f.reactor, lambda signum, handler: installed.update({signum: handler}))
        (handler,) = installed.values()
        called = []
        self.f.reactor.callFromThread = lambda f, *args: called.append(f)
        handler(1, None)
        self.assertEqual(called, [self.service.reloadFile])


class ShutdownTests(SynchronousTestCase):
    """
    L{ProxyService.stopService} drains before the rest of the tree stops.
    """

    def setUp(self) -> None:
        self.f = Fixture(self, LISTENERS + services(web=("round-robin", [A])))
        self.service = self.f.service
        self.reactor = self.f.reactor

    def accept(self) -> StringTransport:
        """
        A connection accepted by the upstream listener.
        """
        (factory,) = [factory for port, factory, *_ in self.reactor.tcpServers if port == 9001]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_drains(self):
        """
        C{/ready} turns unready and the data listeners stop at once; the
        admin server and discovery stop only when the last connection
        closes.
        """
        protocol, transport = self.accept()
        stopped = self.service.stopService()
        self.assertEqual(self.service.readiness.pending[0], "draining")
        self.assertNoResult(stopped)
        self.assertTrue(self.service.running)
        listening = [child.description for child in self.service if isinstance(child, ListenerService)]
        self.assertEqual(listening, [self.service.config.admin.listen])
        self.assertIn("1 connections open, 10s to finish", self.f.log())
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertFalse(self.service.running)
        self.assertIn("Every connection finished", self.f.log())

    def test_grace(self):
        """
        After the grace period, the connections left are aborted and the
        service stops.
        """
        transport = self.accept()[1]
        transport.abortConnection = lambda: setattr(transport, "aborted", True)
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        self.assertTrue(transport.aborted)
        self.assertIn("aborting 1 connections", self.f.log())

    def test_exitStatus(self):
        """
        The signal that stopped the reactor was handled: twistd is not to
        kill itself with it, so the process exits 0.
        """
        directlyProvides(self.reactor, _ISupportsExitSignalCapturing)
        self.reactor._exitSignal = signal.SIGTERM
        self.successResultOf(self.service.stopService())
        self.assertIsNone(self.reactor._exitSignal)

    def test_shutdown(self):
        """
        C{/shutdown} stops the reactor, once: its shutdown stops the service.
        """
        self.service.shutdown()
        self.assertTrue(self.reactor.hasStopped)
        self.reactor.hasStopped = False
        self.service.shutdown()
        self.assertFalse(self.reactor.hasStopped)

    def test_noReloadWhileStopping(self):
        self.service.stopService()
        self.service.reloadFile()
        self.assertIn("Not reloading", self.f.log())
