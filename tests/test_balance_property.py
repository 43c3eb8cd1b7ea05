"""
A property of every balancer in L{meshproxy.balance.BALANCERS}, over random
sequences of picks, responses, outcomes, updates and the passing of time:
no pick ever goes to an ejected, removed or excluded endpoint, and a pick is
refused only when no endpoint is usable.
"""

from collections import Counter
from random import Random

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balance import BALANCERS
from meshproxy.config import Address, Endpoint

UNIVERSE = tuple(Endpoint(Address(f"10.0.0.{n}", 80), weight=n % 3 + 1) for n in range(4))

endpointSets = st.frozensets(st.sampled_from(UNIVERSE))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), endpointSets),
        st.tuples(st.just("respond"), st.integers(0, 50)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from(["success", "failure", "refused"])),
        st.tuples(st.just("update"), endpointSets),
        st.tuples(st.just("advance"), st.sampled_from([0.001, 0.3, 1.0, 2.5, 30.0, 90.0])),
    ),
    max_size=120,
)


class _Run:
    """
    One balancer driven by a sequence of operations, with what the test
    knows independently of it: the endpoint set, and which requests are in
    flight on the current incarnation of each endpoint.

    @ivar endpoints: the endpoint set, as last updated.
    @ivar open: the picks not yet finished, each with the incarnation of
        its endpoint when picked.
    @ivar responded: the open picks already told of their response.
    @ivar incarnation: bumped for an endpoint each time an update removes
        it; picks from an older incarnation are no longer its load.
    """

    def __init__(self, testCase, factory, seed):
        self.testCase = testCase
        self.clock = Clock()
        self.endpoints = UNIVERSE
        self.balancer = factory(self.endpoints, self.clock, Random(seed))
        self.open = []
        self.responded = set()
        self.incarnation = Counter()

    def pick(self, exclude):
        snapshots = self.balancer.snapshots()
        self.testCase.assertEqual([s.endpoint for s in snapshots], list(self.endpoints))
        usable = {s.endpoint for s in snapshots if s.usable}
        self.testCase.assertEqual(self.balancer.ready, bool(usable))
        pick = self.balancer.pick(exclude)
        if not usable - exclude:
            self.testCase.assertIsNone(pick)
            return
        self.testCase.assertIn(pick.endpoint, usable - exclude)
        self.open.append((pick, self.incarnation[pick.endpoint]))

    def respond(self, index):
        if self.open:
            pick, _ = self.open[index % len(self.open)]
            if pick not in self.responded:
                self.responded.add(pick)
                pick.responded()

    def finish(self, index, outcome):
        if self.open:
            pick, _ = self.open.pop(index % len(self.open))
            self.responded.discard(pick)
            pick.finished(outcome == "success", refused=outcome == "refused")

    def update(self, endpoints):
        self.endpoints = tuple(e for e in UNIVERSE if e in endpoints)
        for removed in set(UNIVERSE) - endpoints:
            self.incarnation[removed] += 1
        self.balancer.update(self.endpoints)

    def advance(self, seconds):
        self.clock.advance(seconds)

    def checkLoad(self):
        """
        Each endpoint's requests in flight are the open picks made on it
        since it was last added.
        """
        load = Counter(
            pick.endpoint for pick, incarnation in self.open if incarnation == self.incarnation[pick.endpoint]
        )
        for s in self.balancer.snapshots():
            self.testCase.assertEqual(s.inFlight, load[s.endpoint])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(BALANCERS)), st.integers(0, 2**32), operations)
    def test_onlyUsableEndpoints(self, name, seed, steps):
        run = _Run(self, BALANCERS[name], seed)
        for operation, *arguments in steps:
            getattr(run, operation)(*arguments)
            run.checkLoad()
