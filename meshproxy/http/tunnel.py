# -*- test-case-name: tests.test_http_server -*-
"""
The end of HTTP on a connection: after a 101 to an C{Upgrade} request
(WebSocket) or the 200 to a C{CONNECT}, both connections carry opaque
bytes, and the opaque TCP relay of L{meshproxy.tcp} takes them over.

The relay normally picks an endpoint and connects to it itself.  Here the
endpoint was picked and the connection made for the HTTP exchange, so the
relay is given a picker that returns that pick once, a connector that
returns that connection, already open, and the TCP metrics both connections
were counted in since they opened.  Backpressure, half-close, the closing
of both accounts and the log line are then the relay's, as for any opaque
connection.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..balance import IPick
from ..endpoint import IConnector
from ..metrics import TCPMetrics
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

    def finished(self, success: bool, refused: bool = False) -> None:
        self._pick.finished(success, refused)


class _Chosen:
    """
    The picker the relay asks: it hands out the exchange's pick, once.
    """

    def __init__(self, pick) -> None:
        self._pick = _Carried(pick)

    def pick(self, exclude=frozenset()) -> Deferred:
        pick, self._pick = self._pick, None
        return succeed(pick)


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


class _Continued:
    """
    The TCP counters of a connection that was counted open before the relay
    took it over: the relay's C{opened} is not a second connection.
    """

    def __init__(self, metrics: TCPMetrics) -> None:
        self.read = metrics.read
        self.wrote = metrics.wrote
        self.closed = metrics.closed

    def opened(self) -> None:
        """
        The connection was counted when it was accepted or made.
        """


class _Accounts:
    """
    What the relay asks for its metrics: the accounts the HTTP exchange
    opened, whatever labels the relay would give them (an outbound
    listener's connections, for one, have no single target).
    """

    def __init__(self, src: TCPMetrics, dst: TCPMetrics) -> None:
        self._src = _Continued(src)
        self._dst = _Continued(dst)

    def tcp(self, direction: str, peer: str, *labels: str) -> _Continued:
        return self._src if peer == "src" else self._dst


def tunnel(
    connection: UpstreamConnection,
    pick,
    service: str,
    direction: str,
    tls: str,
    src: TCPMetrics,
    clock: IReactorTime,
    protocol: str,
) -> RelayProtocol:
    """
    A relay for an accepted connection whose HTTP ended, to C{connection}.
    The caller gives it the accepted connection with C{makeConnection}
    (after unregistering its own producer from that transport) and then
    the bytes that followed the request.

    @param pick: the exchange's L{IPick}, finished when the tunnel closes.
    @param src: the metrics the accepted connection is counted in.
    @param protocol: what the log line calls the tunnel, such as
        C{"websocket"} or C{"connect"}.
    """
    target = Target(
        name=service,
        direction=direction,
        picker=_Chosen(pick),
        connector=_Handover(connection),
        metrics=_Accounts(src, connection.metrics),
        attempts=1,
    )
    return RelayProtocol(target, tls, protocol, clock)
