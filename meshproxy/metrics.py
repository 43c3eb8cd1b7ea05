# -*- test-case-name: tests.test_metrics -*-
"""
The proxy's Prometheus metrics, named as linkerd2-proxy names them so that
existing dashboards work.

Each proxy owns a private L{CollectorRegistry} rather than the process-wide
default one, so tests (and several proxies in one process, as in the demo)
do not see each other's figures.

Label children are resolved once, when a route or target is first seen, and
kept: looking a child up by labels costs a lock and a dictionary walk, which
is too much to pay per read on the data path.
"""

from __future__ import annotations

from bisect import bisect_left
from time import time

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import metrics as prometheusMetrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BUCKETS", "HTTPMetrics", "ProxyMetrics", "TCPMetrics"]

#: linkerd2-proxy's C{response_latency_ms} buckets, in milliseconds.
LATENCY_BUCKETS = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)
_HTTP_LABELS = ("direction", "authority", "tls")
#: The C{le} labels of the latency histogram, C{+Inf} last.
_LE = tuple(floatToGoString(bound) for bound in LATENCY_BUCKETS) + ("+Inf",)

_TCP_LABELS = ("direction", "peer", "target", "tls", "client_id", "server_id")


class TCPMetrics:
    """
    The TCP counters of one side of relayed connections, for one set of
    labels (direction, peer, target, tls, client_id, server_id).

    The byte counts are plain integers, which L{_ByteCounters} reads at
    each scrape: they grow once per chunk read or written, the hottest
    place on the data path, where a prometheus_client counter's C{inc}
    (argument checks and a lock) costs about 1 µs and an integer addition
    0.2 µs.  The reactor's thread is the only one that adds.

    @ivar labels: the label values.
    @ivar readBytes: the bytes read from this peer.
    @ivar wroteBytes: the bytes written to this peer.
    """

    __slots__ = ("labels", "readBytes", "wroteBytes", "_open", "_gauge", "_success", "_failure")

    def __init__(self, metrics: ProxyMetrics, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.readBytes = 0
        self.wroteBytes = 0
        self._open = metrics.tcpOpen.labels(*labels).inc
        self._gauge = metrics.tcpOpenConnections.labels(*labels)
        self._success = metrics.tcpClose.labels(*labels, "success").inc
        self._failure = metrics.tcpClose.labels(*labels, "failure").inc

    def read(self, n: int) -> None:
        """
        Add C{n} bytes read from this peer.
        """
        self.readBytes += n

    def wrote(self, n: int) -> None:
        """
        Add C{n} bytes written to this peer.
        """
        self.wroteBytes += n

    def opened(self) -> None:
        """
        A connection opened.
        """
        self._open()
        self._gauge.inc()

    def closed(self, success: bool) -> None:
        """
        A connection closed, cleanly or with an error.
        """
        self._gauge.dec()
        (self._success if success else self._failure)()


class _ByteCounters:
    """
    C{tcp_read_bytes_total} and C{tcp_write_bytes_total}, from the byte
    counts of every L{TCPMetrics} of one proxy, read at each scrape.

    @ivar _tcp: the proxy's L{TCPMetrics}, by labels.
    """

    def __init__(self, tcp: dict[tuple[str, ...], TCPMetrics]) -> None:
        self._tcp = tcp

    def collect(self) -> list[CounterMetricFamily]:
        read = CounterMetricFamily("tcp_read_bytes", "Bytes read from the peer.", labels=_TCP_LABELS)
        wrote = CounterMetricFamily("tcp_write_bytes", "Bytes written to the peer.", labels=_TCP_LABELS)
        for metrics in list(self._tcp.values()):
            read.add_metric(metrics.labels, metrics.readBytes)
            wrote.add_metric(metrics.labels, metrics.wroteBytes)
        return [read, wrote]


class HTTPMetrics:
    """
    The HTTP metrics of one route (direction, authority, tls).

    Like the byte counts of L{TCPMetrics}, the counts are plain numbers
    that L{_HTTPCounters} reads at each scrape: a request and its response
    cost an integer addition and a bisection here, where the counter and
    histogram of prometheus_client cost a lock and argument checks each,
    about 6 µs per request in all.  The reactor's thread is the only one
    that counts.

    @ivar labels: the label values.
    @ivar requests: the requests counted.
    @ivar created: when these metrics were made, in seconds since the
        epoch (the C{_created} samples).
    @ivar responses: the L{_Responses} of each status code seen.
    """

    __slots__ = ("labels", "requests", "created", "responses")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.requests = 0
        self.created = time()
        self.responses: dict[int, _Responses] = {}

    def request(self) -> None:
        """
        Count one request.
        """
        self.requests += 1

    def responded(self, status: int, milliseconds: float) -> None:
        """
        Count a complete response (or one the proxy made), and how long it
        took from the request head to its end.
        """
        responses = self.responses.get(status)
        if responses is None:
            responses = self.responses[status] = _Responses()
        responses.buckets[bisect_left(LATENCY_BUCKETS, milliseconds)] += 1
        responses.sum += milliseconds


class _Responses:
    """
    The responses of one status code on one route, as a latency histogram.

    @ivar buckets: the responses by latency: how many took at most
        C{LATENCY_BUCKETS[i]} milliseconds and more than the bound before,
        with the slower ones last (not cumulative, so a response adds to
        one count).
    @ivar sum: their latencies added up, in milliseconds.
    @ivar created: when the first came, in seconds since the epoch.
    """

    __slots__ = ("buckets", "sum", "created")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time()


class _HTTPCounters:
    """
    C{request_total}, C{response_total} and C{response_latency_ms}, from
    every L{HTTPMetrics} of one proxy, read at each scrape.  5xx are
    failures, as linkerd2-proxy classifies them.  The C{_created} series
    come and go with prometheus_client's own, which the proxy turns off
    (C{disable_created_metrics}) as linkerd has none.

    @ivar _http: the proxy's L{HTTPMetrics}, by labels.
    """

    def __init__(self, http: dict[tuple[str, ...], HTTPMetrics]) -> None:
        self._http = http

    def collect(self) -> list:
        requests = CounterMetricFamily("request", "HTTP requests.", labels=_HTTP_LABELS)
        responses = CounterMetricFamily(
            "response", "HTTP responses.", labels=_HTTP_LABELS + ("status_code", "classification")
        )
        latencyLabels = _HTTP_LABELS + ("status_code",)
        latency = HistogramMetricFamily(
            "response_latency_ms",
            "Time from a request's head to the end of its response, in milliseconds.",
            labels=latencyLabels,
        )
        created = prometheusMetrics._use_created
        for metrics in list(self._http.values()):
            requests.add_metric(metrics.labels, metrics.requests, created=metrics.created if created else None)
            for status, counts in sorted(metrics.responses.items()):
                code = str(status)
                cumulative = []
                total = 0
                for le, count in zip(_LE, counts.buckets):
                    total += count
                    cumulative.append((le, total))
                responses.add_metric(
                    (*metrics.labels, code, "failure" if status >= 500 else "success"),
                    total,
                    created=counts.created if created else None,
                )
                labels = (*metrics.labels, code)
                latency.add_metric(labels, cumulative, counts.sum)
                if created:
                    latency.samples.append(
                        Sample("response_latency_ms_created", dict(zip(latencyLabels, labels)), counts.created)
                    )
        return [requests, responses, latency]


class ProxyMetrics:
    """
    Every metric one proxy exposes on its admin C{/metrics}.

    @ivar registry: the registry the admin server renders.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = CollectorRegistry() if registry is None else registry
        self.tcpOpen = Counter(
            "tcp_open", "Connections opened.", _TCP_LABELS, registry=registry
        )
        self.tcpOpenConnections = Gauge(
            "tcp_open_connections", "Connections open now.", _TCP_LABELS, registry=registry
        )
        self.tcpClose = Counter(
            "tcp_close",
            "Connections closed.",
            _TCP_LABELS + ("classification",),
            registry=registry,
        )
        self._http: dict[tuple[str, ...], HTTPMetrics] = {}
        registry.register(_HTTPCounters(self._http))
        self.detectTotal = Counter(
            "detect", "Connections by protocol detection result.", ("result",), registry=registry
        )
        self.identityCertExpiration = Gauge(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current identity certificate expires, in seconds since the epoch.",
            registry=registry,
        )
        self.identityCertRefresh = Gauge(
            "identity_cert_refresh_timestamp_seconds",
            "When the proxy last got a new identity certificate from the issuer, in seconds since the epoch.",
            registry=registry,
        )
        refreshes = Counter(
            "identity_cert_refreshes", "Certify exchanges with the issuer, by result.", ("result",), registry=registry
        )
        self._refreshSucceeded = refreshes.labels("success").inc
        self._refreshFailed = refreshes.labels("failure").inc
        self._tcp: dict[tuple[str, ...], TCPMetrics] = {}
        registry.register(_ByteCounters(self._tcp))
        self.discoveryUpdates = Counter(
            "discovery_updates",
            "Changes to a service's endpoint set, by the source that found them.",
            ("service", "source"),
            registry=registry,
        )
        self.discoveryEndpoints = Gauge(
            "discovery_endpoints", "Endpoints service discovery knows now.", ("service",), registry=registry
        )
        self.http2Refused = Counter(
            "http2_connections_refused",
            "HTTP/2 client connections the proxy closed for breaking the protocol or its limits, by reason.",
            ("direction", "reason"),
            registry=registry,
        )

    def discovered(self, service: str, source: str, endpoints: int) -> None:
        """
        Service discovery changed the endpoint set of C{service}, which now
        holds C{endpoints} endpoints.  Rare enough to resolve the label
        children at each call.

        @param source: C{"static"}, C{"file"}, C{"dns"} or C{"etcd"}.
        """
        self.discoveryUpdates.labels(service, source).inc()
        self.discoveryEndpoints.labels(service).set(endpoints)

    def tcp(
        self, direction: str, peer: str, target: str, tls: str, clientId: str = "", serverId: str = ""
    ) -> TCPMetrics:
        """
        The counters for one side of a relayed connection, created on first
        use and cached.

        @param direction: C{"inbound"} or C{"outbound"}.
        @param peer: C{"src"} for the accepted connection, C{"dst"} for the
            one the proxy opened.
        @param target: the service name or application address.
        @param tls: C{"true"}, C{"no_identity"} or C{"opaque"}.
        @param clientId: the verified identity of the client of an inbound
            mTLS connection; empty otherwise, which Prometheus reads as no
            label at all.
        @param serverId: the identity the endpoint proved over mTLS; empty
            otherwise.
        """
        key = (direction, peer, target, tls, clientId, serverId)
        metrics = self._tcp.get(key)
        if metrics is None:
            metrics = self._tcp[key] = TCPMetrics(self, key)
        return metrics

    def certificateUpdated(self, expires: float) -> None:
        """
        The proxy has a new identity certificate, which expires at
        C{expires} (seconds since the epoch).
        """
        self.identityCertExpiration.set(expires)

    def certificateRefreshed(self, now: float) -> None:
        """
        A certify exchange with the issuer succeeded at C{now} (seconds
        since the epoch).
        """
        self.identityCertRefresh.set(now)
        self._refreshSucceeded()

    def certificateRefreshFailed(self) -> None:
        """
        A certify exchange with the issuer failed.
        """
        self._refreshFailed()

    def http(self, direction: str, authority: str, tls: str) -> HTTPMetrics:
        """
        The HTTP metrics of one route, created on first use and cached.
        """
        key = (direction, authority, tls)
        metrics = self._http.get(key)
        if metrics is None:
            metrics = self._http[key] = HTTPMetrics(key)
        return metrics

    def detected(self, result: str) -> None:
        """
        Count one protocol detection verdict.
        """
        self.detectTotal.labels(result).inc()
