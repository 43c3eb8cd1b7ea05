# -*- test-case-name: tests.test_balance -*-
"""
Smooth weighted round robin.

Each pick adds every candidate's weight to its running score, takes the
candidate with the highest score and subtracts the total weight from it.
With weights 5, 1, 1 this yields A A B A C A A rather than A A A A A B C:
the same shares as plain weighted round robin, spread evenly (the scheme
nginx uses).  Ejected and excluded endpoints are not candidates, so their
turns go to the others and their scores stand still meanwhile.
"""

from collections.abc import Iterable

from ..config import Endpoint
from ._balancer import Balancer
from ._endpoint import EndpointState

__all__ = ["RoundRobin"]


class RoundRobin(Balancer):
    """
    Endpoints in turn, in proportion to their weights.

    @ivar _scores: the running score of each endpoint; an endpoint that
        stays across L{update} keeps its score, so an update does not reset
        the rotation.
    """

    def __init__(self, *args, **kwargs) -> None:
        """
        Take the arguments of every balancer; see L{Balancer.__init__}.
        """
        self._scores: dict[Endpoint, int] = {}
        super().__init__(*args, **kwargs)

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        endpoints = tuple(endpoints)
        self._scores = {endpoint: self._scores.get(endpoint, 0) for endpoint in endpoints}
        super().update(endpoints)

    def _choose(self, candidates: list[EndpointState], now: float) -> EndpointState:
        total = 0
        best = None
        for state in candidates:
            endpoint = state.endpoint
            self._scores[endpoint] += endpoint.weight
            total += endpoint.weight
            if best is None or self._scores[endpoint] > self._scores[best.endpoint]:
                best = state
        self._scores[best.endpoint] -= total
        return best
