"""
Tests for L{meshproxy.stats} and L{meshproxy.top}: the arithmetic and the
table with canned metrics, and C{meshproxy top --once} against a real proxy
carrying known traffic.
"""

from __future__ import annotations

import io
import re
from random import Random

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from meshproxy.demotraffic import Instance, InstanceResource
from meshproxy.stats import EndpointRow, RouteRow, Scrape, compare, quantile
from meshproxy.top import render, show, watch

from .realprocess import Proxy, freePort, get, run, tool

INF = float("inf")


def exposition(requests: int, ok: int, failed: int, fast: int, a: tuple[int, int], b: tuple[int, int]) -> str:
    """
    The metrics text of a proxy that saw C{requests} requests on the
    outbound route C{web}, C{ok} answered 200 and C{failed} 500, C{fast} of
    all of them within 10 ms and the rest within 20 ms; and whose two
    endpoints of C{web} finished (successes, failures) C{a} and C{b}.
    """
    labels = 'direction="outbound",authority="web",tls="no_identity"'
    return f"""\
# HELP request_total HTTP requests.
# TYPE request_total counter
request_total{{{labels}}} {requests}
request_total{{direction="outbound",authority="",tls="no_identity"}} 0
# HELP response_total HTTP responses.
# TYPE response_total counter
response_total{{{labels},status_code="200",classification="success"}} {ok}
response_total{{{labels},status_code="500",classification="failure"}} {failed}
# HELP response_latency_ms Latency.
# TYPE response_latency_ms histogram
response_latency_ms_bucket{{{labels},status_code="200",le="10.0"}} {fast}
response_latency_ms_bucket{{{labels},status_code="200",le="20.0"}} {ok}
response_latency_ms_bucket{{{labels},status_code="200",le="+Inf"}} {ok}
response_latency_ms_count{{{labels},status_code="200"}} {ok}
response_latency_ms_sum{{{labels},status_code="200"}} 1.0
response_latency_ms_bucket{{{labels},status_code="500",le="10.0"}} 0
response_latency_ms_bucket{{{labels},status_code="500",le="20.0"}} {failed}
response_latency_ms_bucket{{{labels},status_code="500",le="+Inf"}} {failed}
response_latency_ms_count{{{labels},status_code="500"}} {failed}
response_latency_ms_sum{{{labels},status_code="500"}} 1.0
# HELP balancer_endpoint_in_flight In flight.
# TYPE balancer_endpoint_in_flight gauge
balancer_endpoint_in_flight{{service="web",endpoint="10.0.0.1:80"}} 2.0
balancer_endpoint_in_flight{{service="web",endpoint="10.0.0.2:80"}} 0.0
# HELP balancer_endpoint_rtt_ewma_seconds RTT.
# TYPE balancer_endpoint_rtt_ewma_seconds gauge
balancer_endpoint_rtt_ewma_seconds{{service="web",endpoint="10.0.0.1:80"}} 0.0042
balancer_endpoint_rtt_ewma_seconds{{service="web",endpoint="10.0.0.2:80"}} 0.25
# HELP balancer_endpoint_ejected Ejected.
# TYPE balancer_endpoint_ejected gauge
balancer_endpoint_ejected{{service="web",endpoint="10.0.0.1:80"}} 0.0
balancer_endpoint_ejected{{service="web",endpoint="10.0.0.2:80"}} 1.0
# HELP balancer_endpoint_requests_total Finished.
# TYPE balancer_endpoint_requests_total counter
balancer_endpoint_requests_total{{service="web",endpoint="10.0.0.1:80",classification="success"}} {a[0]}
balancer_endpoint_requests_total{{service="web",endpoint="10.0.0.1:80",classification="failure"}} {a[1]}
balancer_endpoint_requests_total{{service="web",endpoint="10.0.0.2:80",classification="success"}} {b[0]}
balancer_endpoint_requests_total{{service="web",endpoint="10.0.0.2:80",classification="failure"}} {b[1]}
# HELP balancer_endpoints Endpoints.
# TYPE balancer_endpoints gauge
balancer_endpoints{{service="web",state="ready"}} 1.0
balancer_endpoints{{service="web",state="ejected"}} 1.0
"""


BEFORE = exposition(100, 90, 10, 50, (60, 0), (38, 2))
AFTER = exposition(300, 270, 30, 150, (240, 0), (50, 10))


class QuantileTests(SynchronousTestCase):
    """
    L{quantile} estimates as Prometheus' C{histogram_quantile} does.
    """

    def test_interpolation(self):
        buckets = {10.0: 50.0, 20.0: 100.0, INF: 100.0}
        self.assertEqual(quantile(0.5, buckets), 10.0)
        self.assertEqual(quantile(0.75, buckets), 15.0)
        self.assertEqual(quantile(0.25, buckets), 5.0)

    def test_infiniteBucket(self):
        """
        A rank beyond the last finite bound is estimated at that bound.
        """
        self.assertEqual(quantile(0.99, {10.0: 50.0, 20.0: 90.0, INF: 100.0}), 20.0)

    def test_empty(self):
        self.assertIsNone(quantile(0.5, {10.0: 0.0, INF: 0.0}))
        self.assertIsNone(quantile(0.5, {}))


class CompareTests(SynchronousTestCase):
    """
    L{Scrape.parse} and L{compare}: rates, ratios and quantiles over the
    interval between two scrapes.
    """

    def test_routes(self):
        """
        A route's rate, success rate and quantiles count only what happened
        between the scrapes; a route that never saw a request is left out.
        """
        table = compare(Scrape.parse(BEFORE), Scrape.parse(AFTER), 2.0)
        self.assertEqual(table.routes, [RouteRow("outbound", "web", "no_identity", 100.0, 0.9, 10.0, 19.8)])

    def test_endpoints(self):
        """
        Each endpoint's share of its service's finished requests, its rate,
        success rate and its gauges as of the second scrape.
        """
        table = compare(Scrape.parse(BEFORE), Scrape.parse(AFTER), 2.0)
        self.assertEqual(
            table.endpoints,
            [
                EndpointRow("web", "10.0.0.1:80", 0.9, 90.0, 1.0, 2, 0.0042, False),
                EndpointRow("web", "10.0.0.2:80", 0.1, 10.0, 0.6, 0, 0.25, True),
            ],
        )

    def test_restart(self):
        """
        A counter lower than before means the proxy restarted: its value is
        the increase.
        """
        table = compare(Scrape.parse(AFTER), Scrape.parse(BEFORE), 1.0)
        self.assertEqual(table.routes[0].rps, 100.0)
        self.assertEqual([row.rps for row in table.endpoints], [60.0, 40.0])

    def test_idle(self):
        """
        Without traffic there is nothing to divide by: no share, success
        rate or quantile.
        """
        table = compare(Scrape.parse(AFTER), Scrape.parse(AFTER), 1.0)
        self.assertEqual(table.routes, [RouteRow("outbound", "web", "no_identity", 0.0, None, None, None)])
        self.assertEqual([(row.share, row.success) for row in table.endpoints], [(None, None), (None, None)])

    def test_notMetrics(self):
        self.assertRaises(ValueError, Scrape.parse, "<html>not metrics</html>\n")


class RenderTests(SynchronousTestCase):
    """
    L{render}, L{show} and L{watch}: the table as text.
    """

    def table(self):
        return compare(Scrape.parse(BEFORE), Scrape.parse(AFTER), 2.0)

    def test_render(self):
        self.assertEqual(
            render(self.table(), "meshproxy top 127.0.0.1:4191").splitlines(),
            [
                "meshproxy top 127.0.0.1:4191    interval 2.0s",
                "",
                "DIRECTION  AUTHORITY  TLS            RPS  SUCCESS   P50   P99",
                "outbound   web        no_identity  100.0    90.0%  10ms  20ms",
                "",
                "SERVICE  ENDPOINT     SHARE   RPS  SUCCESS  IN-FLIGHT   EWMA  EJECTED",
                "web      10.0.0.1:80  90.0%  90.0   100.0%          2  4.2ms       no",
                "web      10.0.0.2:80  10.0%  10.0    60.0%          0  250ms      yes",
            ],
        )

    def test_names(self):
        """
        Named endpoints show by name, and sort by it.
        """
        lines = render(self.table(), "demo", {"10.0.0.1:80": "z-first", "10.0.0.2:80": "a-second"}).splitlines()
        self.assertTrue(lines[-2].startswith("web      a-second"), lines)
        self.assertTrue(lines[-1].startswith("web      z-first"), lines)

    def test_nothing(self):
        table = compare(Scrape.parse(""), Scrape.parse(""), 1.0)
        self.assertEqual(render(table, "t").splitlines()[-1], "no HTTP routes and no balanced services yet")

    def test_show(self):
        """
        On a terminal each table replaces the last; elsewhere they follow
        each other.
        """

        class Terminal(io.StringIO):
            def isatty(self):
                return True

        terminal, pipe = Terminal(), io.StringIO()
        for out in (terminal, pipe):
            show(out, "one")
            show(out, "two")
        self.assertEqual(terminal.getvalue(), "\x1b[H\x1b[2Jone\n\x1b[H\x1b[2Jtwo\n")
        self.assertEqual(pipe.getvalue(), "one\n\ntwo\n\n")

    def test_watchOnce(self):
        """
        With C{once}, two scrapes C{interval} apart and one table.
        """
        scrapes, slept, times = [BEFORE, AFTER], [], iter([10.0, 12.0])
        out = io.StringIO()
        watch(lambda: scrapes.pop(0), "t", 2.0, True, out, slept.append, lambda: next(times))
        self.assertEqual(slept, [2.0])
        self.assertEqual(out.getvalue(), render(self.table(), "t") + "\n")


class TopProcessTests(TestCase):
    """
    C{meshproxy top --once} against a real proxy: a round-robin service of
    a healthy endpoint, one that answers only 500s and one where nothing
    listens, under a steady stream of requests.
    """

    timeout = 60

    async def test_once(self):
        ports = []
        for instance in (Instance("ok"), Instance("bad", failures=1.0)):
            site = Site(InstanceResource(instance, reactor, Random()))
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        dead = freePort()
        listen = freePort()
        endpoints = ", ".join(f'{{ address = "127.0.0.1:{port}" }}' for port in (*ports, dead))
        proxy = await Proxy(
            self,
            f'[[upstreams]]\nlisten = "tcp:{listen}:interface=127.0.0.1"\nservice = "web"\n\n'
            f'[services.web]\nbalancer = "round-robin"\nendpoints = [{endpoints}]\n',
        ).start()

        sent = []

        async def traffic():
            while not top.called:
                status, _ = await get(f"http://127.0.0.1:{listen}/")
                sent.append(status)

        top = run([tool("meshproxy", "the meshproxy package"), "top", "--admin", f"127.0.0.1:{proxy.adminPort}",
                   "--once", "--interval", "2"])
        await traffic()
        code, output = await top
        text = output.decode()
        self.assertEqual(code, 0, text)
        self.assertEqual(set(sent), {200, 500})
        (route,) = re.findall(r"^outbound\s+web\s+no_identity\s+([\d.]+)\s+([\d.]+)%\s+(\S+)\s+(\S+)$", text, re.M)
        rps, success = float(route[0]), float(route[1])
        self.assertGreater(rps, 5, text)
        self.assertLess(abs(success - 50), 10, text)
        rows = {
            endpoint: (float(share), float(rate), success, ejected)
            for endpoint, share, rate, success, ejected in re.findall(
                r"^web\s+(\S+)\s+([\d.]+)%\s+([\d.]+)\s+(\S+)\s+\d+\s+\S+\s+(yes|no)$", text, re.M
            )
        }
        ok, bad, gone = (f"127.0.0.1:{port}" for port in (*ports, dead))
        self.assertEqual(set(rows), {ok, bad, gone}, text)
        # Round robin: the two live endpoints split the traffic; the dead
        # one, ejected at its first refusal, gets at most a probe or two.
        self.assertLess(abs(rows[ok][0] - rows[bad][0]), 10, text)
        self.assertLess(rows[gone][0], 5, text)
        self.assertEqual(rows[gone][3], "yes", text)
        self.assertEqual((rows[ok][3], rows[bad][3]), ("no", "no"), text)
        # An endpoint that answered, even with a 500, succeeded as far as
        # the balancer knows; the 500s show in the route's success rate.
        self.assertEqual((rows[ok][2], rows[bad][2]), ("100.0%", "100.0%"), text)
        self.assertLess(abs(rows[ok][1] + rows[bad][1] + rows[gone][1] - rps), rps * 0.2 + 1, text)

    async def test_unreachable(self):
        code, output = await run(
            [tool("meshproxy", "the meshproxy package"), "top", "--admin", f"127.0.0.1:{freePort()}", "--once"]
        )
        self.assertEqual(code, 1)
        self.assertIn(b"meshproxy top: http://127.0.0.1:", output)
        self.assertIn(b"refused", output)
