"""
Tests for L{meshproxy.balance}.
"""

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balance import BALANCERS, IBalancer, IPick, RoundRobin
from meshproxy.config import BALANCERS as CONFIG_BALANCERS, Address, Endpoint


def endpoint(name, weight=1):
    return Endpoint(Address(name, 80), weight=weight)


A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def hosts(balancer, count, exclude=frozenset()):
    return "".join(balancer.pick(exclude).endpoint.address.host for _ in range(count))


class RoundRobinTests(SynchronousTestCase):
    def test_interfaces(self):
        balancer = RoundRobin([A])
        verifyObject(IBalancer, balancer)
        verifyObject(IPick, balancer.pick())

    def test_registry(self):
        """
        Every balancer name the configuration accepts has an implementation.
        """
        self.assertEqual(sorted(BALANCERS), sorted(CONFIG_BALANCERS))

    def test_inTurn(self):
        self.assertEqual(hosts(RoundRobin([A, B, C]), 7), "abcabca")

    def test_weightsSpreadEvenly(self):
        """
        Weights set the shares, and the heavy endpoint's turns are spread
        out rather than taken all in a row.
        """
        balancer = RoundRobin([endpoint("a", 5), B, C])
        self.assertEqual(hosts(balancer, 7), "aabacaa")
        self.assertEqual(Counter(hosts(balancer, 700)), {"a": 500, "b": 100, "c": 100})

    def test_exclude(self):
        balancer = RoundRobin([A, B, C])
        self.assertEqual(hosts(balancer, 4, exclude={A}), "bcbc")
        self.assertIsNone(balancer.pick(exclude={A, B, C}))

    def test_empty(self):
        self.assertIsNone(RoundRobin().pick())

    def test_updateKeepsRotation(self):
        """
        An update keeps the place of endpoints that stay and drops the ones
        removed.
        """
        balancer = RoundRobin([A, B, C])
        self.assertEqual(hosts(balancer, 1), "a")
        balancer.update([A, B, C, endpoint("d")])
        self.assertEqual(hosts(balancer, 4), "bcda")
        balancer.update([B])
        self.assertEqual(hosts(balancer, 2), "bb")

    def test_pickFeedbackAccepted(self):
        """
        Round robin takes no feedback, but picks accept it like any other.
        """
        pick = RoundRobin([A]).pick()
        pick.responded()
        pick.finished(True)
        self.assertEqual(pick.endpoint, A)
