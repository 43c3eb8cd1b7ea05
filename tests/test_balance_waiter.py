"""
Tests for L{meshproxy.balance.Waiter}.
"""

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balance import FAILFAST, NoEndpointsReady, P2CPeakEWMA, Waiter

from .test_balance import A, B, C, build, fail


class WaiterTests(SynchronousTestCase):
    def setUp(self):
        self.balancer, self.clock = build(P2CPeakEWMA, [A, B])
        self.waiter = Waiter(self.balancer, self.clock)

    def ejectAll(self):
        """
        Eject both endpoints, A's ejection ending first.
        """
        fail(self.balancer, A, refused=True)
        self.clock.advance(0.6)
        fail(self.balancer, B, refused=True)

    def test_replace(self):
        """
        After L{Waiter.replace} picks come from the new balancer, and a
        request that waited is served by it.
        """
        self.balancer.update([])
        waiting = self.waiter.pick()
        new, _ = build(P2CPeakEWMA, [])
        self.waiter.replace(new)
        self.assertNoResult(waiting)
        new.update([C])
        self.assertEqual(self.successResultOf(waiting).endpoint, C)
        # The old balancer's changes only make the waiter look again.
        self.balancer.update([A])
        self.assertEqual(self.successResultOf(self.waiter.pick()).endpoint, C)

    def test_retryStopsEarly(self):
        """
        A balancer event while many requests wait costs no picks when no
        endpoint is usable; one that makes an endpoint usable serves them.
        """
        picks = []
        pick = self.balancer.pick
        self.balancer.pick = lambda exclude=frozenset(): picks.append(exclude) or pick(exclude)
        self.ejectAll()
        waiting = [self.waiter.pick() for _ in range(100)]
        del picks[:]
        self.balancer.update([A, B])
        self.assertEqual(picks, [])
        self.balancer.update([A, B, C])
        for d in waiting:
            self.assertEqual(self.successResultOf(d).endpoint, C)

    def test_usableAtOnce(self):
        pick = self.successResultOf(self.waiter.pick(exclude={B}))
        self.assertEqual(pick.endpoint, A)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failfast(self):
        """
        A request with no usable endpoint fails after the failfast time,
        3 s, and leaves no timer behind.
        """
        self.balancer.update([])
        d = self.waiter.pick()
        self.clock.advance(FAILFAST - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertEqual(str(self.failureResultOf(d, NoEndpointsReady).value), "no endpoints ready")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_probesInFlight(self):
        """
        While every ejected endpoint's probe is in flight there is nothing
        to wait for but the probes and the failfast time.
        """
        self.ejectAll()
        first, second, third = self.waiter.pick(), self.waiter.pick(), self.waiter.pick()
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertEqual([self.successResultOf(d).endpoint for d in (first, second)], [A, B])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(FAILFAST)
        self.failureResultOf(third, NoEndpointsReady)

    def test_probeWhenDue(self):
        """
        A waiting request gets the probe of the first ejection to end, when
        it ends.
        """
        self.ejectAll()
        d = self.waiter.pick()
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertEqual(self.successResultOf(d).endpoint, A)

    def test_readmittedByProbe(self):
        """
        When a probe readmits an endpoint, every request waiting is served
        at once, in the order they came.
        """
        self.ejectAll()
        first, second = self.waiter.pick(), self.waiter.pick()
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        probe = self.successResultOf(first)
        self.assertNoResult(second)
        probe.finished(True)
        self.assertEqual(self.successResultOf(second).endpoint, A)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedProbe(self):
        """
        When the probe fails, waiting requests wait for the next ejection
        to end.
        """
        self.ejectAll()
        first, second = self.waiter.pick(), self.waiter.pick()
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.successResultOf(first).finished(False)
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertEqual(self.successResultOf(second).endpoint, B)

    def test_update(self):
        """
        New endpoints serve waiting requests at once.
        """
        self.ejectAll()
        d = self.waiter.pick()
        self.balancer.update([A, B, C])
        self.assertEqual(self.successResultOf(d).endpoint, C)

    def test_exclude(self):
        """
        A waiting request is served only by an endpoint it does not
        exclude.
        """
        self.ejectAll()
        d = self.waiter.pick(exclude={A})
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertNoResult(d)
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertEqual(self.successResultOf(d).endpoint, B)

    def test_oldestFirst(self):
        """
        A new request does not take the probe from one already waiting,
        even before the wake-up timer has run.
        """
        self.ejectAll()
        waiting = self.waiter.pick()
        self.clock.rightNow = self.balancer.nextProbe()
        late = self.waiter.pick()
        self.assertEqual(self.successResultOf(waiting).endpoint, A)
        self.assertNoResult(late)

    def test_cancel(self):
        """
        Cancelling a waiting request takes it out of the queue and stops
        its timers.
        """
        self.ejectAll()
        d = self.waiter.pick()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reentrant(self):
        """
        A request served from the queue may finish its pick at once (a
        connect refused on the spot), which ejects the endpoint and looks
        at the queue again; the queue is not disturbed.
        """
        self.ejectAll()
        first, second, third = self.waiter.pick(), self.waiter.pick(), self.waiter.pick()
        first.addCallback(lambda pick: pick.finished(False, refused=True))
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.successResultOf(first)
        self.assertNoResult(second)
        self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
        self.assertEqual(self.successResultOf(second).endpoint, B)
        self.assertNoResult(third)
