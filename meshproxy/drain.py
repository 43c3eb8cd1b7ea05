# -*- test-case-name: tests.test_drain -*-
"""
Graceful shutdown: the connections a proxy has accepted, and how each is
told to finish.

A proxy that stops must not cut what is in flight.  Its listeners stop
accepting first; then every open connection is asked to finish, each in
the way its protocol allows:

  - HTTP/1: the response in progress is the last (it carries
    C{Connection: close}); an idle connection closes at once.
  - HTTP/2: a C{GOAWAY} naming the last stream the server will serve; the
    connection closes when those streams are done.
  - Opaque TCP (and tunnels after an upgrade or C{CONNECT}): nothing.  The
    proxy does not know where one of their messages ends, so they run to
    their own end.

The proxy exits when no connection is left, or when the grace period is
over, whichever comes first; connections still open then are aborted.

Two kinds of things register with a L{ConnectionRegistry}:

  - Every accepted connection, from the moment it is accepted (while its
    protocol is still being detected, or its TLS handshake runs), through
    L{ConnectionRegistry.track}, which wraps a listener's factory.  These
    are what the drain waits for, and what the grace period aborts.
  - The protocols that can end a connection gracefully (L{IDrainable}),
    which add themselves once they serve the connection
    (L{ConnectionRegistry.add}) and remove themselves when it is lost.
    These are told to L{IDrainable.drain}.  One that adds itself during a
    drain is told at once: it was accepted before the listener stopped.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from .detect import DelegatingProtocol
from .limits import ConnectionLimit

__all__ = ["ConnectionRegistry", "IDrainable"]


class IDrainable(Interface):
    """
    A server protocol that can end its connection without cutting a
    request short.

    Implementations add themselves to their listener's
    L{ConnectionRegistry} when their connection is made (L{IProtocol.connectionMade})
    and remove themselves when it is lost (L{IProtocol.connectionLost}).

    For the HTTP/2 server: C{drain} is where the C{GOAWAY} goes (error code
    C{NO_ERROR}, the highest stream id received as the last stream), after
    which new streams are refused and the connection closes once the
    streams already open are done.
    """

    def drain() -> None:
        """
        Finish what is in progress, take no new request, then close.

        Called at most once per connection, possibly from within
        C{connectionMade} (the drain began while the connection was being
        detected), before the bytes read during detection are delivered:
        a protocol that finds itself idle should look again on a later
        reactor turn rather than close before its first request is read.
        """


class _Tracked(DelegatingProtocol):
    """
    An accepted connection, counted from accept to close.

    It hands the connection on by delegation, as detection does: the
    listener's protocol (C{_next}) gets the real transport (so its writes,
    producers and half-closes go straight to it), and this protocol
    forwards the events it receives.  That costs one call per read and
    nothing per write.

    @ivar _registry: where the connection is counted.
    """

    def __init__(self, registry: ConnectionRegistry, inner: IProtocol) -> None:
        self._registry = registry
        self._next = inner

    def logPrefix(self) -> str:
        """
        The wrapped protocol's prefix: the transport's log lines name what
        serves the connection, not this counter.
        """
        return ILoggingContext(self._next).logPrefix()

    def makeConnection(self, transport) -> None:
        self._registry._opened(self)
        super().makeConnection(transport)
        self._next.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._next.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self._next.connectionLost(reason)
        finally:
            self._registry._closed(self)


class _TrackingFactory(Factory):
    """
    A listener's factory whose every connection is counted in a registry.

    @ivar _registry: where connections are counted.
    @ivar _wrapped: the listener's own factory.
    """

    def __init__(self, registry: ConnectionRegistry, wrapped: IProtocolFactory) -> None:
        self._registry = registry
        self._wrapped = wrapped

    def logPrefix(self) -> str:
        return ILoggingContext(self._wrapped).logPrefix()

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def buildProtocol(self, addr) -> IProtocol | None:
        inner = self._wrapped.buildProtocol(addr)
        if inner is None:
            return None
        return _Tracked(self._registry, inner)


class ConnectionRegistry:
    """
    The connections of a proxy's listeners, for a graceful shutdown.

    @ivar draining: whether L{drain} was called.
    @ivar _accepted: every open accepted connection, as its L{_Tracked}.
    @ivar _drainable: the L{IDrainable} protocols serving them.
    @ivar _empty: the L{Deferred} the drain waits on, while it waits.
    @ivar _deadline: the end of the grace period, while the drain waits.
    @ivar _limit: the cap on accepted connections, told of each one opened
        and closed, if there is one.
    """

    _log = Logger()

    def __init__(self, limit: ConnectionLimit | None = None) -> None:
        self._limit = limit
        self.draining = False
        self._accepted: set[_Tracked] = set()
        self._drainable: set[IDrainable] = set()
        self._empty: Deferred[int] | None = None
        self._deadline: IDelayedCall | None = None

    def __len__(self) -> int:
        """
        The number of open accepted connections.
        """
        return len(self._accepted)

    def track(self, factory: IProtocolFactory) -> IProtocolFactory:
        """
        Count every connection C{factory}'s listener accepts, until it is
        closed.

        @return: the factory to listen with.
        """
        return _TrackingFactory(self, factory)

    def add(self, protocol: IDrainable) -> None:
        """
        C{protocol} serves a connection and can end it gracefully: tell it
        to when the proxy drains (at once, if it drains already).
        """
        self._drainable.add(protocol)
        if self.draining:
            protocol.drain()

    def remove(self, protocol: IDrainable) -> None:
        """
        C{protocol}'s connection is lost.  Removing one that was never
        added does nothing, so a protocol may remove itself from every
        C{connectionLost}.
        """
        self._drainable.discard(protocol)

    def drain(self, grace: float, clock: IReactorTime) -> Deferred[int]:
        """
        Tell every connection to finish, and wait until all are closed or
        C{grace} seconds have passed; then abort the rest.

        The listeners should have stopped accepting first: a connection
        accepted during the drain is counted and drained like the others,
        but keeps the drain waiting.

        @return: a L{Deferred} that fires with the number of connections
            aborted at the end of the grace period (0 when all finished).
        """
        self.draining = True
        for protocol in list(self._drainable):
            protocol.drain()
        if not self._accepted:
            return succeed(0)
        self._empty = Deferred()
        self._deadline = clock.callLater(grace, self._abort)
        return self._empty

    def _abort(self) -> None:
        """
        The grace period is over: cut every connection still open.
        """
        empty, self._empty = self._empty, None
        self._deadline = None
        remaining = list(self._accepted)
        self._log.warn(
            "Graceful shutdown did not complete in time: aborting {count} connections", count=len(remaining)
        )
        for tracked in remaining:
            tracked.transport.abortConnection()
        empty.callback(len(remaining))

    def _opened(self, tracked: _Tracked) -> None:
        """
        A connection was accepted.
        """
        self._accepted.add(tracked)
        if self._limit is not None:
            self._limit.opened()

    def _closed(self, tracked: _Tracked) -> None:
        """
        An accepted connection is closed; the drain is over if it was the
        last.
        """
        if tracked in self._accepted:
            self._accepted.remove(tracked)
            if self._limit is not None:
                self._limit.closed()
        if not self._accepted and self._empty is not None:
            empty, self._empty = self._empty, None
            self._deadline.cancel()
            self._deadline = None
            empty.callback(0)
