"""
Tests for L{meshproxy.limits}.
"""

import resource

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.limits import (
    CONNECTIONS,
    REQUESTS,
    ConnectionLimit,
    Limits,
    LimitsCollector,
    connectionsFor,
    raiseFileLimit,
)


class FakePort:
    """
    A listening port that records whether it is reading (accepting).
    """

    reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class FileLimitTests(SynchronousTestCase):
    def test_raisesSoftToHard(self):
        """
        The soft limit is raised to the hard one, which is returned.
        """
        calls = []
        limit = raiseFileLimit(lambda kind: (1024, 524288), lambda kind, value: calls.append((kind, value)))
        self.assertEqual(limit, 524288)
        self.assertEqual(calls, [(resource.RLIMIT_NOFILE, (524288, 524288))])

    def test_unlimitedHardLimitLeftAlone(self):
        """
        An infinite hard limit is not copied into the soft one (Linux
        refuses an infinite open-files limit).
        """
        calls = []
        limit = raiseFileLimit(lambda kind: (1024, resource.RLIM_INFINITY), lambda *a: calls.append(a))
        self.assertEqual((limit, calls), (1024, []))

    def test_connectionsFor(self):
        """
        Two descriptors per connection after the reserve, and at least one.
        """
        self.assertEqual(connectionsFor(1024), 480)
        self.assertEqual(connectionsFor(10), 1)


class ConnectionLimitTests(SynchronousTestCase):
    def setUp(self):
        self.exceeded = []
        self.limit = ConnectionLimit(2, lambda: self.exceeded.append(True))
        self.ports = [FakePort(), FakePort()]
        for port in self.ports:
            self.limit.listening(port)

    def test_pausesAtTheCap(self):
        """
        Reaching the cap stops every port accepting, once, and counts it.
        """
        self.limit.opened()
        self.assertEqual([p.reading for p in self.ports], [True, True])
        self.limit.opened()
        self.assertEqual([p.reading for p in self.ports], [False, False])
        self.assertEqual(len(self.exceeded), 1)

    def test_resumesBelowTheCap(self):
        """
        A connection closing under the cap starts the ports again.
        """
        self.limit.opened()
        self.limit.opened()
        self.limit.closed()
        self.assertEqual([p.reading for p in self.ports], [True, True])
        self.assertEqual(self.limit.open, 1)

    def test_portBoundWhilePaused(self):
        """
        A port bound while the cap is reached starts paused.
        """
        self.limit.opened()
        self.limit.opened()
        late = FakePort()
        self.limit.listening(late)
        self.assertFalse(late.reading)
        self.limit.closed()
        self.assertTrue(late.reading)

    def test_stoppedPortNotResumed(self):
        """
        A port that stopped listening is not started again.
        """
        self.limit.opened()
        self.limit.opened()
        self.limit.stopped(self.ports[0])
        self.limit.closed()
        self.assertEqual([p.reading for p in self.ports], [False, True])


class LimitsTests(SynchronousTestCase):
    def test_requestCap(self):
        """
        Requests beyond the cap are refused and counted; an ended one
        makes room.
        """
        limits = Limits(10, 2, 65536, 0)
        self.assertEqual([limits.requestBegan() for _ in range(3)], [True, True, False])
        self.assertEqual(limits.exceeded[REQUESTS], 1)
        limits.requestEnded()
        self.assertTrue(limits.requestBegan())

    def test_noRequestCap(self):
        """
        A cap of 0 refuses nothing.
        """
        limits = Limits(10, 0, 65536, 0)
        self.assertTrue(all(limits.requestBegan() for _ in range(1000)))

    def test_metrics(self):
        """
        The collector exports the refusals and the caps.
        """
        limits = Limits(5, 7, 4096, 1024)
        for _ in range(5):
            limits.connections.opened()
        registry = CollectorRegistry()
        registry.register(LimitsCollector(limits))
        text = generate_latest(registry).decode()
        self.assertIn(f'limit_exceeded_total{{limit="{CONNECTIONS}"}} 1.0', text)
        self.assertIn('limit_max{limit="requests"} 7.0', text)
        self.assertIn('limit_max{limit="request_body"} 1024.0', text)
