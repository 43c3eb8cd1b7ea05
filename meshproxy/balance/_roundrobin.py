# -*- test-case-name: tests.test_balance -*-
"""
Smooth weighted round robin.

Each pick adds every endpoint's weight to its running score, takes the
endpoint with the highest score and subtracts the total weight from it.  With
weights 5, 1, 1 this yields A A B A C A A rather than A A A A A B C: the same
shares as plain weighted round robin, spread evenly (the scheme nginx uses).
"""

from zope.interface import implementer

from ._interfaces import IBalancer, IPick


@implementer(IPick)
class _Pick:
    """
    A round-robin pick: round robin takes no feedback, so the outcome is
    only recorded for whoever holds the pick.
    """

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def responded(self):
        pass

    def finished(self, success):
        pass


@implementer(IBalancer)
class RoundRobin:
    """
    Endpoints in turn, in proportion to their weights.

    @ivar _scores: the running score of each endpoint, in endpoint order;
        an endpoint that stays across L{update} keeps its score, so an
        update does not reset the rotation.
    """

    def __init__(self, endpoints=()):
        self._scores = {}
        self.update(endpoints)

    def update(self, endpoints):
        self._scores = {e: self._scores.get(e, 0) for e in endpoints}

    def pick(self, exclude=frozenset()):
        candidates = [e for e in self._scores if e not in exclude]
        if not candidates:
            return None
        total = 0
        best = None
        for endpoint in candidates:
            self._scores[endpoint] += endpoint.weight
            total += endpoint.weight
            if best is None or self._scores[endpoint] > self._scores[best]:
                best = endpoint
        self._scores[best] -= total
        return _Pick(best)
