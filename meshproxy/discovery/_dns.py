# -*- test-case-name: tests.test_discovery_dns -*-
"""
Endpoints from DNS SRV records, asked of one configured name server.

Each resolution asks for the SRV records of the service's name, then for
the A and AAAA records of each target and, unless the configuration gives
an identity pattern, for a TXT record C{identity=NAME} at each target.
Only the SRV records of the lowest priority are used, as RFC 2782 says a
client should: the others are backups, and the balancer has no notion of
priority that would keep them idle.  An SRV weight of 0 becomes a weight
of 1, the lowest the balancer knows.

The name server is asked directly, with L{twisted.names.client.Resolver}
and explicit servers: C{createResolver} would consult C{/etc/hosts} and a
cache that serves decremented TTLs, and this resolver honours TTLs itself.
It resolves again when the shortest TTL of the answer runs out, but never
more often than every L{MIN_TTL} seconds, so that a zone with TTL 0 does
not turn the proxy into a flood of queries.

A name that does not exist (NXDOMAIN), or has no SRV records, may be a
zone being reloaded: the last set stays for L{NXDOMAIN_GRACE} seconds and
only then becomes empty.  A timeout or a server failure says nothing about
the endpoints, so the last set stays for as long as it lasts, and the
query is retried with a jittered backoff.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from random import Random

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from zope.interface import implementer

from ..backoff import backoffPolicy
from ..config import Address, ConfigError, Endpoint, readEndpoint
from ._interfaces import IEndpointSink, IResolver

__all__ = ["DNSResolver", "MIN_TTL", "NXDOMAIN_GRACE", "SRV", "SRVSchedule", "namesResolver", "srvEndpoints"]

#: The shortest wait between two resolutions, in seconds, whatever the TTL.
MIN_TTL = 5.0
#: How long a missing name keeps the last set, in seconds.
NXDOMAIN_GRACE = 30.0
#: Each query's retransmission timeouts, in seconds: about 4 s in all.
QUERY_TIMEOUT = (1, 3)


@frozen
class SRV:
    """
    One SRV record, with what was found at its target.

    @ivar addresses: the target's IPv4 and IPv6 addresses.
    @ivar identity: the identity a TXT record at the target gave, or
        L{None}.
    """

    priority: int
    weight: int
    port: int
    target: str
    addresses: tuple[str, ...] = ()
    identity: str | None = None


def srvEndpoints(
    name: str, records: Iterable[SRV], pattern: str | None, mtls: bool, problem: Callable[[str], None]
) -> list[Endpoint]:
    """
    The endpoints of the SRV records of the lowest priority: one per
    address of each target.

    @param name: the SRV name, for messages.
    @param pattern: the identity of every endpoint, C{{target}} standing
        for the target's name; or L{None} to use each target's TXT
        identity.
    @param mtls: whether endpoints may have an identity.
    @param problem: called with a message for each record that does not
        make a valid endpoint (it is left out).
    """
    records = list(records)
    if not records:
        return []
    lowest = min(record.priority for record in records)
    endpoints = []
    for record in records:
        if record.priority != lowest:
            continue
        identity = record.identity if pattern is None else pattern.replace("{target}", record.target)
        for address in record.addresses:
            host = f"[{address}]" if ":" in address else address
            data = {"address": f"{host}:{record.port}", "weight": max(record.weight, 1)}
            if identity is not None:
                data["identity"] = identity
            try:
                endpoints.append(readEndpoint(f"DNS {name} SRV {record.target}", data, mtls))
            except ConfigError as e:
                problem("; ".join(e.errors))
    return endpoints


class SRVSchedule:
    """
    When to resolve next, and whether a missing name has been missing long
    enough to empty the set; see the module docstring.  Pure: the caller
    passes the time in.

    @ivar missingSince: when the name was first found missing in the
        current run of missing answers, or L{None}.
    @ivar failures: the failed resolutions in a row.
    @ivar known: whether the name ever had records.  Until it has, there
        is no last set to keep, and a missing name is an empty set at once.
    """

    def __init__(self, random: Random, grace: float = NXDOMAIN_GRACE) -> None:
        self._backoff = backoffPolicy(random, minimum=1.0, maximum=30.0)
        self._grace = grace
        self.missingSince: float | None = None
        self.failures = 0
        self.known = False

    def answered(self, ttl: float) -> float:
        """
        The name has records, the shortest of whose TTLs is C{ttl}.

        @return: the seconds until the next resolution.
        """
        self.missingSince = None
        self.failures = 0
        self.known = True
        return max(ttl, MIN_TTL)

    def missing(self, now: float) -> tuple[bool, float]:
        """
        The name does not exist or has no SRV records.

        @return: whether to empty the set now, and the seconds until the
            next resolution (sooner while the grace period runs, so the
            set empties when it ends).
        """
        self.failures = 0
        if self.missingSince is None:
            self.missingSince = now
        left = self.missingSince + self._grace - now
        if left <= 0 or not self.known:
            return True, MIN_TTL
        return False, min(left, MIN_TTL)

    def failed(self) -> float:
        """
        The resolution failed for another reason (a timeout, a server
        failure): the seconds until the next attempt.
        """
        self.failures += 1
        return self._backoff(self.failures - 1)


@implementer(IResolver)
class DNSResolver:
    """
    Pushes the endpoints of one SRV name; see the module docstring.

    @ivar _names: the L{twisted.names} resolver that asks the name server
        (anything with C{lookupService}, C{lookupAddress},
        C{lookupIPV6Address} and C{lookupText}).
    @ivar _pending: the resolution in flight, or L{None}.
    @ivar _timer: the next resolution, or L{None}.
    """

    source = "dns"
    _log = Logger()

    def __init__(
        self,
        names,
        name: str,
        pattern: str | None,
        mtls: bool,
        clock: IReactorTime,
        random: Random,
    ) -> None:
        """
        @param names: see L{_names}.
        @param name: the SRV name, such as C{_web._tcp.mesh.local}.
        @param pattern: the identity pattern, or L{None} for TXT records.
        @param mtls: whether endpoints may have an identity.
        """
        self._names = names
        self._name = name
        self._pattern = pattern
        self._mtls = mtls
        self._clock = clock
        self.schedule = SRVSchedule(random)
        self._sink: IEndpointSink | None = None
        self._pending: Deferred | None = None
        self._timer: IDelayedCall | None = None

    def start(self, sink: IEndpointSink) -> None:
        self._sink = sink
        self._resolve()

    def stop(self) -> None:
        # No sink: the cancelled resolution's end schedules nothing.
        self._sink = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _resolve(self) -> None:
        self._timer = None
        self._pending = pending = Deferred.fromCoroutine(self._lookup())
        pending.addCallbacks(self._answered, self._failed)

    async def _lookup(self) -> tuple[list[SRV], float]:
        """
        The SRV records of the name with their targets' addresses (and
        identities), and the shortest TTL seen.
        """
        answers, _, _ = await self._names.lookupService(self._name, QUERY_TIMEOUT)
        found = [record for record in answers if record.type == dns.SRV and record.payload.target.name != b""]
        results = await gatherResults(
            [Deferred.fromCoroutine(self._target(record)) for record in found], consumeErrors=True
        )
        records = [record for record, _ in results]
        ttl = min([record.ttl for record in found] + [ttl for _, ttl in results if ttl is not None], default=0)
        return records, ttl

    async def _target(self, answer: dns.RRHeader) -> tuple[SRV, float | None]:
        """
        What is found at an SRV record's target, and the shortest TTL of it.
        """
        srv = answer.payload
        target = srv.target.name.decode("ascii").rstrip(".")
        lookups = [self._names.lookupAddress(target, QUERY_TIMEOUT), self._names.lookupIPV6Address(target, QUERY_TIMEOUT)]
        if self._pattern is None:
            lookups.append(self._names.lookupText(target, QUERY_TIMEOUT))
        results = await DeferredList(lookups, consumeErrors=True)
        addresses, identity, ttls = [], None, []
        for success, result in results:
            if not success:
                # A target with no such record type is normal; anything else
                # fails the whole resolution, which keeps the last set.
                if result.check(DNSNameError):
                    continue
                result.raiseException()
            for record in result[0]:
                if record.type in (dns.A, dns.AAAA):
                    family = socket.AF_INET if record.type == dns.A else socket.AF_INET6
                    addresses.append(socket.inet_ntop(family, record.payload.address))
                    ttls.append(record.ttl)
                elif record.type == dns.TXT:
                    identity = _txtIdentity(record.payload.data) or identity
        return SRV(srv.priority, srv.weight, srv.port, target, tuple(addresses), identity), min(ttls, default=None)

    def _answered(self, result: tuple[list[SRV], float]) -> None:
        if self._sink is None:
            return
        self._pending = None
        records, ttl = result
        if not records:
            self._missing()
            return
        endpoints = srvEndpoints(self._name, records, self._pattern, self._mtls, self._problem)
        self._sink.replace(endpoints)
        self._schedule(self.schedule.answered(ttl))

    def _failed(self, failure: Failure) -> None:
        if self._sink is None:
            return
        self._pending = None
        if failure.check(FirstError):
            # A target's lookup failed: say what failed, not that one did.
            failure = failure.value.subFailure
        if failure.check(DNSNameError):
            self._missing()
            return
        delay = self.schedule.failed()
        self._log.warn(
            "DNS {name}: {reason}; the last endpoints stay in use, asking again in {delay:.1f}s",
            name=self._name,
            reason=failure.getErrorMessage() or failure.type.__name__,
            delay=delay,
        )
        self._schedule(delay)

    def _missing(self) -> None:
        empty, delay = self.schedule.missing(self._clock.seconds())
        if empty:
            self._sink.replace(())
        else:
            self._log.warn("DNS {name}: no SRV records; the last endpoints stay in use for now", name=self._name)
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(delay, self._resolve)

    def _problem(self, message: str) -> None:
        self._log.warn("{message}: left out", message=message)


def _txtIdentity(strings: Iterable[bytes]) -> str | None:
    """
    The identity a TXT record's strings name as C{identity=NAME}, if any.
    """
    for string in strings:
        key, sep, value = string.partition(b"=")
        if sep and key == b"identity":
            return value.decode("ascii", "replace")
    return None


def namesResolver(reactor, nameserver: Address):
    """
    A L{twisted.names.client.Resolver} that asks only C{nameserver}, an
    L{meshproxy.config.Address}.
    """
    from twisted.names.client import Resolver

    return Resolver(servers=[(nameserver.host, nameserver.port)], reactor=reactor)
