"""
Tests for L{meshproxy.balance.BalancerCollector}.
"""

from prometheus_client import CollectorRegistry
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balance import BalancerCollector, P2CPeakEWMA, RoundRobin

from .test_balance import A, B, build, fail


class BalancerCollectorTests(SynchronousTestCase):
    def setUp(self):
        self.web, self.clock = build(P2CPeakEWMA, [A, B])
        self.db, _ = build(RoundRobin, [A])
        self.balancers = {"web": self.web, "db": self.db}
        self.registry = CollectorRegistry()
        self.registry.register(BalancerCollector(self.balancers))

    def value(self, name, **labels):
        return self.registry.get_sample_value(name, labels)

    def test_endpointGauges(self):
        """
        Each endpoint of each service has its requests in flight, its
        round-trip time estimate as of the scrape, and whether it is
        ejected.
        """
        pick = self.web.pick(exclude={B})
        self.web.pick(exclude={B})
        self.clock.advance(0.1)
        pick.responded()
        pick.finished(True)
        fail(self.web, B, refused=True)
        self.clock.advance(10)
        self.assertEqual(self.value("balancer_endpoint_in_flight", service="web", endpoint="a:80"), 1)
        self.assertAlmostEqual(
            self.value("balancer_endpoint_rtt_ewma_seconds", service="web", endpoint="a:80"), 0.036787944117144235
        )
        self.assertEqual(self.value("balancer_endpoint_ejected", service="web", endpoint="a:80"), 0)
        self.assertEqual(self.value("balancer_endpoint_ejected", service="web", endpoint="b:80"), 1)
        self.assertEqual(self.value("balancer_endpoint_in_flight", service="db", endpoint="a:80"), 0)

    def test_endpointRequests(self):
        """
        Each endpoint counts the requests it finished, by the outcome the
        balancer was told; requests in flight are not counted yet.
        """
        for success in (True, True, False):
            self.web.pick(exclude={B}).finished(success)
        self.web.pick(exclude={B})
        self.assertEqual(
            self.value("balancer_endpoint_requests_total", service="web", endpoint="a:80", classification="success"), 2
        )
        self.assertEqual(
            self.value("balancer_endpoint_requests_total", service="web", endpoint="a:80", classification="failure"), 1
        )
        self.assertEqual(
            self.value("balancer_endpoint_requests_total", service="web", endpoint="b:80", classification="success"), 0
        )

    def test_endpointCounts(self):
        fail(self.web, B, refused=True)
        self.assertEqual(self.value("balancer_endpoints", service="web", state="ready"), 1)
        self.assertEqual(self.value("balancer_endpoints", service="web", state="ejected"), 1)
        self.assertEqual(self.value("balancer_endpoints", service="db", state="ready"), 1)
        self.assertEqual(self.value("balancer_endpoints", service="db", state="ejected"), 0)

    def test_live(self):
        """
        Removed endpoints and services leave the next scrape; added ones
        join it.
        """
        self.web.update([B])
        del self.balancers["db"]
        self.assertIsNone(self.value("balancer_endpoint_in_flight", service="web", endpoint="a:80"))
        self.assertIsNone(self.value("balancer_endpoints", service="db", state="ready"))
        self.assertEqual(self.value("balancer_endpoint_in_flight", service="web", endpoint="b:80"), 0)

    def test_scrapeChangesNothing(self):
        """
        A scrape reads the estimates without recording the decay, so the
        balancer decides as if nobody had looked: a 20 ms sample 10 s after
        a 100 ms one still gives 0.02 + 0.08 * e^-1.
        """
        first = self.web.pick(exclude={B})
        self.clock.advance(0.1)
        first.responded()
        first.finished(True)
        self.clock.advance(9.98)
        self.value("balancer_endpoint_rtt_ewma_seconds", service="web", endpoint="a:80")
        second = self.web.pick(exclude={B})
        self.clock.advance(0.02)
        second.responded()
        self.assertAlmostEqual(
            self.value("balancer_endpoint_rtt_ewma_seconds", service="web", endpoint="a:80"), 0.04943035529371539
        )
