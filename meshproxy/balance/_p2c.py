# -*- test-case-name: tests.test_balance -*-
"""
Power of two choices over peak-EWMA costs: the default balancer, as in
Finagle and linkerd2-proxy.

Each pick draws two distinct usable endpoints at random and takes the
cheaper, where an endpoint's cost is::

    cost = rtt * (in_flight + 1) / weight

with C{rtt} the L{PeakEWMA} estimate.  The round-trip time makes a slow
endpoint lose traffic; the requests in flight make a stalled one lose it
before any sample arrives (a request that never answers gives no sample,
but stays in flight).  Comparing two random endpoints rather than all of
them keeps a burst of picks made on the same information from all landing
on the one endpoint that looked best, and costs the same however many
endpoints there are.
"""

from ._balancer import Balancer
from ._endpoint import EndpointState

__all__ = ["P2CPeakEWMA"]


class P2CPeakEWMA(Balancer):
    """
    Two random endpoints, the cheaper by round-trip time times load.
    """

    def _choose(self, candidates: list[EndpointState], now: float) -> EndpointState:
        if len(candidates) == 1:
            return candidates[0]
        return min(self._random.sample(candidates, 2), key=lambda state: _cost(state, now))


def _cost(state: EndpointState, now: float) -> float:
    return state.rtt.decay(now) * (state.inFlight + 1) / state.endpoint.weight
