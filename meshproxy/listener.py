# -*- test-case-name: tests.test_listener -*-
"""
Listeners: accept connections, detect their protocol, and hand each to what
serves it.

A listener is one Twisted server endpoint (so C{tcp:}, C{unix:} and
C{systemd:} socket activation all work) with a factory that runs protocol
detection unless the port is opaque.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from .detect import TLS, DetectingFactory, Opaque, Verdict
from .metrics import ProxyMetrics
from .tcp import RelayProtocol, Target

_SKIPPED = Opaque("skipped")


def relayFactory(
    target: Target,
    clock: IReactorTime,
    metrics: ProxyMetrics,
    detectTimeout: float,
    opaque: bool,
) -> IProtocolFactory:
    """
    A factory for connections relayed as TCP to C{target}.

    Detection runs even though every verdict is relayed alike, so that the
    logs and C{detect_total} show what each port really carries; an opaque
    port skips it, as a server-speaks-first protocol would otherwise wait
    out the detect timeout before its server could speak.
    """

    def choose(verdict: Verdict) -> RelayProtocol:
        metrics.detected(verdict.result)
        # TLS that the proxy does not terminate is passed through untouched.
        tls = "opaque" if isinstance(verdict, TLS) else "no_identity"
        return RelayProtocol(target, tls, verdict.result, clock)

    if opaque:
        return Factory.forProtocol(lambda: choose(_SKIPPED))
    return DetectingFactory(choose, clock, detectTimeout)


class ListenerService(Service):
    """
    Listen on one endpoint string while running.

    A port that cannot be bound fails the start of the whole service tree,
    so twistd exits with the reason instead of running half a proxy.

    @ivar _listening: called once the port is bound, to mark the proxy
        ready.
    @ivar _port: the bound port, while running.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        description: str,
        factory: IProtocolFactory,
        listening: Callable[[], None],
    ) -> None:
        self._reactor = reactor
        self.description = description
        self._factory = factory
        self._listening = listening
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
        self._log.info("Listening on {description} ({address})", description=self.description, address=port.getHost())
        self._listening()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None
