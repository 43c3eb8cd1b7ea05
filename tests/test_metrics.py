"""
Tests for L{meshproxy.metrics}: the HTTP counts kept as plain numbers and
rendered at each scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.metrics import LATENCY_BUCKETS, ProxyMetrics

from .realprocess import Samples


class HTTPMetricsTests(SynchronousTestCase):
    """
    L{meshproxy.metrics.HTTPMetrics} renders as prometheus_client's own
    counters and histogram would.
    """

    def test_counts(self):
        """
        Requests, responses by status and classification, and their
        latency histogram, a bound counting in its own bucket.
        """
        metrics = ProxyMetrics()
        http = metrics.http("outbound", "web", "no_identity")
        latencies = [0.5, 1.0, 1.5, 50.0, 50000.0, 60000.0]
        for latency in latencies:
            http.request()
            http.responded(200, latency)
        http.responded(503, 2.0)
        samples = Samples(generate_latest(metrics.registry).decode())
        labels = {"direction": "outbound", "authority": "web", "tls": "no_identity"}
        self.assertEqual(samples("request_total", **labels), 6)
        self.assertEqual(samples("response_total", status_code="200", classification="success", **labels), 6)
        self.assertEqual(samples("response_total", status_code="503", classification="failure", **labels), 1)

        reference = Histogram("reference", "", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
        for latency in latencies:
            reference.observe(latency)
        expected = {
            sample.labels["le"]: sample.value for sample in reference.collect()[0].samples if sample.name.endswith("_bucket")
        }
        for le, count in expected.items():
            self.assertEqual(samples("response_latency_ms_bucket", status_code="200", le=le, **labels), count, le)
        self.assertEqual(samples("response_latency_ms_count", status_code="200", **labels), len(latencies))
        self.assertEqual(samples("response_latency_ms_sum", status_code="200", **labels), sum(latencies))
