# -*- test-case-name: tests.test_balance_collector -*-
"""
The balancers' per-endpoint gauges and counters, read at scrape time.

Keeping a gauge or counter child per endpoint up to date would cost a lock
and a dictionary walk on every pick and every finish.  Instead this collector
asks each balancer for its L{IBalancer.snapshots} when Prometheus scrapes,
so the data path pays nothing and removed endpoints disappear from the
next scrape by themselves.
"""

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._interfaces import IBalancer

__all__ = ["BalancerCollector"]

_ENDPOINT_LABELS = ["service", "endpoint"]


class BalancerCollector(Collector):
    """
    Exports C{balancer_endpoint_in_flight},
    C{balancer_endpoint_rtt_ewma_seconds}, C{balancer_endpoint_ejected},
    C{balancer_endpoint_requests_total} and C{balancer_endpoints} for a set
    of balancers.

    C{balancer_endpoint_requests_total} counts the requests (or, for opaque
    services, connections) each endpoint finished, by the outcome the
    balancer was told: C{classification="failure"} is a failed connect or a
    broken exchange, not an HTTP error status, which the endpoint answered.
    Its rate gives each endpoint's share of the traffic, which is what
    C{meshproxy top} shows.

    @ivar _balancers: the balancer of each service, by service name; read
        at every scrape, so services added later to a live mapping are
        exported too.
    """

    def __init__(self, balancers: Mapping[str, IBalancer]) -> None:
        self._balancers = balancers

    def collect(self) -> Iterator[Metric]:
        inFlight = GaugeMetricFamily(
            "balancer_endpoint_in_flight", "Requests or connections in flight on the endpoint.", labels=_ENDPOINT_LABELS
        )
        rtt = GaugeMetricFamily(
            "balancer_endpoint_rtt_ewma_seconds",
            "Peak-EWMA round-trip time estimate of the endpoint.",
            labels=_ENDPOINT_LABELS,
        )
        ejected = GaugeMetricFamily(
            "balancer_endpoint_ejected", "1 if the endpoint is out of rotation after failures.", labels=_ENDPOINT_LABELS
        )
        finished = CounterMetricFamily(
            "balancer_endpoint_requests",
            "Requests or connections finished on the endpoint, by outcome.",
            labels=[*_ENDPOINT_LABELS, "classification"],
        )
        endpoints = GaugeMetricFamily(
            "balancer_endpoints", "Endpoints of the service, by whether they are ejected.", labels=["service", "state"]
        )
        for service, balancer in self._balancers.items():
            count = {"ready": 0, "ejected": 0}
            for snapshot in balancer.snapshots():
                labels = [service, str(snapshot.endpoint.address)]
                inFlight.add_metric(labels, snapshot.inFlight)
                rtt.add_metric(labels, snapshot.rtt)
                ejected.add_metric(labels, int(snapshot.ejected))
                finished.add_metric([*labels, "success"], snapshot.succeeded)
                finished.add_metric([*labels, "failure"], snapshot.failed)
                count["ejected" if snapshot.ejected else "ready"] += 1
            for state, n in count.items():
                endpoints.add_metric([service, state], n)
        yield from (inFlight, rtt, ejected, finished, endpoints)
