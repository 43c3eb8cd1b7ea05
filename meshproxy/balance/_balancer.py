# -*- test-case-name: tests.test_balance -*-
"""
What the balancing algorithms share: the endpoint set, per-endpoint state,
ejection, and the notifications and snapshots the rest of the proxy reads.

An algorithm is a subclass that only decides among the usable endpoints;
it never sees an ejected or removed one, which is what makes ejection hold
whatever the service's C{balancer} setting.
"""

from collections.abc import Callable, Iterable, Sequence
from random import Random

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..config import Endpoint
from ._endpoint import EndpointSnapshot, EndpointState, Pick
from ..backoff import backoffPolicy
from ._health import State
from ._interfaces import IBalancer

__all__ = ["Balancer"]


@implementer(IBalancer)
class Balancer:
    """
    The part of every balancer that is not its algorithm.

    Subclasses define C{_choose(candidates, now)}: given a non-empty list of
    the L{EndpointState}s of usable endpoints (in endpoint order) and the
    time, return one of them.

    Every balancer takes the same arguments, so the registry can build any
    of them from a service's configuration.

    @ivar _clock: the L{IReactorTime} every time comes from.
    @ivar _random: the source of every random choice.
    @ivar _backoff: the ejection length policy shared by the endpoints.
    @ivar _states: the state of each endpoint, in endpoint order.
    @ivar _listeners: what L{subscribe} registered.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        clock: IReactorTime | None = None,
        random: Random | None = None,
    ) -> None:
        """
        @param endpoints: the initial endpoints.
        @param clock: the time source; the global reactor if L{None}, as
            L{twisted.application.internet.ClientService} defaults it.
        @param random: the randomness source; a fresh, unseeded L{Random}
            if L{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._random = Random() if random is None else random
        self._backoff = backoffPolicy(self._random)
        self._states: dict[Endpoint, EndpointState] = {}
        self._listeners: list[Callable[[], None]] = []
        self.update(endpoints)

    @property
    def ready(self) -> bool:
        now = self._clock.seconds()
        return any(state.health.usable(now) for state in self._states.values())

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        now = self._clock.seconds()
        self._states = {
            endpoint: self._states.get(endpoint) or EndpointState(endpoint, now, self._backoff, self._changed)
            for endpoint in endpoints
        }
        self._changed()

    def pick(self, exclude: frozenset[Endpoint] = frozenset()) -> Pick | None:
        now = self._clock.seconds()
        # Nearly every pick excludes nothing: it then hashes no endpoint.
        candidates = [
            state
            for endpoint, state in self._states.items()
            if (not exclude or endpoint not in exclude) and state.health.usable(now)
        ]
        if not candidates:
            return None
        return Pick(self._choose(candidates, now), self._clock, now)

    def nextProbe(self) -> float | None:
        now = self._clock.seconds()
        return min(
            (
                state.health.until
                for state in self._states.values()
                if state.health.state is State.EJECTED and state.health.until > now
            ),
            default=None,
        )

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def snapshots(self) -> Sequence[EndpointSnapshot]:
        now = self._clock.seconds()
        return [state.snapshot(now) for state in self._states.values()]

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
