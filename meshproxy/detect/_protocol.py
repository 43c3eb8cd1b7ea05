# -*- test-case-name: tests.test_detect -*-
"""
The Twisted side of protocol detection: a protocol that holds the first
bytes of a connection until the L{Classifier} gives a verdict, then hands
the connection to the protocol chosen for that verdict.

The hand-over is by delegation: the chosen protocol gets this connection's
own transport and the bytes read so far, and this protocol forwards every
later event to it (reads by handing out the chosen protocol's own
C{dataReceived}, so that they cost no call here).  Starting TLS on the
transport instead would lose the ClientHello already read, and swapping
C{__class__} would mix two protocols' state in one object.
"""

from __future__ import annotations

from typing import Callable

from zope.interface import implementer

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._classify import Classifier
from ._verdicts import Opaque, Verdict

__all__ = ["Chooser", "DelegatingProtocol", "DetectingFactory", "DetectingProtocol"]

Chooser = Callable[[Verdict], IProtocol]


@implementer(IHalfCloseableProtocol)
class DelegatingProtocol(Protocol):
    """
    A protocol that has handed its connection on to another, C{_next},
    and forwards the half-closes the transport reports to it.

    It provides L{IHalfCloseableProtocol} whatever C{_next} does, so that
    it must act as the transport would for a C{_next} that does not: end
    the connection when the peer has sent all it will.

    @ivar _next: the protocol that serves the connection.
    """

    _next: IProtocol | None = None

    def readConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self._next):
            self._next.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        # Only the next protocol can have shut down writing.
        if IHalfCloseableProtocol.providedBy(self._next):
            self._next.writeConnectionLost()


class DetectingProtocol(DelegatingProtocol):
    """
    Detect the protocol a connection speaks, then hand the connection over.

    It provides L{IHalfCloseableProtocol} so that a client that sends its
    request and then shuts down its side of the connection is detected and
    served like any other, rather than losing the whole connection.

    @ivar _chooser: Called with the verdict; returns the protocol that
        takes the connection over.
    @ivar _clock: Schedules the detect timeout.
    @ivar _timeout: Seconds to wait for a verdict.
    @ivar _classifier: Decides the verdict.
    @ivar _timer: The pending detect timeout, from L{connectionMade} until
        the verdict.
    @ivar _next: The protocol that took the connection over, once there is
        a verdict.
    """

    _log = Logger()

    def __init__(
        self, chooser: Chooser, clock: IReactorTime, timeout: float, maxBytes: int
    ) -> None:
        self._chooser = chooser
        self._clock = clock
        self._timeout = timeout
        self._classifier = Classifier(maxBytes)
        self._timer: IDelayedCall | None = None
        self._next: IProtocol | None = None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(
            self._timeout, lambda: self._handOver(self._classifier.timeout())
        )

    def dataReceived(self, data: bytes) -> None:
        verdict = self._classifier.feed(data)
        if verdict is not None:
            self._handOver(verdict)

    def readConnectionLost(self) -> None:
        if self._next is None:
            self._handOver(self._classifier.closed())
        super().readConnectionLost()

    def connectionLost(self, reason: Failure) -> None:
        if self._next is None:
            # Lost during detection: there is nothing to hand over.
            self._timer.cancel()
        else:
            self._next.connectionLost(reason)

    def _handOver(self, verdict: Verdict) -> None:
        """
        Give the connection and the bytes read so far to the protocol the
        chooser picks for C{verdict}.
        """
        if self._timer.active():
            self._timer.cancel()
        if isinstance(verdict, Opaque) and verdict.detail is not None:
            # Whoever relays the connection logs it; only why a ClientHello
            # was refused is known here alone.
            self._log.info(
                "Malformed TLS ClientHello from {peer}, relaying as opaque: {detail}",
                peer=self.transport.getPeer(),
                detail=verdict.detail,
            )
        self._next = self._chooser(verdict)
        # Every later read goes straight to the chosen protocol: whoever
        # calls this protocol's dataReceived (the transport, or a protocol
        # wrapping this one) finds the chosen protocol's, and the
        # connection's reads cost no call here.
        self.dataReceived = self._next.dataReceived
        self._next.makeConnection(self.transport)
        buffered = self._classifier.buffered
        if buffered:
            self._next.dataReceived(buffered)


class DetectingFactory(ServerFactory):
    """
    Build a L{DetectingProtocol} for each connection.

    A port whose traffic is known to be opaque should not use this factory
    at all: detecting there only delays server-speaks-first protocols.

    @ivar chooser: Called with each connection's verdict; returns the
        protocol that takes the connection over.  That protocol's transport
        is the connection's, so C{transport.getPeer()} gives the client.
    @ivar clock: Schedules the detect timeouts.
    @ivar timeout: Seconds to wait for a verdict.
    @ivar maxBytes: The byte cap of detection.
    """

    #: One factory serves every connection of a port: its "Starting
    #: factory" lines would only repeat the listener's own.
    noisy = False

    def __init__(
        self,
        chooser: Chooser,
        clock: IReactorTime,
        timeout: float = 10.0,
        maxBytes: int = 8192,
    ) -> None:
        self.chooser = chooser
        self.clock = clock
        self.timeout = timeout
        self.maxBytes = maxBytes

    def buildProtocol(self, addr: IAddress) -> DetectingProtocol:
        protocol = DetectingProtocol(
            self.chooser, self.clock, self.timeout, self.maxBytes
        )
        protocol.factory = self
        return protocol
