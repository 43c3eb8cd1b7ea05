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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

__all__ = ["LATENCY_BUCKETS", "HTTPMetrics", "ProxyMetrics", "TCPMetrics"]

#: linkerd2-proxy's C{response_latency_ms} buckets, in milliseconds.
LATENCY_BUCKETS = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)
_HTTP_LABELS = ("direction", "authority", "tls")

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

    Children for each status code are resolved on its first response and
    kept, so a response costs a dictionary lookup, not a label walk.

    @ivar request: count one request.
    """

    def __init__(self, metrics: ProxyMetrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.request = metrics.requestTotal.labels(*labels).inc
        self._byStatus: dict[int, tuple] = {}

    def responded(self, status: int, milliseconds: float) -> None:
        """
        Count a complete response (or one the proxy made), and how long it
        took from the request head to its end.  5xx are failures, as
        linkerd2-proxy classifies them.
        """
        children = self._byStatus.get(status)
        if children is None:
            code = str(status)
            classification = "failure" if status >= 500 else "success"
            metrics = self._metrics
            children = self._byStatus[status] = (
                metrics.responseTotal.labels(*self._labels, code, classification).inc,
                metrics.responseLatency.labels(*self._labels, code).observe,
            )
        children[0]()
        children[1](milliseconds)


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
        self.requestTotal = Counter("request", "HTTP requests.", _HTTP_LABELS, registry=registry)
        self.responseTotal = Counter(
            "response", "HTTP responses.", _HTTP_LABELS + ("status_code", "classification"), registry=registry
        )
        self.responseLatency = Histogram(
            "response_latency_ms",
            "Time from a request's head to the end of its response, in milliseconds.",
            _HTTP_LABELS + ("status_code",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._http: dict[tuple[str, ...], HTTPMetrics] = {}
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
            metrics = self._http[key] = HTTPMetrics(self, key)
        return metrics

    def detected(self, result: str) -> None:
        """
        Count one protocol detection verdict.
        """
        self.detectTotal.labels(result).inc()
