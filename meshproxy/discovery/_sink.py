# -*- test-case-name: tests.test_discovery -*-
"""
Where discovered endpoints land: the service's balancer, its metrics and
the proxy's readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..config import Endpoint
from ._interfaces import IEndpointSink, IResolver

__all__ = ["BalancerSink", "DiscoveryService"]


@implementer(IEndpointSink)
class BalancerSink:
    """
    Keeps the endpoint set of one service and hands each change to its
    balancer.

    The balancer is updated only when the set really changes, so that a
    source that repeats itself (a DNS answer every TTL, a file touched but
    not changed) costs nothing and counts no update.  The balancer keeps
    the state of endpoints that stay, and requests and connections on
    removed ones finish undisturbed: a change never drops traffic.

    @ivar endpoints: the current set, in the order endpoints first
        appeared.
    @ivar answered: whether the source has answered at least once.
    """

    def __init__(
        self,
        update: Callable[[tuple[Endpoint, ...]], None],
        changed: Callable[[int], None],
        answered: Callable[[], None],
    ) -> None:
        """
        @param update: the balancer's C{update}.
        @param changed: called with the number of endpoints after each
            change, for the metrics.
        @param answered: called at each answer, the first of which makes
            the service ready.
        """
        self._update = update
        self._changed = changed
        self._answered = answered
        self.endpoints: dict[Endpoint, None] = {}
        self.answered = False

    def replace(self, endpoints: Iterable[Endpoint]) -> None:
        new = dict.fromkeys(endpoints)
        self._apply(new, new.keys() != self.endpoints.keys())

    def add(self, endpoints: Iterable[Endpoint]) -> None:
        new = dict(self.endpoints)
        new.update(dict.fromkeys(endpoints))
        self._apply(new, len(new) != len(self.endpoints))

    def remove(self, endpoints: Iterable[Endpoint]) -> None:
        new = dict(self.endpoints)
        for endpoint in endpoints:
            new.pop(endpoint, None)
        self._apply(new, len(new) != len(self.endpoints))

    def _apply(self, new: dict[Endpoint, None], changed: bool) -> None:
        if changed:
            self.endpoints = new
            self._update(tuple(new))
            self._changed(len(new))
        self.answered = True
        self._answered()


class DiscoveryService(Service):
    """
    Runs one service's resolver while the proxy runs, and gives up waiting
    for its first answer after a while.

    A source that never answers (an etcd that is down, a file not written
    yet) must not keep the whole proxy unready forever: its other services
    may be fine.  After C{timeout} the proxy stops waiting for it and logs
    which resolver of which service it gave up on; the service's requests
    wait for endpoints, then fail fast, as they would for a service whose
    endpoints are all down.

    @ivar resolver: the L{IResolver}.
    @ivar sink: the L{BalancerSink} it pushes to.
    """

    _log = Logger()

    def __init__(
        self,
        service: str,
        resolver: IResolver,
        sink: BalancerSink,
        ready: Callable[[], None],
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        """
        @param service: the service's name, for messages.
        @param ready: marks the readiness condition met: at the first
            answer, or at the timeout.
        @param timeout: seconds to wait for the first answer.
        """
        self.name = f"discovery {service}"
        self._service = service
        self.resolver = resolver
        self.sink = sink
        self._ready = ready
        self._clock = clock
        self._timeout = timeout
        self._deadline: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._deadline = self._clock.callLater(self._timeout, self._givenUp)
        self.resolver.start(self.sink)

    def stopService(self):
        super().stopService()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        return self.resolver.stop()

    def resolveWith(self, resolver: IResolver):
        """
        Take the endpoints from C{resolver} from now on: a reload changed
        the service's source.  It pushes into the same sink, so the
        current endpoints stay in use until it answers, and then only the
        difference reaches the balancer.

        @return: what stopping the old resolver returned.
        """
        old, self.resolver = self.resolver, resolver
        if not self.running:
            return None
        stopped = old.stop()
        resolver.start(self.sink)
        return stopped

    def _givenUp(self) -> None:
        if not self.sink.answered:
            self._log.warn(
                "The {source} resolver of service {service} has not answered in {timeout:g}s:"
                " ready without it; its requests fail until it answers",
                source=self.resolver.source,
                service=self._service,
                timeout=self._timeout,
            )
            self._ready()
