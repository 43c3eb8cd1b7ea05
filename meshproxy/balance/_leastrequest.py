# -*- test-case-name: tests.test_balance -*-
"""
Least request: the endpoint with the fewest requests in flight for its
weight.

An endpoint's load is C{(in_flight + 1) / weight}, so an endpoint of weight
2 takes twice the concurrent requests of one of weight 1 before it looks as
busy; the C{+ 1} counts the request being placed, so that idle endpoints of
different weights still compare by weight.  Ties, which are the rule when
traffic is light, go to a random one of the tied endpoints rather than the
first, which would get every request of a quiet service.
"""

from ._balancer import Balancer
from ._endpoint import EndpointState

__all__ = ["LeastRequest"]


class LeastRequest(Balancer):
    """
    The least loaded endpoint, by requests in flight over weight.
    """

    def _choose(self, candidates: list[EndpointState], now: float) -> EndpointState:
        loads = [(state.inFlight + 1) / state.endpoint.weight for state in candidates]
        least = min(loads)
        return self._random.choice([state for state, load in zip(candidates, loads) if load == least])
