# -*- test-case-name: tests.test_balance -*-
"""
The peak-sensitive exponentially weighted moving average of an endpoint's
round-trip time, as Finagle's C{PeakEwma} and tower's C{PeakEwma} (which
linkerd2-proxy uses) keep it.

Samples arrive unevenly, so each is weighted by the time since the
previous observation rather than by a fixed factor.  On an observation
C{s} at time C{t}, with C{E} the estimate last set at time C{t0} and
C{tau} the decay time::

    w = exp(-(t - t0) / tau)
    E = s                    if s > E      (a peak is believed at once)
    E = s + (E - s) * w      otherwise     (a faster sample is believed slowly)

Believing a slow sample at once and a fast one only gradually is what
makes a struggling endpoint lose traffic within one request, and win it
back only after it has been fast for a while.

Reading the estimate to choose an endpoint counts as an observation of
zero (L{PeakEWMA.decay}), so the estimate of an endpoint nobody hears from
falls by C{exp(-elapsed / tau)}: an endpoint shunned for one slow response
is tried again once its estimate has decayed below its peers', instead of
being starved for ever.  Metrics read with L{PeakEWMA.peek}, which gives
the same figure without recording it, so a scrape does not change what the
balancer does next.
"""

from math import exp

__all__ = ["DECAY", "DEFAULT_RTT", "PeakEWMA"]

#: The estimate of an endpoint not yet heard from, in seconds: the
#: optimistic default of linkerd2-proxy, so that new endpoints get traffic.
DEFAULT_RTT = 0.030

#: The decay time C{tau}, in seconds: after C{tau} without observations an
#: estimate has fallen to C{1/e} of its value.
DECAY = 10.0


class PeakEWMA:
    """
    The round-trip time estimate of one endpoint.

    @ivar _estimate: the estimate as of C{_stamp}, in seconds.
    @ivar _stamp: the time of the last observation.
    @ivar _decay: the decay time C{tau}, in seconds.
    """

    def __init__(self, now: float, initial: float = DEFAULT_RTT, decay: float = DECAY) -> None:
        """
        @param now: the time the endpoint appeared.
        @param initial: the estimate before any sample.
        @param decay: the decay time C{tau}.
        """
        self._estimate = initial
        self._stamp = now
        self._decay = decay

    def _weight(self, now: float) -> float:
        """
        The weight C{w} of the current estimate at C{now}.  A clock that
        steps backwards counts as no time passed.
        """
        elapsed = now - self._stamp
        if elapsed <= 0.0:
            return 1.0
        return exp(-elapsed / self._decay)

    def observe(self, rtt: float, now: float) -> None:
        """
        Take a round-trip time sample.

        @param rtt: the sample, in seconds.
        @param now: when it ended.
        """
        if rtt > self._estimate:
            self._estimate = rtt
        else:
            self._estimate = rtt + (self._estimate - rtt) * self._weight(now)
        self._stamp = now

    def decay(self, now: float) -> float:
        """
        Read the estimate to make a decision: an observation of zero.

        @return: the estimate at C{now}, in seconds.
        """
        self._estimate = self.peek(now)
        self._stamp = now
        return self._estimate

    def peek(self, now: float) -> float:
        """
        Read the estimate without observing anything.

        @return: the estimate L{decay} would return at C{now}, in seconds.
        """
        return self._estimate * self._weight(now)
