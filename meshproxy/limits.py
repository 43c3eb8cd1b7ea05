# -*- test-case-name: tests.test_limits -*-
"""
Caps on what one proxy process holds at once, so that a flood of clients
or requests degrades into refusals the clients can see instead of an
exhausted process that fails everyone.

  - Connections (C{[proxy] max_connections}): at the cap the listeners stop
    accepting, as HAProxy's C{maxconn} does, so new clients wait in the
    kernel's accept queue (and time out there if the cap is never left)
    rather than being accepted into a process that has no file descriptor
    left to reach an endpoint with.  Accepting resumes as soon as a
    connection closes.  By default the cap comes from the open-files
    limit: each relayed connection needs a second descriptor for its
    endpoint, and the proxy needs some of its own.
  - HTTP requests in progress (C{[proxy] max_requests}): one over the cap
    is answered 503 at once.  A pooled or multiplexed upstream makes
    requests cheap in descriptors but not in memory, and a slow endpoint
    makes them pile up.
  - Header sections (C{max_header_bytes}, 431) and request bodies
    (C{max_request_body}, 413) are checked by the HTTP code; they are
    counted here with the rest.

Each refusal counts in C{limit_exceeded_total{limit}}; C{limit_max{limit}}
exports the caps themselves, for alerts on how close
C{tcp_open_connections} comes.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger

__all__ = ["CONNECTIONS", "HEADER_BYTES", "REQUESTS", "REQUEST_BODY", "ConnectionLimit", "Limits", "raiseFileLimit"]

#: The values of the C{limit} label.
CONNECTIONS = "connections"
REQUESTS = "requests"
HEADER_BYTES = "header_bytes"
REQUEST_BODY = "request_body"

#: Descriptors kept back from the connection cap for the proxy's own use:
#: listeners, the admin port, log files, resolvers, the identity client.
_RESERVED_FILES = 64


def raiseFileLimit(getrlimit: Callable = resource.getrlimit, setrlimit: Callable = resource.setrlimit) -> int:
    """
    Raise the soft open-files limit to the hard one and return it.

    systemd starts services with a soft limit of 1024 and a far higher
    hard limit, expecting a server that needs more to raise its own: a
    proxy holding a few hundred connections would otherwise fail at
    C{accept}.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def connectionsFor(openFiles: int) -> int:
    """
    The connection cap that C{openFiles} descriptors allow: two for each
    connection (the client's and the endpoint's), after the reserve.
    """
    return max(1, (openFiles - _RESERVED_FILES) // 2)


class ConnectionLimit:
    """
    Stops the listeners accepting while C{maximum} accepted connections
    are open, and starts them again when one closes.

    @ivar maximum: the cap.
    @ivar open: accepted connections open now.
    @ivar _ports: the listening ports to pause, added as they are bound.
    """

    _log = Logger()

    def __init__(self, maximum: int, exceeded: Callable[[], None]) -> None:
        """
        @param exceeded: called each time the cap stops accepting.
        """
        self.maximum = maximum
        self.open = 0
        self._exceeded = exceeded
        self._ports: list = []

    def listening(self, port) -> None:
        """
        Pause C{port} with the others while the cap is reached.
        """
        self._ports.append(port)
        # A port accepts a batch per read, so C{open} may pass the cap by a
        # few: accepting stops when it reaches the cap and resumes when it
        # falls below.
        if self.open >= self.maximum:
            port.stopReading()

    def stopped(self, port) -> None:
        """
        C{port} was closed: it is no longer the cap's to resume.
        """
        if port in self._ports:
            self._ports.remove(port)

    def opened(self) -> None:
        self.open += 1
        if self.open == self.maximum:
            self._exceeded()
            self._log.warn(
                "{open} connections open, the most allowed ([proxy] max_connections): accepting no more until one closes",
                open=self.open,
            )
            for port in self._ports:
                port.stopReading()

    def closed(self) -> None:
        self.open -= 1
        if self.open == self.maximum - 1:
            self._log.info("{open} connections open: accepting again", open=self.open)
            for port in self._ports:
                port.startReading()


class Limits:
    """
    One process's caps and the count of refusals they caused.

    @ivar connections: the L{ConnectionLimit}.
    @ivar maxRequests: the request cap, 0 for none.
    @ivar requests: HTTP requests in progress now.
    @ivar maxHeaderBytes: the largest header section accepted.
    @ivar maxRequestBody: the largest request body accepted, 0 for no cap.
    @ivar exceeded: refusals, by C{limit} label.
    """

    def __init__(
        self,
        maxConnections: int = 1 << 20,
        maxRequests: int = 0,
        maxHeaderBytes: int = 64 * 1024,
        maxRequestBody: int = 0,
    ) -> None:
        """
        The defaults cap nothing but header sections, for the tests and
        tools that build HTTP servers without a configuration.
        """
        self.connections = ConnectionLimit(maxConnections, lambda: self.refused(CONNECTIONS))
        self.maxRequests = maxRequests
        self.requests = 0
        self.maxHeaderBytes = maxHeaderBytes
        self.maxRequestBody = maxRequestBody
        self.exceeded = dict.fromkeys((CONNECTIONS, REQUESTS, HEADER_BYTES, REQUEST_BODY), 0)

    def refused(self, limit: str) -> None:
        """
        Count a refusal because of C{limit}.
        """
        self.exceeded[limit] += 1

    def requestBegan(self) -> bool:
        """
        Count a request in progress, unless that would exceed the cap.

        @return: whether it may go on; if not, the refusal is counted and
            L{requestEnded} must not be called for it.
        """
        if self.maxRequests and self.requests >= self.maxRequests:
            self.refused(REQUESTS)
            return False
        self.requests += 1
        return True

    def requestEnded(self) -> None:
        self.requests -= 1


class LimitsCollector:
    """
    Exports C{limit_exceeded_total} and C{limit_max} at scrape time, so that
    counting a refusal costs an addition.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    def collect(self) -> Iterable:
        limits = self._limits
        exceeded = CounterMetricFamily(
            "limit_exceeded",
            "Connections paused and requests refused because a [proxy] max_* cap was reached.",
            labels=["limit"],
        )
        for limit, count in limits.exceeded.items():
            exceeded.add_metric([limit], count)
        yield exceeded
        caps = GaugeMetricFamily("limit_max", "The [proxy] max_* caps (0: none).", labels=["limit"])
        for limit, value in (
            (CONNECTIONS, limits.connections.maximum),
            (REQUESTS, limits.maxRequests),
            (HEADER_BYTES, limits.maxHeaderBytes),
            (REQUEST_BODY, limits.maxRequestBody),
        ):
            caps.add_metric([limit], value)
        yield caps
