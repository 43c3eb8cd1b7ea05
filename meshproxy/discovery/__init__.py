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

from random import Random

from ..balance import IBalancer
from ..config import DNSDiscovery, EtcdDiscovery, FileDiscovery, Service
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
    balancer: IBalancer,
    metrics: ProxyMetrics,
    readiness: Readiness,
    mtls: bool,
    reactor,
    timeout: float,
) -> DiscoveryService:
    """
    Everything that keeps one service's balancer supplied with endpoints.

    @param timeout: how long C{/ready} waits for the resolver's first
        answer.
    """
    resolver = resolverFor(service, mtls, reactor, Random())
    ready = readiness.require(f"discovery {service.name} ({resolver.source})")
    sink = BalancerSink(
        balancer.update, lambda count: metrics.discovered(service.name, resolver.source, count), ready
    )
    return DiscoveryService(service.name, resolver, sink, ready, reactor, timeout)
