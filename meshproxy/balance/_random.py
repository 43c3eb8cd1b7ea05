# -*- test-case-name: tests.test_balance -*-
"""
Random choice, each usable endpoint with a chance in proportion to its
weight.  It learns nothing from outcomes, but it needs no coordination and
spreads load evenly on average: a baseline to compare the others with.
"""

from ._balancer import Balancer
from ._endpoint import EndpointState

__all__ = ["RandomChoice"]


class RandomChoice(Balancer):
    """
    A random endpoint, weighted.
    """

    def _choose(self, candidates: list[EndpointState], now: float) -> EndpointState:
        return self._random.choices(candidates, [state.endpoint.weight for state in candidates])[0]
