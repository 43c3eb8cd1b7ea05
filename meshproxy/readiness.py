# -*- test-case-name: tests.test_admin -*-
"""
Whether the proxy is ready to take traffic, and if not, why.

A proxy is ready once every listener is bound, its first certificate is in
hand and its service discovery has answered: before that an orchestrator
that sent traffic would see refused connections or handshake failures.  Each
part that the proxy waits for asks L{Readiness.require} for a condition of
its own when it is set up, and calls what it got back once the condition
holds.  Nobody needs to know the whole list: it grows as the proxy is built.

The admin server turns this into C{/ready}, naming the conditions still
pending so an operator can see which part is stuck; the systemd notifier
waits on L{Readiness.whenReady} to send C{READY=1}.

Readiness is not a health check: a ready proxy stays ready if a certificate
renewal fails (the old certificate stays in use).  It ends only with
L{Readiness.drain}, when a graceful shutdown wants load balancers to stop
sending new connections before the listeners close.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed

__all__ = ["Readiness"]


class Readiness:
    """
    The named conditions that must all hold before the proxy is ready.

    A proxy with no conditions is ready: it has nothing to wait for.

    @ivar _met: every condition required so far, in the order required,
        mapped to whether it holds.
    @ivar _draining: whether L{drain} was called.
    @ivar _waiting: the L{Deferred}s returned by L{whenReady} that have not
        fired yet.
    """

    #: The reason L{pending} gives once the proxy is draining.
    DRAINING = "draining"

    def __init__(self) -> None:
        self._met: dict[str, bool] = {}
        self._draining = False
        self._waiting: list[Deferred[None]] = []

    def require(self, name: str) -> Callable[[], None]:
        """
        Add a condition that must hold before the proxy is ready.

        @param name: what is awaited, as an operator should read it on
            C{/ready}: C{"listener tcp:4143"}, C{"identity certificate"}.

        @return: a function of no arguments that marks the condition met.
            Calling it again does nothing, so a component may call it each
            time it succeeds (every certificate renewal, say) without
            keeping track.

        @raise ValueError: if C{name} was already required: two components
            waiting on one name would make either one's success mark the
            other's condition met.
        """
        if name in self._met:
            raise ValueError(f"readiness condition {name!r} is already required")
        self._met[name] = False

        def met() -> None:
            if not self._met[name]:
                self._met[name] = True
                self._maybeReady()

        return met

    @property
    def pending(self) -> list[str]:
        """
        Why the proxy is not ready: L{DRAINING} first if it is draining,
        then the conditions that do not hold yet, in the order they were
        required.  Empty when the proxy is ready.
        """
        unmet = [name for name, met in self._met.items() if not met]
        return [self.DRAINING, *unmet] if self._draining else unmet

    @property
    def ready(self) -> bool:
        """
        Whether every condition holds and the proxy is not draining.
        """
        return not self._draining and all(self._met.values())

    def drain(self) -> None:
        """
        Stop being ready, for good: the proxy is shutting down gracefully
        and wants no new traffic.

        L{Deferred}s from L{whenReady} that have not fired never will; cancel
        them if their holder stops waiting.
        """
        self._draining = True

    def whenReady(self) -> Deferred[None]:
        """
        Wait until the proxy is ready.

        @return: a L{Deferred} that fires with L{None} the first time every
            condition holds, at once if that is now.  It is not fired again
            if a condition required later makes the proxy unready for a
            while.  Cancelling it stops the wait.
        """
        if self.ready:
            return succeed(None)
        waiting: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def _maybeReady(self) -> None:
        """
        Fire the waiting L{Deferred}s if the condition just met was the last
        one.
        """
        if self.ready:
            # Swap first: a callback may call whenReady or require again.
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
