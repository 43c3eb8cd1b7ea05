# -*- test-case-name: tests.test_top -*-
"""
What a proxy is doing, from two scrapes of its C{/metrics}: the figures
C{meshproxy top} and C{meshproxy demo} show.

Sans-I/O, like the detector and the balancers: Prometheus text in,
L{Scrape}s out, and two scrapes with the seconds between them in,
L{Table} out.  No sockets and no clock, so the arithmetic is tested with
canned text.

Rates are differences of counters over the interval, as Prometheus'
C{rate()} computes them; a counter that went down means the proxy
restarted, and then its new value is the increase.  Quantiles are
interpolated within the C{response_latency_ms} buckets as
C{histogram_quantile()} does it, so C{top} and a dashboard agree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from attrs import field, frozen
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["EndpointRow", "RouteRow", "Scrape", "Table", "compare", "quantile"]

#: The labels that name a route in the HTTP metrics.
_ROUTE = ("direction", "authority", "tls")


@frozen
class _Route:
    """
    The counters of one HTTP route in one scrape.

    @ivar requests: C{request_total}.
    @ivar responses: C{response_total} by classification.
    @ivar buckets: C{response_latency_ms_bucket} summed over status codes,
        by upper bound (C{inf} last).
    """

    requests: float = 0.0
    responses: Mapping[str, float] = field(factory=dict)
    buckets: Mapping[float, float] = field(factory=dict)


@frozen
class _Endpoint:
    """
    The figures of one balancer endpoint in one scrape.

    @ivar finished: C{balancer_endpoint_requests_total} by classification.
    """

    finished: Mapping[str, float] = field(factory=dict)
    inFlight: float = 0.0
    rtt: float = 0.0
    ejected: bool = False


@frozen
class Scrape:
    """
    The parts of one C{/metrics} exposition that C{top} shows.

    @ivar routes: by (direction, authority, tls).
    @ivar endpoints: by (service, endpoint address).
    """

    routes: Mapping[tuple[str, str, str], _Route]
    endpoints: Mapping[tuple[str, str], _Endpoint]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        """
        Read the samples C{top} needs from a Prometheus text exposition.

        @raise ValueError: if C{text} is not in the Prometheus text format.
        """
        requests: dict[tuple, float] = defaultdict(float)
        responses: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        buckets: dict[tuple, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        finished: dict[tuple, dict[str, float]] = defaultdict(dict)
        gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                route = tuple(labels.get(label, "") for label in _ROUTE)
                endpoint = (labels.get("service", ""), labels.get("endpoint", ""))
                if name == "request_total":
                    requests[route] += value
                elif name == "response_total":
                    responses[route][labels["classification"]] += value
                elif name == "response_latency_ms_bucket":
                    buckets[route][float(labels["le"])] += value
                elif name == "balancer_endpoint_requests_total":
                    finished[endpoint][labels["classification"]] = value
                elif name.startswith("balancer_endpoint_"):
                    gauges[name][endpoint] = value
        routes = {
            key: _Route(requests[key], dict(responses[key]), dict(sorted(buckets[key].items())))
            for key in requests.keys() | responses.keys()
        }
        endpoints = {
            key: _Endpoint(
                finished.get(key, {}),
                gauges["balancer_endpoint_in_flight"].get(key, 0.0),
                gauges["balancer_endpoint_rtt_ewma_seconds"].get(key, 0.0),
                bool(gauges["balancer_endpoint_ejected"].get(key, 0.0)),
            )
            for key in gauges["balancer_endpoint_in_flight"].keys() | finished.keys()
        }
        return cls(routes, endpoints)


@frozen
class RouteRow:
    """
    One HTTP route over an interval.

    @ivar rps: requests per second.
    @ivar success: the share of responses that were not failures (5xx), or
        L{None} without responses.
    @ivar p50: the median latency in milliseconds, or L{None}.
    @ivar p99: the 99th percentile latency in milliseconds, or L{None}.
    """

    direction: str
    authority: str
    tls: str
    rps: float
    success: float | None
    p50: float | None
    p99: float | None


@frozen
class EndpointRow:
    """
    One endpoint of a balanced service over an interval.

    @ivar share: its part of the requests the service finished, or L{None}
        when the service finished none.
    @ivar rps: requests finished per second.
    @ivar success: the share of them that succeeded, or L{None}.
    @ivar inFlight: requests in flight at the end of the interval.
    @ivar rtt: the peak-EWMA round-trip time estimate, in seconds.
    """

    service: str
    endpoint: str
    share: float | None
    rps: float
    success: float | None
    inFlight: int
    rtt: float
    ejected: bool


@frozen
class Table:
    """
    Everything C{top} shows for one interval, routes and endpoints in
    label order.
    """

    seconds: float
    routes: list[RouteRow]
    endpoints: list[EndpointRow]


def _increase(before: float, after: float) -> float:
    """
    A counter's increase, where a decrease means it started again from 0.
    """
    return after - before if after >= before else after


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """
    The C{q} quantile of a histogram, as Prometheus' C{histogram_quantile}
    estimates it: linear interpolation within the bucket the rank falls in,
    from 0 for the first bucket; a rank in the C{+Inf} bucket gives the
    highest finite bound.

    @param buckets: cumulative counts by upper bound, in ascending order,
        ending with C{inf}.
    @return: the estimate, or L{None} for an empty histogram.
    """
    bounds = list(buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def compare(before: Scrape, after: Scrape, seconds: float) -> Table:
    """
    The figures of the interval between two scrapes of one proxy.

    @param seconds: the time between the scrapes.
    """
    routes = []
    for key in sorted(after.routes):
        now, then = after.routes[key], before.routes.get(key, _Route())
        if not now.requests:
            # A route made at start that saw nothing yet, such as the one
            # unroutable requests are counted in.
            continue
        answered = {c: _increase(then.responses.get(c, 0.0), n) for c, n in now.responses.items()}
        buckets = {le: _increase(then.buckets.get(le, 0.0), n) for le, n in now.buckets.items()}
        routes.append(
            RouteRow(
                *key,
                _increase(then.requests, now.requests) / seconds,
                _ratio(answered.get("success", 0.0), sum(answered.values())),
                quantile(0.5, buckets),
                quantile(0.99, buckets),
            )
        )
    finished = {}
    for key, now in after.endpoints.items():
        then = before.endpoints.get(key, _Endpoint())
        finished[key] = {c: _increase(then.finished.get(c, 0.0), n) for c, n in now.finished.items()}
    services: dict[str, float] = defaultdict(float)
    for (service, _), counts in finished.items():
        services[service] += sum(counts.values())
    endpoints = []
    for key in sorted(after.endpoints):
        now, counts = after.endpoints[key], finished[key]
        total = sum(counts.values())
        endpoints.append(
            EndpointRow(
                *key,
                _ratio(total, services[key[0]]),
                total / seconds,
                _ratio(counts.get("success", 0.0), total),
                int(now.inFlight),
                now.rtt,
                now.ejected,
            )
        )
    return Table(seconds, routes, endpoints)
