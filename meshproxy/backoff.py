# -*- test-case-name: tests.test_balance -*-
"""
Exponential backoff, pure: the waits after failures in a row, for the
balancer's ejections, the resolvers' retries and the identity client's
renewals.  Randomness is a parameter, so tests can fix it.
"""

from collections.abc import Callable
from random import Random

__all__ = ["backoffPolicy", "doubling"]


def doubling(attempt: int, minimum: float, maximum: float) -> float:
    """
    C{minimum} doubled C{attempt} times, at most C{maximum}.
    """
    # 2 ** 64 seconds is past any maximum; the bound keeps the float power
    # from overflowing after a very long outage.
    return min(minimum * 2.0 ** min(attempt, 64), maximum)


def backoffPolicy(
    random: Random, minimum: float = 1.0, maximum: float = 60.0, jitter: float = 0.5
) -> Callable[[int], float]:
    """
    How long to wait after failures in a row, as Twisted's
    L{twisted.application.internet.backoffPolicy} says how long a client
    waits to reconnect, with linkerd2-proxy's numbers and jitter: how long
    an endpoint stays ejected, and how long a resolver waits to retry.

    The base is L{doubling}; a random share of up to C{jitter} times the
    base is added, but never past C{maximum}.  The jitter keeps endpoints
    ejected together (a backend restart) from being probed together ever
    after.

    @param random: the source of the jitter.
    @param minimum: the first ejection's base, in seconds.
    @param maximum: the longest ejection, in seconds.
    @param jitter: the largest share of the base added at random.
    @return: a function from the number of failures before this one (0
        for the first) to the wait in seconds.
    """

    def policy(attempt: int) -> float:
        base = doubling(attempt, minimum, maximum)
        return min(base * (1.0 + jitter * random.random()), maximum)

    return policy
