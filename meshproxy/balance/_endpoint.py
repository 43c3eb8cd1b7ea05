# -*- test-case-name: tests.test_balance -*-
"""
What every balancer knows about each endpoint, whatever its algorithm: the
requests in flight, the round-trip time estimate and the endpoint's health.

Keeping this out of the algorithms means an endpoint that keeps failing is
ejected under round robin as under P2C, and that a pick outlives its
endpoint's removal: it holds the L{EndpointState}, not a key into the
balancer, so finishing it after an update only touches an object nobody
else looks at any more.
"""

from collections.abc import Callable

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..config import Endpoint
from ._ewma import PeakEWMA
from ._health import Health, State
from ._interfaces import IPick

__all__ = ["EndpointSnapshot", "EndpointState", "Pick"]


@frozen
class EndpointSnapshot:
    """
    One endpoint's state at one moment, for metrics.

    @ivar endpoint: the L{Endpoint}.
    @ivar inFlight: the requests or connections picked and not finished.
    @ivar rtt: the round-trip time estimate, in seconds.
    @ivar ejected: out of rotation after failures, whether or not its
        probe may go yet.
    @ivar usable: may be picked now: in rotation, or ejected and due for
        its probe.
    @ivar succeeded: the requests or connections finished successfully
        since the endpoint joined the balancer.
    @ivar failed: those finished with a failure.
    """

    endpoint: Endpoint
    inFlight: int
    rtt: float
    ejected: bool
    usable: bool
    succeeded: int
    failed: int


class EndpointState:
    """
    The running state of one endpoint in one balancer.

    @ivar endpoint: the L{Endpoint}.
    @ivar inFlight: the requests or connections picked and not finished.
    @ivar rtt: its L{PeakEWMA} round-trip time estimate.
    @ivar health: its L{Health}.
    @ivar succeeded: the requests or connections finished successfully.
    @ivar failed: those finished with a failure.  With L{succeeded}, the
        per-endpoint counters that tell an endpoint's share of the traffic
        and its success rate; two integer additions per request, where a
        Prometheus counter child would cost a lock.
    """

    def __init__(
        self, endpoint: Endpoint, now: float, backoff: Callable[[int], float], changed: Callable[[], None]
    ) -> None:
        """
        @param endpoint: the endpoint.
        @param now: when it joined the balancer.
        @param backoff: the ejection length policy.
        @param changed: called when the endpoint is ejected or taken back.
        """
        self.endpoint = endpoint
        self.inFlight = 0
        self.rtt = PeakEWMA(now)
        self.health = Health(backoff, changed)
        self.succeeded = 0
        self.failed = 0

    def snapshot(self, now: float) -> EndpointSnapshot:
        """
        The endpoint's state at C{now}, read without side effects.
        """
        return EndpointSnapshot(
            self.endpoint,
            self.inFlight,
            self.rtt.peek(now),
            self.health.state is not State.HEALTHY,
            self.health.usable(now),
            self.succeeded,
            self.failed,
        )


@implementer(IPick)
class Pick:
    """
    One request on one endpoint, reporting back to its L{EndpointState}.

    @ivar endpoint: the chosen L{Endpoint}.
    @ivar _state: the endpoint's state.
    @ivar _clock: the balancer's clock.
    @ivar _started: when the request was picked.
    @ivar _epoch: the endpoint's health epoch when it was picked.
    """

    def __init__(self, state: EndpointState, clock: IReactorTime, now: float) -> None:
        """
        Count a request as started on C{state}'s endpoint at C{now}, the
        time the balancer chose it at.
        """
        self.endpoint = state.endpoint
        self._state = state
        self._clock = clock
        self._started = now
        self._epoch = state.health.picked(now)
        state.inFlight += 1

    def responded(self) -> None:
        now = self._clock.seconds()
        self._state.rtt.observe(now - self._started, now)

    def finished(self, success: bool, refused: bool = False) -> None:
        # No latency sample without a response: a fast failure would make
        # a broken endpoint look fast, and draw more traffic to it.
        state = self._state
        state.inFlight -= 1
        if success:
            state.succeeded += 1
        else:
            state.failed += 1
        state.health.finished(self._epoch, success, refused, self._clock.seconds())
