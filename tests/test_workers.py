"""
Tests for L{meshproxy.workers}: the merge of the workers' metrics, their
configuration, and a real C{[proxy] workers = 2} proxy.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from meshproxy.config import ConfigError, load
from meshproxy.workers import listeners, mergeExpositions, workerConfig

from .realprocess import Proxy, Samples, freePort, get, upstreamConfig

WORKER = """\
# TYPE request_total counter
request_total{{authority="web"}} {requests}
# TYPE response_latency_ms histogram
response_latency_ms_bucket{{le="1.0"}} {requests}
response_latency_ms_bucket{{le="+Inf"}} {requests}
response_latency_ms_count {requests}
response_latency_ms_sum 0.5
# TYPE tcp_open_connections gauge
tcp_open_connections{{peer="src"}} {open}
# TYPE identity_cert_expiration_timestamp_seconds gauge
identity_cert_expiration_timestamp_seconds {expires}
"""


class MergeTests(SynchronousTestCase):
    """
    L{mergeExpositions} adds up what the workers share out and keeps the
    largest of what each knows alike.
    """

    def merged(self) -> Samples:
        from prometheus_client import CollectorRegistry, generate_latest

        class Merged:
            def collect(self):
                return mergeExpositions(
                    [
                        WORKER.format(requests=3, open=2, expires=100),
                        WORKER.format(requests=4, open=1, expires=90),
                    ]
                )

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Merged())
        return Samples(generate_latest(registry).decode())

    def test_countersAdd(self) -> None:
        samples = self.merged()
        self.assertEqual(samples("request_total", authority="web"), 7)
        self.assertEqual(samples("response_latency_ms_bucket", le="1.0"), 7)
        self.assertEqual(samples("response_latency_ms_count"), 7)
        self.assertEqual(samples("response_latency_ms_sum"), 1.0)

    def test_gauges(self) -> None:
        """
        Connections open add up; a certificate's expiry is the latest.
        """
        samples = self.merged()
        self.assertEqual(samples("tcp_open_connections", peer="src"), 3)
        self.assertEqual(samples("identity_cert_expiration_timestamp_seconds"), 100)


class ConfigTests(SynchronousTestCase):
    """
    C{[proxy] workers} and the configuration each worker runs.
    """

    def load(self, text: str):
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return load(path)

    CONFIG = """
[proxy]
workers = 3

[[inbound]]
listen = "tcp:4143"
app = "127.0.0.1:8080"

[[upstreams]]
listen = "unix:/run/web.sock"
service = "web"

[outbound]
listen = "tcp:4140"

[services.web]
endpoints = [{ address = "127.0.0.1:8081" }]
"""

    def test_workers(self) -> None:
        self.assertEqual(self.load(self.CONFIG).proxy.workers, 3)
        self.assertEqual(self.load(self.CONFIG.replace("workers = 3", "")).proxy.workers, 1)

    def test_notPositive(self) -> None:
        error = self.assertRaises(ConfigError, self.load, self.CONFIG.replace("workers = 3", "workers = 0"))
        self.assertIn("workers", str(error))

    def test_workerConfig(self) -> None:
        """
        Each listener of the data path becomes the inherited socket at its
        position, and the admin server the worker's private socket.
        """
        config = self.load(self.CONFIG)
        self.assertEqual(listeners(config), ["tcp:4143", "unix:/run/web.sock", "tcp:4140"])
        worker = workerConfig(config, ["INET", "UNIX", "INET"], "unix:/tmp/w.sock")
        self.assertEqual(
            listeners(worker),
            ["systemd:domain=INET:index=0", "systemd:domain=UNIX:index=1", "systemd:domain=INET:index=2"],
        )
        self.assertEqual((worker.admin.listen, worker.admin.shutdown), ("unix:/tmp/w.sock", False))
        self.assertEqual(worker.services, config.services)


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class WorkersIntegrationTests(TestCase):
    """
    A real proxy with C{workers = 2}.
    """

    async def test_twoWorkers(self) -> None:
        """
        Two worker processes serve one listener, and the admin port's
        C{/metrics} counts every request, whichever worker served it, with
        the parent's own metrics.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Hello()))
        self.addCleanup(port.stopListening)
        listen = freePort()
        proxy = await Proxy(self, upstreamConfig(listen, port.getHost().port, "workers = 2")).start()
        children = [
            int(pid)
            for task in Path(f"/proc/{proxy.process.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        self.assertEqual(len(children), 2)
        # A new client connection each time, one at a time: a worker alone
        # would reuse its one pooled connection to the backend.
        for _ in range(40):
            self.assertEqual(await get(f"http://127.0.0.1:{listen}/"), (200, b"hello"))
        samples = await proxy.samples()
        self.assertEqual(samples("request_total", authority="web", direction="outbound", tls="no_identity"), 40)
        self.assertEqual(samples("detect_total", result="http1"), 40)
        # The parent's own log (the workers log through it) is counted too.
        self.assertEqual(samples("log_lines_dropped_total"), 0)
        opened = samples("tcp_open_total", direction="outbound", peer="dst", target="web", tls="no_identity")
        self.assertGreaterEqual(opened, 2)
