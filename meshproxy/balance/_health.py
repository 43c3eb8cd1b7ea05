# -*- test-case-name: tests.test_balance -*-
"""
Endpoint health: consecutive-failure ejection with exponential backoff and
a single probe, as linkerd2-proxy's failure accrual does it.

Each endpoint's L{Health} is a small state machine::

    state     input      next state
    --------  ---------  -------------------------------------------------
    HEALTHY   SUCCEEDED  HEALTHY (the failure count starts again)
    HEALTHY   FAILED     HEALTHY, or EJECTED on the 7th failure in a row
    HEALTHY   REFUSED    EJECTED (nothing listens there: don't count to 7)
    EJECTED   PICKED     PROBING (only once the backoff is over)
    PROBING   SUCCEEDED  HEALTHY (the backoff starts again from the minimum)
    PROBING   FAILED     EJECTED, for a longer backoff
    PROBING   REFUSED    EJECTED, for a longer backoff

An ejected endpoint gets no traffic until its backoff is over; then the
next request sent to it is the probe, and no other follows until the probe
has answered, so a dead endpoint costs one failed request per backoff
rather than a burst.

Only the outcome of a request picked in the current state counts.  When
the seventh failure ejects an endpoint, other requests already sent to it
are still failing for the same reason; their outcomes must neither extend
the ejection nor pass for the probe's.  Each transition therefore starts a
new I{epoch}, and an outcome from an older epoch is dropped.  This also
leaves no (state, input) pair undefined but the impossible ones: no request
is ever picked in the EJECTED epoch except the probe, which starts the
PROBING one.
"""

from collections.abc import Callable
from enum import Enum

__all__ = ["CONSECUTIVE_FAILURES", "Health", "State"]

#: Consecutive failures that eject an endpoint (linkerd2-proxy's default).
CONSECUTIVE_FAILURES = 7


class State(Enum):
    """
    Where an endpoint stands.
    """

    #: In rotation.
    HEALTHY = "healthy"
    #: Out of rotation until L{Health.until}, then usable for one probe.
    EJECTED = "ejected"
    #: The probe is in flight; out of rotation until it answers.
    PROBING = "probing"

    # Members are singletons, equal only to themselves: hashing them by
    # identity (in C) rather than by name (in Python) is the same, and
    # cheaper for the transition table, which every request looks up.
    __hash__ = object.__hash__


class _Input(Enum):
    """
    What happens to an endpoint.
    """

    PICKED = "picked"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"

    # As for State.
    __hash__ = object.__hash__


class Health:
    """
    Whether one endpoint may be picked.

    @ivar state: the current L{State}.
    @ivar epoch: the number of transitions so far; a request's outcome
        counts only in the epoch it was picked in.
    @ivar failures: the failures in a row while L{State.HEALTHY}.
    @ivar ejections: the ejections in a row, without a successful probe
        between them: the backoff attempt.
    @ivar until: when L{State.EJECTED}, the time the probe may go.
    @ivar _backoff: the ejection length policy, as L{meshproxy.backoff.backoffPolicy}
        returns.
    @ivar _changed: called after each transition that changes when the
        endpoint is usable.
    """

    def __init__(self, backoff: Callable[[int], float], changed: Callable[[], None]) -> None:
        self.state = State.HEALTHY
        self.epoch = 0
        self.failures = 0
        self.ejections = 0
        self.until = 0.0
        self._backoff = backoff
        self._changed = changed

    def usable(self, now: float) -> bool:
        """
        May a request be sent to the endpoint at C{now}?
        """
        return self.state is State.HEALTHY or (self.state is State.EJECTED and now >= self.until)

    def picked(self, now: float) -> int:
        """
        A request was sent to the endpoint, which must be usable: the probe,
        if the endpoint was ejected.

        @return: the epoch to hand back to L{finished}.
        """
        if self.state is State.EJECTED:
            self._feed(_Input.PICKED, now)
        return self.epoch

    def finished(self, epoch: int, success: bool, refused: bool, now: float) -> None:
        """
        A request picked in C{epoch} is over; see
        L{meshproxy.balance.IPick.finished}.
        """
        if epoch != self.epoch:
            return
        if success and self.state is State.HEALTHY:
            # What nearly every request ends with: the table's entry for
            # (HEALTHY, SUCCEEDED), which stays HEALTHY, without the lookup.
            self._forgive(now)
        elif success:
            self._feed(_Input.SUCCEEDED, now)
        else:
            self._feed(_Input.REFUSED if refused else _Input.FAILED, now)

    def _feed(self, input: _Input, now: float) -> None:
        state = _TRANSITIONS[self.state, input](self, now)
        if state is not self.state:
            self.state = state
            self.epoch += 1
            # Taking the probe changes nothing for anyone waiting, and it
            # happens inside a pick: only report what they must look at.
            if state is not State.PROBING:
                self._changed()

    def _forgive(self, now: float) -> State:
        self.failures = 0
        return State.HEALTHY

    def _accrue(self, now: float) -> State:
        self.failures += 1
        if self.failures < CONSECUTIVE_FAILURES:
            return State.HEALTHY
        return self._eject(now)

    def _eject(self, now: float) -> State:
        self.failures = 0
        self.until = now + self._backoff(self.ejections)
        self.ejections += 1
        return State.EJECTED

    def _probe(self, now: float) -> State:
        return State.PROBING

    def _readmit(self, now: float) -> State:
        self.ejections = 0
        return State.HEALTHY


#: The next state after each input in each state, by the method that makes
#: the transition's side effects and returns the next state.
_TRANSITIONS: dict[tuple[State, _Input], Callable[[Health, float], State]] = {
    (State.HEALTHY, _Input.SUCCEEDED): Health._forgive,
    (State.HEALTHY, _Input.FAILED): Health._accrue,
    (State.HEALTHY, _Input.REFUSED): Health._eject,
    (State.EJECTED, _Input.PICKED): Health._probe,
    (State.PROBING, _Input.SUCCEEDED): Health._readmit,
    (State.PROBING, _Input.FAILED): Health._eject,
    (State.PROBING, _Input.REFUSED): Health._eject,
}
