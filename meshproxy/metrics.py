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

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ProxyMetrics", "TCPMetrics"]

_TCP_LABELS = ("direction", "peer", "target", "tls")


class TCPMetrics:
    """
    The TCP counters of one side of relayed connections, for one set of
    labels (direction, peer, target, tls).

    @ivar read: add the number of bytes read from this peer.
    @ivar wrote: add the number of bytes written to this peer.
    """

    def __init__(self, metrics: ProxyMetrics, labels: tuple[str, ...]) -> None:
        self._open = metrics.tcpOpen.labels(*labels).inc
        self._gauge = metrics.tcpOpenConnections.labels(*labels)
        self._success = metrics.tcpClose.labels(*labels, "success").inc
        self._failure = metrics.tcpClose.labels(*labels, "failure").inc
        self.read = metrics.tcpReadBytes.labels(*labels).inc
        self.wrote = metrics.tcpWriteBytes.labels(*labels).inc

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
        self.tcpReadBytes = Counter(
            "tcp_read_bytes", "Bytes read from the peer.", _TCP_LABELS, registry=registry
        )
        self.tcpWriteBytes = Counter(
            "tcp_write_bytes", "Bytes written to the peer.", _TCP_LABELS, registry=registry
        )
        self.detectTotal = Counter(
            "detect", "Connections by protocol detection result.", ("result",), registry=registry
        )
        self._tcp: dict[tuple[str, ...], TCPMetrics] = {}

    def tcp(self, direction: str, peer: str, target: str, tls: str) -> TCPMetrics:
        """
        The counters for one side of a relayed connection, created on first
        use and cached.

        @param direction: C{"inbound"} or C{"outbound"}.
        @param peer: C{"src"} for the accepted connection, C{"dst"} for the
            one the proxy opened.
        @param target: the service name or application address.
        @param tls: C{"true"}, C{"no_identity"} or C{"opaque"}.
        """
        key = (direction, peer, target, tls)
        metrics = self._tcp.get(key)
        if metrics is None:
            metrics = self._tcp[key] = TCPMetrics(self, key)
        return metrics

    def detected(self, result: str) -> None:
        """
        Count one protocol detection verdict.
        """
        self.detectTotal.labels(result).inc()
