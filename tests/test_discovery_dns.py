"""
Tests for L{meshproxy.discovery._dns}: the schedule, the records-to-
endpoints mapping, and L{DNSResolver} against an in-memory name server.
"""

from __future__ import annotations

from random import Random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import Address, Endpoint
from meshproxy.discovery import SRV, DNSResolver, IResolver, SRVSchedule, srvEndpoints
from meshproxy.discovery._dns import MIN_TTL, NXDOMAIN_GRACE

from .test_discovery import RecordingSink

NAME = "_web._tcp.mesh"


class SRVScheduleTests(SynchronousTestCase):
    def test_ttlFloor(self):
        schedule = SRVSchedule(Random(1))
        self.assertEqual(schedule.answered(30), 30)
        self.assertEqual(schedule.answered(1), MIN_TTL)

    def test_missingBeforeAnyAnswer(self):
        """
        With no set to keep, a missing name is an empty set at once.
        """
        self.assertEqual(SRVSchedule(Random(1)).missing(100.0), (True, MIN_TTL))

    def test_grace(self):
        """
        A name that goes missing keeps the set for the grace period, asked
        about every L{MIN_TTL} and once more when the grace ends.
        """
        schedule = SRVSchedule(Random(1), grace=12.0)
        schedule.answered(5)
        self.assertEqual(schedule.missing(100.0), (False, MIN_TTL))
        self.assertEqual(schedule.missing(110.0), (False, 2.0))
        self.assertEqual(schedule.missing(112.0), (True, MIN_TTL))
        schedule.answered(5)
        self.assertEqual(schedule.missing(200.0), (False, MIN_TTL))

    def test_failuresBackOff(self):
        schedule = SRVSchedule(Random(1))
        delays = [schedule.failed() for _ in range(8)]
        self.assertTrue(1.0 <= delays[0] <= 1.5)
        self.assertEqual(delays[-1], 30.0)
        schedule.answered(5)
        self.assertEqual(schedule.failures, 0)


class SRVEndpointsTests(SynchronousTestCase):
    def test_lowestPriorityOnly(self):
        problems = []
        records = [
            SRV(10, 60, 8080, "web-0.mesh", ("127.0.0.10", "::1"), "web.mesh.local"),
            SRV(10, 0, 8081, "web-1.mesh", ("127.0.0.11",)),
            SRV(20, 10, 8080, "backup.mesh", ("127.0.0.99",)),
        ]
        self.assertEqual(
            srvEndpoints(NAME, records, None, True, problems.append),
            [
                Endpoint(Address("127.0.0.10", 8080), "web.mesh.local", 60),
                Endpoint(Address("::1", 8080), "web.mesh.local", 60),
                Endpoint(Address("127.0.0.11", 8081), None, 1),
            ],
        )
        self.assertEqual(problems, [])

    def test_pattern(self):
        records = [SRV(0, 1, 80, "web-0.mesh", ("127.0.0.10",), "ignored.mesh")]
        self.assertEqual(
            srvEndpoints(NAME, records, "{target}.id.local", True, [].append),
            [Endpoint(Address("127.0.0.10", 80), "web-0.mesh.id.local")],
        )

    def test_invalidLeftOut(self):
        """
        A TXT identity that is no DNS name leaves its endpoints out, with a
        message naming the record.
        """
        problems = []
        records = [SRV(0, 1, 80, "web-0.mesh", ("127.0.0.10",), "Not A Name"), SRV(0, 1, 80, "b.mesh", ("127.0.0.2",))]
        self.assertEqual(srvEndpoints(NAME, records, None, True, problems.append), [Endpoint(Address("127.0.0.2", 80))])
        self.assertEqual(len(problems), 1)
        self.assertIn(f"DNS {NAME} SRV web-0.mesh: identity:", problems[0])


class FakeNames:
    """
    An in-memory name server: records by (name, type), or an exception to
    fail with; every query is counted.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.errors: dict[str, Exception] = {}
        self.queries = 0
        self.hold: Deferred | None = None

    def srv(self, target: str, port: int, ttl: int = 30, priority: int = 0, weight: int = 1) -> None:
        self.records.setdefault((NAME, dns.SRV), []).append(
            dns.RRHeader(NAME, dns.SRV, ttl=ttl, payload=dns.Record_SRV(priority, weight, port, target, ttl=ttl))
        )

    def a(self, name: str, address: str, ttl: int = 30) -> None:
        self.records.setdefault((name, dns.A), []).append(
            dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(address, ttl))
        )

    def txt(self, name: str, text: bytes) -> None:
        self.records.setdefault((name, dns.TXT), []).append(
            dns.RRHeader(name, dns.TXT, payload=dns.Record_TXT(text))
        )

    def _lookup(self, name: str, kind: int):
        self.queries += 1
        if self.hold is not None:
            return self.hold
        if name in self.errors:
            return fail(self.errors[name])
        return succeed((self.records.get((name, kind), []), [], []))

    def lookupService(self, name, timeout=None):
        return self._lookup(name, dns.SRV)

    def lookupAddress(self, name, timeout=None):
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup(name, dns.AAAA)

    def lookupText(self, name, timeout=None):
        return self._lookup(name, dns.TXT)


class DNSResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.names = FakeNames()
        self.clock = Clock()
        self.resolver = DNSResolver(self.names, NAME, None, True, self.clock, Random(1))
        self.sink = RecordingSink()

    def test_interface(self):
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_resolvesAgainAtTTL(self):
        """
        The set is pushed at start, resolved again when the shortest TTL of
        the SRV and address records runs out, and a changed SRV set then
        replaces it.  Identities come from TXT records.
        """
        self.names.srv("web-0.mesh", 8080, ttl=30)
        self.names.a("web-0.mesh", "127.0.0.10", ttl=7)
        self.names.txt("web-0.mesh", b"identity=web.mesh.local")
        self.resolver.start(self.sink)
        web0 = Endpoint(Address("127.0.0.10", 8080), "web.mesh.local")
        self.assertEqual(self.sink.endpoints, [web0])
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [7.0])
        self.names.srv("web-1.mesh", 8080)
        self.names.a("web-1.mesh", "127.0.0.11")
        self.clock.advance(6.9)
        self.assertEqual(self.sink.endpoints, [web0])
        self.clock.advance(0.1)
        self.assertEqual(self.sink.endpoints, [web0, Endpoint(Address("127.0.0.11", 8080))])
        self.resolver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeoutKeepsSet(self):
        """
        A timeout keeps the last set and retries with backoff.
        """
        self.names.srv("web-0.mesh", 8080)
        self.names.a("web-0.mesh", "127.0.0.10")
        self.resolver.start(self.sink)
        self.names.errors[NAME] = DNSQueryTimeoutError(1)
        for _ in range(5):
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.assertEqual(len(self.sink.calls), 1)
        self.assertEqual(self.resolver.schedule.failures, 5)
        self.assertEqual(self.sink.endpoints, [Endpoint(Address("127.0.0.10", 8080))])

    def test_targetFailureKeepsSet(self):
        """
        A failed address lookup of a target fails the whole resolution: a
        partial set would drop the target's endpoints.
        """
        self.names.srv("web-0.mesh", 8080)
        self.names.a("web-0.mesh", "127.0.0.10")
        self.resolver.start(self.sink)
        self.names.errors["web-0.mesh"] = DNSLookupError("server failure")
        self.clock.advance(30)
        self.assertEqual(self.sink.endpoints, [Endpoint(Address("127.0.0.10", 8080))])
        self.assertEqual(self.resolver.schedule.failures, 1)

    def test_nxdomainEmptiesAfterGrace(self):
        self.names.srv("web-0.mesh", 8080, ttl=5)
        self.names.a("web-0.mesh", "127.0.0.10", ttl=5)
        self.resolver.start(self.sink)
        self.names.errors[NAME] = DNSNameError("NXDOMAIN")
        self.clock.advance(5)
        self.clock.pump([MIN_TTL] * int(NXDOMAIN_GRACE // MIN_TTL - 1))
        self.assertEqual(len(self.sink.endpoints), 1)
        self.clock.advance(MIN_TTL)
        self.assertEqual(self.sink.endpoints, [])

    def test_stopCancels(self):
        self.names.hold = Deferred()
        self.resolver.start(self.sink)
        self.resolver.stop()
        self.assertEqual((self.sink.calls, self.clock.getDelayedCalls()), ([], []))
