# -*- test-case-name: tests.test_listener -*-
"""
Listeners: accept connections, detect their protocol, and hand each to what
serves it.

A listener is one Twisted server endpoint (so C{tcp:}, C{unix:} and
C{systemd:} socket activation all work) with a factory that runs protocol
detection unless the port is opaque.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from .detect import HTTP1, HTTP2, TLS, DetectingFactory, Opaque, Verdict
from .limits import ConnectionLimit
from .metrics import ProxyMetrics
from .tcp import RelayProtocol, Target
from .tls import MeshTLS

_SKIPPED = Opaque("skipped")
_HTTP = (HTTP1, HTTP2)

#: Builds the protocol serving an HTTP connection: given the verdict
#: (L{HTTP1} or L{HTTP2}), the C{tls} label and the client's verified
#: identity (empty for none).
HTTPBuilder = Callable[[Verdict, str, str], IProtocol]


def relayFactory(
    target: Target,
    clock: IReactorTime,
    metrics: ProxyMetrics,
    detectTimeout: float,
    opaque: bool,
    tls: MeshTLS | None = None,
    http: HTTPBuilder | None = None,
) -> IProtocolFactory:
    """
    A factory for connections relayed as TCP to C{target}.

    Detection runs even though most verdicts are relayed alike, so that the
    logs and C{detect_total} show what each port really carries; an opaque
    port skips it, as a server-speaks-first protocol would otherwise wait
    out the detect timeout before its server could speak.

    @param tls: on an inbound listener of a proxy with an identity, its
        mTLS: a ClientHello for that identity is terminated here, and
        detection runs again on the plaintext (so C{detect_total} counts
        both verdicts).  Any other TLS is relayed untouched.
    @param http: builds the protocol that serves HTTP/1 and HTTP/2
        connections, plaintext or inside terminated mTLS, if requests are
        to be balanced one by one rather than relayed; other verdicts are
        still relayed.
    """

    def relay(verdict: Verdict, label: str, clientId: str = "") -> RelayProtocol:
        metrics.detected(verdict.result)
        return RelayProtocol(target, label, verdict.result, clock, clientId)

    def serve(verdict: Verdict, label: str, clientId: str = "") -> IProtocol:
        if http is not None and isinstance(verdict, _HTTP):
            metrics.detected(verdict.result)
            return http(verdict, label, clientId)
        return relay(verdict, label, clientId)

    def plaintext(clientId: str | None) -> IProtocol:
        inner = DetectingFactory(lambda verdict: serve(verdict, "true", clientId or ""), clock, detectTimeout)
        return inner.buildProtocol(None)

    def choose(verdict: Verdict) -> IProtocol:
        if not isinstance(verdict, TLS):
            return serve(verdict, "no_identity")
        if tls is not None and verdict.sni == tls.identity:
            metrics.detected(verdict.result)
            return tls.server(plaintext, detectTimeout)
        # TLS that the proxy does not terminate is passed through untouched.
        return relay(verdict, "opaque")

    if opaque:
        return Factory.forProtocol(lambda: choose(_SKIPPED))
    return DetectingFactory(choose, clock, detectTimeout)


class _Refused(Protocol):
    """
    A connection the outbound listener cannot route: it is closed at once,
    with a log line saying why.
    """

    _log = Logger()

    def __init__(self, verdict: Verdict) -> None:
        self._verdict = verdict

    def connectionMade(self) -> None:
        self._log.info(
            "Closed {result} connection from {peer}: the outbound listener routes HTTP only",
            result=self._verdict.result,
            peer=self.transport.getPeer(),
        )
        self.transport.loseConnection()


def outboundFactory(http: HTTPBuilder, clock: IReactorTime, metrics: ProxyMetrics, detectTimeout: float) -> IProtocolFactory:
    """
    A factory for the outbound listener, which routes HTTP/1 and HTTP/2 by
    authority.

    Other protocols name no authority, so there is nowhere to send them:
    they are closed.
    """

    def choose(verdict: Verdict) -> IProtocol:
        metrics.detected(verdict.result)
        if isinstance(verdict, _HTTP):
            return http(verdict, "no_identity", "")
        return _Refused(verdict)

    return DetectingFactory(choose, clock, detectTimeout)


def _tuneAccepted(port: IListeningPort) -> None:
    """
    Set, once on a TCP listening socket, the options every connection it
    accepts inherits (as Linux copies them at accept): C{TCP_NODELAY},
    because a proxy forwards each chunk as it arrives and Nagle's algorithm
    would hold a small write (a response head, an HTTP/2 frame) until the
    previous one is acknowledged; C{SO_KEEPALIVE}, so that a client that
    vanished without a FIN is noticed on an idle connection.  The
    connections the proxy opens get the same options (L{meshproxy.endpoint}).
    """
    listening = getattr(port, "socket", None)
    if listening is None or listening.family not in (socket.AF_INET, socket.AF_INET6):
        return
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class ListenerService(Service):
    """
    Listen on one endpoint string while running.

    A port that cannot be bound fails the start of the whole service tree,
    so twistd exits with the reason instead of running half a proxy.

    @ivar _listening: called once the port is bound, to mark the proxy
        ready.
    @ivar _limit: the L{ConnectionLimit} that pauses the port at its cap,
        if any.
    @ivar _port: the bound port, while running.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        description: str,
        factory: IProtocolFactory,
        listening: Callable[[], None],
        limit: ConnectionLimit | None = None,
    ) -> None:
        self._reactor = reactor
        self.description = description
        self._factory = factory
        self._listening = listening
        self._limit = limit
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind here, before twistd drops privileges, so that low ports work.
        super().privilegedStartService()
        failures = []
        listened = serverFromString(self._reactor, self.description).listen(self._factory)
        listened.addCallbacks(self._bound, failures.append)
        if failures:
            failures[0].raiseException()

    def _bound(self, port: IListeningPort) -> None:
        self._port = port
        _tuneAccepted(port)
        if self._limit is not None:
            self._limit.listening(port)
        self._log.info("Listening on {description} ({address})", description=self.description, address=port.getHost())
        self._listening()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            if self._limit is not None:
                self._limit.stopped(port)
            return port.stopListening()
        return None
