# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP server: C{/live}, C{/ready}, C{/metrics} and, when enabled,
C{/shutdown}, as linkerd2-proxy serves them on its admin port, so that
existing probes, scrape configurations and job scripts work unchanged.

This is built on L{twisted.web}, which is too slow for the data path but
fine for a handful of probes and scrapes a second.  Its defaults are made
for browsing websites rather than for machines polling every few seconds,
so this module changes them:

  - Every response is a short C{text/plain} body: a probe's log shows why
    it failed, without twisted.web's HTML error pages.
  - Nothing is cached (C{Cache-Control: no-store}): a proxy in between must
    not answer a readiness probe with an old answer.
  - No access log: scrapes every few seconds would bury the log lines that
    matter.
  - No C{Server} header: the Twisted version is no business of whoever can
    reach the port.
  - Paths match exactly: C{/metrics/x} and C{/live/} are 404s, so a typo in
    a probe fails loudly instead of hitting a parent.

C{/metrics} is the Prometheus text exposition format 0.0.4, never
OpenMetrics: C{promtool check metrics} rejects the OpenMetrics rendering of
prometheus_client's counters, and every Prometheus scrapes the text format.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from prometheus_client import generate_latest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.web.http import ACCEPTED, FORBIDDEN, INTERNAL_SERVER_ERROR, NOT_ALLOWED, NOT_FOUND, OK, SERVICE_UNAVAILABLE
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .metrics import ProxyMetrics
from .readiness import Readiness

__all__ = ["AdminResource", "AdminRoot", "QuietSite", "adminRoot", "adminSite", "isLocal"]

_TEXT = b"text/plain; charset=utf-8"

# Spelled out rather than prometheus_client's CONTENT_TYPE_LATEST, which
# announces the text format 1.0.0 in recent releases (0.26 does).  What
# generate_latest writes is the 0.0.4 format whenever every metric and
# label name is a legacy one (no UTF-8 names), as all of ours are; so 0.0.4
# is the honest version, and the one every Prometheus 2 and 3 understands.
_PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def _respond(request: Request, code: int, body: bytes, contentType: bytes = _TEXT) -> bytes:
    """
    Set the status and headers every admin response carries and return the
    body to send.

    For C{HEAD} this sets C{Content-Length} itself and returns nothing:
    twisted.web would otherwise log a warning for every C{HEAD} whose
    resource returned a body, once per probe.
    """
    request.setResponseCode(code)
    request.responseHeaders.removeHeader(b"server")
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return b"" if request.method == b"HEAD" else body


class AdminResource(Resource):
    """
    One admin path: a leaf that serves exactly its own path, with the
    methods in L{allowedMethods}.

    Subclasses implement L{answer}.

    @cvar allowedMethods: the methods this path serves.  C{HEAD} is served
        wherever C{GET} is: probes and load balancers use it.
    """

    isLeaf = True
    allowedMethods: tuple[bytes, ...] = (b"GET", b"HEAD")
    _log = Logger()

    def render(self, request: Request) -> bytes:
        """
        Answer C{request} with L{answer}, or with a plain 404 or 405.
        """
        if request.postpath:
            return _respond(request, NOT_FOUND, b"not found\n")
        if request.method not in self.allowedMethods:
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            return _respond(request, NOT_ALLOWED, b"method not allowed\n")
        try:
            code, body, contentType = self.answer(request)
        except Exception:
            # Metrics collectors are other modules' code; if one breaks, say
            # so in the log and in plain text rather than in twisted.web's
            # HTML error page.
            self._log.failure("admin {path} failed", path=request.path)
            return _respond(request, INTERNAL_SERVER_ERROR, b"internal server error\n")
        return _respond(request, code, body, contentType)

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        """
        Compute the response to an allowed method.

        @return: the status code, the body and its content type.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement answer")


class _Live(AdminResource):
    """
    C{/live}: 200 whenever the reactor runs, which is all a liveness probe
    should ask.  Anything more (say, failing while the certificate is
    missing) would have the proxy restarted for a problem a restart does
    not fix.
    """

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        return OK, b"live\n", _TEXT


class _Ready(AdminResource):
    """
    C{/ready}: 200 C{ready} once every readiness condition holds; otherwise
    503 C{not ready} followed by one line per pending condition, so the
    operator reading a failed probe sees what the proxy waits for.

    @ivar _readiness: the conditions to report.
    """

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        pending = self._readiness.pending
        if not pending:
            return OK, b"ready\n", _TEXT
        lines = ["not ready", *pending]
        return SERVICE_UNAVAILABLE, "".join(f"{line}\n" for line in lines).encode("utf-8"), _TEXT


class _Metrics(AdminResource):
    """
    C{/metrics}: one proxy's registry in the Prometheus text format 0.0.4.

    @ivar _metrics: the metrics to render.
    """

    def __init__(self, metrics: ProxyMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        return OK, generate_latest(self._metrics.registry), _PROMETHEUS_TEXT


def isLocal(address: IAddress) -> bool:
    """
    Whether a client at C{address} is on this host: a loopback IP address
    (C{127.0.0.0/8}, C{::1}, or IPv4 loopback mapped into IPv6) or a UNIX
    socket, which only local processes can reach.
    """
    if isinstance(address, UNIXAddress):
        return True
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False
    ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class _Shutdown(AdminResource):
    """
    C{POST /shutdown}: start a graceful shutdown, as SIGTERM does, and
    answer 202 at once; the admin port keeps answering while the proxy
    drains, so C{/ready} shows it.  Only local clients may ask (403
    otherwise): whoever can reach the admin port from elsewhere may scrape
    metrics, not stop the proxy.

    @ivar _shutdown: starts the shutdown; called once per allowed request,
        so it must not mind being called again.
    """

    allowedMethods = (b"POST",)

    def __init__(self, shutdown: Callable[[], None]) -> None:
        super().__init__()
        self._shutdown = shutdown

    def answer(self, request: Request) -> tuple[int, bytes, bytes]:
        if not isLocal(request.getClientAddress()):
            return FORBIDDEN, b"requests are only permitted from localhost\n", _TEXT
        self._shutdown()
        return ACCEPTED, b"shutting down\n", _TEXT


class _NotFound(Resource):
    """
    Every path the admin server does not serve, whatever the method.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _respond(request, NOT_FOUND, b"not found\n")


class AdminRoot(Resource):
    """
    The admin server's paths; any other, including C{/} itself, is a 404.
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()


class QuietSite(Site):
    """
    A L{Site} without an access log and without start and stop messages:
    admin clients poll every few seconds, and logging each poll would bury
    everything else the proxy logs.
    """

    noisy = False

    def log(self, request: Request) -> None:
        """
        Log nothing about C{request}.
        """


def adminSite(
    metrics: ProxyMetrics,
    readiness: Readiness,
    reactor: IReactorTime | None = None,
    shutdown: Callable[[], None] | None = None,
) -> Site:
    """
    Make the admin HTTP server.

    @param metrics: the metrics C{/metrics} renders.
    @param readiness: the conditions C{/ready} reports.
    @param reactor: the reactor the server times idle connections out with;
        the global reactor if L{None}.
    @param shutdown: starts a graceful shutdown, if C{POST /shutdown} may
        (C{[admin] shutdown = true}); without it the path is a 404, as
        any path the server does not serve.

    @return: a site to listen with on the C{[admin] listen} endpoint.
    """
    root = adminRoot(metrics, readiness)
    if shutdown is not None:
        root.putChild(b"shutdown", _Shutdown(shutdown))
    return QuietSite(root, logPath=None, reactor=reactor)


def adminRoot(metrics: ProxyMetrics, readiness: Readiness) -> AdminRoot:
    """
    The admin routes, C{/live}, C{/ready} and C{/metrics}, for any server
    of the project to serve (the issuer adds its own routes beside them).

    @param metrics: anything with a C{registry} for C{/metrics} to render.
    """
    root = AdminRoot()
    root.putChild(b"live", _Live())
    root.putChild(b"ready", _Ready(readiness))
    root.putChild(b"metrics", _Metrics(metrics))
    return root
