# -*- test-case-name: tests.test_balance_waiter -*-
"""
Waiting for a usable endpoint, for at most the failfast time.

When every endpoint of a service is ejected, a request should neither fail
at once (the first ejection lasts a second, and a probe may readmit an
endpoint sooner) nor wait for ever (the client would rather hear that the
service is down).  Like linkerd2-proxy's failfast gate, a L{Waiter} queues
such requests and either hands each a pick as soon as an endpoint outside
its exclusions is usable, oldest first, or fails it after the failfast
time, 3 seconds by default, with L{NoEndpointsReady}.

The balancer stays pure: it says when its next ejection ends
(L{IBalancer.nextProbe}) and reports the events that may make an endpoint
usable (L{IBalancer.subscribe}); this module owns the timers.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._interfaces import IBalancer, IPick

__all__ = ["FAILFAST", "NoEndpointsReady", "Waiter"]

#: How long a request waits for a usable endpoint, in seconds
#: (linkerd2-proxy's outbound failfast timeout).
FAILFAST = 3.0


class NoEndpointsReady(Exception):
    """
    No endpoint became usable within the failfast time.  An HTTP client is
    told so with a 503 and C{meshproxy-proxy-error: no endpoints ready}.
    """

    def __str__(self) -> str:
        return "no endpoints ready"


class Waiter:
    """
    Picks from one balancer, waiting up to the failfast time for one.

    @ivar _balancer: the L{IBalancer} picked from; L{replace} changes it.
    @ivar _clock: the L{IReactorTime} the timers run on.
    @ivar _failfast: how long a request may wait, in seconds.
    @ivar _waiting: the waiting requests, oldest first: each one's
        L{Deferred}, mapped to the endpoints it excludes and its failfast
        timer.
    @ivar _wakeup: the timer set for the end of the balancer's next
        ejection while requests wait, or L{None}.
    """

    def __init__(self, balancer: IBalancer, clock: IReactorTime, failfast: float = FAILFAST) -> None:
        self._balancer = balancer
        self._clock = clock
        self._failfast = failfast
        self._waiting: dict[Deferred[IPick], tuple[frozenset, IDelayedCall]] = {}
        self._wakeup: IDelayedCall | None = None
        balancer.subscribe(self._retry)

    def replace(self, balancer: IBalancer) -> None:
        """
        Pick from C{balancer} from now on: a reload of the configuration
        changed the service's balancing algorithm.  Requests waiting are
        served by the new balancer.

        The old balancer keeps calling this waiter when its remaining
        picks finish; that only makes it look at the new one again, which
        is harmless, and ends with those picks.
        """
        self._balancer = balancer
        balancer.subscribe(self._retry)
        self._retry()

    def pick(self, exclude: frozenset = frozenset()) -> Deferred[IPick]:
        """
        Choose an endpoint, now or once one is usable.

        @param exclude: as for L{IBalancer.pick}.
        @return: a L{Deferred} that fires with an L{IPick}, or fails with
            L{NoEndpointsReady} after the failfast time.  Cancelling it
            (the client went away) takes the request out of the queue.
        """
        if self._waiting:
            # Serve those who came first: the end of an ejection may be due
            # with its timer not yet run, and its probe is theirs.
            self._retry()
        pick = self._balancer.pick(exclude)
        if pick is not None:
            return succeed(pick)
        waiting: Deferred[IPick] = Deferred(self._forget)
        self._waiting[waiting] = (exclude, self._clock.callLater(self._failfast, self._expire, waiting))
        self._schedule()
        return waiting

    def _retry(self) -> None:
        """
        Give every waiting request that can have one a pick, oldest first.
        """
        # A pick's callbacks may finish picks, and so eject endpoints and
        # call this again: walk a copy, and skip whoever was served since.
        # Balancer events come often while many requests wait, so stop as
        # soon as no pick is possible for anyone: with no usable endpoint,
        # or when a request that excludes nothing found none.
        for waiting, (exclude, timeout) in list(self._waiting.items()):
            if not self._balancer.ready:
                break
            if waiting not in self._waiting:
                continue
            pick = self._balancer.pick(exclude)
            if pick is not None:
                del self._waiting[waiting]
                timeout.cancel()
                waiting.callback(pick)
            elif not exclude:
                break
        self._schedule()

    def _schedule(self) -> None:
        """
        Look again when the next ejection ends, if anyone is waiting.
        """
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        when = self._balancer.nextProbe() if self._waiting else None
        if when is not None:
            self._wakeup = self._clock.callLater(when - self._clock.seconds(), self._retry)

    def _expire(self, waiting: Deferred[IPick]) -> None:
        del self._waiting[waiting]
        self._schedule()
        waiting.errback(NoEndpointsReady())

    def _forget(self, waiting: Deferred[IPick]) -> None:
        _, timeout = self._waiting.pop(waiting)
        timeout.cancel()
        self._schedule()
