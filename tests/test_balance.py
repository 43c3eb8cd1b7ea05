"""
Tests for L{meshproxy.balance}: the algorithms, the round-trip time
estimate and endpoint health.
"""

from collections import Counter
from random import Random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balance import (
    BALANCERS,
    EndpointSnapshot,
    IBalancer,
    IPick,
    LeastRequest,
    P2CPeakEWMA,
    RandomChoice,
    RoundRobin,
)
from meshproxy.balance._ewma import PeakEWMA
from meshproxy.backoff import backoffPolicy as ejectionBackoff
from meshproxy.balance._health import CONSECUTIVE_FAILURES
from meshproxy.config import BALANCERS as CONFIG_BALANCERS, Address, Endpoint


def endpoint(name, weight=1):
    return Endpoint(Address(name, 80), weight=weight)


A, B, C = endpoint("a"), endpoint("b"), endpoint("c")


def build(factory, endpoints, seed=0):
    """
    A balancer on a fresh L{Clock} with a seeded random source.

    @return: the balancer and its clock.
    """
    clock = Clock()
    return factory(endpoints, clock, Random(seed)), clock


def hosts(balancer, count, exclude=frozenset()):
    return "".join(balancer.pick(exclude).endpoint.address.host for _ in range(count))


def served(balancer, count, exclude=frozenset()):
    """
    Like L{hosts}, but each request is over before the next is picked.
    """
    chosen = []
    for _ in range(count):
        pick = balancer.pick(exclude)
        pick.finished(True)
        chosen.append(pick.endpoint.address.host)
    return "".join(chosen)


def others(balancer, chosen):
    """
    Every endpoint of C{balancer} but C{chosen}.
    """
    return frozenset(s.endpoint for s in balancer.snapshots()) - {chosen}


def fail(balancer, chosen, times=1, refused=False):
    """
    Send C{times} requests to C{chosen} and have each fail.
    """
    for _ in range(times):
        pick = balancer.pick(exclude=others(balancer, chosen))
        if pick is None or pick.endpoint != chosen:
            raise AssertionError(f"{chosen} is not usable")
        pick.finished(False, refused=refused)


def snapshot(balancer, chosen):
    [found] = [s for s in balancer.snapshots() if s.endpoint == chosen]
    return found


class _FixedRandom(Random):
    """
    A random source whose C{random()} always returns one value.
    """

    def __init__(self, value):
        super().__init__(0)
        self._value = value

    def random(self):
        return self._value


class RegistryTests(SynchronousTestCase):
    def test_registry(self):
        """
        Every balancer name the configuration accepts has an implementation.
        """
        self.assertEqual(sorted(BALANCERS), sorted(CONFIG_BALANCERS))

    def test_default(self):
        """
        P2C over peak-EWMA is the default.
        """
        self.assertEqual(CONFIG_BALANCERS[0], "p2c-peak-ewma")
        self.assertIs(BALANCERS[CONFIG_BALANCERS[0]], P2CPeakEWMA)

    def test_interfaces(self):
        """
        Every balancer, built as the registry builds it, and its picks
        provide their interfaces.
        """
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, _ = build(factory, [A, B])
                self.assertTrue(verifyObject(IBalancer, balancer))
                self.assertTrue(verifyObject(IPick, balancer.pick()))

    def test_empty(self):
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, _ = build(factory, [])
                self.assertIsNone(balancer.pick())
                self.assertFalse(balancer.ready)

    def test_exclude(self):
        """
        No balancer picks an excluded endpoint, and none picks at all when
        every endpoint is excluded.
        """
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, _ = build(factory, [A, B, C])
                self.assertEqual(set(hosts(balancer, 20, exclude={A})), {"b", "c"})
                self.assertIsNone(balancer.pick(exclude={A, B, C}))


class RoundRobinTests(SynchronousTestCase):
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

    def test_defaultClockAndRandom(self):
        """
        Without a clock and a random source, a balancer uses the reactor's
        and a fresh one, as L{ClientService} does.
        """
        from twisted.internet import reactor

        balancer = RoundRobin([A])
        self.assertIs(balancer._clock, reactor)
        self.assertIsInstance(balancer._random, Random)


def sampled(*observations):
    """
    A L{PeakEWMA} started at 0 s that has observed C{(rtt, time)} pairs.
    """
    ewma = PeakEWMA(0.0)
    for rtt, now in observations:
        ewma.observe(rtt, now)
    return ewma


class PeakEWMATests(SynchronousTestCase):
    """
    The estimate, against values worked out by hand from
    C{E = s if s > E else s + (E - s) * exp(-(t - t0) / 10)}.
    """

    def test_initial(self):
        """
        An endpoint not yet heard from is estimated at 30 ms.
        """
        self.assertEqual(PeakEWMA(5.0).peek(5.0), 0.030)

    def test_peak(self):
        """
        A slower sample is believed at once, however recent the estimate.
        """
        self.assertEqual(sampled((0.1, 0.0)).peek(0.0), 0.1)
        self.assertEqual(sampled((0.1, 0.0), (0.5, 0.001)).peek(0.001), 0.5)

    def test_idleDecay(self):
        """
        With nothing observed, the estimate falls by a factor e every 10 s:
        0.1 * e^-1 after 10 s.
        """
        self.assertAlmostEqual(sampled((0.1, 1.0)).peek(11.0), 0.036787944117144235)

    def test_fasterSample(self):
        """
        A faster sample 10 s after a 100 ms one moves the estimate
        1 - e^-1 of the way: 0.02 + 0.08 * e^-1.
        """
        self.assertAlmostEqual(sampled((0.1, 1.0), (0.02, 11.0)).peek(11.0), 0.04943035529371539)

    def test_fasterSampleSoon(self):
        """
        A faster sample right after a slow one hardly moves the estimate:
        0.001 + 0.099 * e^-0.001.
        """
        self.assertAlmostEqual(sampled((0.1, 1.0), (0.001, 1.01)).peek(1.01), 0.09990104948350725)

    def test_decayIsAnObservationOfZero(self):
        """
        Reading the estimate to decide records the decay: a sample 10 s
        after a read at 10 s mixes with 0.1 * e^-1, giving
        0.02 + (0.1 * e^-1 - 0.02) * e^-1 rather than 0.02 + 0.08 * e^-2.
        """
        ewma = sampled((0.1, 0.0))
        self.assertAlmostEqual(ewma.decay(10.0), 0.036787944117144235)
        ewma.observe(0.02, 20.0)
        self.assertAlmostEqual(ewma.peek(20.0), 0.026175939500232424)

    def test_peekRecordsNothing(self):
        ewma = sampled((0.1, 0.0))
        ewma.peek(10.0)
        ewma.observe(0.02, 20.0)
        self.assertAlmostEqual(ewma.peek(20.0), 0.03082682265892902)

    def test_clockBackwards(self):
        """
        A clock that steps back counts as no time passed.
        """
        self.assertEqual(sampled((0.1, 10.0)).peek(5.0), 0.1)


class BackoffTests(SynchronousTestCase):
    def test_doubling(self):
        """
        Without jitter the ejections last 1, 2, 4 ... seconds up to 60.
        """
        policy = ejectionBackoff(_FixedRandom(0.0))
        self.assertEqual([policy(n) for n in range(8)], [1, 2, 4, 8, 16, 32, 60, 60])

    def test_jitterAtMost(self):
        """
        The jitter adds at most half the base, never past 60 s.
        """
        policy = ejectionBackoff(_FixedRandom(1.0))
        self.assertEqual([policy(n) for n in range(7)], [1.5, 3, 6, 12, 24, 48, 60])

    def test_jitterBounds(self):
        policy = ejectionBackoff(Random(1))
        for attempt in range(12):
            base = min(2.0**attempt, 60.0)
            for _ in range(50):
                delay = policy(attempt)
                self.assertTrue(base <= delay <= min(base * 1.5, 60.0), (attempt, delay))

    def test_jitterVaries(self):
        policy = ejectionBackoff(Random(1))
        self.assertGreater(len({policy(0) for _ in range(10)}), 1)

    def test_longOutage(self):
        """
        Any number of ejections in a row is computed, at the maximum.
        """
        self.assertEqual(ejectionBackoff(Random(1))(100000), 60.0)


class EjectionTests(SynchronousTestCase):
    """
    Endpoint health, through the default balancer.
    """

    def setUp(self):
        self.balancer, self.clock = build(P2CPeakEWMA, [A, B], seed=1)

    def picked(self, count=50):
        return {self.balancer.pick().endpoint for _ in range(count)}

    def test_sevenFailuresEject(self):
        fail(self.balancer, A, CONSECUTIVE_FAILURES - 1)
        self.assertFalse(snapshot(self.balancer, A).ejected)
        fail(self.balancer, A)
        self.assertTrue(snapshot(self.balancer, A).ejected)
        self.assertEqual(self.picked(), {B})

    def test_successForgives(self):
        """
        The failures must be consecutive.
        """
        fail(self.balancer, A, CONSECUTIVE_FAILURES - 1)
        self.balancer.pick(exclude={B}).finished(True)
        fail(self.balancer, A, CONSECUTIVE_FAILURES - 1)
        self.assertFalse(snapshot(self.balancer, A).ejected)

    def test_refusalEjectsAtOnce(self):
        fail(self.balancer, A, refused=True)
        self.assertEqual(snapshot(self.balancer, A), EndpointSnapshot(A, 0, 0.030, True, False, 0, 1))
        self.assertEqual(self.picked(), {B})

    def test_singleProbe(self):
        """
        Once the ejection is over the next request is the probe, and no
        other request goes to the endpoint until it has answered; its
        success puts the endpoint back.
        """
        fail(self.balancer, A, refused=True)
        self.clock.advance(0.999)
        self.assertEqual(self.picked(), {B})
        self.clock.advance(0.5)
        self.assertTrue(snapshot(self.balancer, A).usable)
        probe = self.balancer.pick(exclude={B})
        self.assertEqual(probe.endpoint, A)
        self.assertIsNone(self.balancer.pick(exclude={B}))
        self.assertEqual(self.picked(), {B})
        probe.finished(True)
        self.assertFalse(snapshot(self.balancer, A).ejected)
        self.assertIn(A, self.picked())

    def test_probeFailureBacksOff(self):
        """
        A failed probe ejects the endpoint again, for twice as long up to
        a minute (plus up to half of it as jitter); a successful probe
        starts the backoff again from one second.
        """
        fail(self.balancer, A, refused=True)
        lengths = []
        for _ in range(8):
            self.clock.advance(self.balancer.nextProbe() - self.clock.seconds())
            fail(self.balancer, A)
            lengths.append(self.balancer.nextProbe() - self.clock.seconds())
        for attempt, length in enumerate(lengths, 1):
            base = min(2.0**attempt, 60.0)
            self.assertAlmostBetween(base, length, min(1.5 * base, 60.0))
        self.clock.advance(60)
        self.balancer.pick(exclude={B}).finished(True)
        fail(self.balancer, A, refused=True)
        self.assertAlmostBetween(1.0, self.balancer.nextProbe() - self.clock.seconds(), 1.5)

    def assertAlmostBetween(self, low, value, high):
        """
        C{low <= value <= high}, but for the rounding of clock arithmetic.
        """
        self.assertTrue(low - 1e-9 <= value <= high + 1e-9, (low, value, high))

    def test_staleOutcomesIgnored(self):
        """
        Requests sent before an ejection do not count after it: their
        failures do not lengthen it, and their successes pass neither for
        the probe's nor for a healthy endpoint's.
        """
        early = [self.balancer.pick(exclude={B}) for _ in range(3)]
        fail(self.balancer, A, refused=True)
        until = self.balancer.nextProbe()
        early[0].finished(False)
        early[1].finished(False, refused=True)
        self.assertEqual(self.balancer.nextProbe(), until)
        self.clock.advance(2)
        probe = self.balancer.pick(exclude={B})
        early[2].finished(True)
        self.assertTrue(snapshot(self.balancer, A).ejected)
        probe.finished(True)
        self.assertFalse(snapshot(self.balancer, A).ejected)
        self.assertEqual(snapshot(self.balancer, A).inFlight, 0)

    def test_everyAlgorithm(self):
        """
        Ejection holds whatever the algorithm.
        """
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, _ = build(factory, [A, B, C])
                fail(balancer, A, refused=True)
                fail(balancer, B, CONSECUTIVE_FAILURES)
                self.assertEqual(hosts(balancer, 20), "c" * 20)

    def test_ready(self):
        self.assertTrue(self.balancer.ready)
        fail(self.balancer, A, refused=True)
        self.assertTrue(self.balancer.ready)
        fail(self.balancer, B, refused=True)
        self.assertFalse(self.balancer.ready)
        self.assertIsNone(self.balancer.pick())
        self.clock.advance(1.5)
        self.assertTrue(self.balancer.ready)

    def test_nextProbe(self):
        """
        The next probe is due when the earliest ejection still running
        ends; there is none to wait for while probes are in flight.
        """
        self.assertIsNone(self.balancer.nextProbe())
        fail(self.balancer, A, refused=True)
        self.clock.advance(0.1)
        fail(self.balancer, B, refused=True)
        untilA = self.balancer.nextProbe()
        self.assertTrue(1.0 <= untilA <= 1.5)
        self.clock.advance(untilA)
        self.balancer.pick(exclude={B})
        untilB = self.balancer.nextProbe()
        self.assertTrue(1.1 <= untilB <= 1.6)
        self.clock.advance(untilB)
        self.balancer.pick(exclude={A})
        self.assertIsNone(self.balancer.nextProbe())

    def test_subscribe(self):
        """
        Listeners hear of updates, ejections and readmissions, not of the
        probe's start.
        """
        calls = []
        self.balancer.subscribe(lambda: calls.append(self.balancer.ready))
        fail(self.balancer, A, refused=True)
        fail(self.balancer, B, refused=True)
        self.assertEqual(calls, [True, False])
        self.clock.advance(2)
        probe = self.balancer.pick(exclude={B})
        self.assertEqual(len(calls), 2)
        probe.finished(True)
        self.balancer.update([A])
        self.assertEqual(calls, [True, False, True, True])


class P2CTests(SynchronousTestCase):
    def test_distinctCandidates(self):
        """
        The two candidates are distinct: with two endpoints the cheaper
        always wins, where drawing one endpoint twice would sometimes
        choose the dearer.
        """
        balancer, _ = build(P2CPeakEWMA, [A, B])
        held = balancer.pick(exclude={A})
        self.assertEqual(served(balancer, 200), "a" * 200)
        self.assertEqual(snapshot(balancer, held.endpoint).inFlight, 1)

    def test_inFlightPenalty(self):
        """
        With equal round-trip times, requests in flight spread: each
        endpoint's cost grows with its load.
        """
        balancer, _ = build(P2CPeakEWMA, [A, B, C])
        picks = [balancer.pick() for _ in range(300)]
        counts = Counter(p.endpoint for p in picks)
        self.assertTrue(all(90 <= n <= 110 for n in counts.values()), counts)

    def test_slowEndpointAvoided(self):
        """
        One slow response makes an endpoint lose to any endpoint whose
        estimate is lower.
        """
        balancer, clock = build(P2CPeakEWMA, [A, B])
        pick = balancer.pick(exclude={B})
        clock.advance(0.5)
        pick.responded()
        pick.finished(True)
        self.assertEqual(served(balancer, 20), "b" * 20)

    def test_slowEndpointRetried(self):
        """
        Once its estimate has decayed below that of a peer answering in
        30 ms, a shunned endpoint gets traffic again.  Picking every second,
        the peer's estimate is 0.03 * e^-0.1 when read, and the slow
        endpoint's, answered at 0.5 s, is lower from
        t = 0.5 + 10 * ln(0.5 / (0.03 * e^-0.1)) = 29.6 s.
        """
        balancer, clock = build(P2CPeakEWMA, [A, B])
        pick = balancer.pick(exclude={B})
        clock.advance(0.5)
        _complete(pick)
        while True:
            clock.advance(1)
            pick = balancer.pick()
            if pick.endpoint == A:
                break
            clock.advance(0.03)
            _complete(pick)
        self.assertTrue(29.6 <= clock.seconds() < 30.6, clock.seconds())

    def test_weightDividesCost(self):
        """
        An endpoint of weight 3 holds three times the requests of one of
        weight 1 before it costs as much.
        """
        self.assertEqual(heldLoad(P2CPeakEWMA, 3, 40), (30, 10))

    def test_slowShare(self):
        """
        Of two endpoints, one ten times slower, P2C sends the slow one a
        small share where round robin sends it half.
        """
        fast, slow = A, B
        latency = {fast: 0.010, slow: 0.100}
        for factory, low, high in [(P2CPeakEWMA, 0.0, 0.1), (RoundRobin, 0.5, 0.5)]:
            with self.subTest(factory.__name__):
                balancer, clock = build(factory, [fast, slow])
                counts = Counter()
                for _ in range(2000):
                    pick = balancer.pick()
                    counts[pick.endpoint] += 1
                    clock.callLater(latency[pick.endpoint], _complete, pick)
                    clock.advance(0.005)
                share = counts[slow] / 2000
                self.assertTrue(low <= share <= high, share)


def heldLoad(factory, weight, count):
    """
    Make C{count} picks from an endpoint of weight C{weight} and one of
    weight 1, finishing none.

    @return: the requests in flight on each.
    """
    heavy = endpoint("a", weight)
    balancer, _ = build(factory, [heavy, B])
    for _ in range(count):
        balancer.pick()
    return snapshot(balancer, heavy).inFlight, snapshot(balancer, B).inFlight


def _complete(pick):
    pick.responded()
    pick.finished(True)


class LeastRequestTests(SynchronousTestCase):
    def test_fewestInFlight(self):
        balancer, _ = build(LeastRequest, [A, B, C])
        held = [balancer.pick(exclude={A}) for _ in range(4)]
        self.assertEqual(hosts(balancer, 2), "aa")
        held[0].finished(True)
        self.assertEqual(balancer.pick().endpoint, held[0].endpoint)

    def test_tiesRandom(self):
        """
        Idle endpoints tie, and ties are broken at random rather than
        always for the first.
        """
        balancer, _ = build(LeastRequest, [A, B, C])
        self.assertEqual(set(served(balancer, 30)), {"a", "b", "c"})

    def test_weights(self):
        self.assertEqual(heldLoad(LeastRequest, 2, 30), (20, 10))


class RandomChoiceTests(SynchronousTestCase):
    def test_weights(self):
        balancer, _ = build(RandomChoice, [endpoint("a", 3), B])
        counts = Counter(hosts(balancer, 4000))
        self.assertTrue(2900 <= counts["a"] <= 3100, counts)

    def test_seeded(self):
        """
        The same seed makes the same choices.
        """
        first, _ = build(RandomChoice, [A, B, C], seed=7)
        second, _ = build(RandomChoice, [A, B, C], seed=7)
        self.assertEqual(hosts(first, 50), hosts(second, 50))


class UpdateTests(SynchronousTestCase):
    def test_keepsState(self):
        """
        Endpoints that stay keep their requests in flight, round-trip time
        estimate and ejection; new ones start afresh.
        """
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, clock = build(factory, [A, B])
                held = balancer.pick(exclude={B})
                clock.advance(0.2)
                held.responded()
                fail(balancer, B, refused=True)
                before = balancer.snapshots()
                balancer.update([C, B, A])
                self.assertEqual(balancer.snapshots()[1:], before[::-1])
                self.assertEqual(balancer.snapshots()[0], EndpointSnapshot(C, 0, 0.030, False, True, 0, 0))

    def test_removedPicksFinish(self):
        """
        A request in flight on a removed endpoint finishes without error
        and without a trace in the balancer, which no longer picks it.
        """
        for name, factory in BALANCERS.items():
            with self.subTest(name):
                balancer, clock = build(factory, [A, B])
                picks = [balancer.pick(exclude={B}) for _ in range(CONSECUTIVE_FAILURES)]
                balancer.update([B])
                clock.advance(0.1)
                for pick in picks:
                    pick.responded()
                    pick.finished(False)
                self.assertEqual([s.endpoint for s in balancer.snapshots()], [B])
                self.assertEqual(set(hosts(balancer, 10)), {"b"})
                self.assertFalse(snapshot(balancer, B).ejected)

    def test_readded(self):
        """
        An endpoint removed and added again starts afresh.
        """
        balancer, _ = build(P2CPeakEWMA, [A, B])
        fail(balancer, A, refused=True)
        balancer.update([B])
        balancer.update([A, B])
        self.assertFalse(snapshot(balancer, A).ejected)

    def test_snapshots(self):
        balancer, clock = build(P2CPeakEWMA, [A, B])
        pick = balancer.pick(exclude={B})
        balancer.pick(exclude={B})
        clock.advance(0.1)
        pick.responded()
        pick.finished(True)
        clock.advance(10)
        a, b = balancer.snapshots()
        self.assertEqual((a.endpoint, a.inFlight, a.ejected, a.usable), (A, 1, False, True))
        self.assertAlmostEqual(a.rtt, 0.036787944117144235)
        self.assertEqual((b.endpoint, b.inFlight), (B, 0))
