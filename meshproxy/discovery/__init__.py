# -*- test-case-name: tests.test_discovery -*-
"""
Service discovery: where each service's endpoints come from.

Every service has one resolver (L{IResolver}): its static C{endpoints}, a
watched JSON file, DNS SRV records or etcd keys.  The resolver pushes what
it finds into a L{BalancerSink}, which updates the service's balancer,
counts the change in C{discovery_updates_total{service,source}} and
C{discovery_endpoints{service}}, and marks the service's readiness
condition met at the first answer.  L{discoveryService} builds the one
L{DiscoveryService} of a configured service, which runs its resolver while
the proxy runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from random import Random

from ..config import DNSDiscovery, EtcdDiscovery, Endpoint, FileDiscovery, Service
from ..metrics import ProxyMetrics
from ..readiness import Readiness
from ._dns import SRV, DNSResolver, SRVSchedule, namesResolver, srvEndpoints
from ._etcd import Changes, Compacted, EtcdMirror, EtcdResolver, prefixEnd
from ._file import FileResolver, watchINotify, watchPolling
from ._gateway import EtcdError, EtcdGateway
from ._interfaces import IEndpointSink, IResolver
from ._sink import BalancerSink, DiscoveryService
from ._static import StaticResolver

__all__ = [
    "SRV",
    "BalancerSink",
    "Changes",
    "Compacted",
    "DNSResolver",
    "DiscoveryService",
    "EtcdError",
    "EtcdGateway",
    "EtcdMirror",
    "EtcdResolver",
    "FileResolver",
    "IEndpointSink",
    "IResolver",
    "SRVSchedule",
    "StaticResolver",
    "discoveryService",
    "namesResolver",
    "prefixEnd",
    "resolverFor",
    "srvEndpoints",
    "watchINotify",
    "watchPolling",
]


def resolverFor(service: Service, mtls: bool, reactor, random: Random) -> IResolver:
    """
    The resolver of a configured service's one source.

    @param mtls: whether the proxy can reach endpoints with an identity.
    """
    source = service.discovery
    if isinstance(source, FileDiscovery):
        return FileResolver(source.path, mtls, watchINotify(reactor) or watchPolling(reactor))
    if isinstance(source, DNSDiscovery):
        return DNSResolver(namesResolver(reactor, source.nameserver), source.name, source.identity, mtls, reactor, random)
    if isinstance(source, EtcdDiscovery):
        gateway = EtcdGateway(reactor, source.urls, source.username, source.password)
        return EtcdResolver(gateway, source.prefix, mtls, reactor, random)
    return StaticResolver(service.endpoints)


def discoveryService(
    service: Service,
    update: Callable[[Iterable[Endpoint]], None],
    metrics: ProxyMetrics,
    readiness: Readiness | None,
    mtls: bool,
    reactor,
    timeout: float,
) -> DiscoveryService:
    """
    Everything that keeps one service's balancer supplied with endpoints.

    @param update: replaces the endpoint set of the service's balancer
        (L{meshproxy.balance.IBalancer.update}).
    @param readiness: what waits for the resolver's first answer, or
        L{None} when nothing should: a service added by a reload does not
        make a running proxy unready.
    @param timeout: how long C{/ready} waits for the resolver's first
        answer.
    """
    resolver = resolverFor(service, mtls, reactor, Random())
    ready = (lambda: None) if readiness is None else readiness.require(f"discovery {service.name} ({resolver.source})")
    # The source is looked up at each change, once the service runs: a
    # reload may have replaced the resolver.
    sink = BalancerSink(update, lambda count: metrics.discovered(service.name, discovery.resolver.source, count), ready)
    discovery = DiscoveryService(service.name, resolver, sink, ready, reactor, timeout)
    return discovery
