# -*- test-case-name: tests.test_http_server -*-
"""
The end of HTTP on a connection: after a 101 to an C{Upgrade} request
(WebSocket) or the 200 to a C{CONNECT}, both connections carry opaque
bytes, and the opaque TCP relay of L{meshproxy.tcp} takes them over.

The relay normally picks an endpoint and connects to it itself.  Here the
endpoint was picked and the connection made for the HTTP exchange, so the
relay is given a balancer that returns that pick once and a connector that
returns that connection, already open.  Backpressure, half-close, metrics
and the log line are then the relay's, as for any opaque connection.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..balance import IPick
from ..endpoint import IConnector
from ..metrics import ProxyMetrics
from ..tcp import RelayProtocol, Target
from .client import UpstreamConnection

__all__ = ["tunnel"]


@implementer(IPick)
class _Carried:
    """
    The HTTP exchange's pick, carried into the relay: the relay finishes
    it when the tunnel closes, so the endpoint counts the tunnel as in
    flight until then.
    """

    def __init__(self, pick) -> None:
        self._pick = pick
        self.endpoint = pick.endpoint

    def responded(self) -> None:
        """
        The balancer heard of the first response byte from the exchange
        already; the relay's "connected" is no new latency sample.
        """

    def finished(self, success: bool) -> None:
        self._pick.finished(success)


class _Chosen:
    """
    The balancer the relay asks: it hands out the exchange's pick, once.
    """

    def __init__(self, pick) -> None:
        self._pick = _Carried(pick)

    def pick(self, exclude=frozenset()):
        pick, self._pick = self._pick, None
        return pick


@implementer(IConnector)
class _Handover:
    """
    The connector the relay asks: it gives the connection of the exchange,
    already open, to the protocol the relay builds for it.
    """

    def __init__(self, connection: UpstreamConnection) -> None:
        self._connection = connection

    def connect(self, endpoint, protocolFactory) -> Deferred:
        protocol = protocolFactory.buildProtocol(self._connection.transport.getPeer())
        self._connection.handOver(protocol)
        return succeed(protocol)


def tunnel(
    connection: UpstreamConnection,
    pick,
    service: str,
    direction: str,
    tls: str,
    metrics: ProxyMetrics,
    clock: IReactorTime,
    protocol: str,
) -> RelayProtocol:
    """
    A relay for an accepted connection whose HTTP ended, to C{connection}.
    The caller gives it the accepted connection with C{makeConnection}
    (after unregistering its own producer from that transport) and then
    the bytes that followed the request.

    @param pick: the exchange's L{IPick}, finished when the tunnel closes.
    @param protocol: what the log line calls the tunnel, such as
        C{"websocket"} or C{"connect"}.
    """
    target = Target(
        name=service,
        direction=direction,
        balancer=_Chosen(pick),
        connector=_Handover(connection),
        metrics=metrics,
        attempts=1,
    )
    return RelayProtocol(target, tls, protocol, clock)
